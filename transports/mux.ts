/**
 * Many connections over one link: the multiplexer under peer links between daemons.
 *
 * Each side of a link runs a `Mux`. Either side may open virtual connections to an endpoint
 * name the other side listens on; each is a full `Connection` (two byte streams), so the channel
 * protocol runs over it unchanged and the compliance suite applies to it. On the link, frames of
 * the ordinary codec carry the connection's id in their channel field:
 *
 * ```
 *  OPEN   { endpoint, window }   open a connection; the opener may receive `window` bytes
 *  CREDIT { bytes }              the receiver consumed bytes: the sender may send that many more;
 *                                the first CREDIT also says the OPEN was accepted
 *  DATA   bytes                  a piece of one direction's bytes
 *  CLOSE  {}                     the sender's direction ended (a half-close)
 *  RESET  { code, message }      the connection is abandoned (or the OPEN refused)
 * ```
 *
 * **Fairness and bounded memory.** A sender never has more than `windowBytes` unconsumed bytes
 * of a connection in flight: a stalled reader stops only its own connection, never the link or
 * the others, and a receiver buffers at most one window per connection. A peer that sends past
 * its credit breaks the protocol (SLUICE_PROTOCOL for that connection). Pieces are at most
 * `maxFramePayload`, so connections interleave finely on a busy link.
 *
 * **Faults.** When the link fails, every open connection's input is reset and its output
 * broken, as if its own socket had died: the channel layer reports SLUICE_TRUNCATED /
 * SLUICE_CONSUMER_GONE, never a clean end.
 *
 * The opener of a link uses odd connection ids, the other side even ones, so both can open at
 * once without coordination.
 */
import { Readable, Writable } from 'node:stream';
import { FrameDecoder, FrameType, HEADER_BYTES, encodeControl, writeHeader, type FrameSink } from './codec.js';
import { ConnectError, ErrorCodes, ProtocolError, codeOf, hasCode, isErrorCode } from './errors.js';
import { DEFAULT_DIAL_TIMEOUT_MS, type AcceptOptions, type Connection, type DialOptions, type Listener, type Transport } from './transport.js';
import { destroyWith, mediumError } from './streams.js';
import { AcceptQueue, retryUntil } from './waiting.js';
import type { Grant, MemoryBudget } from './budget.js';

export interface MuxOptions {
  /** Unconsumed bytes a connection may have in flight per direction, bytes. Default 2 MiB. */
  windowBytes?: number;
  /** Largest DATA piece on the link, bytes; smaller interleaves connections more finely. Default 256 KiB. */
  maxFramePayload?: number;
  /** Connections open at once on this link; OPENs beyond it are refused. Default 4096. */
  maxConnections?: number;
  /**
   * The memory budget each connection's receive window (what this side may have to buffer for
   * it) is granted from: `windowBytes` while the budget lasts, then less, down to
   * `MIN_WINDOW_BYTES`; a connection that cannot get that much is refused (SLUICE_UNAVAILABLE,
   * naming the budget). Default: none, every window is `windowBytes`.
   */
  budget?: MemoryBudget;
}

/** The smallest receive window a connection is opened with when the memory budget is short, bytes. */
export const MIN_WINDOW_BYTES = 64 * 1024;

/** What to do with a connection opened to `endpoint`; throw a SluiceError to refuse it. */
export type OpenHandler = (endpoint: string) => (conn: Connection) => void;

const LINK_FAILED = Symbol('sluice.linkFailed');

/**
 * Did this error end a connection because its whole link failed (rather than the peer resetting
 * that one connection)? A daemon resumes such a stream through the object store.
 */
export function isLinkFailure(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as Record<symbol, unknown>)[LINK_FAILED] === true;
}

/** How long a retired link that has ended its side waits for the peer to end its own, ms. */
const RETIRED_LINGER_MS = 5_000;

const DEFAULTS = { windowBytes: 2 * 1024 * 1024, maxFramePayload: 256 * 1024, maxConnections: 4096 };


/** One virtual connection's state on this side. */
class Virtual implements Connection {
  readonly input: Readable;
  readonly output: Writable;
  /** bytes we may still send */
  credit = 0;
  /** bytes received, and bytes the peer was told it may send again */
  received = 0;
  granted = 0;
  inputEnded = false;
  outputEnded = false;
  reset = false;
  /** a write waiting for credit */
  waitingForCredit: (() => void) | undefined;

