/**
 * Local delivery: the pieces every leg uses to hand a stream to a consumer on this node, or to
 * verify one here — attach to the consumer's prepared endpoint, terminate the channel protocol
 * (verify the stream) within the memory budget, and the one way to refuse a connection (an ABORT,
 * then close: `refuseConnection` in transports/channel.ts) — and `LocalDelivery`, which carries a
 * stream verified here as its route says: to its consumer on this node (waiting for it to attach,
 * spilling to the store when it is late), into the store, both (a tee), or, verified, over the
 * peer link.
 */
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import {
  ChannelReader,
  ChannelWriter,
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
import type { Route } from './plan.js';

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

/**
 * What local delivery needs of the store leg (server/paths/store.ts's `Fallback`, which itself
 * attaches to consumers through this file): write a verified stream, feed a consumer from it.
 */
export interface StoreForDelivery {
  write(run: Run, channel: ChannelInfo, source: Readable, reason: 'spill' | 'forced' | 'persist'): Promise<void>;
  feed(run: Run, channel: ChannelInfo): void;
}

/** What local delivery needs of the peer leg (server/paths/peer.ts, which imports this file): a connection on the link for a channel. */
export interface LinkForDelivery {
  link(run: Run, channel: ChannelInfo): Promise<Connection>;
}

export interface LocalDeliveryOptions {
  relayBufferBytes: number;
  attachTimeoutMs: number;
  log: Logger;
  metrics: Metrics;
  /** The object-store path: spills, `via: s3`, `persist: true`. */
  fallback: StoreForDelivery;
  /** A connection on the peer link for a channel whose consumer is on another node. */
  peer: LinkForDelivery;
}

/** Copy `source` into two streams, each going at the pace of the slower (back-pressure both ways). */
function tee(source: Readable): [PassThrough, PassThrough] {
  const branches: [PassThrough, PassThrough] = [new PassThrough(), new PassThrough()];
  for (const branch of branches) {
    source.pipe(branch);
    branch.on('error', (err) => source.destroy(err));
  }
  source.on('error', (err) => branches.forEach((b) => b.destroy(err)));
  return branches;
}

export class LocalDelivery {
  private readonly shutdown = new AbortController();
  private readonly draining = new AbortController();
  /** consumers' connections being delivered into */
  private readonly consumers = new Set<Connection>();

  constructor(private readonly options: LocalDeliveryOptions) {}

  /**
   * Draining (SIGTERM): streams waiting for their consumer to attach go to the store now rather
   * than at the attach timeout, and so do those that start waiting from now on; the next daemon
   * on this directory feeds them to their consumers.
   */
  spillWaiting(): void {
    this.draining.abort();
  }

  /**
   * The grace period is over: stop waiting for consumers, and cut every consumer's connection
   * still being delivered into (a stalled consumer's FIFO would keep the process up).
   */
  abortInFlight(): void {
    this.shutdown.abort();
    for (const conn of this.consumers) conn.destroy();
  }

  /** Carry a stream verified here as its route says: into the store only, to its consumer, or both (a copy beside). */
  async carry(reader: ChannelReader, run: Run, channel: ChannelInfo, route: Route): Promise<void> {
    const { fallback } = this.options;
    if (route.deliver === 'store') return fallback.write(run, channel, reader, 'forced');
    if (!route.copy) return this.deliverAnywhere(reader, reader, run, channel, route);
    const [direct, copy] = tee(reader);
    await Promise.all([this.deliverAnywhere(direct, reader, run, channel, route), fallback.write(run, channel, copy, 'persist')]);
  }

  /** Deliver a verified stream where its route says: to its consumer on this node, or over the peer link (`extra`: fields added to its HELLO). */
  async deliverAnywhere(source: Readable, held: Readable, run: Run, channel: ChannelInfo, route: Route, extra: Record<string, unknown> = {}): Promise<void> {
    if (route.deliver === 'local') return this.deliver(source, held, run, channel, route, extra);
    const observed = this.options.metrics.streamStarted('remote');
    const writer = new ChannelWriter(await this.options.peer.link(run, channel), { hello: { run: run.id, from: channel.from, to: channel.to, via: 'relay', ...extra } });
    source.on('data', (chunk: Buffer) => observed.bytes(chunk.length));
    await pipeline(source, writer);
    observed.done();
  }

  /**
   * Deliver a verified stream to its consumer on this node, or — if the consumer does not attach
   * within the attach timeout, or the relay buffer (`held`'s) fills first — spill it to the store
   * and feed the consumer from there once it comes. A persisted stream has its copy written
   * already: then the direct branch is dropped and the consumer is fed from the copy.
   */
  private async deliver(source: Readable, held: Readable, run: Run, channel: ChannelInfo, route: Route, extra: Record<string, unknown> = {}): Promise<void> {
    const { log, metrics, fallback } = this.options;
    const runId = run.id;
    const { name, to, from } = channel;
    channel.state = 'relaying';
    metrics.relayChannels.inc();
    const observed = metrics.streamStarted(channel.path === 'unix' ? 'unix' : 'fifo');
    const log2 = log.child({ run: runId, channel: name });
    log2.debug('relaying: waiting for the consumer to attach');
    try {
      const conn = await this.attachOrGiveUp(held, run, channel);
      if (!conn) {
        log2.info({ buffered: held.readableLength }, 'consumer not attached: the stream goes to the object store');
        fallback.feed(run, channel);
        if (route.late === 'spill') return await fallback.write(run, channel, source, 'spill');
        source.resume();
        return await finished(source);
      }
      // cut with the producers' connections when the grace period ends: a stalled consumer's FIFO
      // (a persisted stream's direct branch has no producer connection of its own) would keep the process up
      this.consumers.add(conn);
      conn.input.once('close', () => this.consumers.delete(conn));
      const writer = new ChannelWriter(conn, { hello: { run: runId, from, to, via: 'relay', ...extra } });
      source.on('data', (chunk: Buffer) => {
        channel.relayedBytes += chunk.length;
        metrics.relayBytes.inc(chunk.length);
        observed.bytes(chunk.length);
      });
      await pipeline(source, writer);
      channel.state = 'done';
      observed.done();
      log2.info({ bytes: channel.relayedBytes }, 'relayed stream delivered and verified');
    } catch (err) {
      channel.state = 'failed';
      throw err;
    } finally {
      metrics.relayChannels.dec();
    }
  }

  /** The consumer's connection, or undefined when it did not attach in time or the buffer filled first. */
  private async attachOrGiveUp(held: Readable, run: Run, channel: ChannelInfo): Promise<Connection | undefined> {
    const { attachTimeoutMs, relayBufferBytes } = this.options;
    const giveUp = new AbortController();
    const timer = setTimeout(() => giveUp.abort(), attachTimeoutMs);
    // A stream whose grant from the memory budget is smaller than --relay-buffer never gets here:
    // it waits for its consumer, its producer held back, rather than spill because others buffer.
    const full = setInterval(() => {
      if (held.readableLength >= relayBufferBytes) giveUp.abort();
    }, 20);
    try {
      return await attachConsumer(run, channel, Math.max(1, run.expiresAt - Date.now()), AbortSignal.any([giveUp.signal, this.draining.signal, this.shutdown.signal]));
    } catch (err) {
      if ((giveUp.signal.aborted || this.draining.signal.aborted) && !this.shutdown.signal.aborted) return undefined;
      throw err;
    } finally {
      clearTimeout(timer);
      clearInterval(full);
    }
  }
}
