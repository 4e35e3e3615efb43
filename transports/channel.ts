/**
 * The channel protocol: one producer's byte stream to one consumer over a Connection, with the
 * guarantees users rely on — written once, on top of every transport.
 *
 * ```
 *  producer (ChannelWriter)                      consumer (ChannelReader)
 *    HELLO { v: 1, ...metadata }   ───────────▶    'hello' event, `reader.hello`
 *    DATA  bytes                   ───────────▶    pushed as they arrive (streaming)
 *    ...
 *    END   { length, checksum }    ───────────▶    verified against what arrived
 *                                  ◀───────────    ACK { length }      → reader ends ('end')
 *    writer's end() callback fires                 or ABORT { code: SLUICE_CORRUPT, ... }
 * ```
 *
 * - **Exact bytes or an error.** The reader reports end-of-stream only after the trailer's
 *   length and XXH3-64 checksum matched. A connection that ends without a trailer is `SLUICE_TRUNCATED`;
 *   a mismatch is `SLUICE_CORRUPT` on both sides; an ABORT from the producer is
 *   `SLUICE_PRODUCER_ABORTED`, unless a daemon on the path sent it with `SLUICE_TRUNCATED`,
 *   `SLUICE_STORE_UNAVAILABLE` or `SLUICE_CORRUPT` (its producer vanished, the object store
 *   failed, a stored segment is damaged), which the reader reports as they are; bytes that are
 *   not the protocol are `SLUICE_PROTOCOL`.
 * - **The producer learns the outcome.** `writer.end()` (and `finished(writer)`,
 *   `pipeline(..., writer)`) completes only when the consumer acknowledged the verified stream;
 *   if the consumer goes away or refuses first, the writer errors with `SLUICE_CONSUMER_GONE`
 *   (or the code the consumer sent).
 * - **Back-pressure, bounded memory.** The writer's `write()` returns false while the medium is
 *   full; the reader stops reading the medium while its own buffer (`highWaterMark`) is full.
 *   Neither side buffers more than its high-water mark plus one frame.
 */
import { Readable, Writable, finished } from 'node:stream';
import { StreamChecksum } from './checksum.js';
import {
  DEFAULT_MAX_FRAME_PAYLOAD,
  FrameDecoder,
  HEADER_BYTES,
  MAX_FRAME_PAYLOAD_LIMIT,
  FrameType,
  WIRE_VERSION,
  encodeControl,
  encodeHeader,
  frameTypeName,
  writeHeader,
  type FrameSink,
} from './codec.js';
import { ConnectError, ErrorCodes, ProtocolError, SluiceError, StreamError, brokenRelay, codeOf, fromSystemError, isErrorCode, type ErrorCode } from './errors.js';
import type { Connection } from './transport.js';

/** Payloads shorter than this are copied behind their header rather than written separately, bytes. */
const COPY_BELOW_BYTES = 16 * 1024;

/**
 * Small frames are carved from 256 KiB slabs rather than `Buffer.allocUnsafe`: Node's 8 KiB pool
 * runs out every few 1 KiB frames and each refill allocates a new ArrayBuffer (~2 µs), which was
 * a third of the producer's cost per record. A slab is never reused: a frame the socket still
 * holds keeps its slab alive, and the garbage collector frees slabs no frame refers to.
 */
const SLAB_BYTES = 256 * 1024;
let slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
let slabUsed = 0;
function takeFromSlab(bytes: number): Buffer {
  if (slabUsed + bytes > SLAB_BYTES) {
    slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
    slabUsed = 0;
  }
  const piece = slab.subarray(slabUsed, slabUsed + bytes);
  // keep the next frame 8-byte aligned, as Node's pool does
  slabUsed += (bytes + 7) & ~7;
  return piece;
}

