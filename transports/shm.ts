/**
 * `shm`: a fixed-size ring in a file on the runtime directory's tmpfs, with the `fifo` pair as its
 * doorbell. Producer → consumer bytes (the channel's frames, all of them) are copied into the ring
 * with positional writes and out of it with positional reads: one system call per ring slot
 * (up to `slotBytes`, 1 MiB by default) instead of one per 64 KiB pipe buffer. Only small
 * messages cross the FIFOs. Bounded memory: the ring is the buffer; the producer waits while it
 * is full, and a process's RSS does not hold it (Node has no mmap: the pages belong to tmpfs).
 *
 * Files, next to each other (mode 0600 unless `ListenOptions.mode` says otherwise):
 * - `<endpoint>`       FIFO, the doorbell, producer → consumer: "written up to N" messages.
 * - `<endpoint>.ack`   FIFO, consumer → producer: "read up to N" messages and the consumer's own
 *                      bytes (the channel layer's ACK / ABORT frames).
 * - `<endpoint>.ring`  regular file of `ringBytes` bytes, created by `listen` (ftruncate, then
 *                      filled with zeros so that its tmpfs pages are reserved at set-up, not
 *                      found missing mid-stream). A ring file that exists already is used with
 *                      the size it has; `dial` learns the size from the file.
 *
 * Wire, all integers big-endian. N is the count of stream bytes since the connection began;
 * byte N lives at ring offset N mod ringBytes.
 * - doorbell: a sequence of 8-byte messages, each one N as a u64: the producer has written every
 *   byte below N into the ring. N never decreases and never runs more than ringBytes ahead of
 *   the consumer's last "read up to". The producer's end of stream is EOF on the doorbell (it
 *   closes it after its last message); the channel layer's END frame inside the ring is what
 *   tells a clean end from a producer that died (then the channel says SLUICE_TRUNCATED).
 * - ack: messages of a 5-byte header (type u8, payload length u32) and a payload:
 *   type 1 READ  (payload: N as u64) the consumer has copied every byte below N out of the ring;
 *   type 2 BYTES (payload: 1 B..1 MiB) the consumer's bytes, in order;
 *   type 3 END   (no payload) the consumer ended its output; READ messages may still follow.
 *   EOF on the ack pipe without END means the consumer vanished: the producer's input fails with
 *   ECONNRESET and its output with EPIPE (the channel layer says SLUICE_CONSUMER_GONE).
 *
 * Opening order, as `fifo` (so neither side blocks): listen creates the FIFOs and the ring, then
 * opens the doorbell's read end; dial opens the ack read end, then the doorbell's write end
 * (retrying ENXIO/ENOENT until a listener exists), then the ring; accept waits until the
 * doorbell is readable, then opens the ack write end. An endpoint carries exactly one connection.
 *
 * Errors: as every transport's (transport.ts). A producer that sends a "written up to" the ring
 * cannot hold, or a consumer a "read up to" past what was written, breaks the wire: the other end's
 * stream fails with SLUICE_PROTOCOL.
 */
import fs from 'node:fs';
import net from 'node:net';
import { Readable, Writable } from 'node:stream';
import { promisify } from 'node:util';
import { ConnectError, ErrorCodes, ProtocolError, RequestError, codeOf, hasCode } from './errors.js';
import { ACK_SUFFIX, ensureFifos } from './fifo.js';
import { mediumError } from './streams.js';
import { DEFAULT_DIAL_TIMEOUT_MS, type AcceptOptions, type Connection, type DialOptions, type Listener, type ListenOptions, type Transport } from './transport.js';
import { abortedError, retryUntil } from './waiting.js';

const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_NONBLOCK } = fs.constants;
const openFd = promisify(fs.open);

export const RING_SUFFIX = '.ring';
/** Default ring size, bytes. */
export const SHM_DEFAULT_RING_BYTES = 8 * 1024 * 1024;
/** Bounds of `ringBytes`, bytes. */
export const SHM_MIN_RING_BYTES = 64 * 1024;
export const SHM_MAX_RING_BYTES = 1024 * 1024 * 1024;
/** Default largest read out of the ring in one call, bytes. */
export const SHM_DEFAULT_SLOT_BYTES = 1024 * 1024;

