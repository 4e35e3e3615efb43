/**
 * The benchmark orchestrator: `npm run bench -- [--quick | --full | --smoke] [--reps N] [--rounds N] [--only a,b]`.
 *
 * On a small noisy machine absolute figures mean little, so every run measures the raw baselines
 * too, interleaved with Sluice's paths: throughput in repetitions, latency in shorter rounds. A
 * raw baseline and its framed path run back to back within each repetition or round, and the
 * headline ratio is the median of those paired ratios, which cancels most of the machine's drift.
 *
 * Then the cross-node section does the same between two network namespaces on a veth bridge
 * (harness/netns.ts): plain TCP, plain relays, and Sluice's daemons with their peer link.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createCluster, namespacesAvailable, type Cluster, type NetnsNode } from '../harness/netns.js';
import { GiB, KiB, MiB, RECORD_BYTES } from './data.js';
import { Daemons, killDaemons } from './daemons.js';
import { StoreDaemon } from './stores.js';
import type { ConsumerResult, CpuMs, LatencyResult, MemcpyResult, ProducerResult, RunRef, Subject, WfPath } from './protocol.js';
import { computeRatios, median, renderMarkdown, size, type Baseline, type Case, type Percentiles, type Report } from './report.js';
import { killWorkers, setWorkerExecArgv, withWorkers, type StartWorker } from './workers.js';
import { KNIX_EVENTS, WF_SIZES, workflowSection, type WfOptions, type WfResults } from './wfsection.js';
import { PATTERNS, WF_PATHS } from './workflows.js';
import { killS3Servers } from './s3.js';
import { runtimeBase } from './proc.js';
import { renderWorkflowMarkdown, writeReport } from './summary.js';
import { balanceSection, type BalanceResults } from './balance.js';

const SAME_NODE = ['raw-unix', 'unix', 'raw-fifo', 'fifo', 'raw-tcp', 'memcpy'] as const;
/** Measured between two network namespaces; run order within a repetition or round. */
const CROSS_NODE = ['raw-tcp-veth', 'raw-relay-veth', 'ws'] as const;
/** Through an object store on this node (an edge `via: s3`): the embedded directory store, and S3 (s3rver). */
const STORES = ['file', 's3'] as const;
const NAMES = [...SAME_NODE, ...CROSS_NODE, ...STORES] as const;
type Name = (typeof NAMES)[number];
type CrossNodeName = (typeof CROSS_NODE)[number];
type StoreName = (typeof STORES)[number];
const isCrossNode = (name: Name): name is CrossNodeName => (CROSS_NODE as readonly string[]).includes(name);
const isStore = (name: Name): name is StoreName => (STORES as readonly string[]).includes(name);
/** Store subjects are slow and not compared pairwise with a baseline: fewer repetitions. */
const STORE_REPS = 1;
/** Subjects whose 1 KiB one-way latency is measured too. */
const WITH_LATENCY: ReadonlySet<Name> = new Set(['raw-unix', 'unix', 'raw-fifo', 'fifo', ...CROSS_NODE]);

const QUICK_REPS = 2;
const QUICK_ROUNDS = 5;
const SECTIONS = ['transport', 'cross-node', 'store', 'workflows', 'latency', 'knix', 'balance'] as const;
type Section = (typeof SECTIONS)[number];