/** ABORT codes a consumer reports as they are; any other ABORT is SLUICE_PRODUCER_ABORTED. */
const PATH_FAILURES: ReadonlySet<string> = new Set([ErrorCodes.TRUNCATED, ErrorCodes.STORE_UNAVAILABLE, ErrorCodes.CORRUPT]);

/** How long a closing side waits for its last control frame to flush before it cuts the connection, ms. */
const FAREWELL_GRACE_MS = 2_000;

export interface ChannelWriterOptions {
  /** Metadata for the consumer, sent in the HELLO frame (run, channel, offset, ...). Default {}. */
  hello?: Record<string, unknown>;
  /** Largest DATA frame payload, bytes; larger writes are split. Default 1 MiB. */
  maxFramePayload?: number;
  /** The writer's own buffer before `write()` returns false, bytes. Default 64 KiB. */
  highWaterMark?: number;
  /** Channel id in frame headers. Default 0 (a connection that carries one channel). */
  channel?: number;
  /**
   * The END frame's fields, asked for at `end()`, instead of this writer's own length and
   * checksum: a daemon resuming a stream from the object store sends the producer's trailer, which
   * also covers the bytes the consumer received before the resume point. The consumer's ACK is
   * then checked against that length. Answering undefined, or no function: this writer's own.
   */
  trailer?: () => { length: number; checksum: string } | undefined;
  /**
   * Set when the connection goes to a daemon that carries the stream on to the consumer (the
   * node's relay socket), not to the consumer itself: how errors name that daemon, e.g. "this
   * node's daemon (relay socket /run/sluice/relay.sock)". The connection ending or breaking
   * before the verdict is then SLUICE_UNAVAILABLE naming it (the daemon failed: it reports a
   * consumer's failure with an ABORT), instead of SLUICE_CONSUMER_GONE. Default: the connection
   * goes to the consumer.
   */
  via?: string;
}

export interface ChannelReaderOptions {
  /** Largest DATA frame payload accepted, bytes. Default 1 MiB. */
  maxFramePayload?: number;
  /** The reader's buffer before it stops reading the medium, bytes. Default 64 KiB. */
  highWaterMark?: number;
  /** Channel id expected in frame headers. Default 0. */
  channel?: number;
  /**
   * Called once the stream is verified; the ACK goes to the producer only when it resolves, and
   * an ABORT with the rejection's code if it rejects. A relay uses it so that the producer's
   * `end()` still means "the final consumer verified". Default: acknowledge at once.
   */
  acknowledge?: () => Promise<void>;
  /**
   * Makes the stream resumable. When the connection breaks before the trailer, the reader asks
   * `reconnect` for the next one instead of failing: a daemon resuming the stream (from the object
   * store, after its peer link or the daemon itself failed mid-stream). That connection starts
   * with a HELLO whose `resume` is the payload offset it restarts at (default 0); what the reader
   * received already is skipped, and the trailer still covers the whole stream. A connection may
   * also bring only an ABORT (the daemon knows the stream cannot be resumed). If `reconnect`
   * rejects (nobody came in time), or the resume point lies past what was received, the stream
   * fails with SLUICE_TRUNCATED. Default: not resumable.
   */
  reconnect?: () => Promise<Connection>;
}

/**
 * Say the last word — an ACK or an ABORT — and close. Until the peer closes its side (or the
 * grace period ends) keep reading, and dropping, what it still sends: closing at once would make
 * its next write fail with EPIPE before it has read why, and it would report a vanished peer
 * instead of the reason it was given.
 */
/**
 * Refuse a producer's connection before any stream was accepted on it: an ABORT carrying `err`'s
 * code (`fallback` when it has none) if the connection can still take it, then close both
 * directions; the connection is destroyed after a grace period whatever the peer does, so a
 * refused connection never holds its file descriptor.
 */
export function refuseConnection(conn: Connection, err: Error, fallback: string, channel = 0): void {
  farewell(conn, abortFrame(channel, err, fallback));
}