  constructor(
    readonly id: number,
    private readonly mux: Mux,
    /** what this side buffers for the connection at most, bytes */
    readonly window: number,
    /** the memory-budget grant behind `window`, given back when the connection is forgotten */
    readonly grant?: Grant,
  ) {
    // Credit is returned from _read, which Readable calls again only after a push. With the
    // high-water mark at half the window and grants of at least a quarter, a skipped grant
    // always leaves the peer a quarter window of credit, so a push (and another _read) follows.
    this.input = new Readable({
      highWaterMark: Math.max(1, window >>> 1),
      read: () => this.grantCredit(),
    });
    this.output = new Writable({
      highWaterMark: 256 * 1024,
      write: (chunk: Buffer, _encoding, callback) => this.mux.sendData(this, chunk, callback),
      final: (callback) => {
        this.outputEnded = true;
        this.mux.sendControl(FrameType.CLOSE, this.id, {});
        this.mux.forgetIfDone(this);
        callback();
      },
      destroy: (error, callback) => {
        if (!this.outputEnded && !this.reset) this.abandon(error ?? undefined);
        callback(error);
      },
    });
    this.input.on('close', () => {
      if (!this.inputEnded && !this.reset) this.abandon(undefined);
    });
  }

  /** Give the peer back the credit for what the reader consumed, a quarter window at a time. */
  private grantCredit(): void {
    if (this.reset) return;
    const consumed = this.received - this.input.readableLength;
    const grant = consumed - this.granted;
    if (grant > 0 && grant * 4 >= this.window) {
      this.granted += grant;
      this.mux.sendControl(FrameType.CREDIT, this.id, { bytes: grant });
    }
  }

  /** Tell the peer this connection is abandoned, once. */
  abandon(error: Error | undefined): void {
    if (this.reset) return;
    this.reset = true;
    const given = codeOf(error);
    const code = isErrorCode(given) ? given : ErrorCodes.CONSUMER_GONE;
    this.mux.sendControl(FrameType.RESET, this.id, { code, message: error?.message ?? 'connection closed' });
    this.mux.forget(this);
  }

  /** The peer reset the connection, or the link failed: fail both streams like a dead socket's. */
  broken(why: string, linkFailed: boolean): void {
    this.reset = true;
    this.waitingForCredit = undefined;
    const mark = (err: Error): Error => (linkFailed ? Object.assign(err, { [LINK_FAILED]: true }) : err);
    if (!this.inputEnded) destroyWith(this.input, mark(mediumError('ECONNRESET', why)));
    if (!this.output.writableFinished) destroyWith(this.output, mark(mediumError('EPIPE', why)));
    this.mux.forget(this);
  }

  destroy(error?: Error): void {
    if (!this.reset && !(this.inputEnded && this.outputEnded)) this.abandon(error);
    this.input.destroy(error);
    this.output.destroy(error);
  }
}

export class Mux {
  private readonly windowBytes: number;
  private readonly budget: MemoryBudget | undefined;
  private readonly maxFramePayload: number;
  private readonly maxConnections: number;
  private readonly connections = new Map<number, Virtual>();
  private readonly listeners = new Map<string, AcceptQueue>();
  private readonly opening = new Map<number, { resolve: (c: Connection) => void; reject: (e: Error) => void }>();
  /** highest id seen or used, per parity: frames for lower, unknown ids are late and dropped */
  private highest = [0, 0];
  private nextId: number;
  private readonly decoder: FrameDecoder;
  private linkWaiters: Array<() => void> = [];
  private failure: Error | undefined;
  /** set by retire(): the reason the link closes once idle */
  private retired: Error | undefined;
  private ending = false;
  private handler: OpenHandler | undefined;
  private resolveClosed!: (why: Error) => void;
  /** Settles, with the reason, when the link has failed or was closed. */
  readonly closed: Promise<Error> = new Promise((resolve) => (this.resolveClosed = resolve));
  /** DATA payload bytes sent and received on this link, all connections together. */
  bytesSent = 0;
  bytesReceived = 0;

