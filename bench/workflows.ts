/**
 * The object-store comparison: workflow patterns (chain of 1 and 5 hops, broadcast 1→4, gather
 * 4→1, shuffle 4→4) over Sluice's paths and over S3 as users do it today, each step a process
 * (steps.ts). Also the 1 KiB per-hop latency through a 5-hop chain and the KNIX-style run
 * (CloudEvents through a 5-step chain). The orchestration of one case, and its measurements.
 */
import { createHistogram } from 'node:perf_hooks';
import type { InputStat, RunRef, StepJob, StepResult, WfPath, WorkerMessage } from './protocol.js';
import { DAEMON_PATHS } from './protocol.js';
import fs from 'node:fs';
import { createCluster, type NetnsNode } from '../harness/netns.js';
import { Daemons } from './daemons.js';
import { peakRssMb, resetPeakRss, writeBytes } from './proc.js';
import { deleteObject, s3Client, type S3Server, type S3Target } from './s3.js';
import type { StoreDaemon } from './stores.js';
import { withWorkers, type Worker } from './workers.js';

export type Pattern = 'chain' | 'broadcast' | 'gather' | 'shuffle';
export const PATTERNS = ['chain1', 'chain5', 'broadcast4', 'gather4', 'shuffle4'] as const;
export type PatternName = (typeof PATTERNS)[number];
export const WF_PATHS: readonly WfPath[] = ['raw-fifo', 'fifo', 'relay', 'unix', 'file', 'ws', 's3'];

export interface Shape {
  pattern: Pattern;
  hops: number;
  fanout: number;
}

export function shapeOf(name: PatternName): Shape {
  switch (name) {
    case 'chain1':
      return { pattern: 'chain', hops: 1, fanout: 1 };
    case 'chain5':
      return { pattern: 'chain', hops: 5, fanout: 1 };
    case 'broadcast4':
      return { pattern: 'broadcast', hops: 1, fanout: 4 };
    case 'gather4':
      return { pattern: 'gather', hops: 1, fanout: 4 };
    case 'shuffle4':
      return { pattern: 'shuffle', hops: 1, fanout: 4 };
  }
}

interface StepNode {
  name: string;
  inputs: string[];
  outputs: string[];
}

/**
 * The steps and edges of a pattern. `bytes` is the data set's size: a chain's and a broadcast's
 * object; in a gather, the four inputs together; in a shuffle, the four producers' outputs
 * together, each cut in four (one part per consumer).
 */
function graphOf(shape: Shape): { steps: StepNode[]; perSource: (bytes: number) => number; split: boolean } {
  const node = (name: string): StepNode => ({ name, inputs: [], outputs: [] });
  const edge = (a: StepNode, b: StepNode): void => {
    a.outputs.push(b.name);
    b.inputs.push(a.name);
  };
  const n = shape.fanout;
  switch (shape.pattern) {
    case 'chain': {
      const steps = Array.from({ length: shape.hops + 1 }, (_, i) => node(`s${i}`));
      for (let i = 0; i < shape.hops; i++) edge(steps[i]!, steps[i + 1]!);
      return { steps, perSource: (b) => b, split: false };
    }
    case 'broadcast': {
      const p = node('p');
      const cs = Array.from({ length: n }, (_, i) => node(`c${i}`));
      for (const c of cs) edge(p, c);
      return { steps: [p, ...cs], perSource: (b) => b, split: false };
    }
    case 'gather': {
      const ps = Array.from({ length: n }, (_, i) => node(`p${i}`));
      const c = node('c');
      for (const p of ps) edge(p, c);
      return { steps: [...ps, c], perSource: (b) => b / n, split: false };
    }
    case 'shuffle': {
      const ms = Array.from({ length: n }, (_, i) => node(`m${i}`));
      const rs = Array.from({ length: n }, (_, i) => node(`r${i}`));
      for (const m of ms) for (const r of rs) edge(m, r);
      return { steps: [...ms, ...rs], perSource: (b) => b / n, split: true };
    }
  }
}

/**
 * The node a step runs on in the cross-node (`ws`) cases, so that every edge crosses: a chain
 * alternates n0, n1, n0, ...; the other patterns put their producers on n0, consumers on n1.
 */
