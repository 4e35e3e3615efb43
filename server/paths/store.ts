/**
 * The object-store path: where a stream goes when no direct path can serve it, and how its
 * consumer gets it back. See DESIGN.md, "Choosing the path".
 *
 * - **Writing** (`store`): a verified stream from a producer (the relay terminated its channel
 *   protocol) goes into the store as segments and a manifest (`transports/store.ts`). The
 *   producer is acknowledged only once the store holds all of it and its manifest, so its
 *   `end()` still means "every byte is safe". Reasons: `spill` (its consumer did not attach
 *   within the attach timeout, or the relay buffer filled first), `forced` (edge `via: s3`),
 *   `unreachable` (the consumer's node could not be reached when the channel opened), `persist`
 *   (edge `persist: true`: a durable copy beside the direct path), `failover` (the peer link or
 *   the consumer's daemon was lost mid-stream: the rest of the stream, from a point the consumer
 *   has certainly reached, is a *resumed* stored stream).
 * - **Feeding** (`feed`): on the consumer's node, a stored stream is delivered into the
 *   consumer's FIFO once the consumer opens it, with the channel protocol (HELLO `via: "s3"` or
 *   `"file"`, the payload, a trailer). The consumer reads segment k while the producer still
 *   writes k+1, and sees the same `input()` as on every other path. A stream the store cannot
 *   complete (writer failed, store gone, a segment corrupt) reaches the consumer as an ABORT
 *   with the code, never as a clean end. A resumed stream is fed as a resumption: its HELLO says
 *   where it restarts (`resume`), the consumer drops what it has already, and the END carries the
 *   producer's trailer for the whole stream.
 * - **Lifecycle**: a run's objects are removed when the run is deleted here, and every hour
 *   (and at start) objects of runs past their expiry (`<run>/expires.json`) are removed, so runs
 *   abandoned by a crashed daemon do not stay forever.
 */
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import {
  ChannelWriter,
  EXPIRES_OBJECT,
  StoredStreamReader,
  StoredStreamWriter,
  runPrefix,
  streamPrefix,
  type ObjectStore,
} from '../../transports/index.js';
import type { Metrics } from '../metrics.js';
import { attachConsumer } from './local.js';
import type { ChannelInfo, Run } from '../runs.js';

export type StoreReason = 'spill' | 'forced' | 'unreachable' | 'persist' | 'failover';

/** A stream resumed through the store mid-way: where the stored part starts, and the whole stream's trailer. */
export interface Resumed {
  /** payload offset of the first stored byte, bytes */
  start: number;
  /** the producer's END fields for the whole stream, asked for once the source ended */
  trailer: () => { length: number; checksum: string };
}

export interface FallbackOptions {
  store: ObjectStore;
  /** segment size, bytes */
  segmentBytes: number;
  log: Logger;
  metrics: Metrics;
  /** how often abandoned runs' objects are looked for, ms. Default 1 hour. */
  sweepIntervalMs?: number;
}

const codeOf = (err: unknown): string => (err as { code?: string }).code ?? 'unknown';

export class Fallback {
  /** per run: cancels its feeders when the run is deleted */
  private readonly runSignals = new Map<string, AbortController>();
  /** `run/channel` keys fed from the store (waiting for their consumer, or streaming to it) */
  private readonly feeders = new Set<string>();
  private streaming = 0;
  /** runs this node wrote objects for */
  private readonly wrote = new Set<string>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(private readonly options: FallbackOptions) {}

  get store(): ObjectStore {
    return this.options.store;
  }

  /** Stored streams flowing to a consumer now (not those still waiting for it). */
  get feeding(): number {
    return this.streaming;
  }

  async start(): Promise<void> {
    await this.options.store.check();
    const sweep = (): void => void this.sweepExpired().catch((err: unknown) => this.options.log.warn({ err }, 'could not sweep expired runs from the store'));
    sweep();
    this.sweeper = setInterval(sweep, this.options.sweepIntervalMs ?? 3_600_000);
    this.sweeper.unref();
  }

  stop(): void {
    clearInterval(this.sweeper);
    for (const c of this.runSignals.values()) c.abort();
    this.options.store.close();
  }

  /** A run was prepared here: its consumers of `via: s3` channels will be fed from the store. */
  prepare(run: Run): void {
    for (const channel of run.channels.values()) if (channel.via === 'store' && channel.path !== 'remote') this.feed(run, channel);
  }

  /**
   * A run taken up again after a restart: its consumers here whose streams are in the store (or
   * are meant to be) are fed from there, and its objects are this node's to remove.
   */
  async adopt(run: Run): Promise<void> {
    const { store } = this.options;
    const objects = await store.list(runPrefix(run.id));
    if (objects.length === 0) return this.prepare(run);
    this.wrote.add(run.id);
    for (const channel of run.channels.values()) {
      const stored = objects.some((o) => o.key.startsWith(streamPrefix(run.id, channel.name)));
      if (channel.path !== 'remote' && (stored || channel.via === 'store')) this.feed(run, channel);
    }
  }

