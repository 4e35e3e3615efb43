/**
 * The balance section of `npm run bench` (`--sections balance`): routing across consumer replicas
 * on a `fanout: balance` edge, the KNIX workflowmesh loaded experiment done with Sluice's own data
 * plane. Two nodes (network namespaces on a veth bridge), each with its daemon and its functions
 * pinned to one CPU of its own (taskset: node n0 = CPU 0, node n1 = CPU 1), so that a node has a
 * node's capacity even on a 2-core machine. A producer step on n0; a CPU-heavy consumer step (it
 * hashes every byte WORK + 1 times) with one instance on each node; every run's stream goes to one
 * instance, picked by n0's daemon.
 *
 * - `load: none`: runs one after another; local-first should keep them local.
 * - `load: saturated`: every run arrives at n0 at once, each replica taking one stream at a time
 *   (`--replica-max-streams 1`, a function instance with a concurrency of one): always-local
 *   piles them on n0's CPU, local-first spills what n0's replica cannot take to n1's.
 * - `affinity`: consistent hashing with bounded loads (c = 1.25) on the run id, 4 replicas, all
 *   runs at once, the daemons' default replica limit; `max_load_ratio` = the most streams one
 *   replica got over the mean.
 *
 * Rows: `pattern: "balance"`, `policy`, `load`, `bytes` (per run), `e2e_ms` (median run time:
 * from the producer's start to the last of the run's functions done), `local_share`, and for
 * affinity `max_load_ratio`. Every delivered stream is checked against the producer's sha256; the
 * instances not picked must have read zero bytes.
 */
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { control } from '../client/control.js';
import { createCluster, namespacesAvailable, type Cluster, type NetnsNode } from '../harness/netns.js';
import { MiB } from './data.js';
import { spawnDaemon, stopDaemonProcess, waitPeered, watchDaemon, type Daemon } from './daemons.js';
import { median, size, type Case } from './report.js';

const HOST = fileURLToPath(new URL('./balance-host.js', import.meta.url));
/** Extra sha256 passes the consumer makes over every byte: its CPU-heavy work. */
const WORK = 3;
/** The saturated case's subnet of 10.213.X.0/24, apart from the other sections' and the tests'. */
const SUBNET = 61;

export interface BalanceOptions {
  /** smaller and fewer runs: a self-check */
  smoke: boolean;
}

export interface BalanceResults {
  cases: Case[];
  /** why nothing was measured, when nothing was */
  skipped?: string;
  markdown: string;
}

interface Result {
  id: number;
  bytes?: number;
  sha256?: string;
  ms?: number;
  error?: { code?: string; message?: string };
}

/** A function host (balance-host.ts) in a node's namespace, pinned to one CPU. */
class Host {
  private serial = 0;
  private readonly pending = new Map<number, (r: Result) => void>();
  private readonly child: ChildProcess;
  private readonly output: () => string;

  constructor(node: NetnsNode, cpu: number) {
    this.child = node.spawn('taskset', ['-c', String(cpu), process.execPath, HOST], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.output = watchDaemon(this.child);
    let buffered = '';
    this.child.stdout!.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (!line.startsWith('{')) continue;
        const r = JSON.parse(line) as Result;
        this.pending.get(r.id)?.(r);
        this.pending.delete(r.id);
      }
    });
    this.child.on('exit', () => {
      for (const done of this.pending.values()) done({ id: -1, error: { message: `function host exited: ${this.output()}` } });
      this.pending.clear();
    });
  }

  call(command: Record<string, unknown>): Promise<Result> {
    const id = ++this.serial;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.child.stdin!.write(`${JSON.stringify({ id, ...command })}\n`);
    });
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = once(this.child, 'exit');
    this.child.stdin!.end();
    await exited;
  }
}

interface Nodes {
  nodes: [NetnsNode, NetnsNode];
  daemons: [Daemon, Daemon];
  /** producers on n0, consumers on n0, consumers on n1 */
  producers: Host;
  consumers: [Host, Host];
}

interface Spec {
  policy: 'local-first' | 'always-local' | 'least-loaded' | 'affinity';
  load: 'none' | 'saturated';
  bytes: number;
  runs: number;
  /** node index of each consumer instance */
  replicas: Array<0 | 1>;
}

let serial = 0;