export interface ShmTransportOptions {
  /** Size of the ring file `listen` creates, bytes. Default 8 MiB; 64 KiB..1 GiB. */
  ringBytes?: number;
  /**
   * Largest read the consumer makes out of the ring in one call (and so the largest chunk its
   * input emits), bytes. Default 1 MiB, at most the ring's size.
   */
  slotBytes?: number;
}

const READ = 1;
const BYTES = 2;
const END = 3;
const ACK_HEADER = 5;
/** Largest BYTES payload; larger writes are split. */
const MAX_BYTES_PAYLOAD = 1024 * 1024;
/** The consumer's bytes the producer holds unread before it calls the peer broken (it sends a frame or two). */
const MAX_UNREAD_BYTES = 4 * 1024 * 1024;
/**
 * A producer waiting for room rings again this often: a FIFO's write end learns that its reader
 * is gone only when it writes, and a waiting producer would otherwise never write again.
 */
const WAITING_RING_MS = 250;

function u64(n: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeUInt32BE(Math.floor(n / 0x1_0000_0000), 0);
  b.writeUInt32BE(n >>> 0, 4);
  return b;
}
function readU64(b: Buffer, at: number): number {
  return b.readUInt32BE(at) * 0x1_0000_0000 + b.readUInt32BE(at + 4);
}
function ackMessage(type: number, payload?: Buffer): Buffer {
  const header = Buffer.allocUnsafe(ACK_HEADER + (payload?.length ?? 0));
  header[0] = type;
  header.writeUInt32BE(payload?.length ?? 0, 1);
  payload?.copy(header, ACK_HEADER);
  return header;
}

/** Write all of `bufs` at `position`: one pwritev, unless the kernel writes less. */
function writeAllAt(fd: number, bufs: Buffer[], position: number): void {
  const done = fs.writevSync(fd, bufs, position);
  let offset = 0;
  for (const b of bufs) {
    let at = Math.max(0, done - offset);
    while (at < b.length) at += fs.writeSync(fd, b, at, b.length - at, position + offset + at);
    offset += b.length;
  }
}

function readAllAt(fd: number, target: Buffer, offset: number, length: number, position: number): void {
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, target, offset + done, length - done, position + done);
    if (n === 0) throw Object.assign(new Error(`ring file is shorter than ${position + length} bytes`), { code: 'EIO' });
    done += n;
  }
}

/** Small messages on a pipe whose peer may stall: only the latest value is kept while the pipe is full. */
class Latest {
  private busy = false;
  private pending: number | undefined;
  constructor(
    private readonly socket: net.Socket,
    private readonly encode: (n: number) => Buffer,
  ) {
    socket.on('drain', () => {
      this.busy = false;
      const n = this.pending;
      this.pending = undefined;
      if (n !== undefined) this.send(n);
    });
  }
  send(n: number): void {
    if (this.socket.destroyed || this.socket.writableEnded) return;
    if (this.busy) {
      this.pending = n;
      return;
    }
    this.busy = !this.socket.write(this.encode(n));
  }
}