function farewell(conn: Connection, frame: Buffer | undefined): void {
  const { input, output } = conn;
  const timer = setTimeout(() => conn.destroy(), FAREWELL_GRACE_MS);
  timer.unref();
  let inputDone = input.readableEnded || input.destroyed;
  let outputDone = output.destroyed || output.writableFinished || !frame;
  const maybeClose = (): void => {
    if (!inputDone || !outputDone) return;
    clearTimeout(timer);
    conn.destroy();
  };
  input.on('error', () => undefined);
  finished(input, { writable: false }, () => {
    inputDone = true;
    maybeClose();
  });
  input.resume();
  if (frame && !output.destroyed && !output.writableEnded) {
    output.on('error', () => undefined);
    output.end(frame);
    finished(output, { readable: false }, () => {
      outputDone = true;
      maybeClose();
    });
  } else {
    outputDone = true;
  }
  maybeClose();
}

function abortFrame(channel: number, err: Error | null | undefined, fallback: string): Buffer {
  const given = codeOf(err);
  const code = isErrorCode(given) ? given : fallback;
  return encodeControl(FrameType.ABORT, channel, { code, message: err?.message ?? 'stream abandoned' });
}

/** The producer's end of a channel: a Writable of bytes. */
export class ChannelWriter extends Writable {
  /** Payload bytes accepted so far. */
  length = 0;
  private readonly checksum = new StreamChecksum();
  private readonly maxFramePayload: number;
  private readonly channel: number;
  private readonly decoder = new FrameDecoder();
  /** set once the consumer's verdict (or the medium's failure) is known */
  private verdict: 'pending' | 'acked' | Error = 'pending';
  private finalCallback: ((err?: Error | null) => void) | undefined;
  private drainCallback: ((err?: Error | null) => void) | undefined;
  private readonly trailer: (() => { length: number; checksum: string } | undefined) | undefined;
  /** the length the END frame announced: what the consumer must acknowledge */
  private announced = -1;

  constructor(
    private readonly conn: Connection,
    options: ChannelWriterOptions = {},
  ) {
    super({ highWaterMark: options.highWaterMark ?? 64 * 1024, decodeStrings: true });
    const max = options.maxFramePayload ?? DEFAULT_MAX_FRAME_PAYLOAD;
    if (!Number.isInteger(max) || max < 1 || max > MAX_FRAME_PAYLOAD_LIMIT) {
      throw new RangeError(`maxFramePayload must be an integer in 1..${MAX_FRAME_PAYLOAD_LIMIT}, got ${max}`);
    }
    this.maxFramePayload = max;
    this.channel = options.channel ?? 0;
    this.trailer = options.trailer;
    const { input, output } = conn;
    const via = options.via;
    const broken = (err: unknown): SluiceError => (via === undefined ? fromSystemError(err, 'producer', { channel: this.channel }) : fromSystemError(err, 'relayed', { channel: this.channel, via }));
    output.on('drain', () => this.release(null));
    output.on('error', (err) => this.fail(broken(err)));
    input.on('data', (chunk: Buffer) => {
      try {
        this.decoder.push(chunk, this.sink);
      } catch (err) {
        this.fail(err as Error);
      }
    });
    input.on('end', () =>
      this.fail(
        via === undefined
          ? new StreamError(ErrorCodes.CONSUMER_GONE, 'consumer closed the channel before verifying the stream')
          : new ConnectError(ErrorCodes.UNAVAILABLE, brokenRelay(via), { details: { channel: this.channel, via } }),
      ),
    );
    input.on('error', (err) => this.fail(broken(err)));
    output.write(encodeControl(FrameType.HELLO, this.channel, { ...options.hello, v: WIRE_VERSION }));
  }

