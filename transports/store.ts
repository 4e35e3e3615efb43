/**
 * The object store: where a channel's bytes go when no direct path can serve them (a consumer
 * that has not attached, an edge with `via: s3`, a peer that cannot be reached), and where a
 * `persist: true` edge keeps its durable copy.
 *
 * An `ObjectStore` is a flat namespace of immutable objects — S3 (`store-s3.ts`) or a local
 * directory (`store-file.ts`, the embedded default) — and both pass one suite
 * (`test/compliance/object-store.test.ts`). On top of it, a **stored stream** is written and
 * read the same way on every store:
 *
 * ```
 *   <prefix><run>/expires.json             { expiresAt }: lets any daemon remove it once the run is over
 *   <prefix><run>/<channel>/seg-000000     fixed-size segments of the stream's payload, each
 *   <prefix><run>/<channel>/seg-000001     written once, behind a 16-byte header (length, XXH3-64)
 *   ...
 *   <prefix><run>/<channel>/manifest.json  { v, length, checksum, segmentBytes, segments }, written last
 *   <prefix><run>/<channel>/aborted.json   { code, message } instead, when the producer failed
 *   <prefix><run>/<channel>/resume.json    { start }, written first, when the stream resumes one
 *                                          that broke mid-way (see below)
 * ```
 *
 * A **resumed** stream holds a stream's payload from byte `start` on: a daemon that lost its
 * peer link mid-stream writes from a point its consumer has certainly reached, and its manifest
 * then also carries `trailer`, the producer's own { length, checksum } of the whole stream, which
 * the consumer (holding the bytes before `start`) verifies at the end.
 *
 * A reader streams: it reads segment k as soon as it exists, while the writer fills k+1, and it
 * reports end-of-stream only when the manifest exists and the bytes it read match its length and
 * XXH3-64 checksum. It learns that an object exists in one of two ways:
 * - **in the writer's process** (writer and reader given the same `ObjectStore` object: one
 *   daemon that both stores and feeds a stream), the writer announces every object it has stored
 *   under the stream's prefix (segment, manifest, aborted and resume markers) once its put
 *   completed, and a waiting reader looks again at once instead of sleeping out its back-off. A
 *   notice that arrives while the reader is still looking makes it look again rather than sleep,
 *   so none is lost; a reader listens only while it waits, and stops for good when destroyed.
 * - **from anywhere else** (another daemon on a shared S3 bucket, another store object), only by
 *   polling: `minPollMs`, doubling up to `maxPollMs`.
 * Notices only shorten waits: what a reader accepts is decided by what it reads, exactly as when
 * it polls. A writer that fails leaves `aborted.json`, so a reader fails with the
 * writer's code instead of waiting; a missing segment below the manifest's count is corruption.
 * Each segment's header lets a reader check it on its own: some S3-compatible servers (s3rver)
 * let a GET see an object that is still being written, so a segment that does not match its
 * header is read again a few times before it counts as corrupt.
 *
 * Errors: every store operation that fails after the store's own retries rejects with
 * SLUICE_STORE_UNAVAILABLE (its cause is the low-level error); a key that breaks the naming rules
 * is SLUICE_INVALID. A missing object is not an error: `get` answers `undefined`.
 */