const USAGE = `Usage: npm run bench -- [options]

Sections, in this order (--sections picks some):
  transport   Sluice's framed transports against raw baselines on this machine, interleaved over
              throughput repetitions and latency rounds
  cross-node  the same between two network namespaces (skipped, with the reason, where
              namespaces are not allowed)
  store       one channel through a daemon whose edge says via: s3 (directory store; s3rver)
  workflows   the object-store comparison: patterns x paths x sizes, every step a process
  latency     1 KiB records, one at a time, through a 5-hop chain on each path: per-hop p50/p90/p99
  knix        CloudEvent JSON documents (1 KiB .. 40 MiB) through a 5-step chain, median per hop,
              beside KNIX workflowmesh's published figures
  balance     routing across consumer replicas (fanout: balance) on two namespace nodes pinned
              to a CPU each: local-first, always-local, least-loaded unloaded and saturated
              (64 MiB runs into a CPU-heavy consumer), affinity's max/mean load (under 90 s)
Writes bench/results/latest.{json,md}, a timestamped JSON copy, REPORT.md and SVG charts.

  --quick          default. transport: 1 GiB, QUICK_REPS repetitions, QUICK_ROUNDS latency rounds
                   of 5,000 + 1,000 warm-up records; store: 1 repetition; workflows: sizes
                   1 MiB, 32 MiB, 1 GiB (gather and shuffle up to 32 MiB unless --patterns names
                   them), 1 repetition (about 10 minutes on 2 cores)
  --full           transport: 15 repetitions, 31 rounds; workflows: up to 16 GiB
                   (1 MiB, 32 MiB, 1 GiB, 4 GiB, 16 GiB), 3 repetitions below 512 MiB
  --smoke          fast self-check: 64 MiB, 1 repetition, 2 short latency rounds; workflows
                   1 MiB and 16 MiB; writes no results
  --sections LIST  comma-separated subset of: ${SECTIONS.join(', ')} (default: all)
  --reps N         transport throughput repetitions (overrides the mode's)
  --rounds N       transport latency rounds (overrides the mode's)
  --only LIST      transport subjects, a subset of: ${SAME_NODE.join(', ')},
                   cross-node: ${CROSS_NODE.join(', ')}, and stores: ${STORES.join(', ')}
  --no-cross-node  leave out the cross-node subjects (and the workflows' ws path)
  --sizes LIST     workflow sizes, e.g. 1MiB,32MiB,1GiB (units B, KiB, MiB, GiB)
  --patterns LIST  workflow patterns, a subset of: ${PATTERNS.join(', ')} (default: all)
  --paths LIST     workflow paths, a subset of: ${WF_PATHS.join(', ')} (default: all;
                   relay and file run on chains only, file on chain5 up to 256 MiB; ws runs the
                   steps on two network-namespace nodes, skipped with the reason where those
                   cannot be made)
  --wf-reps N      workflow repetitions below 512 MiB (quick 1, full 3, smoke 1)
  --wf-large-reps N  workflow repetitions from 512 MiB on (default 1)
  --no-on-demand   leave out the proactive: false rows (fifo chains, run created when the source starts)
  --s3-endpoint URL  compare against this S3 instead of s3rver (e.g. a Ceph RGW from
                   ../shared/tools/ceph-rgw-up.sh: http://127.0.0.1:7480); credentials from
                   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; its disk bytes are not measured
  --s3-bucket NAME the bucket (created if missing; default sluice-bench)
  --cpu-prof DIR   run the workers under --cpu-prof, profiles in DIR
  -h, --help       this text
`
  .replace('QUICK_REPS', String(QUICK_REPS))
  .replace('QUICK_ROUNDS', String(QUICK_ROUNDS));

