/**
 * Metrics Prometheus can trust: two real daemons linked on loopback carry a workload (a stream
 * through the relay to a late consumer, one `via: s3` through the store, one across the peer
 * link), and their `/metrics`, scraped over the TCP listener as Prometheus does, pass
 * `promtool check metrics` and hold the values the workload implies. The alerting rules and the
 * Grafana dashboard in deploy/monitoring/ are checked against the same scrape.
 *
 * promtool comes from the distribution's `prometheus` package (.ci/run installs it): without it
 * these tests fail under CI=true and are skipped, saying why, elsewhere.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import { parse } from 'yaml';
import { control } from '../../client/control.js';
import { runFunction, waitForChannelState } from '../helpers/daemon.js';
import { freePorts, ok, startNodes, stopNodes, waitFor, waitForLink, type LinkedNode } from '../helpers/peers.js';

const MONITORING = fileURLToPath(new URL('../../deploy/monitoring/', import.meta.url));
const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
const SECRET = 'metrics-test-secret-0123456789abcdef';
const MiB = 1024 * 1024;
const RELAYED = 3 * MiB + 123;
const STORED = 2 * MiB + 7;
const ACROSS = MiB + 5;
/** how long the relayed stream's consumer comes after its producer, ms */
const LATE_MS = 300;

const promtool = ((): string | undefined => {
  const found = spawnSync('sh', ['-c', 'command -v promtool'], { encoding: 'utf8' });
  return found.status === 0 ? found.stdout.trim() : undefined;
})();

/** promtool's path; fails under CI (which must have it), skips the test elsewhere. */
function needPromtool(ctx: TestContext): string {
  if (promtool) return promtool;
  if (process.env.CI === 'true') throw new Error('promtool is missing: .ci/run installs it (apt-get install prometheus)');
  ctx.skip('promtool is not installed (apt-get install prometheus)');
  throw new Error('unreachable');
}

function promtoolRun(tool: string, args: string[], input?: string): { status: number | null; output: string } {
  const r = spawnSync(tool, args, { input, encoding: 'utf8', cwd: MONITORING });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

let a: LinkedNode;
let b: LinkedNode;
let nodes: Map<string, LinkedNode>;
let secrets: string;
let run: { run: string; token: string };

async function scrape(n: LinkedNode): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${n.port}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return res.text();
}

/** The value of the one sample `series` (name and labels, as exposed; labels in exposition order). */
function value(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  if (line === undefined) throw new Error(`no sample ${series} in:\n${text.split('\n').filter((l) => l.startsWith(series.split('{')[0]!)).join('\n')}`);
  return Number(line.slice(series.length + 1));
}

/** Metric names the scrape exposes: its TYPE lines, histograms with their _bucket, _sum and _count. */
function exported(text: string): Set<string> {
  const names = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.add(m[1]!);
    if (m[2] === 'histogram' || m[2] === 'summary') for (const s of ['_bucket', '_sum', '_count']) names.add(m[1]! + s);
  }
  return names;
}

