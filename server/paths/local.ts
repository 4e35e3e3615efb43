/**
 * Local delivery: the pieces every leg uses to hand a stream to a consumer on this node, or to
 * verify one here — attach to the consumer's prepared endpoint, terminate the channel protocol
 * (verify the stream) within the memory budget, and the one way to refuse a connection (an ABORT,
 * then close: `refuseConnection` in transports/channel.ts).
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import {
  ChannelReader,
  ConnectError,
  ErrorCodes,
  codeOf,
  fifoTransport,
  refuseConnection,
  unixTransport,
  type Connection,
  type MemoryBudget,
} from '../../transports/index.js';
import type { Metrics } from '../metrics.js';
import type { ChannelInfo, Run } from '../runs.js';

/** The smallest relay buffer a stream takes from the memory budget, bytes. */
export const MIN_RELAY_GRANT = 64 * 1024;

/** The code of a SluiceError, for metrics and logs; 'unknown' for anything else. */
export function errorCode(err: unknown): string {
  return codeOf(err) ?? 'unknown';
}

export interface TerminateOptions {
  /** the reader's buffer it would like, bytes: taken from `budget`, less when the budget is short */
  highWaterMark: number;
  /** the daemon-wide memory budget the reader's buffer is granted from */
  budget: MemoryBudget;
  /** how long a stream waits for `MIN_RELAY_GRANT` bytes of the budget, ms; then SLUICE_UNAVAILABLE to its producer */
  budgetWaitMs: number;
  /** the reader's buffer granted already (the relay's ingress takes it before it reads a byte): no second grant */
  granted?: number;
  log: Logger;
  metrics: Metrics;
}

/**
 * Terminate a producer's stream here (verify it) and hand the verified bytes to `route`; the
 * producer is acknowledged once `route` resolves, or aborted with the code it rejects with.
 * Its buffer is a grant from the memory budget, given back when the reader closes; while no
 * grant can be had the producer is not read (back-pressure), and after `budgetWaitMs` it is
 * refused with SLUICE_UNAVAILABLE.
 */
export function terminate(conn: Connection, route: (reader: ChannelReader) => Promise<void>, options: TerminateOptions): void {
  const { budget, log, metrics } = options;
  if (options.granted !== undefined) return void verify(conn, route, options.granted, log, metrics);
  budget.take(options.highWaterMark, MIN_RELAY_GRANT, AbortSignal.timeout(options.budgetWaitMs)).then(
    (grant) => {
      if (conn.input.destroyed) return grant.release();
      verify(conn, route, grant.bytes, log, metrics).once('close', grant.release);
    },
    (err: unknown) => {
      metrics.errors.inc({ code: errorCode(err) });
      log.warn({ err }, 'stream refused: the memory budget is held by other streams');
      refuseConnection(conn, err as Error, ErrorCodes.UNAVAILABLE);
    },
  );
}

function verify(conn: Connection, route: (reader: ChannelReader) => Promise<void>, highWaterMark: number, log: Logger, metrics: Metrics): ChannelReader {
  let settle!: { resolve: () => void; reject: (err: unknown) => void };
  const delivered = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
  delivered.catch(() => undefined);
  const reader = new ChannelReader(conn, { highWaterMark, acknowledge: () => delivered });
  reader.on('error', () => undefined); // reported where the pipeline fails
  reader.once('hello', (hello: Record<string, unknown>) => {
    route(reader).then(settle.resolve, (err: unknown) => {
      settle.reject(err);
      metrics.errors.inc({ code: errorCode(err) });
      log.warn({ err, run: hello.run }, 'relay failed');
      reader.destroy(err as Error);
    });
  });
  return reader;
}

/**
 * Open the consumer's end of a channel prepared on this node, waiting up to `attachTimeoutMs` for
 * the consumer to open its FIFO (or listen on its socket): SLUICE_TIMEOUT, naming the consumer,
 * if it does not.
 */
export async function attachConsumer(run: Run, channel: ChannelInfo, attachTimeoutMs: number, signal?: AbortSignal): Promise<Connection> {
  const transport = channel.path === 'unix' ? unixTransport : fifoTransport;
  try {
    return await transport.dial(join(run.directory, channel.name), { timeoutMs: attachTimeoutMs, ...(signal ? { signal } : {}) });
  } catch (err) {
    if (codeOf(err) !== ErrorCodes.UNAVAILABLE) throw err;
    throw new ConnectError(ErrorCodes.TIMEOUT, `consumer ${channel.to.step}[${channel.to.index}] did not attach within ${attachTimeoutMs} ms`, {
      cause: err,
      details: { run: run.id, channel: channel.name },
    });
  }
}

