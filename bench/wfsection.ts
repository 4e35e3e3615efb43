/**
 * The object-store comparison section of `npm run bench`: every (pattern, size) runs each path back
 * to back within a repetition, so S3 / Sluice and Sluice / raw ratios are paired in time; then
 * the 1 KiB per-hop latency through a 5-hop chain, and the KNIX-style CloudEvents run.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { namespacesAvailable } from '../harness/netns.js';
import { GiB, KiB, MiB, RECORD_BYTES } from './data.js';
import type { WfPath } from './protocol.js';
import { S3Server, ensureBucket, type S3Target } from './s3.js';
import { median, size, type Baseline, type Case, type KnixRow, type Report, type Speedup } from './report.js';
import { StoreDaemon } from './stores.js';
import { messagesCase, percentilesUs, registerWorkflows, startCrossNode, shapeOf, throughputCase, type CaseSample, type PatternName, type WfEnv, type WfNodes } from './workflows.js';

export interface WfOptions {
  sizes: number[];
  /** repetitions of sizes under LARGE_BYTES, and of the larger ones */
  reps: number;
  largeReps: number;
  patterns: PatternName[];
  /** patterns also measured from LARGE_BYTES on (quick: the acceptance targets' patterns) */
  largePatterns: PatternName[];
  /** of those, the patterns the cross-node path (`ws`) measures from LARGE_BYTES on (quick: chain1) */
  wsLargePatterns: PatternName[];
  paths: WfPath[];
  latency: { warmup: number; count: number; s3Count: number } | undefined;
  knix: Array<{ bytes: number; count: number; s3Count: number }> | undefined;
  s3Endpoint?: string;
  s3Bucket: string;
  /** proactive: false rows (fifo, chains) */
  onDemand: boolean;
}

/** From this size on, a case runs `largeReps` times (the store paths take a minute a GiB). */
export const LARGE_BYTES = 512 * MiB;
/** Paths measured on every pattern; the others (relay, file, on-demand set-up) on chains only. */
const EVERY_PATTERN: readonly WfPath[] = ['raw-fifo', 'fifo', 'unix', 'ws', 's3'];
/** The directory store writes every byte to disk and reads it back: measured up to this size (time; --full's RSS run names it). */
const THROUGH_DAEMON_MAX = 256 * MiB;
/** A relay copies every byte through the daemon: measured up to this size, 1 GiB included. */
const RELAY_MAX = GiB;
/** Repetitions of the raw-chain5-c baseline at each size; its median is the figure. */
const RAW_CHAIN_C_REPS = 7;

/** bench/raw-chain5-c.py, whether this runs from dist/bench or from bench. */
function rawChainScript(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const found = [path.join(here, 'raw-chain5-c.py'), path.join(here, '..', '..', 'bench', 'raw-chain5-c.py')].find((p) => existsSync(p));
  if (!found) throw new Error(`bench/raw-chain5-c.py not found from ${here}`);
  return found;
}

/**
 * raw-chain5-c: six already-running processes joined by pipes (a Python writer, four coreutils
 * `cat`, a Python reader), warmed before the clock; median of RAW_CHAIN_C_REPS runs. The machine's
 * limit for a 5-hop chain, no Node in it.
 */
export async function rawChainC(bytes: number, reps = RAW_CHAIN_C_REPS): Promise<Baseline> {
  try {
    const { stdout } = await promisify(execFile)('python3', [rawChainScript(), String(bytes), String(reps)], { maxBuffer: 1 << 20 });
    const r = JSON.parse(stdout) as { runs_ms: number[]; median_ms: number; MBps: number };
    const MBps_runs = r.runs_ms.map((ms) => Number((bytes / 1e6 / (ms / 1000)).toFixed(1)));
    return { name: 'raw-chain5-c', MBps: r.MBps, MBps_runs, bytes, e2e_ms: r.median_ms, verified: true };
  } catch (err) {
    return { name: 'raw-chain5-c', MBps: null, MBps_runs: [], bytes, verified: false, errors: [(err as Error).message] };
  }
}

interface Row {
  pattern: PatternName;
  path: WfPath;
  bytes: number;
  proactive: boolean;
  samples: CaseSample[];
}

const fmt = (x: number, digits = 0): string => x.toFixed(digits);
const r1 = (x: number | null, d = 1): number | null => (x === null ? null : Number(x.toFixed(d)));