/** The metric names a PromQL expression reads (label matchers, grouping, ranges, strings and functions left out). */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\$\w+/g, ' ');
  const keywords = new Set(['and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan']);
  return [...stripped.matchAll(/([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?/g)].filter((m) => m[2] === undefined && !keywords.has(m[1]!.toLowerCase())).map((m) => m[1]!);
}

beforeAll(async () => {
  secrets = mkdtempSync(join(tmpdir(), 'sluice-metrics-'));
  const secretFile = join(secrets, 'secret');
  writeFileSync(secretFile, SECRET, { mode: 0o600 });
  const [pa, pb] = (await freePorts(2)) as [number, number];
  const common = ['--secret-file', secretFile, '--peer-heartbeat', '200ms', '--attach-timeout', '10s', '--run-ttl', '10s'];
  nodes = await startNodes([
    { name: 'a', port: pa, args: ['--listen', `127.0.0.1:${pa}`, '--peers', `b=ws://127.0.0.1:${pb}`, ...common] },
    { name: 'b', port: pb, args: ['--listen', `127.0.0.1:${pb}`, '--peers', `a=ws://127.0.0.1:${pa}`, ...common] },
  ]);
  a = nodes.get('a')!;
  b = nodes.get('b')!;
  await waitForLink(a, b);
  await control(a.daemon.dir, 'POST', '/v1/workflows', {
    name: 'metered',
    steps: { p: {}, c: {}, q: {}, s: {}, x: {}, y: {} },
    edges: [
      { from: 'p', to: 'c' },
      { from: 'q', to: 's', via: 's3' },
      { from: 'x', to: 'y' },
    ],
  });
  // the daemons expire runs after 10 s (and look every 2.5 s) unless told otherwise: this one stays for the test
  run = (await control<{ run: string; token: string }>(a.daemon.dir, 'POST', '/v1/runs', { workflow: 'metered', placement: { y: 'b' }, ttlSeconds: 600 })).body;

  // through a's relay: the producer finds no consumer on the FIFO; its consumer comes LATE_MS later
  const early = runFunction(a.daemon.dir, run, 'p', ['source', String(RELAYED), '1', 'c']);
  await waitForChannelState(a.daemon.dir, run.run, 'relaying');
  await sleep(LATE_MS);
  const late = runFunction(a.daemon.dir, run, 'c', ['sink', 'p']);
  // through a's store
  const storedSink = runFunction(a.daemon.dir, run, 's', ['sink', 'q']);
  const storedSource = runFunction(a.daemon.dir, run, 'q', ['source', String(STORED), '2', 's']);
  // across the link: a passes it on (remote), b delivers it to its consumer's socket (unix)
  const acrossSink = runFunction(b.daemon.dir, run, 'y', ['sink', 'x']);
  const acrossSource = runFunction(a.daemon.dir, run, 'x', ['source', String(ACROSS), '3', 'y']);
  for (const [fn, bytes] of [[early, RELAYED], [late, RELAYED], [storedSource, STORED], [storedSink, STORED], [acrossSource, ACROSS], [acrossSink, ACROSS]] as const) {
    expect(ok(await fn.done).bytes).toBe(bytes);
  }
}, 90_000);

afterAll(async () => {
  const deaths = nodes ? await stopNodes(nodes) : [];
  rmSync(secrets, { recursive: true, force: true });
  expect(deaths).toEqual([]);
});

describe('/metrics after a workload', () => {
  it('passes promtool check metrics (format and lint) on both daemons', async (ctx) => {
    const tool = needPromtool(ctx);
    for (const n of [a, b]) {
      const checked = promtoolRun(tool, ['check', 'metrics'], await scrape(n));
      expect(checked, `node ${n.name}`).toEqual({ status: 0, output: '' });
    }
  });

  it("counts each run's channels under their real path, from the registry", async () => {
    const onA = await scrape(a);
    expect(value(onA, 'sluice_runs')).toBe(1);
    expect(value(onA, 'sluice_prepared_channels{path="fifo"}')).toBe(2); // p→c, q→s
    expect(value(onA, 'sluice_prepared_channels{path="remote"}')).toBe(1); // x→y, its consumer on b
    expect(value(onA, 'sluice_prepared_channels{path="unix"}')).toBe(0);
    expect(value(onA, 'sluice_channels{state="done"}')).toBe(3);
    const onB = await scrape(b);
    expect(value(onB, 'sluice_prepared_channels{path="unix"}')).toBe(1);
    expect(value(onB, 'sluice_prepared_channels{path="fifo"}')).toBe(0);
    expect(value(onB, 'sluice_prepared_channels{path="remote"}')).toBe(0);
    // a created it on request, b when a shared it
    expect(value(onA, 'sluice_runs_created_total')).toBe(1);
    expect(value(onB, 'sluice_runs_created_total')).toBe(1);
  });

  it('observes one stream per path where it ended on this node, with its bytes and times', async () => {
    const onA = await scrape(a);
    // the relayed stream: payload bytes exactly; it waited for its late consumer
    expect(value(onA, 'sluice_stream_duration_seconds_count{path="fifo"}')).toBe(1);
    expect(value(onA, 'sluice_stream_bytes_count{path="fifo"}')).toBe(1);
    expect(value(onA, 'sluice_stream_bytes_sum{path="fifo"}')).toBe(RELAYED);
    expect(value(onA, 'sluice_stream_ttfb_seconds_count{path="fifo"}')).toBe(1);
    expect(value(onA, 'sluice_stream_ttfb_seconds_sum{path="fifo"}')).toBeGreaterThanOrEqual(LATE_MS / 1000);
    expect(value(onA, 'sluice_stream_duration_seconds_sum{path="fifo"}')).toBeGreaterThanOrEqual(value(onA, 'sluice_stream_ttfb_seconds_sum{path="fifo"}'));
    // a 3 MiB stream lands in the (1 MiB, 4 MiB] bucket
    expect(value(onA, 'sluice_stream_bytes_bucket{le="1048576",path="fifo"}')).toBe(0);
    expect(value(onA, 'sluice_stream_bytes_bucket{le="4194304",path="fifo"}')).toBe(1);
    // via: s3, written to the store
    expect(value(onA, 'sluice_stream_bytes_count{path="store"}')).toBe(1);
    expect(value(onA, 'sluice_stream_bytes_sum{path="store"}')).toBe(STORED);
    expect(value(onA, 'sluice_store_streams_total{reason="forced"}')).toBe(1);
    // across the link: the framed bytes passed on, a little more than the payload
    expect(value(onA, 'sluice_stream_bytes_count{path="remote"}')).toBe(1);
    expect(value(onA, 'sluice_stream_bytes_sum{path="remote"}')).toBeGreaterThan(ACROSS);
    expect(value(onA, 'sluice_stream_bytes_sum{path="remote"}')).toBeLessThan(ACROSS + 64 * 1024);
    const onB = await scrape(b);
    expect(value(onB, 'sluice_stream_bytes_count{path="unix"}')).toBe(1);
    expect(value(onB, 'sluice_stream_bytes_sum{path="unix"}')).toBeGreaterThan(ACROSS);
    expect(value(onB, 'sluice_stream_duration_seconds_count{path="unix"}')).toBe(1);
    // nothing else was observed: 3 streams on a, 1 on b
    const count = (text: string): number => [...text.matchAll(/^sluice_stream_duration_seconds_count\{[^}]*\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
    expect(count(onA)).toBe(3);
    expect(count(onB)).toBe(1);
  });

  it('says which build runs, with unprefixed process metrics', async () => {
    const onA = await scrape(a);
    expect(value(onA, `sluice_build_info{version="${VERSION}",node_version="${process.version}"}`)).toBe(1);
    expect(value(onA, 'process_cpu_seconds_total')).toBeGreaterThan(0);
    expect(onA).not.toMatch(/sluice_process_/);
  });

  it('goes back to 0 when the run is deleted (here and at the peer), counting the deletion', async () => {
    await control(a.daemon.dir, 'DELETE', `/v1/runs/${run.run}`);
    await waitFor('b removed its part', async () => (value(await scrape(b), 'sluice_runs') === 0 ? true : undefined));
    for (const n of [a, b]) {
      const text = await scrape(n);
      expect(value(text, 'sluice_runs'), n.name).toBe(0);
      for (const path of ['fifo', 'unix', 'remote']) expect(value(text, `sluice_prepared_channels{path="${path}"}`), `${n.name} ${path}`).toBe(0);
      expect(value(text, 'sluice_runs_deleted_total{reason="deleted"}'), n.name).toBe(1);
      expect(value(text, 'sluice_runs_deleted_total{reason="expired"}'), n.name).toBe(0);
    }
  });

  it('counts an expired run as removed, and its channels go back to 0', async () => {
    await control(a.daemon.dir, 'POST', '/v1/workflows', { name: 'brief', steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
    await control(a.daemon.dir, 'POST', '/v1/runs', { workflow: 'brief', ttlSeconds: 1 });
    expect(value(await scrape(a), 'sluice_prepared_channels{path="fifo"}')).toBe(1);
    await waitFor('the run expired', async () => (value(await scrape(a), 'sluice_runs') === 0 ? true : undefined), 10_000);
    const text = await scrape(a);
    expect(value(text, 'sluice_prepared_channels{path="fifo"}')).toBe(0);
    expect(value(text, 'sluice_runs_deleted_total{reason="expired"}')).toBe(1);
    expect(value(text, 'sluice_runs_deleted_total{reason="deleted"}')).toBe(1);
    expect(value(text, 'sluice_runs_created_total')).toBe(2);
  });
});

describe('deploy/monitoring', () => {
  it('alerting rules pass promtool check rules and their unit tests', (ctx) => {
    const tool = needPromtool(ctx);
    const checked = promtoolRun(tool, ['check', 'rules', 'alerts.yaml']);
    expect(checked.status, checked.output).toBe(0);
    expect(checked.output).toMatch(/SUCCESS: 5 rules found/);
    const tested = promtoolRun(tool, ['test', 'rules', 'alerts.test.yaml']);
    expect(tested.status, tested.output).toBe(0);
  });

  it('the rules and every dashboard query read only metrics the daemon exports', async () => {
    const names = new Set([...exported(await scrape(a)), ...exported(await scrape(b))]);
    const dashboard = JSON.parse(readFileSync(join(MONITORING, 'grafana-dashboard.json'), 'utf8')) as {
      panels: Array<{ title: string; targets?: Array<{ expr: string }> }>;
      templating: { list: Array<{ definition?: string }> };
    };
    const exprs = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: p.title, expr: t.expr })));
    expect(exprs.length).toBeGreaterThan(20);
    for (const v of dashboard.templating.list) if (v.definition) exprs.push({ where: 'variable', expr: v.definition.replace(/^label_values\(([^,]+),.*$/, '$1') });
    for (const { where, expr } of exprs) {
      const read = metricNames(expr);
      expect(read.length, `${where}: ${expr}`).toBeGreaterThan(0);
      for (const name of read) expect(names.has(name), `${where}: ${expr} reads ${name}, which the daemon does not export`).toBe(true);
    }
    // the rules: all exported, but the hold budget's (a later issue adds the hold and its metrics)
    const exprsOfRules = (parse(readFileSync(join(MONITORING, 'alerts.yaml'), 'utf8')) as { groups: Array<{ rules: Array<{ alert: string; expr: string }> }> }).groups.flatMap((g) => g.rules);
    const missing = exprsOfRules.flatMap((r) => metricNames(r.expr).filter((n) => !names.has(n)));
    expect(missing.sort()).toEqual(['sluice_hold_budget_bytes', 'sluice_hold_budget_used_bytes']);
  });
});
