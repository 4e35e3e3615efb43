/**
 * The library functions import: `connect()`, then `output()` to stream to successors and
 * `input()` to read from predecessors — the same API whatever carries the bytes.
 *
 * ```ts
 * import { connect } from 'sluice-client';   // or 'sluice'
 * const sl = await connect();                      // SLUICE_DIR, SLUICE_RUN, SLUICE_STEP, SLUICE_TOKEN
 * await pipeline(source, sl.output('count'));       // resolves once every consumer verified the bytes
 * for await (const chunk of sl.input('split')) {}   // ends only after the trailer verified
 * await sl.output('merge').send({ word, n });       // records (msgpack values)
 * for await (const rec of sl.input('count').records()) {}
 * // every instance of a predecessor at once (a shuffle's reducer); input() reads them in turn
 * await Promise.all(sl.inputs('map').map(({ instance, stream }) => pipeline(stream, sinkFor(instance))));
 * for await (const { instance, chunk } of sl.interleaved('map')) {}
 * ```
 *
 * How a channel travels on one node: the daemon prepared its FIFO when the run was created. The
 * producer opens it without waiting if the consumer is reading it already (direct: no copy
 * through the daemon); otherwise it streams to the daemon's relay, which holds a bounded
 * buffer and delivers once the consumer opens the FIFO.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import {
  ChannelReader,
  ChannelWriter,
  ConnectError,
  ErrorCodes,
  MANIFEST_FILE,
  RELAY_SOCKET,
  RequestError,
  checkName,
  decodeRecords,
  encodeRecord,
  fifoTransport,
  hasCode,
  runDirectory,
  unixTransport,
  type InstanceRef,
  type Listener,
  type RunManifest,
} from '../transports/client.js';
import { control } from './control.js';

export interface ConnectOptions {
  /** The node's Sluice directory. Default: $SLUICE_DIR, else the daemon's default. */
  dir?: string;
  /** The run id. Default: $SLUICE_RUN. */
  run?: string;
  /** This function's step. Default: $SLUICE_STEP. */
  step?: string;
  /** The run's token. Default: $SLUICE_TOKEN. */
  token?: string;
  /** Which replica of the step this is, from 0. Default: $SLUICE_INSTANCE, else 0. */
  instance?: number;
  /**
   * How long an input from another node waits for its stream to be resumed when it breaks
   * mid-way (its node's daemon restarted, or the peer link was lost: the stream then continues
   * through the object store), ms. After that it fails with SLUICE_TRUNCATED. Default:
   * $SLUICE_RESUME_TIMEOUT_MS, else 60000.
   */
  resumeTimeoutMs?: number;
}

const DEFAULT_RESUME_TIMEOUT_MS = 60_000;

export interface OutputOptions {
  /**
   * How long a producer waits for the relay to take its stream when the consumer has not
   * attached yet, ms. Default 10000. (How long the relay then waits for the consumer is the
   * daemon's --attach-timeout.)
   */
  timeoutMs?: number;
  /**
   * On a `fanout: balance` edge with `policy: affinity`: the key hashed to pick the consumer
   * instance (streams with one key keep their instance while it has room). Default: what the
   * edge's `key` says (the run id, or the run id and this producer instance). 1-256 characters.
   */
  key?: string;
}

/** A channel's other end, as `Input.sources` reports them. */
export interface Source {
  from: string;
  instance: number;
}

/** One input channel of `Sluice.inputs()`: where it comes from, and its stream. */
export interface InputStream extends Source {
  /** the bytes of this one channel: ends once its trailer verified, errors only for its own failure */
  stream: Input;
}

/**
 * What an Output or Input buffers in this process, bytes. A FIFO holds only 64 KiB, so with
 * several steps sharing two cores, a larger user-space buffer lets each process run longer
 * between switches instead of stalling on its neighbours.
 */
const STREAM_BUFFER_BYTES = 1024 * 1024;