async function startDaemons(nodes: [NetnsNode, NetnsNode], baseDir: string, args: string[]): Promise<[Daemon, Daemon]> {
  const secretFile = path.join(baseDir, `balance-secret-${++serial}`);
  fs.writeFileSync(secretFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  const [n0, n1] = nodes;
  const first = spawnDaemon('n0', n0, path.join(baseDir, `balance-n0-${serial}`), { name: 'n1', node: n1 }, secretFile, { args, cpu: 0 });
  const second = spawnDaemon('n1', n1, path.join(baseDir, `balance-n1-${serial}`), { name: 'n0', node: n0 }, secretFile, { args, cpu: 1 });
  try {
    await Promise.all([waitPeered(first, 'n1'), waitPeered(second, 'n0')]);
  } catch (err) {
    await Promise.all([stopDaemonProcess(first.child), stopDaemonProcess(second.child)]);
    throw err;
  }
  return [first, second];
}

/** One case: a workflow of its own (so replicas start unloaded and healthy), its runs created first, then produced. */
async function balanceCase(x: Nodes, spec: Spec): Promise<Case> {
  const [d0] = x.daemons;
  const name = `bal-${spec.policy}-${spec.load}-${++serial}`;
  await control(d0.dir, 'POST', '/v1/workflows', { name, steps: { p: {}, c: { replicas: spec.replicas.length } }, edges: [{ from: 'p', to: 'c', fanout: 'balance', policy: spec.policy }] });
  const nodeNames = spec.replicas.map((n) => `n${n}`);
  const runs: Array<{ run: string; token: string }> = [];
  // proactive: every run is prepared on both nodes before its functions start
  for (let i = 0; i < spec.runs; i++) runs.push((await control<{ run: string; token: string }>(d0.dir, 'POST', '/v1/runs', { workflow: name, placement: { p: 'n0', c: nodeNames } })).body);
  const errors: string[] = [];
  const one = async (r: { run: string; token: string }, i: number): Promise<{ ms: number; at: number } | undefined> => {
    const consumers = spec.replicas.map((n, j) => x.consumers[n].call({ op: 'consume', dir: x.daemons[n].dir, run: r.run, token: r.token, step: 'c', instance: j, work: WORK }));
    const started = performance.now();
    const produced = await x.producers.call({ op: 'produce', dir: d0.dir, run: r.run, token: r.token, step: 'p', instance: 0, to: 'c', bytes: spec.bytes, seed: i + 1 });
    const got = await Promise.all(consumers);
    const ms = performance.now() - started;
    const failed = [produced, ...got].find((g) => g.error);
    if (failed) {
      errors.push(`run ${i}: ${failed.error!.code ?? ''} ${failed.error!.message ?? ''}`);
      return undefined;
    }
    const at = got.findIndex((g) => (g.bytes ?? 0) > 0);
    const others = got.filter((_, j) => j !== at);
    if (at < 0 || got[at]!.bytes !== spec.bytes || got[at]!.sha256 !== produced.sha256 || others.some((g) => g.bytes !== 0)) {
      errors.push(`run ${i}: not verified (instances got ${got.map((g) => g.bytes).join(', ')} bytes)`);
      return undefined;
    }
    return { ms, at };
  };
  const outcomes = spec.load === 'saturated' || spec.policy === 'affinity' ? await Promise.all(runs.map(one)) : [];
  if (outcomes.length === 0) for (const [i, r] of runs.entries()) outcomes.push(await one(r, i));
  await Promise.all(runs.map((r) => control(d0.dir, 'DELETE', `/v1/runs/${r.run}`).catch(() => undefined)));
  const done = outcomes.filter((o): o is { ms: number; at: number } => o !== undefined);
  const perReplica = spec.replicas.map((_, j) => done.filter((o) => o.at === j).length);
  const local = done.filter((o) => spec.replicas[o.at] === 0).length;
  const ratio = done.length === 0 ? null : Math.max(...perReplica) / (done.length / spec.replicas.length);
  const e2e = median(done.map((o) => o.ms));
  return {
    pattern: 'balance',
    hops: 1,
    fanout: spec.replicas.length,
    path: 'relay',
    placement: 'cross-node',
    bytes: spec.bytes,
    e2e_ms: e2e === null ? null : Number(e2e.toFixed(1)),
    e2e_ms_runs: outcomes.map((o) => (o ? Number(o.ms.toFixed(1)) : null)),
    ttfb_ms: null,
    MBps: null,
    hop_us: null,
    disk_bytes: 0,
    daemon_rss_mb: 0,
    proactive: true,
    verified: errors.length === 0 && done.length === spec.runs,
    policy: spec.policy,
    load: spec.load,
    runs: spec.runs,
    local_share: done.length === 0 ? 0 : Number((local / done.length).toFixed(3)),
    ...(spec.policy === 'affinity' && ratio !== null ? { max_load_ratio: Number(ratio.toFixed(3)) } : {}),
    ...(errors.length > 0 ? { errors } : {}),
  };
}

function failedCase(spec: Spec, message: string): Case {
  return { pattern: 'balance', hops: 1, fanout: spec.replicas.length, path: 'relay', placement: 'cross-node', bytes: spec.bytes, e2e_ms: null, ttfb_ms: null, MBps: null, hop_us: null, disk_bytes: 0, daemon_rss_mb: 0, proactive: true, verified: false, policy: spec.policy, load: spec.load, runs: spec.runs, errors: [message] };
}

function render(cases: Case[], note: string): string {
  const lines = [
    '## Routing across replicas (balance)',
    '',
    note,
    '',
    '| policy | load | bytes | runs | median run ms | local share | max/mean load | verified |',
    '| --- | --- | --: | --: | --: | --: | --: | --- |',
    ...cases.map((c) => `| ${c.policy} | ${c.load} | ${size(c.bytes)} | ${c.runs} | ${c.e2e_ms ?? 'failed'} | ${c.local_share ?? ''} | ${c.max_load_ratio ?? ''} | ${c.verified ? 'yes' : 'NO'} |`),
  ];
  const lf = cases.find((c) => c.policy === 'local-first' && c.load === 'saturated');
  const al = cases.find((c) => c.policy === 'always-local' && c.load === 'saturated');
  if (lf?.e2e_ms && al?.e2e_ms) lines.push('', `Saturated, local-first / always-local median run time: ${(lf.e2e_ms / al.e2e_ms).toFixed(2)}.`);
  return lines.join('\n') + '\n';
}

/** The section; see the file comment. Where namespaces are not allowed, measures nothing and says why. */
export async function balanceSection(options: BalanceOptions, baseDir: string, progress: (line: string) => void): Promise<BalanceResults> {
  const available = await namespacesAvailable();
  if (!available.ok) {
    progress(`balance: skipped: ${available.why}`);
    return { cases: [], skipped: available.why, markdown: `## Routing across replicas (balance)\n\nskipped: ${available.why}\n` };
  }
  const bytes = options.smoke ? 8 * MiB : 64 * MiB;
  const plain: Spec[] = [
    { policy: 'local-first', load: 'none', bytes, runs: options.smoke ? 2 : 4, replicas: [0, 1] },
    { policy: 'always-local', load: 'none', bytes, runs: options.smoke ? 2 : 4, replicas: [0, 1] },
    { policy: 'local-first', load: 'saturated', bytes, runs: options.smoke ? 3 : 6, replicas: [0, 1] },
    { policy: 'always-local', load: 'saturated', bytes, runs: options.smoke ? 3 : 6, replicas: [0, 1] },
    { policy: 'least-loaded', load: 'saturated', bytes, runs: options.smoke ? 3 : 6, replicas: [0, 1] },
  ];
  const affinity: Spec = { policy: 'affinity', load: 'none', bytes: options.smoke ? MiB : 4 * MiB, runs: 16, replicas: [0, 1, 0, 1] };
  const note =
    'Two nodes (network namespaces on a veth bridge), each pinned to a CPU of its own (daemon and functions: n0 on CPU 0, n1 on CPU 1); producer on n0, ' +
    `a CPU-heavy consumer (${WORK + 1} sha256 passes over every byte) with one instance per node; saturated: the runs arrive at n0 at once and a replica takes one stream at a time ` +
    '(--replica-max-streams 1); affinity: 4 instances (2 per node), all runs at once, default replica limit.';
  const cases: Case[] = [];
  let cluster: Cluster | undefined;
  try {
    cluster = await createCluster(2, { subnet: SUBNET });
    const nodes: [NetnsNode, NetnsNode] = [cluster.nodes[0]!, cluster.nodes[1]!];
    for (const [specs, args] of [
      [plain, ['--replica-max-streams', '1']],
      [[affinity], []],
    ] as Array<[Spec[], string[]]>) {
      let x: Nodes | undefined;
      try {
        progress(`balance: starting a daemon on each node (${args.join(' ') || 'default replica limit'}) ...`);
        const daemons = await startDaemons(nodes, baseDir, args);
        x = { nodes, daemons, producers: new Host(nodes[0], 0), consumers: [new Host(nodes[0], 0), new Host(nodes[1], 1)] };
        for (const spec of specs) {
          progress(`[balance] ${spec.policy}, load ${spec.load}: ${spec.runs} runs of ${size(spec.bytes)} ...`);
          const c = await balanceCase(x, spec).catch((err: Error) => failedCase(spec, err.message));
          cases.push(c);
          progress(
            `[balance] ${spec.policy}, load ${spec.load}: ${c.verified ? '' : `NOT VERIFIED ${c.errors?.join('; ')} `}median run ${c.e2e_ms} ms, local share ${c.local_share}${c.max_load_ratio !== undefined ? `, max/mean load ${c.max_load_ratio}` : ''}`,
          );
        }
      } catch (err) {
        for (const spec of specs) if (!cases.some((c) => c.policy === spec.policy && c.load === spec.load)) cases.push(failedCase(spec, (err as Error).message));
        progress(`balance: FAILED: ${(err as Error).message}`);
      } finally {
        await x?.producers.stop();
        await Promise.all(x?.consumers.map((h) => h.stop()) ?? []);
        await Promise.all(x?.daemons.map((d) => stopDaemonProcess(d.child)) ?? []);
      }
    }
  } finally {
    await cluster?.destroy().catch((err: Error) => progress(`balance: ${err.message}`));
  }
  return { cases, markdown: render(cases, note) };
}