  private readonly sink: FrameSink = {
    data: () => {
      throw new ProtocolError('consumer sent DATA on a producer channel');
    },
    control: (type, _channel, fields) => {
      if (type === FrameType.ACK) {
        if (fields.length !== this.announced || !this.writableEnded) {
          return this.fail(new StreamError(ErrorCodes.CORRUPT, `consumer acknowledged ${String(fields.length)} bytes, the trailer said ${this.announced}`));
        }
        this.verdict = 'acked';
        const cb = this.finalCallback;
        this.finalCallback = undefined;
        cb?.();
        return;
      }
      if (type === FrameType.ABORT) {
        const code = isErrorCode(fields.code) && fields.code !== ErrorCodes.PRODUCER_ABORTED ? fields.code : ErrorCodes.CONSUMER_GONE;
        const error =
          code === ErrorCodes.PROTOCOL
            ? new ProtocolError(`refused on the consumer's side (the consumer, or a daemon delivering to it): ${String(fields.message)}`)
            : new StreamError(code, `ended on the consumer's side (the consumer, or a daemon delivering to it): ${String(fields.message)}`, { details: { consumerCode: fields.code } });
        return this.fail(error);
      }
      throw new ProtocolError(`unexpected ${frameTypeName(type)} frame from the consumer`);
    },
  };

  /** The medium failed or the consumer gave its verdict against us. */
  private fail(err: Error): void {
    if (this.verdict !== 'pending') return;
    this.verdict = err;
    this.release(err);
    const cb = this.finalCallback;
    this.finalCallback = undefined;
    if (cb) cb(err);
    else this.destroy(err);
  }

  private release(err: Error | null): void {
    const cb = this.drainCallback;
    this.drainCallback = undefined;
    cb?.(err);
  }

  /** Account for payload bytes: they are what the trailer's length and checksum cover. */
  private account(chunk: Buffer): void {
    this.length += chunk.length;
    this.checksum.update(chunk);
  }

  /** A large payload: header, then the caller's buffer itself (no copy), split at the frame limit. */
  private sendLarge(chunk: Buffer): boolean {
    const out = this.conn.output;
    let ok = true;
    for (let offset = 0; offset < chunk.length; offset += this.maxFramePayload) {
      const piece = offset === 0 && chunk.length <= this.maxFramePayload ? chunk : chunk.subarray(offset, offset + this.maxFramePayload);
      out.write(encodeHeader(FrameType.DATA, this.channel, piece.length));
      ok = out.write(piece);
    }
    return ok;
  }

  /**
   * Small payloads: copied behind one header into one buffer and sent in one write. For a 1 KiB
   * record that copy costs less than the writev bookkeeping of header + payload, and several
   * small writes queued together become one frame.
   */
  private sendSmall(chunks: Buffer[], bytes: number): boolean {
    const frame = takeFromSlab(HEADER_BYTES + bytes);
    writeHeader(frame, 0, FrameType.DATA, this.channel, bytes);
    let at = HEADER_BYTES;
    for (const c of chunks) at += c.copy(frame, at);
    return this.conn.output.write(frame);
  }

  private afterWrite(ok: boolean, callback: (err?: Error | null) => void): void {
    if (this.verdict instanceof Error) return callback(this.verdict);
    if (ok) callback();
    else this.drainCallback = callback;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (this.verdict instanceof Error) return callback(this.verdict);
    if (chunk.length === 0) return callback();
    let ok: boolean;
    if (chunk.length < COPY_BELOW_BYTES) {
      ok = this.sendSmall([chunk], chunk.length);
    } else {
      const out = this.conn.output;
      out.cork();
      ok = this.sendLarge(chunk);
      out.uncork();
    }
    // after the bytes are on their way: hashing is off the critical path of a small record's
    // latency (the caller may not change a buffer it wrote, so this reads what was sent)
    this.account(chunk);
    this.afterWrite(ok, callback);
  }