  constructor(
    private readonly link: Connection,
    /** the side that opened the link uses odd ids, the other even ones */
    side: 'dialer' | 'listener',
    options: MuxOptions = {},
  ) {
    this.windowBytes = options.windowBytes ?? DEFAULTS.windowBytes;
    this.budget = options.budget;
    this.maxFramePayload = options.maxFramePayload ?? DEFAULTS.maxFramePayload;
    this.maxConnections = options.maxConnections ?? DEFAULTS.maxConnections;
    this.nextId = side === 'dialer' ? 1 : 2;
    this.decoder = new FrameDecoder({ maxFramePayload: this.maxFramePayload });
    link.output.on('drain', () => {
      const waiters = this.linkWaiters;
      this.linkWaiters = [];
      for (const w of waiters) w();
    });
    link.output.on('error', (err) => this.fail(err));
    link.input.on('data', (chunk: Buffer) => {
      try {
        this.decoder.push(chunk, this.sink);
      } catch (err) {
        this.fail(err as Error);
      }
    });
    link.input.resume(); // it may have been paused by a handshake before the multiplexer took over
    link.input.on('end', () => this.fail(new ConnectError(ErrorCodes.UNAVAILABLE, 'peer link closed')));
    link.input.on('error', (err) => this.fail(err));
    link.input.on('close', () => this.fail(new ConnectError(ErrorCodes.UNAVAILABLE, 'peer link closed')));
  }

  /** Connections open now. */
  get size(): number {
    return this.connections.size;
  }

  /** Accept connections the peer opens to `endpoint`. */
  listen(endpoint: string): Listener {
    if (this.listeners.has(endpoint)) throw new ConnectError(ErrorCodes.INVALID, `${endpoint} is already served on this link`);
    const queue = new AcceptQueue(endpoint);
    this.listeners.set(endpoint, queue);
    return {
      endpoint,
      accept: (options?: AcceptOptions) => queue.take(options),
      close: async () => {
        if (this.listeners.get(endpoint) === queue) this.listeners.delete(endpoint);
        queue.close();
      },
    };
  }

  /**
   * Accept OPENs to endpoints nobody `listen`s on: `handler(endpoint)` returns what to do with the
   * connection, or throws a SluiceError to refuse it (its code and message go back to the opener).
   */
  serve(handler: OpenHandler): void {
    this.handler = handler;
  }

  /** Is the link still up? */
  get up(): boolean {
    return this.failure === undefined;
  }

  /** Open a connection to `endpoint` on the peer; rejects with the peer's reason if refused. */
  open(endpoint: string): Promise<Connection> {
    if (this.retired && !this.failure) return Promise.reject(new ConnectError(ErrorCodes.UNAVAILABLE, `peer link was replaced: ${this.retired.message}`, { cause: this.retired, details: { link: 'replaced' } }));
    if (this.failure) return Promise.reject(new ConnectError(ErrorCodes.UNAVAILABLE, `peer link is down: ${this.failure.message}`, { cause: this.failure, details: { link: 'down' } }));
    const grant = this.budget?.tryTake(this.windowBytes, MIN_WINDOW_BYTES);
    if (this.budget && !grant) return Promise.reject(this.budgetFull());
    const window = grant?.bytes ?? this.windowBytes;
    const id = this.nextId;
    this.nextId += 2;
    this.highest[id & 1] = id;
    const vc = new Virtual(id, this, window, grant);
    this.connections.set(id, vc);
    return new Promise<Connection>((resolve, reject) => {
      this.opening.set(id, { resolve, reject });
      this.sendControl(FrameType.OPEN, id, { endpoint, window });
    });
  }

  /**
   * Take no more connections of ours on this link, and close it once every connection on it has
   * finished (at once when there is none): a link replaced by a newer one keeps carrying the
   * streams already on it instead of breaking them. The peer may still open connections on it
   * until it has switched too; they are served, and the link waits for them as well.
   */
  retire(why: Error): void {
    if (this.failure) return;
    this.retired = why;
    this.closeIfRetiredAndIdle();
  }

  private closeIfRetiredAndIdle(): void {
    if (!this.retired || this.ending || this.failure || this.connections.size > 0 || this.opening.size > 0) return;
    this.ending = true;
    // ended, not destroyed: the last frames of the connections that just finished are still on their way
    this.link.output.end();
    const retired = this.retired;
    setTimeout(() => this.close(retired), RETIRED_LINGER_MS).unref();
  }

