/** What the orchestrator (run.ts) asks of a worker process (worker.ts), and what it answers over IPC. */

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
  | { role: 'memcpy'; bytes: number };

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
  /** the consumer (or relay) serves `endpoint` (for TCP, with the port it got) */
  | { type: 'ready'; endpoint: string }
  | ConsumerResult
  | ProducerResult
  | LatencyResult
  | MemcpyResult
  | { type: 'error'; message: string };