interface Options {
  mode: 'quick' | 'full' | 'smoke';
  sections: Section[];
  wf: WfOptions;
  /** throughput repetitions */
  reps: number;
  /** latency rounds; warmup + count records per subject in each */
  rounds: number;
  bytes: number;
  warmup: number;
  count: number;
  only: Name[];
  workerExecArgv: string[];
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      help: { type: 'boolean', short: 'h' },
      quick: { type: 'boolean' },
      full: { type: 'boolean' },
      smoke: { type: 'boolean' },
      reps: { type: 'string' },
      rounds: { type: 'string' },
      only: { type: 'string' },
      'no-cross-node': { type: 'boolean' },
      'cpu-prof': { type: 'string' },
      sections: { type: 'string' },
      sizes: { type: 'string' },
      patterns: { type: 'string' },
      paths: { type: 'string' },
      'wf-reps': { type: 'string' },
      'wf-large-reps': { type: 'string' },
      'no-on-demand': { type: 'boolean' },
      's3-endpoint': { type: 'string' },
      's3-bucket': { type: 'string' },
    },
  });
  if (values.help) return undefined;
  const modes = (['quick', 'full', 'smoke'] as const).filter((m) => values[m]);
  if (modes.length > 1) throw new Error(`choose one of --quick, --full, --smoke (got ${modes.map((m) => '--' + m).join(' ')})`);
  const mode = modes[0] ?? 'quick';
  const reps = values.reps === undefined ? { quick: QUICK_REPS, full: 15, smoke: 1 }[mode] : Number(values.reps);
  if (!Number.isInteger(reps) || reps < 1) throw new Error(`--reps must be a positive integer, got ${values.reps}`);
  const rounds = values.rounds === undefined ? { quick: QUICK_ROUNDS, full: 31, smoke: 2 }[mode] : Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds must be a positive integer, got ${values.rounds}`);
  const requested = values.only === undefined ? [...NAMES] : values.only.split(',').map((s) => s.trim());
  const unknown = requested.filter((n) => !(NAMES as readonly string[]).includes(n));
  if (unknown.length > 0) throw new Error(`--only: unknown ${unknown.join(', ')}; choose from ${NAMES.join(', ')}`);
  const crossNode = (n: string): boolean => (CROSS_NODE as readonly string[]).includes(n);
  if (values['no-cross-node'] && values.only !== undefined && requested.some(crossNode)) {
    throw new Error(`--no-cross-node leaves out ${requested.filter(crossNode).join(', ')}, which --only asks for`);
  }
  const only = values['no-cross-node'] ? requested.filter((n) => !crossNode(n)) : requested;
  const cpuProf = values['cpu-prof'];
  const list = <T extends string>(flag: string, given: string | undefined, allowed: readonly T[]): T[] => {
    if (given === undefined) return [...allowed];
    const items = given.split(',').map((x) => x.trim());
    const bad = items.filter((x) => !(allowed as readonly string[]).includes(x));
    if (bad.length > 0) throw new Error(`${flag}: unknown ${bad.join(', ')}; choose from ${allowed.join(', ')}`);
    return allowed.filter((a) => items.includes(a));
  };
  const count = (flag: string, given: string | undefined, fallback: number): number => {
    if (given === undefined) return fallback;
    const n = Number(given);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} must be a positive integer, got ${given}`);
    return n;
  };
  const wfPaths = (given: string | undefined, noCrossNode: boolean): WfPath[] => {
    const paths = list('--paths', given, WF_PATHS);
    if (noCrossNode && given !== undefined && paths.includes('ws')) throw new Error('--no-cross-node leaves out ws, which --paths asks for');
    return noCrossNode ? paths.filter((p) => p !== 'ws') : paths;
  };
  const sizes = values.sizes === undefined ? [...WF_SIZES[mode]] : values.sizes.split(',').map((x) => parseSize(x.trim()));
  if (values['s3-endpoint'] !== undefined && !/^https?:\/\/[^/]+/.test(values['s3-endpoint'])) throw new Error(`--s3-endpoint must be an http(s) URL, got ${values['s3-endpoint']}`);
  const wf: WfOptions = {
    sizes,
    reps: count('--wf-reps', values['wf-reps'], { quick: 1, full: 3, smoke: 1 }[mode]),
    largeReps: count('--wf-large-reps', values['wf-large-reps'], 1),
    patterns: list('--patterns', values.patterns, PATTERNS),
    // quick: gather and shuffle stop at 32 MiB (their 1 GiB S3 rows alone took a minute); --patterns names them at every size
    largePatterns: mode === 'quick' && values.patterns === undefined ? ['chain1', 'chain5', 'broadcast4'] : list('--patterns', values.patterns, PATTERNS),
    // quick: ws at 1 GiB on the single hop only (its 5-hop and broadcast rows there take half a minute each)
    wsLargePatterns: mode === 'quick' && values.patterns === undefined ? ['chain1'] : list('--patterns', values.patterns, PATTERNS),
    paths: wfPaths(values.paths, Boolean(values['no-cross-node'])),
    latency: mode === 'smoke' ? { warmup: 50, count: 300, s3Count: 10 } : { warmup: 200, count: 2000, s3Count: 40 },
    knix: mode === 'smoke' ? KNIX_EVENTS.smoke : KNIX_EVENTS.quick,
    s3Bucket: values['s3-bucket'] ?? 'sluice-bench',
    onDemand: !values['no-on-demand'],
    ...(values['s3-endpoint'] !== undefined && { s3Endpoint: values['s3-endpoint'] }),
  };
  return {
    mode,
    sections: list('--sections', values.sections, SECTIONS),
    wf,
    reps,
    rounds,
    bytes: mode === 'smoke' ? 64 * MiB : GiB,
    warmup: mode === 'smoke' ? 200 : 1_000,
    count: mode === 'smoke' ? 1_000 : 5_000,
    only: NAMES.filter((n) => only.includes(n)),
    workerExecArgv: cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(cpuProf)}`] : [],
  };
}

/** "1MiB", "512KiB", "16GiB", "4096" (bytes) */
function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB)?$/i.exec(text);
  const unit = { b: 1, kib: KiB, mib: MiB, gib: GiB }[(m?.[2] ?? 'b').toLowerCase() as 'b'];
  const bytes = m ? Math.round(Number(m[1]) * unit) : NaN;
  if (!Number.isInteger(bytes) || bytes < KiB || bytes % 16 !== 0) throw new Error(`--sizes: ${JSON.stringify(text)} is not a size of at least 1 KiB and a multiple of 16 bytes (e.g. 1MiB, 32MiB, 1GiB)`);
  return bytes;
}

const RESULTS_DIR = fileURLToPath(new URL('../../bench/results/', import.meta.url));

// ---- single runs ----

/** Scratch space on the disk: the stores' data (directory store, s3rver). */
let tmpDir = '';
/** The nodes' runtime directory (tmpfs where there is one, see runtimeBase): daemons' directories and endpoints. */
let runtimeDir = '';
let endpointSeq = 0;
/** A fresh socket or FIFO path in the runtime directory (visible from every namespace). */
const pathFor = (what: string): string => path.join(runtimeDir, `${what}-${++endpointSeq}`);

/** Where a run's processes go and how they reach each other. */
interface Topology {
  /** for worker labels */
  name: string;
  subject: Subject;
  /** what the consumer serves */
  endpoint: string;
  run?: RunRef;
  consumerNode?: NetnsNode;
  producerNode?: NetnsNode;
  /**
   * What the producer dials, given what the consumer serves; by default, that. May start the
   * processes in between (relays), with `start`.
   */
  producerEndpoint?: (start: StartWorker, served: string) => Promise<string>;
}

const sameNode = (subject: Exclude<Subject, 'ws'>): Topology => ({ name: subject, subject, endpoint: subject === 'raw-tcp' ? '127.0.0.1:0' : pathFor(subject) });

interface ThroughputSample {
  MBps: number;
  e2e_ms: number;
  ttfb_ms: number;
  /** CPU time (user + system) of each side during the transfer: shows which side is the bottleneck */
  cpu_ms?: { consumer: CpuMs; producer: CpuMs };
  /** bytes the run left on disk (store subjects; 0 elsewhere) */
  disk_bytes?: number;
  /** the daemon's peak resident memory so far, MB (store subjects) */
  daemon_rss_mb?: number;
  verified: boolean;
  error?: string;
}

interface LatencySample {
  p50: number;
  p90: number;
  p99: number;
  max: number;
  verified: boolean;
  error?: string;
}

async function throughputRun(t: Topology, bytes: number): Promise<ThroughputSample> {
  return withWorkers(async (start) => {
    const common = { subject: t.subject, run: t.run, bytes };
    const consumer = start({ role: 'consumer', endpoint: t.endpoint, ...common }, `${t.name} consumer`, t.consumerNode);
    const { endpoint: served } = (await consumer.message('ready')) as { endpoint: string };
    const endpoint = t.producerEndpoint ? await t.producerEndpoint(start, served) : served;
    const producer = start({ role: 'producer', endpoint, ...common }, `${t.name} producer`, t.producerNode);
    const [c, p] = (await Promise.all([consumer.message('result'), producer.message('result')])) as [ConsumerResult, ProducerResult];
    const seconds = (c.lastByteNs - p.startNs) / 1e9;
    const sample: ThroughputSample = {
      MBps: bytes / 1e6 / seconds,
      e2e_ms: seconds * 1e3,
      ttfb_ms: (c.firstByteNs - p.startNs) / 1e6,
      cpu_ms: { consumer: c.cpu, producer: p.cpu },
      verified: c.verified,
    };
    if (!c.verified) sample.error = `received ${c.received} of ${bytes} bytes` + (c.mismatchAt === undefined ? '' : `, first mismatch at byte ${c.mismatchAt}`);
    return sample;
  });
}

async function latencyRun(t: Topology, warmup: number, count: number): Promise<LatencySample> {
  return withWorkers(async (start) => {
    // a plain Unix socket for every subject: its path reaches across namespaces
    const common = { subject: t.subject, run: t.run, pongPath: pathFor('pong'), warmup, count };
    const consumer = start({ role: 'lat-consumer', endpoint: t.endpoint, ...common }, `${t.name} latency consumer`, t.consumerNode);
    const { endpoint: served } = (await consumer.message('ready')) as { endpoint: string };
    const endpoint = t.producerEndpoint ? await t.producerEndpoint(start, served) : served;
    const producer = start({ role: 'lat-producer', endpoint, ...common }, `${t.name} latency producer`, t.producerNode);
    const [c] = (await Promise.all([consumer.message('result'), producer.message('result')])) as [LatencyResult, ProducerResult];
    const us = (ns: number): number => ns / 1e3;
    const sample: LatencySample = { p50: us(c.p50), p90: us(c.p90), p99: us(c.p99), max: us(c.max), verified: c.verified };
    if (!c.verified) sample.error = `latency records did not verify (${c.records} measured of ${count})`;
    return sample;
  });
}

async function memcpyRun(bytes: number): Promise<ThroughputSample> {
  return withWorkers(async (start) => {
    const w = start({ role: 'memcpy', bytes }, 'memcpy');
    const { ns } = (await w.message('result')) as MemcpyResult;
    return { MBps: bytes / 1e6 / (ns / 1e9), e2e_ms: ns / 1e6, ttfb_ms: 0, verified: true };
  });
}

// ---- cross-node ----

/** The two nodes, and the daemons on them when `ws` is measured (or why they did not start). */
interface CrossNode {
  nodes: readonly [NetnsNode, NetnsNode];
  daemons?: Daemons | { error: string };
}

/** The producer runs on n0 and the consumer on n1. */
function rawCrossTopology(x: CrossNode, name: Exclude<CrossNodeName, 'ws'>): Topology {
  const [n0, n1] = x.nodes;
  const placed = { name, producerNode: n0, consumerNode: n1 };
  if (name === 'raw-tcp-veth') return { ...placed, subject: 'raw-tcp', endpoint: `${n1.address}:0` };
  return {
    ...placed,
    subject: 'raw-unix',
    endpoint: pathFor(name),
    // producer → Unix socket → relay on n0 → TCP over the veth → relay on n1 → Unix socket → consumer
    producerEndpoint: async (start, served) => {
      const far = start({ role: 'relay', listen: `${n1.address}:0`, target: served }, `${name} relay on n1`, n1);
      const { endpoint: farEnd } = (await far.message('ready')) as { endpoint: string };
      const near = start({ role: 'relay', listen: pathFor(`${name}-relay`), target: farEnd }, `${name} relay on n0`, n0);
      return ((await near.message('ready')) as { endpoint: string }).endpoint;
    },
  };
}

/** Measure `name` across the nodes; `ws` on a fresh run of the daemons, deleted afterwards. */
async function onCrossNode<T>(x: CrossNode, name: CrossNodeName, measure: (t: Topology) => Promise<T>): Promise<T> {
  if (name !== 'ws') return measure(rawCrossTopology(x, name));
  const daemons = x.daemons;
  if (!(daemons instanceof Daemons)) throw new Error(`the Sluice daemons are not running: ${daemons?.error ?? 'not started'}`);
  const [n0, n1] = x.nodes;
  const run = await daemons.createRun();
  let result: T;
  try {
    result = await measure({ name, subject: 'ws', run, endpoint: daemons.dir(1), consumerNode: n1, producerNode: n0, producerEndpoint: async () => daemons.dir(0) });
  } catch (err) {
    // the measurement's failure is the one to report; the daemons are stopped at the end anyway
    await daemons.deleteRun(run.id).catch(() => undefined);
    throw err;
  }
  await daemons.deleteRun(run.id);
  return result;
}

// ---- aggregation ----

const round = (x: number | null, digits = 1): number | null => (x === null ? null : Number(x.toFixed(digits)));

function summarizeThroughput(samples: ThroughputSample[]) {
  const ok = samples.filter((s) => !s.error);
  const cpu = (side: 'consumer' | 'producer', kind: keyof CpuMs): number | null => round(median(ok.flatMap((s) => (s.cpu_ms ? [s.cpu_ms[side][kind]] : []))), 0);
  return {
    MBps: round(median(ok.map((s) => s.MBps))),
    MBps_runs: samples.map((s) => (s.error ? null : round(s.MBps))),
    e2e_ms: round(median(ok.map((s) => s.e2e_ms))),
    ttfb_ms: round(median(ok.map((s) => s.ttfb_ms)), 3),
    cpu_ms: ok.some((s) => s.cpu_ms)
      ? { consumer: { user: cpu('consumer', 'user'), system: cpu('consumer', 'system') }, producer: { user: cpu('producer', 'user'), system: cpu('producer', 'system') } }
      : undefined,
    disk_bytes: round(median(ok.map((s) => s.disk_bytes ?? 0)), 0) ?? 0,
    daemon_rss_mb: ok.length > 0 ? Math.max(...ok.map((s) => s.daemon_rss_mb ?? 0)) : 0,
    verified: samples.length > 0 && samples.every((s) => s.verified && !s.error),
    errors: samples.flatMap((s) => (s.error ? [s.error] : [])),
  };
}

/** One sample per round: each percentile is the median over rounds of that round's percentile. */
function summarizeLatency(samples: LatencySample[]) {
  const ok = samples.filter((s) => !s.error);
  const pct = (key: 'p50' | 'p90' | 'p99'): number | null => round(median(ok.map((s) => s[key])));
  // two decimals per round: the paired ratios are computed from these
  const perRound = (s: LatencySample): Percentiles | null => (s.error ? null : { p50: round(s.p50, 2), p90: round(s.p90, 2), p99: round(s.p99, 2) });
  return {
    hop_us: { p50: pct('p50'), p90: pct('p90'), p99: pct('p99') },
    hop_us_max: ok.length > 0 ? round(Math.max(...ok.map((s) => s.max))) : null,
    hop_us_p50_runs: samples.map((s) => perRound(s)?.p50 ?? null),
    hop_us_rounds: samples.map(perRound),
    verified: samples.length > 0 && samples.every((s) => s.verified && !s.error),
    errors: samples.flatMap((s) => (s.error ? [s.error] : [])),
  };
}

interface Samples {
  throughput: Map<Name, ThroughputSample[]>;
  latency: Map<Name, LatencySample[]>;
}

type CrossNodeNote = NonNullable<Report['machine']['cross_node']>;

/** The report on the subjects in `names` (those measured, in order). */
function buildReport(options: Options, started: Date, names: readonly Name[], samples: Samples, crossNode: CrossNodeNote | undefined): Report {
  const baselines: Baseline[] = [];
  const cases: Case[] = [];
  for (const name of names) {
    const t = summarizeThroughput(samples.throughput.get(name) ?? []);
    const l = WITH_LATENCY.has(name) ? summarizeLatency(samples.latency.get(name) ?? []) : undefined;
    if (name.startsWith('raw-') || name === 'memcpy') {
      const baseline: Baseline = { name, MBps: t.MBps, MBps_runs: t.MBps_runs, bytes: options.bytes, verified: t.verified };
      if (name !== 'memcpy') Object.assign(baseline, { e2e_ms: t.e2e_ms, ttfb_ms: t.ttfb_ms, cpu_ms: t.cpu_ms });
      if (l) {
        Object.assign(baseline, {
          hop_us_p50: l.hop_us.p50,
          hop_us_p90: l.hop_us.p90,
          hop_us_p99: l.hop_us.p99,
          hop_us_p50_runs: l.hop_us_p50_runs,
          hop_us_rounds: l.hop_us_rounds,
        });
        baseline.verified &&= l.verified;
      }
      const errors = [...t.errors, ...(l?.errors ?? [])];
      if (errors.length > 0) baseline.errors = errors;
      baselines.push(baseline);
      continue;
    }
    const placement = isCrossNode(name) ? 'cross-node' : 'same-node';
    const common = { pattern: 'transport', hops: 1, fanout: 1, path: name, placement, disk_bytes: t.disk_bytes, daemon_rss_mb: t.daemon_rss_mb, proactive: true } as const;
    cases.push({
      ...common,
      bytes: options.bytes,
      e2e_ms: t.e2e_ms,
      ttfb_ms: t.ttfb_ms,
      MBps: t.MBps,
      MBps_runs: t.MBps_runs,
      cpu_ms: t.cpu_ms,
      hop_us: null,
      verified: t.verified,
      ...(t.errors.length > 0 && { errors: t.errors }),
    });
    if (l) {
      cases.push({
        ...common,
        bytes: RECORD_BYTES,
        records: options.count,
        rounds: options.rounds,
        e2e_ms: null,
        ttfb_ms: null,
        MBps: null,
        hop_us: l.hop_us,
        hop_us_max: l.hop_us_max,
        hop_us_p50_runs: l.hop_us_p50_runs,
        hop_us_rounds: l.hop_us_rounds,
        verified: l.verified,
        ...(l.errors.length > 0 && { errors: l.errors }),
      });
    }
  }
  return {
    machine: {
      cpus: os.cpus().length,
      node: process.version,
      date: started.toISOString(),
      cpu_model: os.cpus()[0]?.model ?? 'unknown',
      kernel: os.release(),
      mode: options.mode,
      reps: options.reps,
      ...(names.some((n) => WITH_LATENCY.has(n)) && {
        latency_rounds: options.rounds,
        latency_records: options.count,
        latency_warmup: options.warmup,
      }),
      ...(crossNode && { cross_node: crossNode }),
    },
    baselines,
    cases,
    ratios: computeRatios({ baselines, cases }),
  };
}

// ---- main ----

const benchStart = Date.now();
/** A progress line on stderr, after the time since the bench started ([m:ss]). */
const progress = (line: string): void => {
  const s = Math.floor((Date.now() - benchStart) / 1000);
  process.stderr.write(`[${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}] ${line}\n`);
};
const fmt = (x: number, digits = 0): string => x.toFixed(digits);
const cpuNote = (cpu: ThroughputSample['cpu_ms']): string =>
  cpu ? `; cpu ms user+sys: consumer ${fmt(cpu.consumer.user)}+${fmt(cpu.consumer.system)}, producer ${fmt(cpu.producer.user)}+${fmt(cpu.producer.system)}` : '';

const failedThroughput = (err: unknown): ThroughputSample => ({ MBps: 0, e2e_ms: 0, ttfb_ms: 0, verified: false, error: (err as Error).message });
const failedLatency = (err: unknown): LatencySample => ({ p50: 0, p90: 0, p99: 0, max: 0, verified: false, error: (err as Error).message });

function record<S>(map: Map<Name, S[]>, name: Name, sample: S): void {
  map.set(name, [...(map.get(name) ?? []), sample]);
}

/**
 * The throughput repetitions of `names`, then their latency rounds: latency in shorter rounds
 * than the throughput repetitions, so that each raw baseline and its framed path are paired
 * closely in time: the drift between them within a round is small.
 */
async function measureAll<N extends Name>(
  options: Options,
  section: string,
  names: readonly N[],
  samples: Samples,
  runs: { throughput(name: N): Promise<ThroughputSample>; latency(name: N): Promise<LatencySample> },
): Promise<void> {
  for (let rep = 1; rep <= options.reps; rep++) {
    const tag = `[${section}rep ${rep}/${options.reps}]`;
    for (const name of names) {
      progress(`${tag} ${name}: throughput ...`);
      const t = await runs.throughput(name).catch(failedThroughput);
      record(samples.throughput, name, t);
      progress(`${tag} ${name}: ${t.error ? `FAILED: ${t.error}` : `${fmt(t.MBps)} MB/s, e2e ${fmt(t.e2e_ms)} ms, ttfb ${fmt(t.ttfb_ms, 2)} ms${cpuNote(t.cpu_ms)}`}`);
    }
  }
  const latencyNames = names.filter((n) => WITH_LATENCY.has(n));
  for (let r = 1; latencyNames.length > 0 && r <= options.rounds; r++) {
    const tag = `[${section}latency round ${r}/${options.rounds}]`;
    const line: string[] = [];
    for (const name of latencyNames) {
      const l = await runs.latency(name).catch(failedLatency);
      record(samples.latency, name, l);
      line.push(`${name} ${l.error ? `FAILED: ${l.error}` : `${fmt(l.p50, 1)}/${fmt(l.p90, 1)}/${fmt(l.p99, 1)}`}`);
    }
    progress(`${tag} hop µs p50/p90/p99: ${line.join(', ')}`);
  }
}

/**
 * Two nodes as network namespaces (and, for `ws`, a daemon on each) for the cross-node subjects;
 * removed at the end, and by the harness's exit hook on SIGINT or a crash. Returns whether and
 * how they were measured; where namespaces are not allowed, measures nothing.
 */
async function crossNodeSection(options: Options, names: readonly CrossNodeName[], samples: Samples): Promise<CrossNodeNote> {
  const available = await namespacesAvailable();
  if (!available.ok) {
    progress(`cross-node: skipped: ${available.why}`);
    return { measured: false, note: available.why };
  }
  let cluster: Cluster | undefined;
  let daemons: Daemons | undefined;
  try {
    try {
      cluster = await createCluster(2);
    } catch (err) {
      // namespaces work here, so this is a failure of the section, reported in its rows
      const message = `cannot create the nodes: ${(err as Error).message}`;
      progress(`cross-node: ${message}`);
      for (const name of names) {
        record(samples.throughput, name, failedThroughput(new Error(message)));
        if (WITH_LATENCY.has(name)) record(samples.latency, name, failedLatency(new Error(message)));
      }
      return { measured: false, note: message };
    }
    const nodes = [cluster.nodes[0]!, cluster.nodes[1]!] as const;
    const note = `producer on n0 (${nodes[0].address}), consumer on n1 (${nodes[1].address}): network namespaces joined by veth links and a bridge`;
    progress(`cross-node: ${note}`);
    const x: CrossNode = { nodes };
    if (names.includes('ws')) {
      progress('cross-node: starting a Sluice daemon on each node ...');
      try {
        x.daemons = daemons = await Daemons.start(nodes, runtimeDir);
      } catch (err) {
        x.daemons = { error: (err as Error).message };
        progress(`cross-node: the daemons did not start, so ws fails: ${(err as Error).message}`);
      }
    }
    await measureAll(options, 'cross-node ', names, samples, {
      throughput: (name) => onCrossNode(x, name, (t) => throughputRun(t, options.bytes)),
      latency: (name) => onCrossNode(x, name, (t) => latencyRun(t, options.warmup, options.count)),
    });
    return { measured: true, note };
  } finally {
    await daemons?.stop();
    await cluster?.destroy().catch((err: Error) => progress(`cross-node: ${err.message}`));
  }
}

/** The store subjects: a daemon per store kind on this node, a fresh run per repetition. */
async function storeSection(options: Options, names: readonly StoreName[], samples: Samples): Promise<void> {
  const reps = Math.min(options.reps, STORE_REPS);
  for (const name of names) {
    let daemon: StoreDaemon;
    try {
      progress(`[store] ${name}: starting a daemon with the ${name === 's3' ? 'S3 (s3rver)' : 'directory'} store ...`);
      daemon = await StoreDaemon.start(name, tmpDir, name, runtimeDir);
    } catch (err) {
      progress(`[store] ${name}: FAILED to start: ${(err as Error).message}`);
      record(samples.throughput, name, failedThroughput(err));
      continue;
    }
    try {
      for (let rep = 1; rep <= reps; rep++) {
        const tag = `[store rep ${rep}/${reps}]`;
        progress(`${tag} ${name}: throughput ...`);
        const t = await (async (): Promise<ThroughputSample> => {
          const run = await daemon.createRun();
          const sample = await throughputRun({ name, subject: name, run, endpoint: daemon.dir, producerEndpoint: async () => daemon.dir }, options.bytes);
          sample.disk_bytes = daemon.diskBytes(run.id);
          sample.daemon_rss_mb = daemon.peakRssMb();
          await daemon.deleteRun(run.id);
          return sample;
        })().catch(failedThroughput);
        record(samples.throughput, name, t);
        progress(`${tag} ${name}: ${t.error ? `FAILED: ${t.error}` : `${fmt(t.MBps)} MB/s, e2e ${fmt(t.e2e_ms)} ms, ttfb ${fmt(t.ttfb_ms, 2)} ms, disk ${fmt((t.disk_bytes ?? 0) / 1e6)} MB, daemon peak ${t.daemon_rss_mb} MB`}`);
      }
    } finally {
      await daemon.stop();
    }
  }
}

async function main(): Promise<number> {
  let options: Options | undefined;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (!options) {
    process.stdout.write(USAGE);
    return 0;
  }
  setWorkerExecArgv(options.workerExecArgv);
  const started = new Date();
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-'));
  const runtime = runtimeBase();
  runtimeDir = fs.mkdtempSync(path.join(runtime.dir, 'sluice-bench-run-'));
  if (!runtime.tmpfs) progress(`no writable tmpfs ($XDG_RUNTIME_DIR, /dev/shm): endpoints and daemon directories go to ${runtimeDir}, on disk; direct paths' disk bytes then include their directory updates (a few kB)`);

  const samples: Samples = { throughput: new Map(), latency: new Map() };
  const on = (section: Section): boolean => options.sections.includes(section);
  const sameNodeNames = on('transport') ? options.only.filter((n): n is (typeof SAME_NODE)[number] => !isCrossNode(n) && !isStore(n)) : [];
  const crossNodeNames = on('cross-node') ? options.only.filter(isCrossNode) : [];
  const storeNames = on('store') ? options.only.filter(isStore) : [];
  progress(
    `sluice bench: ${options.mode}; sections: ${options.sections.join(', ')}` +
      (sameNodeNames.length + crossNodeNames.length > 0 ? `; transport: ${options.reps} throughput rep(s) of ${size(options.bytes)}` : '') +
      (options.only.some((n) => WITH_LATENCY.has(n)) && sameNodeNames.length + crossNodeNames.length > 0
        ? `, ${options.rounds} latency round(s) of ${options.count} + ${options.warmup} warm-up ${RECORD_BYTES / KiB} KiB records per subject`
        : '') +
      (crossNodeNames.length > 0 ? `; cross-node: ${crossNodeNames.join(', ')}` : '') +
      (on('workflows') ? `; workflows: ${options.wf.patterns.join(', ')} over ${options.wf.paths.join(', ')} at ${options.wf.sizes.map(size).join(', ')}` : ''),
  );


  await measureAll(options, '', sameNodeNames, samples, {
    throughput: (name) => (name === 'memcpy' ? memcpyRun(options.bytes) : throughputRun(sameNode(name), options.bytes)),
    latency: (name) => (name === 'memcpy' ? Promise.reject(new Error('memcpy has no latency')) : latencyRun(sameNode(name), options.warmup, options.count)),
  });
  const crossNode = crossNodeNames.length > 0 ? await crossNodeSection(options, crossNodeNames, samples) : undefined;
  if (storeNames.length > 0) await storeSection(options, storeNames, samples);

  let wf: WfResults | undefined;
  if (on('workflows') || on('latency') || on('knix')) {
    const wfOptions: WfOptions = {
      ...options.wf,
      sizes: on('workflows') ? options.wf.sizes : [],
      latency: on('latency') ? options.wf.latency : undefined,
      knix: on('knix') ? options.wf.knix : undefined,
    };
    wf = await workflowSection(wfOptions, { tmpDir, runtimeDir }, pathFor, progress);
  }

  const balance: BalanceResults | undefined = on('balance') ? await balanceSection({ smoke: options.mode === 'smoke' }, tmpDir, progress) : undefined;

  const measured = [...sameNodeNames, ...crossNodeNames, ...storeNames].filter((n) => !isCrossNode(n) || samples.throughput.has(n));
  const report = buildReport(options, started, measured, samples, crossNode);
  if (wf) {
    report.baselines.push(...wf.baselines);
    report.cases.push(...wf.cases);
    report.speedups = wf.speedups;
    report.knix = wf.knix;
    report.workflows = wf.info;
  }
  if (balance) report.cases.push(...balance.cases);
  const command = `npm run bench -- ${process.argv.slice(2).join(' ')}`.trim();
  const markdown =
    renderMarkdown(report) +
    (wf ? '\n' + renderWorkflowMarkdown(report, command).replace(/^# .*\n/, '## Object-store comparison\n').replace(/^## /gm, (h, at: number) => (at === 0 ? h : '### ')) : '') +
    (balance ? '\n' + balance.markdown : '');
  process.stdout.write(markdown);
  if (options.mode === 'smoke') {
    progress('smoke run: results not written');
  } else {
    fs.mkdirSync(RESULTS_DIR, { recursive: true });
    const json = JSON.stringify(report, null, 2) + '\n';
    fs.writeFileSync(path.join(RESULTS_DIR, 'latest.json'), json);
    fs.writeFileSync(path.join(RESULTS_DIR, `${report.machine.date.replace(/[:.]/g, '-')}.json`), json);
    fs.writeFileSync(path.join(RESULTS_DIR, 'latest.md'), markdown);
    if (wf) writeReport(report, RESULTS_DIR, command);
    progress(`results: ${path.relative(process.cwd(), RESULTS_DIR) || '.'}/latest.{json,md}${wf ? ', REPORT.md and *.svg' : ''}`);
  }
  const unverified = [...report.baselines.map((b) => ({ name: b.name, verified: b.verified })), ...report.cases.map((c) => ({ name: `${c.path} ${size(c.bytes)}`, verified: c.verified }))].filter(
    (r) => !r.verified,
  );
  if (unverified.length > 0) progress(`NOT VERIFIED: ${unverified.map((r) => r.name).join(', ')}`);
  return unverified.length > 0 ? 1 : 0;
}

function cleanUp(): void {
  // the daemons first: they may still write into tmpDir
  killDaemons();
  killWorkers();
  killS3Servers();
  for (const dir of [tmpDir, runtimeDir]) if (dir) fs.rmSync(dir, { recursive: true, force: true });
}

process.on('exit', cleanUp);
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => process.exit(130));

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
