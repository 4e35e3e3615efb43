/** What the orchestrator (run.ts) asks of a worker process (worker.ts), and what it answers over IPC. */
import type { S3Target } from './s3.js';

/**
 * The medium a producer and a consumer process talk over: raw sockets and FIFOs, Sluice's framed
 * transports, and `ws`, a channel of a Sluice run through the daemons. Endpoints: a path
 * (raw-unix, raw-fifo, unix, fifo), HOST:PORT (raw-tcp; the consumer serves HOST:0), or for the
 * subjects through Sluice's daemons — `ws` (cross-node), `s3` and `file` (an edge `via: s3` to
 * that kind of store) — the node's Sluice directory, with the run in the job's `run`.
 */
export type Subject = 'raw-unix' | 'raw-tcp' | 'raw-fifo' | 'unix' | 'fifo' | 'ws' | 's3' | 'file';

/** A Sluice run, for the subjects through daemons; its workflow is WS_STEPS.producer → WS_STEPS.consumer. */
export interface RunRef {
  id: string;
  token: string;
}
export const WS_STEPS = { producer: 'p', consumer: 'c' } as const;

export type Job =
  | { role: 'consumer' | 'producer'; subject: Subject; endpoint: string; run?: RunRef; bytes: number }
  | { role: 'lat-consumer' | 'lat-producer'; subject: Subject; endpoint: string; run?: RunRef; pongPath: string; warmup: number; count: number }
  /**
   * A plain byte copier in both directions: connects to `target` first, then serves `listen` and
   * joins its first connection to the target. Addresses: a Unix socket path or HOST:PORT.
   */
  | { role: 'relay'; listen: string; target: string }
  | { role: 'memcpy'; bytes: number }
  | StepJob
  | S3HopsJob;

/**
 * What carries a workflow case's edges: `fifo` (a Sluice run on this node's daemon, the consumer
 * reading its FIFO before the producer opens it: direct), `relay` (the same run, the producer
 * opening its output before the consumer listens: through the daemon's relay), `file` (the same
 * workflow with every edge `via: s3`, the daemon's embedded directory store), `unix` (Sluice's
 * framed Unix-socket transport between the step processes, no daemon), `raw-fifo` (plain FIFOs,
 * no framing: the raw limit), `s3` (store-and-forward through S3, as users do today), `ws` (a
 * Sluice run across two nodes — network namespaces, a daemon on each, peered — with every edge
 * between steps on different nodes: producer → its daemon → the peer link → the consumer's daemon
 * → consumer).
 */
export type WfPath = 'fifo' | 'relay' | 'file' | 'unix' | 'raw-fifo' | 's3' | 'ws';
export const DAEMON_PATHS: readonly WfPath[] = ['fifo', 'relay', 'file'];

/**
 * One step of a workflow case, in its own process. `bytes`: a source writes the block stream to
 * each output; middle steps pass their one input on; sinks verify. `latency`: 1 KiB records,
 * each hop's one-way delay recorded by its receiver, paced by a pong from the sink. `events`:
 * CloudEvent-shaped JSON documents, parsed and re-serialised at every step (the KNIX run).
 */
export interface StepJob {
  role: 'step';
  label: string;
  path: WfPath;
  mode: 'bytes' | 'latency' | 'events';
  /** this step's name in the workflow */
  step: string;
  /** where the step reads from: predecessor steps (daemon paths), endpoints it serves (unix, raw-fifo), object keys (s3) */
  inputs: string[];
  /** where it writes to: successor steps, endpoints it dials, object keys */
  outputs: string[];
  /** bytes mode: what a source writes to each output, or to all of them together when `split` */
  bytes: number;
  split: boolean;
  /** daemon paths: the node's Sluice directory, and the run (absent: created by the source at its start, set-up on demand) */
  dir?: string;
  run?: RunRef;
  workflow?: string;
  s3?: S3Target;
  /** latency and events modes */
  pongPath?: string;
  warmup?: number;
  count?: number;
}

/** The per-hop latency of the object store, as a chain of `hops` PUT → GET, in one process (no notification delay: S3 at its best). */
export interface S3HopsJob {
  role: 's3-hops';
  s3: S3Target;
  prefix: string;
  hops: number;
  mode: 'latency' | 'events';
  /** record or event size */
  bytes: number;
  warmup: number;
  count: number;
}

/**
 * What the orchestrator tells a step, in this order: open inputs, open outputs, then `go` to the
 * sources (the other steps read as soon as their ends are open); `download` (s3) once its inputs
 * are uploaded; `run` (on demand) the run to join.
 */
export type StepCommand = { type: 'inputs' } | { type: 'outputs' } | { type: 'go' } | { type: 'download' } | { type: 'run'; run: RunRef };

export interface InputStat {
  received: number;
  verified: boolean;
  mismatchAt?: number;
  firstByteNs: number;
  lastByteNs: number;
}

export interface StepResult {
  type: 'result';
  /** sources: hrtime just before the first write (on demand: before the run was created) */
  startNs: number | null;
  inputs: InputStat[];
  /** one-way delay of each measured record or event into this step, ns */
  delaysNs: number[];
  /** events mode: the size of the events the step warmed its JSON framing on (at most WARM_EVENT_BYTES), bytes */
  warmEventBytes: number;
  /** what this process wrote to storage (write_bytes) while the data flowed */
  diskBytes: number;
  cpu: CpuMs;
}

/**
 * Times are process.hrtime in ns: CLOCK_MONOTONIC, comparable across processes on one machine,
 * network namespaces included.
 */
export interface ConsumerResult {
  type: 'result';
  received: number;
  verified: boolean;
  mismatchAt?: number;
  firstByteNs: number;
  lastByteNs: number;
  /** CPU time of the consumer process, from its first received byte to its last, ms */
  cpu: CpuMs;
}
export interface ProducerResult {
  type: 'result';
  startNs: number;
  /** CPU time of the producer process, from its first write until the consumer has everything, ms */
  cpu: CpuMs;
}
export interface CpuMs {
  user: number;
  system: number;
}
export interface LatencyResult {
  type: 'result';
  /** one-way latency percentiles of the measured records, ns */
  p50: number;
  p90: number;
  p99: number;
  max: number;
  records: number;
  verified: boolean;
}
export interface MemcpyResult {
  type: 'result';
  ns: number;
}

export type WorkerMessage =
  | StepResult
  | { type: 'opened' }
  | { type: 'uploaded' }
  | { type: 'run'; run: RunRef }
  | { type: 's3-hops'; delaysNs: number[]; verified: boolean }
  /** the consumer (or relay) serves `endpoint` (for TCP, with the port it got) */
  | { type: 'ready'; endpoint: string }
  | ConsumerResult
  | ProducerResult
  | LatencyResult
  | MemcpyResult
  | { type: 'error'; message: string };

/** Tell the orchestrator. */
export function send(message: WorkerMessage): Promise<void> {
  return new Promise((resolve, reject) => {
    process.send!(message, undefined, {}, (err) => (err ? reject(err) : resolve()));
  });
}