/** The producer's output: copies into the ring, rings the doorbell, waits for room. */
class RingOutput extends Writable {
  private written = 0;
  private freed = 0;
  private queue: Buffer[] = [];
  private callback: ((err?: Error | null) => void) | undefined;
  private consumerGone: Error | undefined;
  private readonly bell: Latest;
  private waitTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly fd: number,
    private readonly size: number,
    private readonly doorbell: net.Socket,
  ) {
    super({ decodeStrings: true });
    this.bell = new Latest(doorbell, u64);
    doorbell.on('error', (err) => this.destroy(err));
  }

  /** The consumer copied every byte below `n` out of the ring. */
  freedUpTo(n: number): void {
    if (n < this.freed || n > this.written) {
      this.destroy(new ProtocolError(`shm consumer said "read up to ${n}" with ${this.written} bytes written and ${this.freed} read before`));
      return;
    }
    this.freed = n;
    if (this.callback) this.fill();
  }

  /** The ack pipe ended without the consumer's END: nobody will free room again. */
  gone(): void {
    this.consumerGone = mediumError('EPIPE', 'shm consumer closed the ack pipe');
    if (this.callback) this.fill();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.queue = [chunk];
    this.callback = callback;
    this.fill();
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (err?: Error | null) => void): void {
    this.queue = chunks.map((c) => c.chunk);
    this.callback = callback;
    this.fill();
  }

  private fill(): void {
    let wrote = false;
    try {
      while (this.queue.length > 0) {
        const free = this.size - (this.written - this.freed);
        if (free === 0) break;
        const position = this.written % this.size;
        const room = Math.min(free, this.size - position);
        const bufs: Buffer[] = [];
        let n = 0;
        let used = 0;
        for (; used < this.queue.length && n < room; used++) {
          const b = this.queue[used]!;
          if (b.length <= room - n) {
            bufs.push(b);
            n += b.length;
          } else {
            bufs.push(b.subarray(0, room - n));
            this.queue[used] = b.subarray(room - n);
            n = room;
            break;
          }
        }
        this.queue = this.queue.slice(used);
        if (n > 0) writeAllAt(this.fd, bufs, position);
        this.written += n;
        wrote ||= n > 0;
      }
    } catch (err) {
      return this.settle(err as Error);
    }
    if (wrote) this.bell.send(this.written);
    if (this.queue.length === 0) return this.settle(null);
    if (this.consumerGone) return this.settle(this.consumerGone);
    this.waitTimer ??= setInterval(() => this.bell.send(this.written), WAITING_RING_MS).unref();
  }

  private settle(err: Error | null): void {
    clearInterval(this.waitTimer);
    this.waitTimer = undefined;
    this.queue = [];
    const cb = this.callback;
    this.callback = undefined;
    cb?.(err);
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (this.doorbell.destroyed) return callback(mediumError('EPIPE', 'shm doorbell closed'));
    // a failure on the way is the doorbell's 'error', which destroys this stream
    this.doorbell.once('finish', () => callback());
    this.doorbell.end(u64(this.written));
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    clearInterval(this.waitTimer);
    const cb = this.callback;
    this.callback = undefined;
    cb?.(err ?? mediumError('EPIPE', 'shm output destroyed'));
    this.doorbell.destroy();
    fs.close(this.fd, () => undefined);
    callback(err);
  }
}

/** The producer's input: the consumer's BYTES, parsed off the ack pipe with its READ messages. */
function producerSide(fd: number, size: number, doorbell: net.Socket, ack: net.Socket): Connection {
  const output = new RingOutput(fd, size, doorbell);
  let ended = false;
  const input = new Readable({
    read() {},
    destroy(err, callback) {
      if (output.destroyed || output.writableFinished) ack.destroy();
      callback(err);
    },
  });
  output.on('close', () => {
    if (input.destroyed || input.readableEnded) ack.destroy();
  });
  let held = Buffer.alloc(0);
  ack.on('data', (chunk: Buffer) => {
    let buf = held.length > 0 ? Buffer.concat([held, chunk]) : chunk;
    try {
      while (buf.length >= ACK_HEADER) {
        const type = buf[0]!;
        const length = buf.readUInt32BE(1);
        if (type === READ ? length !== 8 : type === BYTES ? length === 0 || length > MAX_BYTES_PAYLOAD : type !== END || length !== 0) {
          throw new ProtocolError(`shm consumer sent a malformed message (type ${type}, ${length} bytes)`);
        }
        if (buf.length < ACK_HEADER + length) break;
        const payload = buf.subarray(ACK_HEADER, ACK_HEADER + length);
        buf = buf.subarray(ACK_HEADER + length);
        if (type === READ) output.freedUpTo(readU64(payload, 0));
        else if (ended) throw new ProtocolError('shm consumer sent bytes after its END');
        else if (type === END) {
          ended = true;
          input.push(null);
        } else {
          // the consumer's bytes are a frame or two; the ack pipe must keep flowing for READs
          input.push(Buffer.from(payload));
          if (input.readableLength > MAX_UNREAD_BYTES) throw new ProtocolError(`shm consumer sent over ${MAX_UNREAD_BYTES} bytes the producer did not read`);
        }
      }
      held = Buffer.from(buf);
    } catch (err) {
      input.destroy(err as Error);
      output.destroy(err as Error);
    }
  });
  ack.on('end', () => {
    output.gone();
    if (!ended) input.destroy(mediumError('ECONNRESET', 'shm consumer vanished before ending its output'));
  });
  ack.on('error', (err) => {
    output.gone();
    input.destroy(err);
  });
  return {
    input,
    output,
    destroy(error?: Error) {
      input.destroy(error);
      output.destroy(error);
      ack.destroy();
    },
  };
}

/** The consumer's input: on "written up to N", positional reads of the ring, then "read up to". */
class RingInput extends Readable {
  private written = 0;
  private readAt = 0;
  private eof = false;
  private wanting = true;
  private pulling = false;
  private held = Buffer.alloc(0);