function planPaths(o: WfOptions, pattern: PatternName, bytes: number): Array<{ path: WfPath; proactive: boolean }> {
  const chain = pattern.startsWith('chain');
  const out: Array<{ path: WfPath; proactive: boolean }> = [];
  for (const path of o.paths) {
    if (!chain && !EVERY_PATTERN.includes(path)) continue;
    if (path === 'file' && bytes > THROUGH_DAEMON_MAX) continue;
    if (path === 'relay' && bytes > RELAY_MAX) continue;
    if (path === 'ws' && bytes >= LARGE_BYTES && !o.wsLargePatterns.includes(pattern)) continue;
    out.push({ path, proactive: true });
    if (path === 'fifo' && chain && o.onDemand && (pattern === 'chain1' || bytes < LARGE_BYTES)) out.push({ path, proactive: false });
  }
  return out;
}

export interface WfResults {
  cases: Case[];
  baselines: Baseline[];
  speedups: Speedup[];
  knix: KnixRow[];
  info: NonNullable<Report['workflows']>;
}

export async function workflowSection(o: WfOptions, dirs: { tmpDir: string; runtimeDir: string }, pathFor: (what: string) => string, progress: (line: string) => void): Promise<WfResults> {
  const { tmpDir, runtimeDir } = dirs;
  const needsDaemon = o.paths.some((p) => p === 'fifo' || p === 'relay' || p === 'file');
  const needsS3 = o.paths.includes('s3');
  let daemon: StoreDaemon | undefined;
  let server: S3Server | undefined;
  let target: S3Target | undefined;
  let nodes: WfNodes | undefined;
  /** why the cross-node path was not measured, if it was asked for and was not */
  let crossNodeSkipped: string | undefined;
  try {
    if (o.paths.includes('ws')) {
      const available = await namespacesAvailable();
      if (!available.ok) {
        crossNodeSkipped = available.why;
        progress(`[workflows] ws: skipped: ${available.why}`);
      } else {
        progress('[workflows] ws: two nodes (network namespaces) and a Sluice daemon on each ...');
        nodes = await startCrossNode(path.join(runtimeDir, 'workflows-nodes'), o.patterns).catch((err: Error) => {
          crossNodeSkipped = `the nodes or their daemons did not start: ${err.message}`;
          progress(`[workflows] ws: FAILED: ${crossNodeSkipped}`);
          return undefined;
        });
      }
    }
    if (needsDaemon) {
      progress('[workflows] starting a Sluice daemon (embedded directory store) ...');
      daemon = await StoreDaemon.start('file', tmpDir, 'workflows', runtimeDir);
      await registerWorkflows(daemon, o.patterns);
    }
    if (needsS3) {
      if (o.s3Endpoint) {
        target = { endpoint: o.s3Endpoint, bucket: o.s3Bucket };
        await ensureBucket(target);
      } else {
        progress('[workflows] starting s3rver in its own process ...');
        server = await S3Server.start(tmpDir, o.s3Bucket);
        target = server.target;
      }
    }
    const env: WfEnv = { tmpDir, pathFor, ...(daemon && { daemon }), ...(nodes && { nodes }), ...(target && { s3: { target, ...(server && { server }) } }) };
    const measurable = (p: WfPath): boolean => p !== 'ws' || nodes !== undefined;
    const rows: Row[] = [];
    const rowOf = (pattern: PatternName, path: WfPath, bytes: number, proactive: boolean): Row => {
      let row = rows.find((r) => r.pattern === pattern && r.path === path && r.bytes === bytes && r.proactive === proactive);
      if (!row) rows.push((row = { pattern, path, bytes, proactive, samples: [] }));
      return row;
    };
    for (const bytes of o.sizes) {
      const reps = bytes >= LARGE_BYTES ? o.largeReps : o.reps;
      for (let rep = 1; rep <= reps; rep++) {
        for (const pattern of o.patterns.filter((p) => bytes < LARGE_BYTES || o.largePatterns.includes(p))) {
          for (const { path, proactive } of planPaths(o, pattern, bytes).filter((x) => measurable(x.path))) {
            const label = `[workflows ${size(bytes)} rep ${rep}/${reps}] ${pattern} ${path}${proactive ? '' : ' (on demand)'}`;
            const sample = await throughputCase(env, shapeOf(pattern), path, bytes, proactive).catch(
              (err: Error): CaseSample => ({ e2e_ms: 0, ttfb_ms: 0, MBps: 0, delivered: 0, disk_bytes: null, daemon_rss_mb: null, relayed: 0, channels: 0, verified: false, error: err.message }),
            );
            rowOf(pattern, path, bytes, proactive).samples.push(sample);
            progress(
              `${label}: ` +
                (sample.error
                  ? `FAILED: ${sample.error.split('\n')[0]}`
                  : `e2e ${fmt(sample.e2e_ms, 1)} ms, ttfb ${fmt(sample.ttfb_ms, 2)} ms, ${fmt(sample.MBps)} MB/s, disk ${sample.disk_bytes === null ? 'n/a' : fmt(sample.disk_bytes / 1e6, 1) + ' MB'}` +
                    (sample.daemon_rss_mb ? `, ${path === 's3' ? 's3rver' : 'daemon'} peak ${sample.daemon_rss_mb} MB` : '')),
            );
          }
        }
      }
    }
    const cases = rows.map(caseOf);
    const speedups = speedupsOf(rows);
    const rawC: Baseline[] = [];
    if (o.patterns.includes('chain5')) {
      for (const bytes of o.sizes) {
        progress(`[workflows ${size(bytes)}] raw-chain5-c: Python writer → 4 × cat → Python reader, ${RAW_CHAIN_C_REPS} runs ...`);
        const b = await rawChainC(bytes);
        rawC.push(b);
        progress(`[workflows ${size(bytes)}] raw-chain5-c: ${b.verified ? `median ${fmt(b.e2e_ms ?? 0, 1)} ms, ${fmt(b.MBps ?? 0)} MB/s` : `FAILED: ${b.errors?.[0]}`}`);
      }
    }
    const baselines: Baseline[] = rows
      .filter((r) => r.path === 'raw-fifo' && r.pattern === 'chain5' && r.bytes === Math.max(...o.sizes))
      .map((r) => {
        const c = caseOf(r);
        return { name: 'raw-chain5', MBps: c.MBps, MBps_runs: c.MBps_runs ?? [], bytes: r.bytes, e2e_ms: c.e2e_ms, ttfb_ms: c.ttfb_ms, verified: c.verified, ...(c.errors && { errors: c.errors }) } as Baseline;
      })
      .concat(rawC);

    if (o.latency) {
      const { warmup, count, s3Count } = o.latency;
      for (const path of o.paths) {
        if (path === 'file' || !measurable(path)) continue;
        const n = path === 's3' ? s3Count : count;
        progress(`[workflows latency] chain5 ${path}: ${n} records of 1 KiB, one at a time ...`);
        const m = await messagesCase(env, path, 5, 'latency', RECORD_BYTES, path === 's3' ? 3 : warmup, n).catch((err: Error) => ({ delaysNs: [], verified: false, error: err.message }));
        const pct = percentilesUs(m.delaysNs);
        progress(`[workflows latency] chain5 ${path}: ${m.error ? `FAILED: ${m.error}` : `per hop p50/p90/p99 ${pct?.p50}/${pct?.p90}/${pct?.p99} µs`}`);
        const shape = shapeOf('chain5');
        cases.push({
          ...shape,
          path,
          placement: path === 'ws' ? 'cross-node' : 'same-node',
          bytes: RECORD_BYTES,
          records: n,
          e2e_ms: null,
          ttfb_ms: null,
          MBps: null,
          hop_us: pct,
          disk_bytes: 0,
          daemon_rss_mb: 0,
          proactive: true,
          verified: m.verified,
          ...(m.error && { errors: [m.error] }),
        });
      }
    }

    const knix: KnixRow[] = [];
    for (const k of o.knix ?? []) {
      for (const path of o.paths.filter((p) => p === 'fifo' || p === 'unix' || p === 's3')) {
        const n = path === 's3' ? k.s3Count : k.count;
        progress(`[knix] ${size(k.bytes)} CloudEvents through 5 steps on ${path}: ${n} events ...`);
        const m = await messagesCase(env, path, 5, 'events', k.bytes, 1, n).catch((err: Error) => ({ delaysNs: [], verified: false, error: err.message }));
        const pct = percentilesUs(m.delaysNs);
        const ms = (x: number | undefined): number | null => (x === undefined ? null : Number((x / 1e3).toFixed(3)));
        knix.push({ bytes: k.bytes, path, events: n, hop_ms: { p50: ms(pct?.p50), p90: ms(pct?.p90), p99: ms(pct?.p99) }, verified: m.verified, ...(m.error && { errors: [m.error] }) });
        progress(`[knix] ${size(k.bytes)} ${path}: ${m.error ? `FAILED: ${m.error}` : `median per hop ${ms(pct?.p50)} ms`}`);
      }
    }
    const sizesRun = o.sizes;
    return {
      cases,
      baselines,
      speedups,
      knix,
      info: {
        sizes: sizesRun,
        reps: sizesRun.map((b) => (b >= LARGE_BYTES ? o.largeReps : o.reps)),
        s3: o.s3Endpoint ? `${o.s3Endpoint} (bucket ${o.s3Bucket})` : 's3rver in its own process on loopback, storing on this machine\'s disk',
        note: 'every step a process; direct paths stream through all hops at once; S3: each step uploads its whole output (multipart, 8 MiB parts, 4 in flight; a broadcast\'s producer one object that its 4 consumers all download), the next starts downloading once the upload is complete (ranged GETs, 8 MiB, 4 in flight, in order) and streams its download into its own upload',
        ...(o.paths.includes('ws') && {
          cross_node: crossNodeSkipped
            ? `ws not measured: ${crossNodeSkipped}`
            : 'ws: two nodes as network namespaces joined by veth links and a bridge, a Sluice daemon on each, peered; a chain alternates its steps between the nodes, the other patterns put producers on n0 and consumers on n1, so every edge crosses the peer link',
        }),
      },
    };
  } finally {
    await nodes?.stop().catch((err: Error) => progress(`[workflows] ws: ${err.message}`));
    await daemon?.stop();
    await server?.stop();
  }
}