  /**
   * Writes queued while the medium was full. Small ones are copied into shared frames; large ones
   * that follow each other share one frame too (one header, the buffers themselves behind it, up
   * to the frame limit): a step forwarding 64 KiB reads would otherwise send 64 KiB frames, and
   * nearly every 64 KiB read of the next FIFO would straddle two of them.
   */
  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (err?: Error | null) => void): void {
    if (this.verdict instanceof Error) return callback(this.verdict);
    const out = this.conn.output;
    out.cork();
    let ok = true;
    let small: Buffer[] = [];
    let smallBytes = 0;
    let large: Buffer[] = [];
    let largeBytes = 0;
    const sendSmall = (): void => {
      if (small.length === 0) return;
      ok = this.sendSmall(small, smallBytes);
      small = [];
      smallBytes = 0;
    };
    const sendLarge = (): void => {
      if (large.length === 0) return;
      out.write(encodeHeader(FrameType.DATA, this.channel, largeBytes));
      for (const piece of large) ok = out.write(piece);
      large = [];
      largeBytes = 0;
    };
    for (const { chunk } of chunks) {
      if (chunk.length === 0) continue;
      this.account(chunk);
      if (chunk.length < COPY_BELOW_BYTES) {
        sendLarge();
        small.push(chunk);
        smallBytes += chunk.length;
        if (smallBytes >= COPY_BELOW_BYTES) sendSmall();
        continue;
      }
      sendSmall();
      if (largeBytes + chunk.length > this.maxFramePayload) sendLarge();
      if (chunk.length > this.maxFramePayload) ok = this.sendLarge(chunk);
      else {
        large.push(chunk);
        largeBytes += chunk.length;
      }
    }
    sendSmall();
    sendLarge();
    out.uncork();
    this.afterWrite(ok, callback);
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (this.verdict instanceof Error) return callback(this.verdict);
    this.finalCallback = callback;
    const trailer = this.trailer?.() ?? { length: this.length, checksum: this.checksum.digest() };
    this.announced = trailer.length;
    this.conn.output.end(encodeControl(FrameType.END, this.channel, trailer));
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.release(err ?? new StreamError(ErrorCodes.PRODUCER_ABORTED, 'producer destroyed the stream'));
    if (this.verdict === 'acked') {
      this.conn.destroy();
    } else if (this.verdict instanceof Error) {
      // the medium failed or the consumer refused: nobody left to tell
      this.conn.destroy();
    } else {
      this.verdict = err ?? new StreamError(ErrorCodes.PRODUCER_ABORTED, 'producer destroyed the stream');
      farewell(this.conn, abortFrame(this.channel, err, ErrorCodes.PRODUCER_ABORTED));
    }
    callback(err);
  }
}

/** The consumer's end of a channel: a Readable of the producer's bytes, also an AsyncIterable<Buffer>. */
export class ChannelReader extends Readable {
  /** The producer's HELLO metadata, once it arrived (see the 'hello' event). */
  hello: Record<string, unknown> | undefined;
  /** Payload bytes received so far. */
  length = 0;
  /** Times the stream was resumed on a new connection (see `reconnect`). */
  resumes = 0;
  private readonly checksum = new StreamChecksum();
  private readonly channel: number;
  private readonly maxFramePayload: number;
  private decoder: FrameDecoder;
  private conn: Connection;
  private state: 'open' | 'verified' | 'failed' = 'open';
  private inputPaused = false;
  private readonly acknowledge: (() => Promise<void>) | undefined;
  private readonly reconnect: (() => Promise<Connection>) | undefined;
  /** a resumed connection's HELLO is still to come */
  private awaitingResume = false;
  /** payload bytes of the resumed connection that were received before, to drop */
  private skip = 0;
  /** DATA pieces decoded from the current medium chunk, pushed together (see flush) */
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(conn: Connection, options: ChannelReaderOptions = {}) {
    super({ highWaterMark: options.highWaterMark ?? 64 * 1024 });
    this.channel = options.channel ?? 0;
    this.acknowledge = options.acknowledge;
    this.reconnect = options.reconnect;
    this.maxFramePayload = options.maxFramePayload ?? DEFAULT_MAX_FRAME_PAYLOAD;
    this.decoder = new FrameDecoder({ maxFramePayload: this.maxFramePayload });
    this.conn = conn;
    this.attach(conn);
  }