  /** Close the link and every connection on it. */
  close(error?: Error): void {
    this.fail(error ?? new ConnectError(ErrorCodes.UNAVAILABLE, 'peer link closed locally'));
    this.link.destroy();
  }

  private readonly sink: FrameSink = {
    data: (id, bytes) => {
      const vc = this.connections.get(id);
      if (!vc) return this.late(id, 'DATA');
      if (vc.inputEnded) throw new ProtocolError(`DATA after CLOSE on connection ${id}`);
      vc.received += bytes.length;
      this.bytesReceived += bytes.length;
      if (vc.received - vc.granted > vc.window) {
        // the peer ignored its credit: refuse this connection, not the link
        vc.abandon(new ProtocolError(`connection ${id} sent past its window of ${vc.window} bytes`));
        destroyWith(vc.input, new ProtocolError(`peer sent past the window on connection ${id}`));
        vc.output.destroy();
        return;
      }
      vc.input.push(bytes);
    },
    control: (type, id, fields) => {
      switch (type) {
        case FrameType.OPEN:
          return this.onOpen(id, fields);
        case FrameType.CREDIT: {
          const vc = this.connections.get(id);
          if (!vc) return this.late(id, 'CREDIT');
          const bytes = fields.bytes;
          if (!Number.isInteger(bytes) || (bytes as number) <= 0) throw new ProtocolError(`bad CREDIT on connection ${id}`);
          vc.credit += bytes as number;
          const pending = this.opening.get(id);
          if (pending) {
            this.opening.delete(id);
            pending.resolve(vc);
          }
          const wake = vc.waitingForCredit;
          vc.waitingForCredit = undefined;
          wake?.();
          return;
        }
        case FrameType.CLOSE: {
          const vc = this.connections.get(id);
          if (!vc) return this.late(id, 'CLOSE');
          vc.inputEnded = true;
          vc.input.push(null);
          this.forgetIfDone(vc);
          return;
        }
        case FrameType.RESET: {
          const pending = this.opening.get(id);
          const vc = this.connections.get(id);
          if (pending) {
            this.opening.delete(id);
            if (vc) this.forget(vc);
            const code = isErrorCode(fields.code) ? fields.code : ErrorCodes.UNAVAILABLE;
            pending.reject(new ConnectError(code, `peer refused the connection: ${String(fields.message)}`));
            return;
          }
          if (!vc) return;
          vc.broken(`peer reset the connection: ${String(fields.message)}`, false);
          return;
        }
        default:
          throw new ProtocolError(`unexpected frame type ${type} on a peer link`);
      }
    },
  };

  private onOpen(id: number, fields: Record<string, unknown>): void {
    const ours = (id & 1) === (this.nextId & 1);
    if (id === 0 || ours || id <= this.highest[id & 1]!) throw new ProtocolError(`OPEN with an invalid id ${id}`);
    this.highest[id & 1] = id;
    const window = fields.window;
    if (typeof fields.endpoint !== 'string' || !Number.isInteger(window) || (window as number) < 1) throw new ProtocolError(`bad OPEN on connection ${id}`);
    const endpoint = fields.endpoint;
    const queue = this.listeners.get(endpoint);
    const refuse = (code: string, message: string): void => this.sendControl(FrameType.RESET, id, { code, message });
    if (this.connections.size >= this.maxConnections) return refuse(ErrorCodes.UNAVAILABLE, `too many connections on this link (${this.maxConnections})`);
    // before the handler: one that accepted the connection would otherwise be left holding it
    const grant = this.budget?.tryTake(this.windowBytes, MIN_WINDOW_BYTES);
    if (this.budget && !grant) return refuse(ErrorCodes.UNAVAILABLE, this.budgetFull().message);
    let take: ((conn: Connection) => void) | undefined;
    if (queue) take = (conn) => queue.offer(conn);
    else if (this.handler) {
      try {
        take = this.handler(endpoint);
      } catch (err) {
        grant?.release();
        const code = codeOf(err);
        return refuse(isErrorCode(code) ? code : ErrorCodes.UNAVAILABLE, (err as Error).message);
      }
    }
    if (!take) {
      grant?.release();
      return refuse(ErrorCodes.UNAVAILABLE, `nothing listens on ${endpoint}`);
    }
    const receiveWindow = grant?.bytes ?? this.windowBytes;
    const vc = new Virtual(id, this, receiveWindow, grant);
    vc.credit = window as number;
    this.connections.set(id, vc);
    this.sendControl(FrameType.CREDIT, id, { bytes: receiveWindow });
    take(vc);
  }