function caseOf(r: Row): Case {
  const shape = shapeOf(r.pattern);
  const ok = r.samples.filter((s) => !s.error);
  const med = (f: (s: CaseSample) => number | null): number | null => median(ok.flatMap((s) => (f(s) === null ? [] : [f(s)!])));
  const disk = med((s) => s.disk_bytes);
  const errors = r.samples.flatMap((s) => (s.error ? [s.error] : []));
  return {
    ...shape,
    path: r.path,
    placement: r.path === 'ws' ? 'cross-node' : 'same-node',
    bytes: r.bytes,
    e2e_ms: r1(med((s) => s.e2e_ms), 2),
    ttfb_ms: r1(med((s) => s.ttfb_ms), 3),
    MBps: r1(med((s) => s.MBps)),
    MBps_runs: r.samples.map((s) => (s.error ? null : r1(s.MBps))),
    e2e_ms_runs: r.samples.map((s) => (s.error ? null : r1(s.e2e_ms, 2))),
    ttfb_ms_runs: r.samples.map((s) => (s.error ? null : r1(s.ttfb_ms, 3))),
    hop_us: null,
    disk_bytes: disk === null ? 0 : Math.round(disk),
    daemon_rss_mb: ok.length > 0 ? Math.max(...ok.map((s) => s.daemon_rss_mb ?? 0)) : 0,
    proactive: r.proactive,
    delivered_bytes: ok[0]?.delivered ?? 0,
    ...(ok[0] && ok[0].channels > 0 && { relayed_channels: `${ok[0].relayed}/${ok[0].channels}` }),
    verified: r.samples.length > 0 && r.samples.every((s) => s.verified && !s.error),
    ...(errors.length > 0 && { errors }),
  };
}

