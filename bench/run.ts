/**
 * The benchmark orchestrator: `npm run bench -- [--quick | --full | --smoke] [--reps N] [--rounds N] [--only a,b]`.
 *
 * On a small noisy machine absolute figures mean little, so every run measures the raw baselines
 * too, interleaved with Sluice's paths: throughput in repetitions, latency in shorter rounds. A
 * raw baseline and its framed path run back to back within each repetition or round, and the
 * headline ratio is the median of those paired ratios, which cancels most of the machine's drift.
 */
import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { GiB, KiB, MiB, RECORD_BYTES } from './data.js';
import type { ConsumerResult, CpuMs, Job, LatencyResult, MemcpyResult, ProducerResult, Subject, WorkerMessage } from './protocol.js';
import { computeRatios, median, renderMarkdown, size, type Baseline, type Case, type Percentiles, type Report } from './report.js';

const NAMES = ['raw-unix', 'unix', 'raw-fifo', 'fifo', 'raw-tcp', 'memcpy'] as const;
type Name = (typeof NAMES)[number];
/** Subjects whose 1 KiB one-way latency is measured too. */
const WITH_LATENCY: ReadonlySet<Name> = new Set(['raw-unix', 'unix', 'raw-fifo', 'fifo']);

const QUICK_REPS = 9;
const QUICK_ROUNDS = 21;

const USAGE = `Usage: npm run bench -- [options]

Runs Sluice's framed transports against raw baselines on this machine, interleaved over
throughput repetitions and latency rounds, and writes bench/results/latest.{json,md} plus a
timestamped JSON copy.

  --quick        1 GiB per throughput run, QUICK_REPS repetitions; QUICK_ROUNDS latency rounds of
                 5,000 + 1,000 warm-up 1 KiB records per subject (default)
  --full         as --quick with 15 repetitions and 31 latency rounds
  --smoke        fast self-check: 64 MiB, 1 repetition, 2 short latency rounds; writes no results
  --reps N       throughput repetitions (overrides the mode's)
  --rounds N     latency rounds (overrides the mode's)
  --only LIST    comma-separated subset of: ${NAMES.join(', ')}
  --cpu-prof DIR run the workers under --cpu-prof, profiles in DIR
  -h, --help     this text
`
  .replace('QUICK_REPS', String(QUICK_REPS))
  .replace('QUICK_ROUNDS', String(QUICK_ROUNDS));

interface Options {
  mode: 'quick' | 'full' | 'smoke';
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
      'cpu-prof': { type: 'string' },
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
  const only = values.only === undefined ? [...NAMES] : values.only.split(',').map((s) => s.trim());
  const unknown = only.filter((n) => !(NAMES as readonly string[]).includes(n));
  if (unknown.length > 0) throw new Error(`--only: unknown ${unknown.join(', ')}; choose from ${NAMES.join(', ')}`);
  const cpuProf = values['cpu-prof'];
  return {
    mode,
    reps,
    rounds,
    bytes: mode === 'smoke' ? 64 * MiB : GiB,
    warmup: mode === 'smoke' ? 200 : 1_000,
    count: mode === 'smoke' ? 1_000 : 5_000,
    only: NAMES.filter((n) => only.includes(n)),
    workerExecArgv: cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(cpuProf)}`] : [],
  };
}

// ---- worker processes ----

const WORKER = fileURLToPath(new URL('./worker.js', import.meta.url));
const RESULTS_DIR = fileURLToPath(new URL('../../bench/results/', import.meta.url));
/** A run that takes longer than this is stuck, not slow (1 GiB at a mere 20 MB/s takes under a minute). */
const RUN_TIMEOUT_MS = 120_000;

const children = new Set<ChildProcess>();
let workerExecArgv: string[] = [];

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(err: Error): void;
}
function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined); // a failure nobody waits for yet must not crash the orchestrator
  return { promise, resolve, reject };
}

interface Worker {
  message(type: 'ready' | 'result'): Promise<WorkerMessage>;
  /** resolves when the process exited with code 0 */
  exited: Promise<void>;
  kill(): void;
}

function startWorker(job: Job, label: string): Worker {
  const child = fork(WORKER, [JSON.stringify(job)], { execArgv: workerExecArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.add(child);
  const slots = new Map<string, Deferred<WorkerMessage>>();
  const exited = deferred<void>();
  let failure: Error | undefined;
  const slot = (type: string): Deferred<WorkerMessage> => {
    let d = slots.get(type);
    if (!d) {
      d = deferred();
      if (failure) d.reject(failure);
      slots.set(type, d);
    }
    return d;
  };
  const fail = (err: Error): void => {
    failure ??= err;
    for (const d of slots.values()) d.reject(failure);
  };
  child.on('message', (m: WorkerMessage) => (m.type === 'error' ? fail(new Error(`${label}: ${m.message}`)) : slot(m.type).resolve(m)));
  child.on('error', (err) => fail(new Error(`${label}: ${err.message}`)));
  child.on('exit', (code, signal) => {
    children.delete(child);
    const err = new Error(`${label} exited with ${signal ?? `code ${code}`}`);
    fail(err);
    if (code === 0) exited.resolve();
    else exited.reject(failure ?? err);
  });
  return {
    message: (type) => slot(type).promise,
    exited: exited.promise,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/** Run `body` with the workers it starts; kill whatever is left when it finished, failed or timed out. */
async function withWorkers<T>(body: (start: typeof startWorker) => Promise<T>): Promise<T> {
  const started: Worker[] = [];
  const start = (job: Job, label: string): Worker => {
    const w = startWorker(job, label);
    started.push(w);
    return w;
  };
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${RUN_TIMEOUT_MS / 1000} s`)), RUN_TIMEOUT_MS);
  });
  try {
    return await Promise.race([body(start), timeout]);
  } finally {
    clearTimeout(timer);
    for (const w of started) w.kill();
  }
}