  private attach(conn: Connection): void {
    const { input, output } = conn;
    const current = (): boolean => this.conn === conn && this.state === 'open';
    output.on('error', () => undefined); // the producer may be gone when we answer; our verdict stands
    input.on('data', (chunk: Buffer) => {
      if (!current()) return;
      try {
        this.decoder.push(chunk, this.sink);
        this.flush();
      } catch (err) {
        this.fail(err as Error);
      }
    });
    input.on('end', () => {
      if (current()) this.broken(new StreamError(ErrorCodes.TRUNCATED, `stream ended after ${this.length} bytes without its trailer`, { details: { length: this.length } }));
    });
    input.on('error', (err) => {
      if (current()) this.broken(fromSystemError(err, 'consumer', { channel: this.channel, length: this.length }));
    });
    if (this.inputPaused) input.pause();
    else input.resume();
  }

  /** The connection broke before the trailer: wait for the stream to be resumed, or fail. */
  private broken(err: SluiceError): void {
    if (!this.reconnect) return this.fail(err);
    const dead = this.conn;
    dead.destroy();
    this.awaitingResume = true;
    this.reconnect().then(
      (next) => {
        if (this.state !== 'open' || this.destroyed) return next.destroy();
        this.resumes++;
        this.conn = next;
        this.decoder = new FrameDecoder({ maxFramePayload: this.maxFramePayload });
        this.attach(next);
      },
      (why: unknown) => {
        if (this.conn !== dead) return;
        this.fail(new StreamError(ErrorCodes.TRUNCATED, `${err.message}, and it was not resumed: ${(why as Error).message}`, { cause: why, details: { length: this.length } }), false);
      },
    );
  }

  // Once the stream is verified (or failed), what else a medium chunk holds is dropped, as
  // farewell() drops what comes later: decoded on, a repeated END verified and acknowledged the
  // stream again, and DATA after it was pushed after the end (ERR_STREAM_PUSH_AFTER_EOF).
  private readonly sink: FrameSink = {
    data: (channel, bytes) => {
      if (this.state !== 'open') return;
      if (channel !== this.channel) throw new ProtocolError(`DATA for channel ${channel} on channel ${this.channel}`);
      if (!this.hello || this.awaitingResume) throw new ProtocolError('DATA before HELLO');
      if (this.skip > 0) {
        const dropped = Math.min(this.skip, bytes.length);
        this.skip -= dropped;
        if (dropped === bytes.length) return;
        bytes = bytes.subarray(dropped);
      }
      this.length += bytes.length;
      this.checksum.update(bytes);
      this.pending.push(bytes);
      this.pendingBytes += bytes.length;
    },
    control: (type, channel, fields) => {
      if (this.state !== 'open') return;
      if (channel !== this.channel) throw new ProtocolError(`${frameTypeName(type)} for channel ${channel} on channel ${this.channel}`);
      // the bytes before a control frame are delivered before what it does (END ends the stream)
      this.flush();
      switch (type) {
        case FrameType.HELLO:
          if (fields.v !== WIRE_VERSION) throw new ProtocolError(`producer speaks channel protocol ${String(fields.v)}, this side ${WIRE_VERSION}`);
          if (this.awaitingResume) return this.resumeAt(fields);
          if (this.hello) throw new ProtocolError('second HELLO');
          this.hello = fields;
          this.emit('hello', fields);
          return;
        case FrameType.END:
          if (!this.hello || this.awaitingResume) throw new ProtocolError('END before HELLO');
          return this.verify(fields);
        case FrameType.ABORT:
          // a daemon on the path passes its own failure on as such: the producer's stream was
          // truncated, the store failed, a stored segment is corrupt
          return this.fail(
            new StreamError(PATH_FAILURES.has(fields.code as string) ? (fields.code as ErrorCode) : ErrorCodes.PRODUCER_ABORTED, `producer aborted the stream after ${this.length} bytes: ${String(fields.message)}`, {
              details: { producerCode: fields.code, length: this.length },
            }),
            false,
          );
        default:
          throw new ProtocolError(`unexpected ${frameTypeName(type)} frame from the producer`);
      }
    },
  };