function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * An output: a Writable of bytes to one successor or to all of them (broadcast: each gets every
 * byte). `end()` — and `pipeline(..., output)` — completes when every consumer has verified the
 * stream. `send(value)` writes one record; on a `partition` edge, `send(value, key)` routes it to
 * one consumer instance by the key's hash.
 */
export class Output extends Writable {
  private writers: ChannelWriter[] = [];
  /** settles when every channel is open (or one failed to open) */
  private readonly opened: Promise<void>;

  constructor(
    opener: () => Promise<ChannelWriter[]>,
    private readonly partitioned: boolean,
  ) {
    super({ highWaterMark: STREAM_BUFFER_BYTES });
    this.opened = opener().then((writers) => {
      this.writers = writers;
      for (const w of writers) w.on('error', (err) => this.destroy(err));
    });
    this.opened.catch(() => undefined); // reported through _construct
  }

  override _construct(callback: (err?: Error | null) => void): void {
    this.opened.then(
      () => callback(),
      (err: Error) => callback(err),
    );
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (this.partitioned) {
      return callback(new RequestError(ErrorCodes.INVALID, 'a partition edge carries records with a key: use send(value, key)'));
    }
    this.fanOut(this.writers, chunk, callback);
  }

  private fanOut(writers: ChannelWriter[], chunk: Buffer, callback: (err?: Error | null) => void): void {
    let waiting = 0;
    const done = (): void => {
      if (--waiting === 0) callback();
    };
    for (const w of writers) {
      if (!w.write(chunk)) {
        waiting++;
        w.once('drain', done);
      }
    }
    if (waiting === 0) callback();
  }

  /** Write one record (a msgpack value). Resolves when it was accepted (back-pressure). */
  send(value: unknown, key?: string | number): Promise<void> {
    const record = encodeRecord(value);
    if (!this.partitioned) {
      if (this.write(record)) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const onError = (err: Error): void => reject(err);
        this.once('error', onError);
        this.once('drain', () => {
          this.off('error', onError);
          resolve();
        });
      });
    }
    if (key === undefined) return Promise.reject(new RequestError(ErrorCodes.INVALID, 'a partition edge needs a key: send(value, key)'));
    return this.opened.then(
      () =>
        new Promise<void>((resolve, reject) => {
          const writer = this.writers[fnv1a(String(key)) % this.writers.length]!;
          if (writer.write(record)) return resolve();
          writer.once('drain', resolve);
          writer.once('error', reject);
        }),
    );
  }

  override _final(callback: (err?: Error | null) => void): void {
    for (const w of this.writers) w.end();
    Promise.all(this.writers.map((w) => finished(w))).then(
      () => callback(),
      (err: Error) => callback(err),
    );
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    for (const w of this.writers) if (!w.writableFinished) w.destroy(err ?? undefined);
    callback(err);
  }
}

/**
 * An input: a Readable of the bytes from one predecessor instance (or, for several, their
 * streams one after another, in instance order), and an AsyncIterable<Buffer>. It ends only
 * after every channel's trailer was verified; a producer that fails makes it error with a typed
 * code, never end early. `Sluice.inputs()` gives one Input per channel, each of one instance.
 */
export class Input extends Readable {
  private readers: ChannelReader[] = [];
  private current = 0;

  constructor(
    private readonly opener: () => Promise<ChannelReader[]>,
    /** where the bytes come from, in the order they are read */
    readonly sources: readonly Source[],
  ) {
    super({ highWaterMark: STREAM_BUFFER_BYTES });
  }

  override _construct(callback: (err?: Error | null) => void): void {
    this.opener().then(
      (readers) => {
        this.readers = readers;
        readers.forEach((r, i) => {
          r.on('error', (err) => this.destroy(err));
          r.on('data', (chunk: Buffer) => {
            if (!this.push(chunk)) r.pause();
          });
          r.on('end', () => {
            if (i === this.readers.length - 1) this.push(null);
            else this.readers[i + 1]!.resume();
            this.current = i + 1;
          });
          r.pause();
        });
        this.readers[0]?.resume();
        if (readers.length === 0) this.push(null);
        callback();
      },
      (err: Error) => callback(err),
    );
  }