// ---- single runs ----

let tmpDir = '';
let endpointSeq = 0;
const endpointFor = (subject: Subject): string => (subject === 'raw-tcp' ? '127.0.0.1:0' : path.join(tmpDir, `${subject}-${++endpointSeq}`));

interface ThroughputSample {
  MBps: number;
  e2e_ms: number;
  ttfb_ms: number;
  /** CPU time (user + system) of each side during the transfer: shows which side is the bottleneck */
  cpu_ms?: { consumer: CpuMs; producer: CpuMs };
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

async function throughputRun(subject: Subject, bytes: number): Promise<ThroughputSample> {
  return withWorkers(async (start) => {
    const consumer = start({ role: 'consumer', subject, endpoint: endpointFor(subject), bytes }, `${subject} consumer`);
    const ready = (await consumer.message('ready')) as { endpoint: string };
    const producer = start({ role: 'producer', subject, endpoint: ready.endpoint, bytes }, `${subject} producer`);
    const [c, p] = (await Promise.all([consumer.message('result'), producer.message('result')])) as [ConsumerResult, ProducerResult];
    await Promise.all([consumer.exited, producer.exited]);
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

async function latencyRun(subject: Subject, warmup: number, count: number): Promise<LatencySample> {
  return withWorkers(async (start) => {
    const pongPath = path.join(tmpDir, `pong-${++endpointSeq}`);
    const common = { subject, pongPath, warmup, count };
    const consumer = start({ role: 'lat-consumer', endpoint: endpointFor(subject), ...common }, `${subject} latency consumer`);
    const ready = (await consumer.message('ready')) as { endpoint: string };
    const producer = start({ role: 'lat-producer', endpoint: ready.endpoint, ...common }, `${subject} latency producer`);
    const [c] = (await Promise.all([consumer.message('result'), producer.message('result')])) as [LatencyResult, ProducerResult];
    await Promise.all([consumer.exited, producer.exited]);
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
    await w.exited;
    return { MBps: bytes / 1e6 / (ns / 1e9), e2e_ms: ns / 1e6, ttfb_ms: 0, verified: true };
  });
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

function buildReport(options: Options, started: Date, throughput: Map<Name, ThroughputSample[]>, latency: Map<Name, LatencySample[]>): Report {
  const baselines: Baseline[] = [];
  const cases: Case[] = [];
  for (const name of options.only) {
    const t = summarizeThroughput(throughput.get(name) ?? []);
    const l = WITH_LATENCY.has(name) ? summarizeLatency(latency.get(name) ?? []) : undefined;
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
    const common = { pattern: 'transport', hops: 1, fanout: 1, path: name, placement: 'same-node', disk_bytes: 0, daemon_rss_mb: 0, proactive: true } as const;
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
      ...(options.only.some((n) => WITH_LATENCY.has(n)) && {
        latency_rounds: options.rounds,
        latency_records: options.count,
        latency_warmup: options.warmup,
      }),
    },
    baselines,
    cases,
    ratios: computeRatios({ baselines, cases }),
  };
}

// ---- main ----

const progress = (line: string): void => void process.stderr.write(line + '\n');
const fmt = (x: number, digits = 0): string => x.toFixed(digits);
const cpuNote = (cpu: ThroughputSample['cpu_ms']): string =>
  cpu ? `; cpu ms user+sys: consumer ${fmt(cpu.consumer.user)}+${fmt(cpu.consumer.system)}, producer ${fmt(cpu.producer.user)}+${fmt(cpu.producer.system)}` : '';

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
  workerExecArgv = options.workerExecArgv;
  const started = new Date();
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-'));

  const throughput = new Map<Name, ThroughputSample[]>();
  const latency = new Map<Name, LatencySample[]>();
  const record = <S>(map: Map<Name, S[]>, name: Name, sample: S): void => void map.set(name, [...(map.get(name) ?? []), sample]);
  const failed = (err: unknown): { error: string } => ({ error: (err as Error).message });
  const latencySubjects = options.only.filter((n): n is Exclude<Name, 'memcpy'> => WITH_LATENCY.has(n));
  progress(
    `sluice bench: ${options.mode}, ${options.reps} throughput rep(s) of ${size(options.bytes)}` +
      (latencySubjects.length > 0 ? `, ${options.rounds} latency round(s) of ${options.count} + ${options.warmup} warm-up ${RECORD_BYTES / KiB} KiB records per subject` : ''),
  );

  for (let rep = 1; rep <= options.reps; rep++) {
    const tag = `[rep ${rep}/${options.reps}]`;
    for (const name of options.only) {
      progress(`${tag} ${name}: throughput ...`);
      const t: ThroughputSample = await (name === 'memcpy' ? memcpyRun(options.bytes) : throughputRun(name, options.bytes)).catch((err) => ({
        MBps: 0,
        e2e_ms: 0,
        ttfb_ms: 0,
        verified: false,
        ...failed(err),
      }));
      record(throughput, name, t);
      progress(`${tag} ${name}: ${t.error ? `FAILED: ${t.error}` : `${fmt(t.MBps)} MB/s, e2e ${fmt(t.e2e_ms)} ms, ttfb ${fmt(t.ttfb_ms, 2)} ms${cpuNote(t.cpu_ms)}`}`);
    }
  }

  // Latency in shorter rounds than the throughput repetitions, so that each raw baseline and its
  // framed path are paired closely in time: the drift between them within a round is small.
  for (let r = 1; latencySubjects.length > 0 && r <= options.rounds; r++) {
    const tag = `[latency round ${r}/${options.rounds}]`;
    const line: string[] = [];
    for (const name of latencySubjects) {
      const l: LatencySample = await latencyRun(name, options.warmup, options.count).catch((err) => ({ p50: 0, p90: 0, p99: 0, max: 0, verified: false, ...failed(err) }));
      record(latency, name, l);
      line.push(`${name} ${l.error ? `FAILED: ${l.error}` : `${fmt(l.p50, 1)}/${fmt(l.p90, 1)}/${fmt(l.p99, 1)}`}`);
    }
    progress(`${tag} hop µs p50/p90/p99: ${line.join(', ')}`);
  }

  const report = buildReport(options, started, throughput, latency);
  const markdown = renderMarkdown(report);
  process.stdout.write(markdown);
  if (options.mode === 'smoke') {
    progress('smoke run: results not written');
  } else {
    fs.mkdirSync(RESULTS_DIR, { recursive: true });
    const json = JSON.stringify(report, null, 2) + '\n';
    fs.writeFileSync(path.join(RESULTS_DIR, 'latest.json'), json);
    fs.writeFileSync(path.join(RESULTS_DIR, `${report.machine.date.replace(/[:.]/g, '-')}.json`), json);
    fs.writeFileSync(path.join(RESULTS_DIR, 'latest.md'), markdown);
    progress(`results: ${path.relative(process.cwd(), RESULTS_DIR) || '.'}/latest.{json,md}`);
  }
  const unverified = [...report.baselines.map((b) => ({ name: b.name, verified: b.verified })), ...report.cases.map((c) => ({ name: `${c.path} ${size(c.bytes)}`, verified: c.verified }))].filter(
    (r) => !r.verified,
  );
  if (unverified.length > 0) progress(`NOT VERIFIED: ${unverified.map((r) => r.name).join(', ')}`);
  return unverified.length > 0 ? 1 : 0;
}

function cleanUp(): void {
  for (const child of children) child.kill('SIGKILL');
  if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
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