/** S3 e2e / each path's e2e, and each path's MB/s / raw-fifo's, paired per repetition. */
function speedupsOf(rows: Row[]): Speedup[] {
  const out: Speedup[] = [];
  for (const r of rows) {
    const same = (path: WfPath): Row | undefined => rows.find((x) => x.pattern === r.pattern && x.bytes === r.bytes && x.path === path && x.proactive);
    const pair = (other: Row | undefined, f: (mine: CaseSample, theirs: CaseSample) => number): Array<number | null> =>
      r.samples.map((s, i) => {
        const t = other?.samples[i];
        return !t || s.error || t.error ? null : Number(f(s, t).toFixed(3));
      });
    const shape = shapeOf(r.pattern);
    const push = (over: Speedup['over'], runs: Array<number | null>): void => {
      const value = median(runs.filter((x): x is number => x !== null));
      out.push({ ...shape, bytes: r.bytes, path: r.path, over, proactive: r.proactive, value: value === null ? null : Number(value.toFixed(2)), runs });
    };
    if (r.path !== 's3') push('s3', pair(same('s3'), (mine, s3) => s3.e2e_ms / mine.e2e_ms));
    // raw-fifo is the same-node limit: no measure of a cross-node path
    if (r.path !== 'raw-fifo' && r.path !== 's3' && r.path !== 'ws') push('raw-fifo', pair(same('raw-fifo'), (mine, raw) => mine.MBps / raw.MBps));
  }
  return out;
}

/** Sizes for the modes. */
export const WF_SIZES = {
  smoke: [1 * MiB, 16 * MiB],
  quick: [1 * MiB, 32 * MiB, 1 * GiB],
  full: [1 * MiB, 32 * MiB, 1 * GiB, 4 * GiB, 16 * GiB],
} as const;

export const KNIX_EVENTS = {
  smoke: [
    { bytes: 1 * KiB, count: 50, s3Count: 5 },
    { bytes: 1 * MiB, count: 5, s3Count: 2 },
  ],
  quick: [
    { bytes: 1 * KiB, count: 300, s3Count: 30 },
    { bytes: 64 * KiB, count: 100, s3Count: 20 },
    { bytes: 1 * MiB, count: 30, s3Count: 10 },
    { bytes: 10 * MiB, count: 8, s3Count: 4 },
    { bytes: 40 * MiB, count: 4, s3Count: 3 },
  ],
};