  constructor(
    private readonly fd: number,
    private readonly size: number,
    private readonly slotBytes: number,
    private readonly doorbell: net.Socket,
    private readonly readUpTo: (n: number) => void,
  ) {
    super({ highWaterMark: 64 * 1024 });
    // the doorbell always flows: it only moves a counter, the ring is what waits
    doorbell.on('data', (chunk: Buffer) => this.rung(chunk));
    doorbell.on('end', () => {
      this.eof = true;
      this.pull();
    });
    doorbell.on('error', (err) => this.destroy(err));
    doorbell.resume();
  }

  private rung(chunk: Buffer): void {
    const buf = this.held.length > 0 ? Buffer.concat([this.held, chunk]) : chunk;
    let at = 0;
    for (; at + 8 <= buf.length; at += 8) {
      const n = readU64(buf, at);
      if (n < this.written || n - this.readAt > this.size) {
        return void this.destroy(new ProtocolError(`shm producer said "written up to ${n}" with ${this.written} written and ${this.readAt} read before, on a ring of ${this.size} bytes`));
      }
      this.written = n;
    }
    this.held = Buffer.from(buf.subarray(at));
    this.pull();
  }

  override _read(): void {
    this.wanting = true;
    this.pull();
  }

  private pull(): void {
    if (this.pulling || this.destroyed) return;
    this.pulling = true;
    try {
      const from = this.readAt;
      while (this.wanting && this.readAt < this.written) {
        const n = Math.min(this.written - this.readAt, this.slotBytes);
        const chunk = Buffer.allocUnsafe(n);
        const position = this.readAt % this.size;
        const first = Math.min(n, this.size - position);
        readAllAt(this.fd, chunk, 0, first, position);
        if (first < n) readAllAt(this.fd, chunk, first, n - first, 0);
        this.readAt += n;
        this.wanting = this.push(chunk);
        if (this.destroyed) return;
      }
      if (this.readAt > from) this.readUpTo(this.readAt);
      if (this.eof && this.readAt === this.written && !this.readableEnded) {
        this.eof = false;
        this.push(null);
      }
    } catch (err) {
      this.destroy(err as Error);
    } finally {
      this.pulling = false;
    }
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.doorbell.destroy();
    fs.close(this.fd, () => undefined);
    callback(err);
  }
}

function consumerSide(fd: number, size: number, slotBytes: number, doorbell: net.Socket, ack: net.Socket): Connection {
  const reads = new Latest(ack, (n) => ackMessage(READ, u64(n)));
  const input = new RingInput(fd, size, slotBytes, doorbell, (n) => reads.send(n));
  const output = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      if (ack.destroyed) return callback(mediumError('EPIPE', 'shm producer closed the ack pipe'));
      for (let at = 0; at < chunk.length; at += MAX_BYTES_PAYLOAD) {
        const piece = chunk.subarray(at, at + MAX_BYTES_PAYLOAD);
        if (at + MAX_BYTES_PAYLOAD >= chunk.length) ack.write(ackMessage(BYTES, piece), (err) => callback(err));
        else ack.write(ackMessage(BYTES, piece));
      }
    },
    final(callback) {
      if (ack.destroyed) return callback(mediumError('EPIPE', 'shm producer closed the ack pipe'));
      ack.write(ackMessage(END), (err) => callback(err));
    },
    destroy(err, callback) {
      if (input.destroyed || input.readableEnded) ack.destroy();
      callback(err);
    },
  });
  ack.on('error', (err) => output.destroy(err));
  // the ack pipe carries READs as long as the input reads the ring: close it once both are done
  const closeWhenDone = (): void => {
    const inputDone = input.destroyed || input.readableEnded;
    const outputDone = output.destroyed || output.writableFinished;
    if (inputDone && outputDone && !ack.destroyed) ack.end();
  };
  input.on('end', closeWhenDone);
  input.on('close', closeWhenDone);
  output.on('finish', closeWhenDone);
  output.on('close', closeWhenDone);
  return {
    input,
    output,
    destroy(error?: Error) {
      input.destroy(error);
      output.destroy(error);
      ack.destroy();
    },
  };
}

