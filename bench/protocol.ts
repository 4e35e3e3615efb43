/** What the orchestrator (run.ts) asks of a worker process (worker.ts), and what it answers over IPC. */

/** A medium under test: the raw baselines and Sluice's framed transports. */
export type Subject = 'raw-unix' | 'raw-tcp' | 'raw-fifo' | 'unix' | 'fifo';

export type Job =
  | { role: 'consumer' | 'producer'; subject: Subject; endpoint: string; bytes: number }
  | { role: 'lat-consumer' | 'lat-producer'; subject: Subject; endpoint: string; pongPath: string; warmup: number; count: number }
  | { role: 'memcpy'; bytes: number };

/** Times are process.hrtime in ns: CLOCK_MONOTONIC, comparable across processes on one machine. */
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
  /** the consumer serves `endpoint` (for raw-tcp, with the port it got) */
  | { type: 'ready'; endpoint: string }
  | ConsumerResult
  | ProducerResult
  | LatencyResult
  | MemcpyResult
  | { type: 'error'; message: string };