  /** A frame for a connection we do not know: late (after a reset) if its id was seen, else a violation. */
  private late(id: number, what: string): void {
    if (id === 0 || id > this.highest[id & 1]!) throw new ProtocolError(`${what} for unknown connection ${id}`);
  }

  sendControl(type: Exclude<FrameType, typeof FrameType.DATA>, id: number, fields: object): void {
    if (this.failure || this.link.output.destroyed) return;
    this.link.output.write(encodeControl(type, id, fields));
  }

  /** Send a write's bytes as credit allows, in pieces; `done` when all of it is on the link. */
  sendData(vc: Virtual, chunk: Buffer, done: (err?: Error | null) => void): void {
    let offset = 0;
    const pump = (): void => {
      if (vc.reset || this.failure) return done(mediumError('EPIPE', 'connection reset'));
      while (offset < chunk.length) {
        if (vc.credit === 0) {
          vc.waitingForCredit = pump;
          return;
        }
        const n = Math.min(vc.credit, chunk.length - offset, this.maxFramePayload);
        vc.credit -= n;
        this.bytesSent += n;
        const header = Buffer.allocUnsafe(HEADER_BYTES);
        writeHeader(header, 0, FrameType.DATA, vc.id, n);
        const out = this.link.output;
        out.cork();
        out.write(header);
        const ok = out.write(chunk.subarray(offset, offset + n));
        out.uncork();
        offset += n;
        if (!ok) {
          this.linkWaiters.push(pump);
          return;
        }
      }
      done();
    };
    pump();
  }

  private budgetFull(): ConnectError {
    const budget = this.budget!;
    return new ConnectError(ErrorCodes.UNAVAILABLE, `the daemon's memory budget (${budget.limit} bytes) is held by other streams: no room for a ${MIN_WINDOW_BYTES}-byte window`, {
      details: { budget: budget.limit, used: budget.used },
    });
  }

  forgetIfDone(vc: Virtual): void {
    if (vc.inputEnded && vc.outputEnded) this.forget(vc);
  }

  forget(vc: Virtual): void {
    vc.grant?.release();
    this.connections.delete(vc.id);
    this.closeIfRetiredAndIdle();
  }

  private fail(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    this.resolveClosed(error);
    for (const [, pending] of this.opening) pending.reject(new ConnectError(ErrorCodes.UNAVAILABLE, `peer link failed: ${error.message}`, { cause: error, details: { link: 'down' } }));
    this.opening.clear();
    for (const vc of [...this.connections.values()]) vc.broken(`peer link failed: ${error.message}`, true);
    for (const queue of this.listeners.values()) queue.close();
    const waiters = this.linkWaiters;
    this.linkWaiters = [];
    for (const w of waiters) w();
    this.link.destroy();
  }
}

/**
 * A Transport over a link's two Muxes: `listen` registers on one, `dial` opens through the
 * other, waiting (up to `timeoutMs`) while nothing listens on the far side yet.
 */
export class MuxTransport implements Transport {
  readonly path = 'ws' as const;

  constructor(
    private readonly dialSide: Mux,
    private readonly listenSide: Mux,
  ) {}

  async listen(endpoint: string): Promise<Listener> {
    return this.listenSide.listen(endpoint);
  }

  dial(endpoint: string, options: DialOptions = {}): Promise<Connection> {
    return retryUntil(
      'dial over the peer link',
      () => this.dialSide.open(endpoint),
      // nothing listens yet: wait for it; the link itself down: no point waiting
      (err) => hasCode(err, ErrorCodes.UNAVAILABLE) && (err as { details?: { link?: string } }).details?.link !== 'down',
      { signal: options.signal, timeoutMs: options.timeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS, endpoint },
    );
  }
}