  override _read(): void {
    this.readers[this.current]?.resume();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    for (const r of this.readers) if (!r.readableEnded) r.destroy(err ?? undefined);
    callback(err);
  }

  /** The records (msgpack values) of this input, in order. */
  records(): AsyncGenerator<unknown> {
    return decodeRecords(this);
  }
}

/** The values of several iterators as each comes, with its iterator's index; ends when every one has ended, throws the first error. */
async function* asTheyCome<T>(iterators: AsyncIterator<T>[]): AsyncGenerator<{ i: number; value: T }> {
  const next = (i: number) => iterators[i]!.next().then((result) => ({ i, result }));
  const pending = new Map(iterators.map((_, i) => [i, next(i)]));
  while (pending.size > 0) {
    const { i, result } = await Promise.race(pending.values());
    if (result.done) {
      pending.delete(i);
      continue;
    }
    pending.set(i, next(i));
    yield { i, value: result.value };
  }
}

export class Sluice {
  private readonly listeners: Listener[] = [];

  constructor(
    readonly dir: string,
    readonly run: string,
    readonly step: string,
    readonly instance: number,
    private readonly token: string,
    readonly manifest: RunManifest,
    private readonly resumeTimeoutMs = DEFAULT_RESUME_TIMEOUT_MS,
  ) {}

  private get self(): InstanceRef {
    return { step: this.step, index: this.instance };
  }

  private get runDir(): string {
    return runDirectory(this.dir, this.run, this.token);
  }

  /** The successor steps this step's output goes to. */
  get successors(): string[] {
    return this.manifest.edges.filter((e) => e.from === this.step).map((e) => e.to);
  }

  /** The predecessor steps this step reads from. */
  get predecessors(): string[] {
    return this.manifest.edges.filter((e) => e.to === this.step).map((e) => e.from);
  }

  /**
   * Stream to `to`, or to every successor (broadcast) when omitted. On a `fanout: balance` edge
   * the stream goes to ONE instance of `to`, picked by this node's daemon by the edge's policy
   * when the stream opens (one such stream per producer instance and run); `end()` still means
   * that instance verified every byte.
   */
  output(to?: string, options: OutputOptions = {}): Output {
    const edges = this.manifest.edges.filter((e) => e.from === this.step && (to === undefined || e.to === to));
    if (edges.length === 0) {
      throw new RequestError(ErrorCodes.NOT_FOUND, to === undefined ? `step "${this.step}" has no successors` : `workflow "${this.manifest.workflow}" has no edge ${this.step} → ${to}`);
    }
    const balanced = edges.find((e) => e.fanout === 'balance');
    if (balanced && edges.length > 1) throw new RequestError(ErrorCodes.INVALID, `name the successor: output("${balanced.to}") for a balance edge`);
    if (balanced) return new Output(async () => [await this.openBalanced(balanced.to, options)], false);
    if (options.key !== undefined) throw new RequestError(ErrorCodes.INVALID, 'an output key is for balance edges with policy: affinity');
    const partitioned = edges.some((e) => e.fanout === 'partition');
    if (partitioned && edges.length > 1) throw new RequestError(ErrorCodes.INVALID, `name the successor: output("${edges.find((e) => e.fanout === 'partition')!.to}") for a partition edge`);
    const targets = edges.flatMap((e) => Array.from({ length: this.manifest.steps[e.to]!.replicas }, (_, j) => ({ step: e.to, index: j })));
    return new Output(() => Promise.all(targets.map((t) => this.openProducer(t, options.timeoutMs ?? 10_000))), partitioned);
  }