/** An ack pipe for a producer that vanished before it could be opened: every write fails. */
function goneAck(endpoint: string): net.Socket {
  const socket = new net.Socket({ readable: false, writable: false });
  socket.on('error', () => undefined);
  queueMicrotask(() => socket.destroy(mediumError('EPIPE', `producer on ${endpoint} closed the ack pipe`)));
  return socket;
}

/** Create the ring file, or use the one that exists. Returns its fd, size and whether it was created. */
async function ensureRing(file: string, bytes: number, mode: number): Promise<{ fd: number; size: number; created: boolean }> {
  let fd: number;
  try {
    fd = await openFd(file, O_RDWR | O_CREAT | O_EXCL, mode);
  } catch (err) {
    if (!hasCode(err, 'EEXIST')) throw new ConnectError(ErrorCodes.UNAVAILABLE, `cannot create shm ring ${file}: ${(err as Error).message}`, { cause: err, details: { file } });
    const stat = await fs.promises.lstat(file);
    if (!stat.isFile()) throw new RequestError(ErrorCodes.INVALID, `${file} exists and is not a regular file; refusing to use it as a ring`, { details: { file } });
    checkRingSize(stat.size, file);
    return { fd: await openFd(file, O_RDWR), size: stat.size, created: false };
  }
  try {
    // the mode exactly, whatever the umask
    await promisify(fs.fchmod)(fd, mode);
    await promisify(fs.ftruncate)(fd, bytes);
    const zeros = Buffer.alloc(Math.min(bytes, 1024 * 1024));
    for (let at = 0; at < bytes; at += zeros.length) fs.writeSync(fd, zeros, 0, Math.min(zeros.length, bytes - at), at);
    return { fd, size: bytes, created: true };
  } catch (err) {
    fs.closeSync(fd);
    await fs.promises.unlink(file).catch(() => undefined);
    throw new ConnectError(ErrorCodes.UNAVAILABLE, `cannot reserve ${bytes} bytes for the shm ring ${file}: ${(err as Error).message}`, { cause: err, details: { file } });
  }
}

function checkRingSize(size: number, file: string): void {
  if (size < SHM_MIN_RING_BYTES || size > SHM_MAX_RING_BYTES) {
    throw new RequestError(ErrorCodes.INVALID, `shm ring ${file} is ${size} bytes, outside ${SHM_MIN_RING_BYTES}..${SHM_MAX_RING_BYTES}`, { details: { file, size } });
  }
}

class ShmListener implements Listener {
  private accepted = false;
  private closed = false;
  private pendingAbort: ((err: Error) => void) | undefined;

  constructor(
    readonly endpoint: string,
    private readonly doorbell: net.Socket,
    private readonly ring: { fd: number; size: number },
    private readonly slotBytes: number,
    /** files this listener created, removed on close */
    private readonly owned: string[],
  ) {
    doorbell.pause();
    doorbell.on('error', () => undefined);
  }