  /** Write `source` (a verified payload stream) into the store; resolves once it is all stored. */
  async write(run: Run, channel: ChannelInfo, source: Readable, reason: StoreReason, resumed?: Resumed): Promise<void> {
    const { store, metrics, log, segmentBytes } = this.options;
    const log2 = log.child({ run: run.id, channel: channel.name, store: store.location });
    metrics.storeStreams.inc({ reason });
    const observed = metrics.streamStarted('store');
    channel.stored = reason;
    log2.info({ reason }, 'stream going to the object store');
    const writer = new StoredStreamWriter(store, streamPrefix(run.id, channel.name), {
      segmentBytes,
      onSegment: (bytes) => {
        metrics.storeBytes.inc({ direction: 'written' }, bytes);
        metrics.storeSegments.inc({ direction: 'written' });
      },
      ...(resumed ? { resumed } : {}),
    });
    try {
      if (!this.wrote.has(run.id)) {
        // the run's expiry first, so that whatever follows can be swept if this daemon dies
        await store.put(runPrefix(run.id) + EXPIRES_OBJECT, Buffer.from(JSON.stringify({ expiresAt: run.expiresAt })));
        this.wrote.add(run.id);
      }
      source.on('data', (chunk: Buffer) => observed.bytes(chunk.length));
      await pipeline(source, writer);
      observed.done();
      log2.info({ bytes: writer.bytesWritten, reason }, 'stream stored');
    } catch (err) {
      metrics.storeErrors.inc({ code: codeOf(err) });
      log2.warn({ err, reason }, 'storing the stream failed');
      throw err;
    }
  }

  /**
   * Deliver the channel's stored stream to its consumer on this node, once the stream exists and
   * the consumer listens (waiting until the run ends). Idempotent per channel.
   */
  feed(run: Run, channel: ChannelInfo): void {
    const key = `${run.id}/${channel.name}`;
    if (this.feeders.has(key) || channel.state === 'done') return;
    this.feeders.add(key);
    const { store, metrics, log } = this.options;
    const signal = this.signalOf(run.id);
    const log2 = log.child({ run: run.id, channel: channel.name, store: store.location });
    void (async () => {
      const source = new StoredStreamReader(store, streamPrefix(run.id, channel.name), {
        signal,
        onSegment: (bytes) => {
          metrics.storeBytes.inc({ direction: 'read' }, bytes);
          metrics.storeSegments.inc({ direction: 'read' });
        },
      });
      // a consumer waiting for its stream to resume is connected only once there is one
      const resume = await source.origin();
      const consumer = await attachConsumer(run, channel, Math.max(1, run.expiresAt - Date.now()), signal);
      channel.state = 'relaying';
      this.streaming++;
      const done = (): void => {
        this.streaming--;
      };
      consumer.input.once('close', done);
      const writer = new ChannelWriter(consumer, {
        hello: { run: run.id, from: channel.from, to: channel.to, via: store.path, resume },
        trailer: () => source.manifest?.trailer,
      });
      await pipeline(source, writer);
      channel.state = 'done';
      log2.info('stored stream delivered and verified');
    })()
      .catch((err: unknown) => {
        if (signal.aborted) return; // the run is gone
        channel.state = 'failed';
        metrics.storeErrors.inc({ code: codeOf(err) });
        metrics.errors.inc({ code: codeOf(err) });
        log2.warn({ err }, 'delivering the stored stream failed');
      })
      .finally(() => this.feeders.delete(key));
  }

  /** The run was deleted here: stop its feeders and remove what this node stored for it. */
  forget(run: Run): void {
    this.runSignals.get(run.id)?.abort();
    this.runSignals.delete(run.id);
    if (!this.wrote.delete(run.id)) return;
    this.options.store.deletePrefix(runPrefix(run.id)).then(
      (removed) => this.options.log.info({ run: run.id, objects: removed }, "run's stored objects removed"),
      (err: unknown) => this.options.log.warn({ err, run: run.id }, "could not remove the run's stored objects; the expiry sweep will"),
    );
  }

  /** Remove the objects of every run whose expiry has passed. */
  async sweepExpired(): Promise<number> {
    const { store, log } = this.options;
    let removed = 0;
    // one level of listing: a run's segments are never listed to find its expiry
    for (const folder of await store.folders('')) {
      const m = /^([^/]+)\/$/.exec(folder);
      if (!m) continue;
      const marker = await store.get(folder + EXPIRES_OBJECT);
      if (!marker) continue; // written first: a run without one has nothing here yet, or is not a run
      let expiresAt = 0;
      try {
        expiresAt = (JSON.parse(marker?.toString('utf8') ?? '{}') as { expiresAt?: number }).expiresAt ?? 0;
      } catch {
        // an unreadable marker: treat as expired
      }
      if (expiresAt > Date.now()) continue;
      removed += await store.deletePrefix(`${m[1]!}/`);
      log.info({ run: m[1] }, 'expired run removed from the store');
    }
    return removed;
  }

  private signalOf(run: string): AbortSignal {
    let c = this.runSignals.get(run);
    if (!c) this.runSignals.set(run, (c = new AbortController()));
    return c.signal;
  }
}