  /**
   * Read from `from`'s instances, or from the only predecessor when omitted. A predecessor with
   * several instances is read ONE INSTANCE AFTER ANOTHER, in instance order: instance 1's bytes
   * are read only once instance 0's stream ended verified, and until then instance 1's producer
   * waits once the buffers on its way are full. For a shuffle or a gather, where every producer
   * should stream at once, read every instance together with `inputs(from)` (one stream each) or
   * `interleaved(from)` (one loop). On a balance edge an instance reads, from each producer
   * instance, either its stream (when it was picked) or an empty one (its HELLO says `elsewhere`:
   * the instance that was): the input ends once every producer's stream is placed.
   */
  input(from?: string): Input {
    const preds = this.predecessors;
    const source = from ?? (preds.length === 1 ? preds[0] : undefined);
    if (source === undefined) {
      throw new RequestError(ErrorCodes.INVALID, preds.length === 0 ? `step "${this.step}" has no inputs` : `step "${this.step}" has ${preds.length} inputs (${preds.join(', ')}): name one, input("${preds[0]}")`);
    }
    const sources = this.sourcesOf(source);
    return new Input(() => Promise.all(sources.map((s) => this.openConsumer({ step: s.from, index: s.instance }))), sources);
  }

  /**
   * Every input channel as a stream of its own, all opened at once and each read on its own:
   * one per instance of `from`, or, when `from` is omitted, one per instance of every
   * predecessor (in predecessor, then instance, order). Each `stream` is an Input of one
   * instance — a Readable and AsyncIterable<Buffer>, with `.records()` — that ends only after
   * its own trailer was verified. One failing (its producer aborted, its stream truncated or
   * corrupt) errors only that stream, with its typed code: the others go on. Read them
   * concurrently (e.g. `Promise.all(sl.inputs('map').map(...))`): a stream not read holds its
   * producer back once the buffers on its way are full; and, as with any Readable, handle each
   * one's errors (an 'error' no one listens to is thrown). On a balance edge a stream from a
   * producer instance that picked another consumer instance is empty.
   */
  inputs(from?: string): InputStream[] {
    const sources = this.allSources(from);
    return sources.map((s) => ({ ...s, stream: new Input(async () => [await this.openConsumer({ step: s.from, index: s.instance })], [s]) }));
  }

  /**
   * The bytes of every input channel in one loop, as they arrive, each chunk with where it came
   * from: every instance of `from`, or of every predecessor when omitted, all opened and read at
   * once. Chunks of one channel come in order; channels are interleaved as their bytes arrive.
   * Ends when every channel ended verified; fails with the first channel's error (its typed
   * code) and closes the others, their producers learning it (SLUICE_CONSUMER_GONE) — as does
   * leaving the loop early. At most one chunk per channel is held. The byte-stream form of
   * `merged()`.
   */
  async *interleaved(from?: string): AsyncGenerator<{ from: string; instance: number; chunk: Buffer }> {
    const sources = this.allSources(from);
    const readers: ChannelReader[] = [];
    let settled = false;
    try {
      await Promise.all(
        sources.map(async (s, i) => {
          const reader = await this.openConsumer({ step: s.from, index: s.instance });
          // one channel failed to open before this one did: the loop is over
          if (settled) return void reader.destroy();
          readers[i] = reader;
        }),
      );
      for await (const { i, value } of asTheyCome(readers.map((r) => (r as AsyncIterable<Buffer>)[Symbol.asyncIterator]()))) {
        yield { from: sources[i]!.from, instance: sources[i]!.instance, chunk: value };
      }
    } finally {
      settled = true;
      for (const r of readers) if (r && !r.readableEnded) r.destroy();
    }
  }

  /** The channels of `from`'s instances into this one, after checking the edge exists. */
  private sourcesOf(from: string): Source[] {
    if (!this.predecessors.includes(from)) throw new RequestError(ErrorCodes.NOT_FOUND, `workflow "${this.manifest.workflow}" has no edge ${from} → ${this.step}`);
    return Array.from({ length: this.manifest.steps[from]!.replicas }, (_, i) => ({ from, instance: i }));
  }