  accept(options: AcceptOptions = {}): Promise<Connection> {
    const { signal } = options;
    if (this.closed) return Promise.reject(new ConnectError(ErrorCodes.ABORTED, `listener on ${this.endpoint} closed`));
    if (this.accepted) {
      return Promise.reject(new RequestError(ErrorCodes.INVALID, `shm endpoint ${this.endpoint} carries exactly one connection, and it was accepted`));
    }
    if (signal?.aborted) return Promise.reject(abortedError('accept', signal));
    this.accepted = true;
    const doorbell = this.doorbell;
    return new Promise<Connection>((resolve, reject) => {
      const cleanup = (): void => {
        doorbell.off('readable', onReadable);
        signal?.removeEventListener('abort', onAbort);
        this.pendingAbort = undefined;
      };
      const fail = (err: Error): void => {
        cleanup();
        doorbell.destroy();
        fs.close(this.ring.fd, () => undefined);
        reject(err);
      };
      const onAbort = (): void => fail(abortedError('accept', signal));
      const onReadable = (): void => {
        cleanup();
        const make = (ack: net.Socket): void => resolve(consumerSide(this.ring.fd, this.ring.size, Math.min(this.slotBytes, this.ring.size), doorbell, ack));
        // the producer opened the ack pipe before the doorbell; ENXIO means it is gone again
        openFd(this.endpoint + ACK_SUFFIX, O_WRONLY | O_NONBLOCK).then(
          (fd) => make(new net.Socket({ fd, readable: false, writable: true })),
          () => make(goneAck(this.endpoint)),
        );
      };
      this.pendingAbort = fail;
      signal?.addEventListener('abort', onAbort, { once: true });
      doorbell.on('readable', onReadable);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.pendingAbort?.(new ConnectError(ErrorCodes.ABORTED, `listener on ${this.endpoint} closed`));
    if (!this.accepted) {
      this.doorbell.destroy();
      fs.close(this.ring.fd, () => undefined);
    }
    await Promise.all(this.owned.map((file) => fs.promises.unlink(file).catch(() => undefined)));
  }
}

export class ShmTransport implements Transport {
  readonly path = 'shm' as const;
  readonly ringBytes: number;
  readonly slotBytes: number;

  constructor(options: ShmTransportOptions = {}) {
    const ring = options.ringBytes ?? SHM_DEFAULT_RING_BYTES;
    if (!Number.isSafeInteger(ring) || ring < SHM_MIN_RING_BYTES || ring > SHM_MAX_RING_BYTES) {
      throw new RequestError(ErrorCodes.INVALID, `shm ringBytes must be an integer in ${SHM_MIN_RING_BYTES}..${SHM_MAX_RING_BYTES}, got ${ring}`);
    }
    const slot = options.slotBytes ?? Math.min(SHM_DEFAULT_SLOT_BYTES, ring);
    if (!Number.isSafeInteger(slot) || slot < 1 || slot > ring) {
      throw new RequestError(ErrorCodes.INVALID, `shm slotBytes must be an integer in 1..ringBytes (${ring}), got ${slot}`);
    }
    this.ringBytes = ring;
    this.slotBytes = slot;
  }

  async listen(endpoint: string, options: ListenOptions = {}): Promise<Listener> {
    const mode = options.mode ?? 0o600;
    const fifosCreated = await ensureFifos(endpoint, mode);
    const owned = fifosCreated ? [endpoint, endpoint + ACK_SUFFIX] : [];
    const removeOwned = (): Promise<unknown> => Promise.all(owned.map((f) => fs.promises.unlink(f).catch(() => undefined)));
    let ring;
    try {
      ring = await ensureRing(endpoint + RING_SUFFIX, this.ringBytes, mode);
    } catch (err) {
      await removeOwned();
      throw err;
    }
    if (ring.created) owned.push(endpoint + RING_SUFFIX);
    let fd: number;
    try {
      fd = await openFd(endpoint, O_RDONLY | O_NONBLOCK);
    } catch (err) {
      fs.close(ring.fd, () => undefined);
      await removeOwned();
      throw new ConnectError(ErrorCodes.UNAVAILABLE, `cannot open the shm doorbell ${endpoint}: ${(err as Error).message}`, { cause: err, details: { endpoint } });
    }
    return new ShmListener(endpoint, new net.Socket({ fd, readable: true, writable: false }), ring, this.slotBytes, owned);
  }

  dial(endpoint: string, options: DialOptions = {}): Promise<Connection> {
    const attempt = async (): Promise<Connection> => {
      const ackFd = await openFd(endpoint + ACK_SUFFIX, O_RDONLY | O_NONBLOCK);
      let doorbellFd: number | undefined;
      try {
        doorbellFd = await openFd(endpoint, O_WRONLY | O_NONBLOCK);
        const file = endpoint + RING_SUFFIX;
        let ringFd: number;
        try {
          ringFd = await openFd(file, O_RDWR);
        } catch (err) {
          throw new ConnectError(ErrorCodes.UNAVAILABLE, `${endpoint} is served, but its shm ring ${file} cannot be opened: ${(err as Error).message}`, { cause: err, details: { endpoint } });
        }
        const { size } = fs.fstatSync(ringFd);
        try {
          checkRingSize(size, file);
        } catch (err) {
          fs.closeSync(ringFd);
          throw err;
        }
        return producerSide(ringFd, size, new net.Socket({ fd: doorbellFd, readable: false, writable: true }), new net.Socket({ fd: ackFd, readable: true, writable: false }));
      } catch (err) {
        fs.close(ackFd, () => undefined);
        if (doorbellFd !== undefined) fs.close(doorbellFd, () => undefined);
        throw err;
      }
    };
    return retryUntil('dial shm', attempt, (err) => ['ENOENT', 'ENXIO'].includes(codeOf(err) ?? ''), {
      signal: options.signal,
      timeoutMs: options.timeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS,
      endpoint,
    });
  }
}

export const shmTransport = new ShmTransport();
