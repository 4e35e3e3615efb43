/**
 * `memory`: an in-process pipe pair. Endpoints are names in one `MemoryTransport` instance's
 * registry. It applies back-pressure like a socket (a write completes only when the peer's
 * reader has room, `highWaterMark` bytes per direction) and reports a vanished peer like one
 * (ECONNRESET), so it passes the same compliance suite as the real media and is a trustworthy
 * fake for unit tests.
 */
import { Readable, Writable } from 'node:stream';
import { ConnectError, ErrorCodes, hasCode } from './errors.js';
import { DEFAULT_DIAL_TIMEOUT_MS, type AcceptOptions, type Connection, type DialOptions, type Listener, type Transport } from './transport.js';
import { AcceptQueue, retryUntil } from './waiting.js';

/** Bytes buffered per direction before the writer waits, like a socket's kernel buffer. */
export const MEMORY_PIPE_BYTES = 256 * 1024;

function resetError(): Error {
  return Object.assign(new Error('peer vanished'), { code: 'ECONNRESET' });
}

/** One direction: what is written to `writable` comes out of `readable`. */
function pipe(highWaterMark: number): { readable: Readable; writable: Writable } {
  let resumeWriter: (() => void) | undefined;
  let ended = false;
  const readable = new Readable({
    highWaterMark,
    read() {
      const cb = resumeWriter;
      resumeWriter = undefined;
      cb?.();
    },
  });
  const writable = new Writable({
    highWaterMark,
    write(chunk: Buffer, _encoding, callback) {
      if (readable.destroyed) return callback(Object.assign(new Error('write after peer closed'), { code: 'EPIPE' }));
      if (readable.push(chunk)) callback();
      else resumeWriter = () => callback();
    },
    final(callback) {
      ended = true;
      if (!readable.destroyed) readable.push(null);
      callback();
    },
    destroy(error, callback) {
      // like a socket: what was sent before a clean end stays readable; otherwise a reset
      if (!ended && !readable.destroyed) readable.destroy(resetError());
      const cb = resumeWriter;
      resumeWriter = undefined;
      cb?.();
      callback(error);
    },
  });
  readable.on('close', () => {
    const cb = resumeWriter;
    resumeWriter = undefined;
    cb?.();
  });
  return { readable, writable };
}

function connectionPair(highWaterMark: number): [Connection, Connection] {
  const there = pipe(highWaterMark);
  const back = pipe(highWaterMark);
  // Destroying one end resets the peer's input (unless this end had ended cleanly) and fails
  // the peer's next write: what a socket's peer sees when this process dies.
  const make = (input: Readable, output: Writable): Connection => ({
    input,
    output,
    destroy(error?: Error) {
      input.destroy(error);
      output.destroy(error);
    },
  });
  return [make(back.readable, there.writable), make(there.readable, back.writable)];
}

class MemoryListener implements Listener {
  readonly queue: AcceptQueue;
  constructor(
    readonly endpoint: string,
    private readonly registry: Map<string, MemoryListener>,
  ) {
    this.queue = new AcceptQueue(endpoint);
  }
  accept(options?: AcceptOptions): Promise<Connection> {
    return this.queue.take(options);
  }
  async close(): Promise<void> {
    if (this.registry.get(this.endpoint) === this) this.registry.delete(this.endpoint);
    this.queue.close();
  }
}

export class MemoryTransport implements Transport {
  readonly path = 'memory' as const;
  private readonly listeners = new Map<string, MemoryListener>();

  constructor(private readonly highWaterMark = MEMORY_PIPE_BYTES) {}

  async listen(endpoint: string): Promise<Listener> {
    if (this.listeners.has(endpoint)) throw new ConnectError(ErrorCodes.INVALID, `${endpoint} is already served`, { details: { endpoint } });
    const listener = new MemoryListener(endpoint, this.listeners);
    this.listeners.set(endpoint, listener);
    return listener;
  }

  dial(endpoint: string, options: DialOptions = {}): Promise<Connection> {
    const attempt = async (): Promise<Connection> => {
      const listener = this.listeners.get(endpoint);
      if (!listener) throw Object.assign(new Error(`no listener on ${endpoint}`), { code: 'ENOENT' });
      const [mine, theirs] = connectionPair(this.highWaterMark);
      listener.queue.offer(theirs);
      return mine;
    };
    return retryUntil('dial memory', attempt, (err) => hasCode(err, 'ENOENT'), {
      signal: options.signal,
      timeoutMs: options.timeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS,
      endpoint,
    });
  }
}