  /** `from`'s channels, or every predecessor's when omitted. */
  private allSources(from: string | undefined): Source[] {
    if (from !== undefined) return this.sourcesOf(from);
    const preds = this.predecessors;
    if (preds.length === 0) throw new RequestError(ErrorCodes.INVALID, `step "${this.step}" has no inputs`);
    return preds.flatMap((p) => this.sourcesOf(p));
  }

  /**
   * Records from every input channel (every instance of every predecessor) as they arrive,
   * each with where it came from. Ends when every input ended verified; fails, and closes the
   * other inputs, as soon as one fails. At most one decoded record per input is held.
   */
  async *merged(): AsyncGenerator<{ from: string; instance: number; value: unknown }> {
    const sources = this.predecessors.flatMap((from) => Array.from({ length: this.manifest.steps[from]!.replicas }, (_, i) => ({ from, instance: i })));
    const readers = await Promise.all(sources.map((s) => this.openConsumer({ step: s.from, index: s.instance })));
    try {
      for await (const { i, value } of asTheyCome(readers.map((r) => decodeRecords(r)[Symbol.asyncIterator]()))) {
        yield { from: sources[i]!.from, instance: sources[i]!.instance, value };
      }
    } finally {
      for (const r of readers) if (!r.readableEnded) r.destroy();
    }
  }

  private channelOf(from: InstanceRef, to: InstanceRef): RunManifest['channels'][number] {
    const channel = this.manifest.channels.find((c) => c.from.step === from.step && c.from.index === from.index && c.to.step === to.step && c.to.index === to.index);
    if (!channel) {
      throw new RequestError(ErrorCodes.NOT_FOUND, `channel ${from.step}[${from.index}] → ${to.step}[${to.index}] has no end on this node (check the run's placement)`);
    }
    return channel;
  }

  /**
   * The one stream of this instance on a balance edge: through this node's daemon, which picks
   * the consumer instance (its HELLO names the step, no instance) and tells the others.
   */
  private async openBalanced(step: string, options: OutputOptions): Promise<ChannelWriter> {
    return this.throughDaemon({ run: this.run, from: this.self, to: { step }, ...(options.key !== undefined ? { key: options.key } : {}) }, options.timeoutMs ?? 10_000);
  }

  /**
   * A stream through this node's daemon, dialled on its relay socket: the HELLO carries the run
   * token (the daemon checks it, a function's direct FIFO needs none), and a broken connection
   * is reported as the daemon's failure, by name.
   */
  private async throughDaemon(hello: Record<string, unknown>, timeoutMs: number): Promise<ChannelWriter> {
    const conn = await unixTransport.dial(this.relaySocket, { timeoutMs });
    return new ChannelWriter(conn, { hello: { ...hello, token: this.token }, via: this.relayName });
  }

  private get relaySocket(): string {
    return join(this.dir, RELAY_SOCKET);
  }

  /** how a producer's errors name the daemon that relays its stream */
  private get relayName(): string {
    return `this node's daemon (relay socket ${this.relaySocket})`;
  }

  private async openProducer(to: InstanceRef, timeoutMs: number): Promise<ChannelWriter> {
    const channel = this.channelOf(this.self, to);
    const hello = { run: this.run, from: this.self, to };
    if (channel.path === 'relay') {
      // the consumer is on another node: this node's daemon forwards over its peer link
      return this.throughDaemon(hello, timeoutMs);
    }
    try {
      // direct when the consumer is reading already: no daemon in the path
      return new ChannelWriter(await fifoTransport.dial(join(this.runDir, channel.name), { timeoutMs: 0 }), { hello });
    } catch (err) {
      if (!hasCode(err, ErrorCodes.UNAVAILABLE)) throw err;
    }
    return this.throughDaemon(hello, timeoutMs);
  }