  /**
   * Hand on the payload decoded from one medium chunk as one chunk. A read from the medium rarely
   * ends on a frame boundary, so it often holds the tail of one DATA frame and the head of the
   * next: pushed apart, those pieces become two chunks, a step that forwards what it reads writes
   * two frames, and each hop down a chain splits the stream finer (1 MiB through five FIFO hops
   * arrived as 59 chunks instead of 16). Joining them copies at most one medium read.
   */
  private flush(): void {
    if (this.pendingBytes === 0 || this.destroyed) {
      this.pendingBytes = 0;
      this.pending.length = 0;
      return;
    }
    const bytes = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    if (!this.push(bytes) && !this.inputPaused) {
      this.inputPaused = true;
      this.conn.input.pause();
    }
  }

  /** A resumed connection's HELLO: it restarts at payload offset `resume`; drop what we have. */
  private resumeAt(fields: Record<string, unknown>): void {
    const from = fields.resume ?? 0;
    if (typeof from !== 'number' || !Number.isSafeInteger(from) || from < 0) throw new ProtocolError(`resumed HELLO: "resume" must be a byte offset, got ${JSON.stringify(from)}`);
    if (from > this.length) {
      return this.fail(
        new StreamError(ErrorCodes.TRUNCATED, `the stream was resumed at byte ${from}, past the ${this.length} bytes received: bytes ${this.length}..${from} are lost`, {
          details: { length: this.length, resume: from },
        }),
      );
    }
    this.awaitingResume = false;
    this.skip = this.length - from;
    this.hello ??= fields;
  }

  private verify(fields: Record<string, unknown>): void {
    const checksum = this.checksum.digest();
    if (fields.length !== this.length || fields.checksum !== checksum) {
      return this.fail(
        new StreamError(
          ErrorCodes.CORRUPT,
          `stream does not match its trailer: received ${this.length} bytes with checksum ${checksum}, trailer says ${String(fields.length)} bytes with ${String(fields.checksum)}`,
          { details: { length: this.length, checksum, expectedLength: fields.length, expectedChecksum: fields.checksum } },
        ),
      );
    }
    this.state = 'verified';
    const ack = encodeControl(FrameType.ACK, this.channel, { length: this.length });
    if (!this.acknowledge) farewell(this.conn, ack);
    else {
      this.acknowledge().then(
        () => farewell(this.conn, ack),
        (err: unknown) => farewell(this.conn, abortFrame(this.channel, err as Error, ErrorCodes.CONSUMER_GONE)),
      );
    }
    this.push(null);
  }

  /** Something went wrong: tell the producer (unless it told us), error the stream. */
  private fail(err: Error, tellProducer = true): void {
    if (this.state !== 'open') return;
    this.state = 'failed';
    farewell(this.conn, tellProducer ? abortFrame(this.channel, err, ErrorCodes.CONSUMER_GONE) : undefined);
    this.destroy(err);
  }

  override _read(): void {
    if (this.inputPaused) {
      this.inputPaused = false;
      this.conn.input.resume();
    }
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    if (this.state === 'open') {
      // the consumer gave up before the end: the producer must learn it
      this.state = 'failed';
      farewell(this.conn, abortFrame(this.channel, err ?? new StreamError(ErrorCodes.CONSUMER_GONE, 'consumer closed the stream'), ErrorCodes.CONSUMER_GONE));
    }
    callback(err);
  }
}