import { Readable, Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { StreamChecksum, checksumOf } from './checksum.js';
import { ConnectError, ErrorCodes, RequestError, SluiceError, StreamError, codeOf, isErrorCode } from './errors.js';

export interface StoredObject {
  key: string;
  /** ms since the epoch */
  modified: number;
}

export interface ObjectStore {
  /** 'file' or 's3': the path name channels through this store report. */
  readonly path: 'file' | 's3';
  /** Where it is, for logs and status (never credentials). */
  readonly location: string;
  /**
   * Prove the store usable before the daemon serves: the directory can be written, or the bucket
   * exists and the credentials are accepted. Rejects with SLUICE_CONFIG, saying what to fix.
   */
  check(): Promise<void>;
  /** Write an object whole; readers see all of it or nothing. */
  put(key: string, body: Buffer): Promise<void>;
  /** The object's bytes, or undefined when there is no such object. */
  get(key: string): Promise<Buffer | undefined>;
  /** Every object whose key starts with `prefix`, in key order. */
  list(prefix: string): Promise<StoredObject[]>;
  /**
   * The folders one level under `prefix` ("" or ending in "/"): every distinct `prefix + name + "/"`
   * that objects' keys start with, in key order — without listing those objects.
   */
  folders(prefix: string): Promise<string[]>;
  /** Remove every object whose key starts with `prefix` (which must end in "/"); answers how many. */
  deletePrefix(prefix: string): Promise<number>;
  /** Release connections. */
  close(): void;
}

/** Where a store lives: what `--store` parses into. */
export type StoreLocation =
  | { readonly kind: 'file'; readonly path: string }
  | {
      readonly kind: 's3';
      readonly bucket: string;
      /** Key prefix: empty, or ending in "/" (so keys are `prefix + name`). */
      readonly prefix: string;
      /** An S3-compatible endpoint (MinIO, Ceph RGW, s3rver); absent for AWS itself. */
      readonly endpoint?: string;
      readonly region?: string;
      /** Path-style addressing; true by default when an endpoint is given. */
      readonly forcePathStyle: boolean;
    };

const KEY_PART = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const MAX_KEY_BYTES = 512;

/**
 * Check a key against the naming rules every store shares: "/"-separated parts of letters,
 * digits, `.`, `_`, `-`, none empty, none starting with "." (so no `.` or `..`), at most 512 bytes.
 * `prefix` allows a trailing "/".
 */
export function checkKey(key: string, kind: 'key' | 'prefix' = 'key'): string {
  const body = kind === 'prefix' && key.endsWith('/') ? key.slice(0, -1) : key;
  if (typeof key !== 'string' || key.length > MAX_KEY_BYTES || (body !== '' && !body.split('/').every((part) => KEY_PART.test(part))) || (kind === 'key' && body === '')) {
    throw new RequestError(ErrorCodes.INVALID, `object ${kind} ${JSON.stringify(key).slice(0, 80)} breaks the naming rules: "/"-separated parts of A-Z a-z 0-9 . _ -, none empty or starting with "."`);
  }
  return key;
}

/** Wrap a store failure once, where it arises. */
export function storeError(what: string, err: unknown, details?: Record<string, unknown>): SluiceError {
  if (err instanceof SluiceError) return err;
  const text = err instanceof Error ? err.message : String(err);
  return new ConnectError(ErrorCodes.STORE_UNAVAILABLE, `object store: ${what} failed: ${text}`, { cause: err, ...(details ? { details } : {}) });
}

// ---- stored streams ---------------------------------------------------------------------------

export const MANIFEST_OBJECT = 'manifest.json';
export const ABORTED_OBJECT = 'aborted.json';
export const EXPIRES_OBJECT = 'expires.json';
export const RESUME_OBJECT = 'resume.json';

/** The objects of one run: `<run>/`. */
export const runPrefix = (run: string): string => `${run}/`;
/** The objects of one channel's stream: `<run>/<channel>/`. */
export const streamPrefix = (run: string, channel: string): string => `${run}/${channel}/`;
export const segmentKey = (prefix: string, index: number): string => `${prefix}seg-${String(index).padStart(6, '0')}`;

export interface StreamManifest {
  v: 1;
  /** payload bytes */
  length: number;
  /** XXH3-64 of the payload, 16 hex digits (as the channel trailer carries it) */
  checksum: string;
  /** size of every segment but the last, bytes */
  segmentBytes: number;
  segments: number;
  /** a resumed stream: where its payload starts in the whole stream, bytes */
  start?: number;
  /** a resumed stream: the whole stream's length and checksum, as its producer sent them */
  trailer?: { length: number; checksum: string };
}

export interface StoredStreamWriterOptions {
  /** Segment size, bytes. Default 8 MiB. */
  segmentBytes?: number;
  /** Segments being uploaded at once while the next one fills. Default 2. */
  uploadsInFlight?: number;
  /** Called after each segment is stored, with its size in bytes. */
  onSegment?: (bytes: number) => void;
  /**
   * Write a resumed stream: its payload starts at `start` (bytes) of the whole stream, and
   * `resume.json` is stored before anything else; `trailer`, asked for at `end()`, is the whole
   * stream's length and checksum, kept in the manifest. Default: an ordinary stream.
   */
  resumed?: { start: number; trailer: () => { length: number; checksum: string } };
}

export const DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024;

/**
 * In-process notices of stored objects, per store object and stream prefix: the listeners of
 * readers waiting in this process. An entry exists only while someone listens.
 */
const listeners = new WeakMap<ObjectStore, Map<string, Set<() => void>>>();

/** Tell the readers of `prefix` waiting in this process that an object was stored under it. */
function announce(store: ObjectStore, prefix: string): void {
  const waiting = listeners.get(store)?.get(prefix);
  if (waiting) for (const listener of [...waiting]) listener();
}

/** Call `listener` whenever this process stores an object under `prefix`; answers how to stop. */
function listen(store: ObjectStore, prefix: string, listener: () => void): () => void {
  let byPrefix = listeners.get(store);
  if (!byPrefix) listeners.set(store, (byPrefix = new Map()));
  let waiting = byPrefix.get(prefix);
  if (!waiting) byPrefix.set(prefix, (waiting = new Set()));
  waiting.add(listener);
  const set = waiting;
  const map = byPrefix;
  return () => {
    set.delete(listener);
    if (set.size === 0 && map.get(prefix) === set) map.delete(prefix);
    if (map.size === 0 && listeners.get(store) === map) listeners.delete(store);
  };
}

/** How many readers of streams in `store` are waiting in this process for a notice (for tests: nothing is left behind). */
export function storeListeners(store: ObjectStore): number {
  let n = 0;
  for (const set of listeners.get(store)?.values() ?? []) n += set.size;
  return n;
}

/** A segment object: [payload length: u64 BE][XXH3-64 of the payload: 8 bytes][payload]. */
const SEGMENT_HEADER_BYTES = 16;

function sealSegment(object: Buffer): Buffer {
  const payload = object.subarray(SEGMENT_HEADER_BYTES);
  object.writeBigUInt64BE(BigInt(payload.length), 0);
  Buffer.from(checksumOf(payload), 'hex').copy(object, 8);
  return object;
}

/** The segment's payload, or undefined if the object does not match its header (not whole yet, or damaged). */
function openSegment(object: Buffer): Buffer | undefined {
  if (object.length < SEGMENT_HEADER_BYTES) return undefined;
  const payload = object.subarray(SEGMENT_HEADER_BYTES);
  if (object.readBigUInt64BE(0) !== BigInt(payload.length)) return undefined;
  return object.subarray(8, 16).toString('hex') === checksumOf(payload) ? payload : undefined;
}

/** How often a segment that does not match its header is read again before it is corrupt. */
const SEGMENT_REREADS = 8;

/**
 * Write a stream's payload into the store: a Writable whose `end()` completes once every segment
 * and the manifest are stored. Memory: at most (`uploadsInFlight` + 1) segments. Destroying it
 * with an error records `aborted.json` with the error's code, so readers learn why.
 */
export class StoredStreamWriter extends Writable {
  private readonly segmentBytes: number;
  private readonly uploadsInFlight: number;
  private current: Buffer | undefined;
  private filled = 0;
  private segments = 0;
  private length = 0;
  private readonly checksum = new StreamChecksum();
  private readonly uploads: Promise<void>[] = [];
  private failure: Error | undefined;

  constructor(
    private readonly store: ObjectStore,
    private readonly prefix: string,
    private readonly options: StoredStreamWriterOptions = {},
  ) {
    super({ highWaterMark: 64 * 1024 });
    checkKey(prefix, 'prefix');
    this.segmentBytes = options.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    this.uploadsInFlight = options.uploadsInFlight ?? 2;
  }

  /** Payload bytes accepted so far. */
  get bytesWritten(): number {
    return this.length;
  }

  override _construct(callback: (error?: Error | null) => void): void {
    const { resumed } = this.options;
    if (!resumed) return callback();
    this.put(RESUME_OBJECT, Buffer.from(JSON.stringify({ start: resumed.start }))).then(() => callback(), callback);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.length += chunk.length;
    this.checksum.update(chunk);
    let offset = 0;
    const full: Buffer[] = [];
    while (offset < chunk.length) {
      const target = (this.current ??= Buffer.allocUnsafe(SEGMENT_HEADER_BYTES + this.segmentBytes));
      const n = chunk.copy(target, SEGMENT_HEADER_BYTES + this.filled, offset);
      offset += n;
      this.filled += n;
      if (this.filled === this.segmentBytes) {
        full.push(target);
        this.current = undefined;
        this.filled = 0;
      }
    }
    this.upload(full).then(() => callback(), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    const last = this.filled > 0 ? [this.current!.subarray(0, SEGMENT_HEADER_BYTES + this.filled)] : [];
    this.current = undefined;
    this.upload(last)
      .then(() => Promise.all(this.uploads))
      .then(() => {
        // an upload in flight at the end fails silently into `failure`: a manifest now would
        // announce a segment the store does not hold, and the producer would be acknowledged
        if (this.failure) throw this.failure;
        const manifest: StreamManifest = { v: 1, length: this.length, checksum: this.checksum.digest(), segmentBytes: this.segmentBytes, segments: this.segments };
        const { resumed } = this.options;
        if (resumed) {
          const { length, checksum } = resumed.trailer();
          Object.assign(manifest, { start: resumed.start, trailer: { length, checksum } });
        }
        return this.put(MANIFEST_OBJECT, Buffer.from(JSON.stringify(manifest)));
      })
      .then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.current = undefined;
    if (!error) return callback();
    const code = codeOf(error);
    const record = { code: isErrorCode(code) ? code : ErrorCodes.PRODUCER_ABORTED, message: error.message };
    // best effort: a store that is gone cannot take the marker either, and readers then wait for the run's end
    this.put(ABORTED_OBJECT, Buffer.from(JSON.stringify(record))).then(
      () => callback(error),
      () => callback(error),
    );
  }

  /** Start uploading `full` segments; resolve once few enough uploads are in flight to accept more. */
  private async upload(full: Buffer[]): Promise<void> {
    for (const object of full) {
      if (this.failure) throw this.failure;
      const name = segmentKey('', this.segments++);
      const done = this.put(name, sealSegment(object)).then(
        () => this.options.onSegment?.(object.length - SEGMENT_HEADER_BYTES),
        (err: unknown) => {
          this.failure ??= err as Error;
        },
      );
      this.uploads.push(done);
      while (this.uploads.length > this.uploadsInFlight) await this.uploads.shift();
    }
    if (this.failure) throw this.failure;
  }

  /** Store the stream's object `name`, then tell this process's readers of the stream. */
  private async put(name: string, body: Buffer): Promise<void> {
    await this.store.put(this.prefix + name, body);
    announce(this.store, this.prefix);
  }
}

export interface StoredStreamReaderOptions {
  /** Stop waiting (SLUICE_ABORTED) when this fires: the run was deleted. */
  signal?: AbortSignal;
  /**
   * First wait between polls for an object not written yet, ms; doubles up to `maxPollMs`. Default
   * 10. A writer in this process on the same store object cuts every wait short (see above).
   */
  minPollMs?: number;
  /** Longest wait between polls, ms. Default 500. */
  maxPollMs?: number;
  /** Called after each segment is read, with its size in bytes. */
  onSegment?: (bytes: number) => void;
}

/**
 * Read a stored stream's payload as it is written: a Readable that yields each segment once it
 * exists and ends only after checking the manifest's length and checksum. Holds one segment
 * ahead of its consumer at most.
 */
export class StoredStreamReader extends Readable {
  /** The manifest, once the stream ended verified. */
  manifest: StreamManifest | undefined;
  private next = 0;
  private length = 0;
  private readonly checksum = new StreamChecksum();
  private reading = false;
  /** segment 0 as `origin()` found it, so that it is not downloaded twice */
  private first: Buffer | undefined;
  /** ends every wait once the reader is destroyed */
  private readonly stopped = new AbortController();

  constructor(
    private readonly store: ObjectStore,
    private readonly prefix: string,
    private readonly options: StoredStreamReaderOptions = {},
  ) {
    super({ highWaterMark: 1 });
    checkKey(prefix, 'prefix');
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.stopped.abort();
    callback(error);
  }

  override _read(): void {
    if (this.reading) return;
    this.reading = true;
    this.fetch().then(
      (segment) => {
        // cleared before pushing: a push may ask for the next segment at once
        this.reading = false;
        this.push(segment ?? null);
      },
      (err: unknown) => this.destroy(err as Error),
    );
  }

  /**
   * Wait until the stream exists (its first segment, its manifest, or its resume marker) and
   * answer where its payload starts in the whole stream: 0, or a resumed stream's `start`.
   * Rejects with the writer's code if it abandoned the stream first.
   */
  async origin(): Promise<number> {
    return this.poll(async () => {
      const marker = await this.store.get(this.prefix + RESUME_OBJECT);
      if (marker) return parseResume(marker, this.prefix);
      this.first = await this.store.get(segmentKey(this.prefix, 0));
      if (this.first || (await this.store.get(this.prefix + MANIFEST_OBJECT))) {
        // a resume marker is written before the first segment: none now means none at all
        const late = await this.store.get(this.prefix + RESUME_OBJECT);
        return late ? parseResume(late, this.prefix) : 0;
      }
      return undefined;
    });
  }

  /** The next segment's payload; undefined at the verified end. */
  private fetch(): Promise<Buffer | undefined> {
    return this.poll<Buffer | null>(async () => {
      const segment = await this.segment(this.next);
      if (segment) return this.accept(segment);
      const bytes = await this.store.get(this.prefix + MANIFEST_OBJECT);
      if (!bytes) return undefined;
      const manifest = parseManifest(bytes, this.prefix);
      // the writer may have stored this segment, then the manifest, between our two reads: the
      // manifest is written after every segment, so only a segment missing now is missing
      if (this.next < manifest.segments) {
        const late = await this.segment(this.next);
        if (late) return this.accept(late);
      }
      return this.finish(manifest);
    }).then((found) => found ?? undefined);
  }

  /**
   * Try `attempt` until it answers, backing off between polls, and looking again at once when the
   * writer in this process stores an object of the stream; the writer's abandonment, the signal
   * and the reader's destruction end the wait.
   */
  private async poll<T>(attempt: () => Promise<T | undefined>): Promise<T> {
    const { signal } = this.options;
    const stopped = this.stopped.signal;
    let delay = this.options.minPollMs ?? 10;
    let notices = 0;
    let wake: (() => void) | undefined;
    const stopListening = listen(this.store, this.prefix, () => {
      notices++;
      wake?.();
    });
    try {
      for (;;) {
        if (signal?.aborted) throw new ConnectError(ErrorCodes.ABORTED, 'reading the stored stream was aborted', { cause: signal.reason });
        if (stopped.aborted) throw new ConnectError(ErrorCodes.ABORTED, 'the stored stream reader was destroyed while it waited');
        const seen = notices;
        const found = await attempt();
        if (found !== undefined) return found;
        const aborted = await this.store.get(this.prefix + ABORTED_OBJECT);
        if (aborted) throw abortedStream(aborted, this.prefix);
        // stored while we looked: looking again now, not after the back-off, loses no notice
        if (notices !== seen) continue;
        const noticed = await new Promise<boolean>((resolve) => {
          const end = (byNotice: boolean): void => {
            clearTimeout(timer);
            signal?.removeEventListener('abort', interrupt);
            stopped.removeEventListener('abort', interrupt);
            wake = undefined;
            resolve(byNotice);
          };
          const interrupt = (): void => end(false);
          // a signal that fired while we looked fires no event any more
          if (signal?.aborted || stopped.aborted) return resolve(false);
          const timer = setTimeout(interrupt, delay);
          signal?.addEventListener('abort', interrupt, { once: true });
          stopped.addEventListener('abort', interrupt, { once: true });
          wake = () => end(true);
        });
        if (!noticed) delay = Math.min(delay * 2, this.options.maxPollMs ?? 500);
      }
    } finally {
      stopListening();
    }
  }

  /** Segment `index`'s payload, undefined while it does not exist; SLUICE_CORRUPT if it stays unlike its header. */
  private async segment(index: number): Promise<Buffer | undefined> {
    const key = segmentKey(this.prefix, index);
    for (let attempt = 0; ; attempt++) {
      const prefetched = index === 0 && attempt === 0 ? this.first : undefined;
      this.first = undefined;
      const object = prefetched ?? (await this.store.get(key));
      if (!object) return undefined;
      const payload = openSegment(object);
      if (payload) return payload;
      if (attempt === SEGMENT_REREADS) {
        throw new StreamError(ErrorCodes.CORRUPT, `stored stream ${this.prefix}: segment ${index} does not match its header`, { details: { prefix: this.prefix, segment: index } });
      }
      await sleep(25 * 2 ** Math.min(attempt, 4));
    }
  }

  /** Count segment `next` as read. */
  private accept(segment: Buffer): Buffer {
    this.next++;
    this.length += segment.length;
    this.checksum.update(segment);
    this.options.onSegment?.(segment.length);
    return segment;
  }

  private finish(manifest: StreamManifest): null {
    if (this.next < manifest.segments) {
      throw new StreamError(ErrorCodes.CORRUPT, `stored stream ${this.prefix}: segment ${this.next} of ${manifest.segments} is missing`, { details: { prefix: this.prefix } });
    }
    const checksum = this.checksum.digest();
    if (this.next !== manifest.segments || this.length !== manifest.length || checksum !== manifest.checksum) {
      throw new StreamError(ErrorCodes.CORRUPT, `stored stream ${this.prefix}: read ${this.length} bytes in ${this.next} segments (checksum ${checksum}), the manifest says ${manifest.length} in ${manifest.segments} (${manifest.checksum})`, {
        details: { prefix: this.prefix },
      });
    }
    this.manifest = manifest;
    return null;
  }
}

function parseManifest(bytes: Buffer, prefix: string): StreamManifest {
  try {
    const m = JSON.parse(bytes.toString('utf8')) as StreamManifest;
    const resumed = m.trailer === undefined || (Number.isSafeInteger(m.start) && Number.isSafeInteger(m.trailer.length) && typeof m.trailer.checksum === 'string');
    if (m.v === 1 && Number.isSafeInteger(m.length) && Number.isSafeInteger(m.segments) && typeof m.checksum === 'string' && resumed) return m;
  } catch {
    // reported below
  }
  throw new StreamError(ErrorCodes.CORRUPT, `stored stream ${prefix}: the manifest is not valid`, { details: { prefix } });
}

function parseResume(bytes: Buffer, prefix: string): number {
  try {
    const { start } = JSON.parse(bytes.toString('utf8')) as { start?: unknown };
    if (typeof start === 'number' && Number.isSafeInteger(start) && start >= 0) return start;
  } catch {
    // reported below
  }
  throw new StreamError(ErrorCodes.CORRUPT, `stored stream ${prefix}: the resume marker is not valid`, { details: { prefix } });
}

function abortedStream(bytes: Buffer, prefix: string): StreamError {
  let record: { code?: unknown; message?: unknown } = {};
  try {
    record = JSON.parse(bytes.toString('utf8')) as typeof record;
  } catch {
    // a damaged marker still means the writer failed
  }
  const code = isErrorCode(record.code) ? record.code : ErrorCodes.PRODUCER_ABORTED;
  return new StreamError(code, `the stored stream ${prefix} was abandoned by its writer: ${typeof record.message === 'string' ? record.message : 'no reason recorded'}`, {
    details: { prefix },
  });
}