  private async openConsumer(from: InstanceRef): Promise<ChannelReader> {
    const channel = this.channelOf(from, this.self);
    if (this.manifest.steps[this.self.step]?.nodes[this.self.index] !== this.manifest.node) {
      throw new RequestError(ErrorCodes.INVALID, `channel ${channel.name} is not delivered on this node`);
    }
    const endpoint = join(this.runDir, channel.name);
    // from another node: the daemon connects to us, a Unix socket being cheaper than a FIFO
    const listener = channel.path === 'unix' ? await unixTransport.listen(endpoint) : await fifoTransport.listen(endpoint);
    this.listeners.push(listener);
    const conn = await listener.accept();
    // across nodes, a stream that breaks mid-way may be resumed by the daemon on a new connection
    const reconnect = channel.path === 'unix' ? () => listener.accept({ signal: AbortSignal.timeout(this.resumeTimeoutMs) }) : undefined;
    const reader = new ChannelReader(conn, reconnect ? { reconnect } : {});
    reader.once('close', () => void listener.close());
    return reader;
  }

  /** Stop waiting for producers that never came. Streams in flight are not affected. */
  async close(): Promise<void> {
    await Promise.all(this.listeners.splice(0).map((l) => l.close()));
  }
}

/**
 * Join a run as one instance of one step. The run's manifest is read from its directory, with no
 * round trip to the daemon; when it is not there, the daemon is asked to bind this function to
 * the run: it answers once the run is ready on this node (late binding: its pods' placement seen
 * late, or the run still being shared by the daemon that created it), SLUICE_NOT_FOUND after its
 * `--bind-timeout`, SLUICE_UNAUTHORIZED for a wrong token (at once where the daemon can check it
 * before the run exists), SLUICE_UNAVAILABLE if no daemon answers or it is stopping.
 */
export async function connect(options: ConnectOptions & { dir: string; run: string; step: string; token: string; instance: number }): Promise<Sluice> {
  const run = checkName('run', options.run);
  const step = checkName('step', options.step);
  if (!Number.isInteger(options.instance) || options.instance < 0) throw new RequestError(ErrorCodes.INVALID, `instance must be a whole number from 0, got ${String(options.instance)}`);
  if (typeof options.token !== 'string' || options.token.length === 0) {
    throw new RequestError(ErrorCodes.UNAUTHORIZED, 'no run token: pass { token } or set SLUICE_TOKEN (sluice run create prints it)');
  }
  const manifestPath = join(runDirectory(options.dir, run, options.token), MANIFEST_FILE);
  const readManifest = async (): Promise<RunManifest | undefined> => {
    try {
      return JSON.parse(await readFile(manifestPath, 'utf8')) as RunManifest;
    } catch (err) {
      if (hasCode(err, 'ENOENT')) return undefined;
      throw new ConnectError(ErrorCodes.UNAVAILABLE, `cannot read run "${run}": ${(err as Error).message}`, { cause: err });
    }
  };
  let manifest = await readManifest();
  if (!manifest) {
    // not on this node yet, or a wrong token: the daemon holds us until the run is ready here
    // (late binding, up to its --bind-timeout), or says which it is
    await control(options.dir, 'POST', `/v1/runs/${encodeURIComponent(run)}/bind`, { token: options.token });
    manifest = await readManifest();
    if (!manifest) throw new ConnectError(ErrorCodes.UNAVAILABLE, `run "${run}" is bound, but its manifest is not at ${manifestPath}: is SLUICE_DIR the daemon's directory?`, { details: { run } });
  }
  const steps = manifest.steps[step];
  if (!steps) throw new RequestError(ErrorCodes.NOT_FOUND, `workflow "${manifest.workflow}" has no step "${step}"`);
  if (options.instance >= steps.replicas) throw new RequestError(ErrorCodes.INVALID, `step "${step}" has ${steps.replicas} instance(s); instance ${options.instance} does not exist`);
  return new Sluice(options.dir, run, step, options.instance, options.token, manifest, options.resumeTimeoutMs);
}
