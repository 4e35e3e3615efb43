/**
 * Waiting helpers shared by the transports: dialing with retries until a deadline, and the
 * queue of connections waiting for `accept()`.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { ConnectError, ErrorCodes, SluiceError, fromSystemError } from './errors.js';
import type { AcceptOptions, Connection, Listener } from './transport.js';

export function abortedError(what: string, signal?: AbortSignal): ConnectError {
  return new ConnectError(ErrorCodes.ABORTED, `${what} aborted`, { cause: signal?.reason });
}

/**
 * Call `attempt` until it succeeds, it throws an error `retryable` refuses, the deadline passes
 * (SLUICE_UNAVAILABLE, with the last error as cause) or the signal fires (SLUICE_ABORTED).
 * Back-off starts at 1 ms and doubles up to 50 ms: a producer that starts a moment before its
 * consumer should not wait long.
 */
export async function retryUntil<T>(
  what: string,
  attempt: () => Promise<T>,
  retryable: (err: unknown) => boolean,
  options: { signal?: AbortSignal | undefined; timeoutMs: number; endpoint: string },
): Promise<T> {
  const { signal, timeoutMs, endpoint } = options;
  const deadline = performance.now() + timeoutMs;
  let delay = 1;
  for (;;) {
    if (signal?.aborted) throw abortedError(what, signal);
    try {
      return await attempt();
    } catch (err) {
      if (!retryable(err) || performance.now() + delay > deadline) {
        const translated = fromSystemError(err, 'dial', { endpoint });
        if (retryable(err)) {
          throw new ConnectError(ErrorCodes.UNAVAILABLE, `${what}: nothing served ${endpoint} within ${timeoutMs} ms`, {
            cause: err,
            details: { endpoint, timeoutMs },
          });
        }
        throw translated;
      }
    }
    try {
      await sleep(delay, undefined, signal ? { signal } : undefined);
    } catch {
      throw abortedError(what, signal);
    }
    delay = Math.min(delay * 2, 50);
  }
}

/**
 * Wait `ms`, or less if `signal` fires first; it resolves either way, never rejects, so a loop
 * that backs off between attempts checks `signal.aborted` itself after it. Its timer does not
 * keep the process alive, and no listener is left on `signal`. Where an abort should throw,
 * `setTimeout(ms, undefined, { signal })` from node:timers/promises is the one to use.
 */
export function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    timer.unref();
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

/** Connections that arrived before anyone asked for them, and `accept()` calls waiting for one. */
/** Hand every connection `listener` accepts to `serve`, until the listener is closed. */
export async function acceptEach(listener: Listener, serve: (conn: Connection) => void): Promise<void> {
  for (;;) {
    let conn: Connection;
    try {
      conn = await listener.accept();
    } catch {
      return; // closed
    }
    serve(conn);
  }
}

export class AcceptQueue {
  private ready: Connection[] = [];
  private waiting: Array<{ resolve: (c: Connection) => void; reject: (e: Error) => void }> = [];
  private closedWith: SluiceError | undefined;

  constructor(
    readonly endpoint: string,
    /** beyond this many unaccepted connections, new ones are dropped */
    private readonly maxPending = 64,
  ) {}

  offer(conn: Connection): void {
    const waiter = this.waiting.shift();
    if (waiter) return waiter.resolve(conn);
    if (this.closedWith || this.ready.length >= this.maxPending) {
      // no error: nobody listens on a connection that was never accepted; the producer sees a reset
      conn.destroy();
      return;
    }
    this.ready.push(conn);
  }

  take(options: AcceptOptions = {}): Promise<Connection> {
    const { signal } = options;
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (signal?.aborted) return Promise.reject(abortedError('accept', signal));
    const conn = this.ready.shift();
    if (conn) return Promise.resolve(conn);
    return new Promise<Connection>((resolve, reject) => {
      const onAbort = (): void => {
        this.waiting = this.waiting.filter((w) => w !== waiter);
        reject(abortedError('accept', signal));
      };
      const waiter = {
        resolve: (c: Connection) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(c);
        },
        reject: (e: Error) => {
          signal?.removeEventListener('abort', onAbort);
          reject(e);
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  close(): void {
    if (this.closedWith) return;
    this.closedWith = new ConnectError(ErrorCodes.ABORTED, `listener on ${this.endpoint} closed`);
    for (const w of this.waiting.splice(0)) w.reject(this.closedWith);
    for (const c of this.ready.splice(0)) c.destroy();
  }
}