function nodeOf(shape: Shape, step: StepNode, index: number): 0 | 1 {
  if (shape.pattern === 'chain') return (index % 2) as 0 | 1;
  return step.inputs.length === 0 ? 0 : 1;
}

const workflowName = (shape: Shape, via: 'direct' | 's3'): string => `bench-${shape.pattern}${shape.pattern === 'chain' ? shape.hops : shape.fanout}${via === 's3' ? '-via-s3' : ''}`;

/** Two nodes (network namespaces) with a Sluice daemon on each, peered: the `ws` path's. */
export interface WfNodes {
  nodes: readonly [NetnsNode, NetnsNode];
  daemons: Daemons;
  /** stop the daemons, remove the namespaces */
  stop(): Promise<void>;
}

/**
 * Make the two nodes (subnet 10.213.`subnet`.0/24), start a daemon on each (directories and
 * workflow files under `baseDir`, which must not exist), register the patterns' workflows.
 */
export async function startCrossNode(baseDir: string, patterns: readonly PatternName[], subnet = 0): Promise<WfNodes> {
  const cluster = await createCluster(2, { subnet });
  const nodes = [cluster.nodes[0]!, cluster.nodes[1]!] as const;
  let daemons: Daemons | undefined;
  const stop = async (): Promise<void> => {
    await daemons?.stop();
    await cluster.destroy();
  };
  try {
    fs.mkdirSync(baseDir, { mode: 0o700 });
    daemons = await Daemons.start(nodes, baseDir);
    for (const name of patterns) await daemons.applyWorkflow(workflowOf(shapeOf(name), 'direct'), baseDir);
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  return { nodes, daemons, stop };
}

/** What a case runs against: the node's daemon, the two nodes, the S3 service, a scratch directory. */
export interface WfEnv {
  tmpDir: string;
  daemon?: StoreDaemon;
  nodes?: WfNodes;
  s3?: { target: S3Target; server?: S3Server };
  /** a fresh path in the scratch directory */
  pathFor(what: string): string;
}

function workflowOf(shape: Shape, via: 'direct' | 's3'): { name: string; steps: Record<string, object>; edges: object[] } {
  const { steps } = graphOf(shape);
  return {
    name: workflowName(shape, via),
    steps: Object.fromEntries(steps.map((s) => [s.name, {}])),
    edges: steps.flatMap((s) => s.outputs.map((to) => ({ from: s.name, to, via }))),
  };
}

/** Register every pattern's workflow on the daemon: direct edges, and the same with `via: s3`. */
export async function registerWorkflows(daemon: StoreDaemon, names: readonly PatternName[]): Promise<void> {
  for (const name of names) for (const via of ['direct', 's3'] as const) await daemon.applyWorkflow(workflowOf(shapeOf(name), via));
}


export interface CaseSample {
  e2e_ms: number;
  ttfb_ms: number;
  MBps: number;
  /** bytes the sinks received, all together */
  delivered: number;
  disk_bytes: number | null;
  daemon_rss_mb: number | null;
  /** channels that went through the daemon (relay, store) */
  relayed: number;
  channels: number;
  verified: boolean;
  error?: string;
}

export interface MessagesSample {
  /** one-way delay of every measured message over every hop, ns */
  delaysNs: number[];
  /** the largest event any step warmed up on, bytes (0: records, or S3's single process) */
  warmEventBytes?: number;
  verified: boolean;
  error?: string;
}

interface CaseRun {
  shape: Shape;
  path: WfPath;
  bytes: number;
  proactive: boolean;
  mode: StepJob['mode'];
  warmup?: number;
  count?: number;
}

let caseSeq = 0;

/**
 * A run that takes longer than this is stuck, not slow: 30 s (starting and warming the step
 * processes, which on a busy machine took over 10 s for S3 steps loading the AWS SDK) plus 20 s
 * per GiB per hop and per consumer (the store at 50 MB/s).
 */
const timeoutFor = (c: CaseRun): number => 30_000 + (c.mode === 'bytes' ? (c.bytes / 2 ** 30) * 20_000 * (c.shape.hops + c.shape.fanout) : 600_000);

/** One run of a case: fresh processes, a fresh run (or objects), everything measured and verified. */
async function runCase(env: WfEnv, c: CaseRun): Promise<{ results: Map<string, StepResult>; sample: Omit<CaseSample, 'e2e_ms' | 'ttfb_ms' | 'MBps' | 'delivered' | 'verified'>; expectedPerInput: number }> {
  const graph = graphOf(c.shape);
  const tag = `case-${++caseSeq}`;
  const daemonPath = DAEMON_PATHS.includes(c.path);
  const crossNode = c.path === 'ws' ? env.nodes : undefined;
  const daemon = env.daemon;
  if (daemonPath && !daemon) throw new Error('no Sluice daemon is running');
  if (c.path === 'ws' && !crossNode) throw new Error('no cross-node daemons (network namespaces) are running');
  if (c.path === 's3' && !env.s3) throw new Error('no S3 service');
  const workflow = workflowName(c.shape, c.path === 'file' ? 's3' : 'direct');
  const nodeIndex = new Map(graph.steps.map((s, i) => [s.name, nodeOf(c.shape, s, i)]));
  let run: RunRef | undefined = crossNode
    ? await crossNode.daemons.createRun(workflow, Object.fromEntries(nodeIndex))
    : daemonPath && c.proactive
      ? await daemon!.createRun(workflow)
      : undefined;
  const runsOnDaemons = daemonPath || crossNode !== undefined;
  // the daemons whose memory and disk writes a case counts
  const daemonPids = crossNode ? crossNode.daemons.pids() : daemonPath ? [daemon!.pid] : [];
  const daemonWrites = (): number => daemonPids.reduce((sum, pid) => sum + writeBytes(pid), 0);
  const edgeIds = new Map<string, string>();
  // S3 at its best: a producer whose successors all get the same bytes (a broadcast) uploads one
  // object, which each of them downloads; only a split output (a shuffle's) is one object per edge
  const sharedObject = c.path === 's3' && !graph.split;
  const edgeId = (from: string, to: string): string => {
    const key = sharedObject ? from : `${from}-${to}`;
    if (!edgeIds.has(key)) edgeIds.set(key, c.path === 's3' ? `bench/${tag}/${key}` : env.pathFor(`${tag}-${key}`));
    return edgeIds.get(key)!;
  };
  const outputsOf = (s: StepNode): string[] => [...new Set(s.outputs.map((to) => edgeId(s.name, to)))];
  const pongPath = env.pathFor(`${tag}-pong`);
  const jobOf = (s: StepNode): StepJob => ({
    role: 'step',
    label: `${tag} ${c.path} ${s.name}`,
    path: c.path,
    mode: c.mode,
    step: s.name,
    inputs: runsOnDaemons ? s.inputs : s.inputs.map((from) => edgeId(from, s.name)),
    outputs: runsOnDaemons ? s.outputs : outputsOf(s),
    bytes: c.mode === 'bytes' ? graph.perSource(c.bytes) : c.bytes,
    split: graph.split,
    ...(daemonPath && { dir: daemon!.dir, workflow, ...(run && { run }) }),
    ...(crossNode && { dir: crossNode.daemons.dir(nodeIndex.get(s.name)!), workflow, run }),
    ...(c.path === 's3' && { s3: env.s3!.target }),
    ...(c.mode !== 'bytes' && { pongPath, warmup: c.warmup, count: c.count }),
  });
  const sources = graph.steps.filter((s) => s.inputs.length === 0);
  const others = graph.steps.filter((s) => s.inputs.length > 0);
  const expectedPerInput = graph.split ? graph.perSource(c.bytes) / c.shape.fanout : graph.perSource(c.bytes);
  try {
    return await withWorkers(timeoutFor(c), async (start) => {
      const workers = new Map<string, Worker>(graph.steps.map((s) => [s.name, start(jobOf(s), `${tag} ${c.path} ${s.name}`, crossNode?.nodes[nodeIndex.get(s.name)!])]));
      const w = (s: StepNode): Worker => workers.get(s.name)!;
      const phase = async (steps: StepNode[], cmd: 'inputs' | 'outputs'): Promise<void> => {
        for (const s of steps) w(s).send({ type: cmd });
        await Promise.all(steps.map((s) => w(s).message(cmd === 'inputs' ? 'ready' : 'opened')));
      };
      const counters = { daemon: daemonWrites(), s3: env.s3?.server?.writeBytes() ?? 0 };
      const resetCounters = (): void => {
        for (const pid of daemonPids) resetPeakRss(pid);
        env.s3?.server?.resetPeakRss();
        counters.daemon = daemonWrites();
        counters.s3 = env.s3?.server?.writeBytes() ?? 0;
      };
      if (run || !runsOnDaemons) {
        const order = c.path === 'relay' ? (['outputs', 'inputs'] as const) : (['inputs', 'outputs'] as const);
        for (const p of order) await phase(graph.steps, p);
        resetCounters();
        // only the sources wait for it: the other steps read as soon as their channels are open
        for (const s of sources) w(s).send({ type: 'go' });
      } else {
        // on demand: the source creates the run when it starts; every channel is set up after that
        if (sources.length !== 1) throw new Error('set-up on demand is measured on patterns with one source');
        resetCounters();
        const source = sources[0]!;
        w(source).send({ type: 'go' });
        run = ((await w(source).message('run')) as Extract<WorkerMessage, { type: 'run' }>).run;
        for (const s of others) w(s).send({ type: 'run', run });
        await phase(others, 'inputs');
        await phase([source], 'inputs');
        await phase(others, 'outputs');
        w(source).send({ type: 'outputs' });
      }
      if (c.path === 's3') {
        // a step downloads once every upload it reads from is complete
        const uploaded = new Set<string>();
        for (const s of graph.steps.filter((x) => x.outputs.length > 0)) {
          void w(s)
            .message('uploaded')
            .then(() => {
              uploaded.add(s.name);
              for (const t of others) if (t.inputs.includes(s.name) && t.inputs.every((i) => uploaded.has(i))) w(t).send({ type: 'download' });
            }, () => undefined);
        }
      }
      const results = new Map<string, StepResult>();
      await Promise.all(graph.steps.map(async (s) => results.set(s.name, (await w(s).message('result')) as StepResult)));
      const disk = daemonWrites() - counters.daemon + (c.path === 's3' && env.s3?.server ? env.s3.server.writeBytes() - counters.s3 : 0) + [...results.values()].reduce((sum, r) => sum + r.diskBytes, 0);
      const remoteS3 = c.path === 's3' && !env.s3?.server;
      const rss = daemonPids.length > 0 ? Math.max(...daemonPids.map(peakRssMb)) : c.path === 's3' && env.s3?.server ? env.s3.server.peakRssMb() : null;
      let relayed = 0;
      let channels = 0;
      if (daemonPath && run) {
        const chans = await daemon!.channels(run.id);
        channels = chans.length;
        relayed = chans.filter((ch) => ch.relayedBytes > 0 || ch.stored !== undefined || ch.state !== 'prepared').length;
      } else if (crossNode && run) {
        // a cross-node channel is relayed by the producer's daemon, over the peer link
        const [near, far] = await Promise.all([crossNode.daemons.channels(run.id, 0), crossNode.daemons.channels(run.id, 1)]);
        const carried = new Map<string, number>();
        for (const ch of [...near, ...far]) carried.set(ch.name, (carried.get(ch.name) ?? 0) + ch.relayedBytes);
        channels = carried.size;
        relayed = [...carried.values()].filter((bytes) => bytes > 0).length;
      }
      return { results, sample: { disk_bytes: remoteS3 ? null : disk, daemon_rss_mb: rss, relayed, channels }, expectedPerInput };
    });
  } finally {
    if (daemonPath && run) await daemon!.deleteRun(run.id).catch(() => undefined);
    if (crossNode && run) await crossNode.daemons.deleteRun(run.id).catch(() => undefined);
    if (c.path === 's3') await deleteKeys(env, graph.steps.flatMap(outputsOf));
  }
}

async function deleteKeys(env: WfEnv, keys: string[]): Promise<void> {
  const client = s3Client(env.s3!.target);
  try {
    await Promise.all(keys.map((k) => deleteObject(client, env.s3!.target.bucket, k).catch(() => undefined)));
  } finally {
    client.destroy();
  }
}

/** A throughput case: `bytes` through the pattern on `path`. */
export async function throughputCase(env: WfEnv, shape: Shape, path: WfPath, bytes: number, proactive: boolean): Promise<CaseSample> {
  const { results, sample, expectedPerInput } = await runCase(env, { shape, path, bytes, proactive, mode: 'bytes' });
  const all = [...results.values()];
  const startNs = Math.min(...all.flatMap((r) => (r.startNs === null ? [] : [r.startNs])));
  const finals = sinksOf(shape).map((name) => results.get(name)!);
  const stats: InputStat[] = finals.flatMap((r) => r.inputs);
  const lastNs = Math.max(...stats.map((s) => s.lastByteNs));
  const firstNs = Math.max(...finals.map((r) => Math.min(...r.inputs.map((s) => s.firstByteNs))));
  const delivered = stats.reduce((sum, s) => sum + s.received, 0);
  const bad = all.flatMap((r) => r.inputs).filter((s) => !s.verified || s.received !== expectedPerInput);
  const e2e = (lastNs - startNs) / 1e6;
  const out: CaseSample = { ...sample, e2e_ms: e2e, ttfb_ms: (firstNs - startNs) / 1e6, MBps: bytes / 1e3 / e2e, delivered, verified: bad.length === 0 };
  if (bad.length > 0) out.error = `${bad.length} input(s) did not verify: received ${bad.map((s) => s.received).join(', ')} of ${expectedPerInput}` + (bad[0]!.mismatchAt === undefined ? '' : `, first mismatch at byte ${bad[0]!.mismatchAt}`);
  if (path === 'fifo' && sample.relayed > 0) out.error = `${sample.relayed} of ${sample.channels} channels went through the daemon's relay, not direct`;
  if (path === 'relay' && sample.relayed < sample.channels) out.error = `only ${sample.relayed} of ${sample.channels} channels went through the relay`;
  if (path === 'ws' && sample.relayed < sample.channels) out.error = `only ${sample.relayed} of ${sample.channels} channels went across the peer link`;
  return out;
}

const sinksOf = (shape: Shape): string[] => graphOf(shape).steps.filter((s) => s.outputs.length === 0).map((s) => s.name);

/** 1 KiB records or CloudEvents, one at a time, through a chain of `hops` on `path`: every hop's one-way delay. */
export async function messagesCase(env: WfEnv, path: WfPath, hops: number, mode: 'latency' | 'events', bytes: number, warmup: number, count: number): Promise<MessagesSample> {
  const shape: Shape = { pattern: 'chain', hops, fanout: 1 };
  if (path === 's3') {
    return withWorkers(600_000, async (start) => {
      const w = start({ role: 's3-hops', s3: env.s3!.target, prefix: `bench/hops-${++caseSeq}`, hops, mode, bytes, warmup, count }, `s3 ${mode}`);
      const m = (await w.message('s3-hops')) as Extract<WorkerMessage, { type: 's3-hops' }>;
      return { delaysNs: m.delaysNs, verified: m.verified, ...(!m.verified && { error: 'a message arrived changed after a PUT and GET' }) };
    });
  }
  const { results } = await runCase(env, { shape, path, bytes, proactive: true, mode, warmup, count });
  const delaysNs = [...results.values()].flatMap((r) => r.delaysNs);
  const verified = delaysNs.length === hops * count;
  const warmEventBytes = Math.max(0, ...[...results.values()].map((r) => r.warmEventBytes));
  return { delaysNs, warmEventBytes, verified, ...(!verified && { error: `${delaysNs.length} delays of ${hops * count}` }) };
}

/** p50 / p90 / p99 of delays (ns) through an HDR histogram (node:perf_hooks), µs. */
export function percentilesUs(delaysNs: number[]): { p50: number; p90: number; p99: number } | null {
  if (delaysNs.length === 0) return null;
  const h = createHistogram();
  for (const d of delaysNs) h.record(Math.max(1, Math.round(d)));
  const us = (p: number): number => Number((h.percentile(p) / 1e3).toFixed(1));
  return { p50: us(50), p90: us(90), p99: us(99) };
}
