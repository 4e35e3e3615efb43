/**
 * `fifo`: a pair of named pipes per endpoint. `<endpoint>` carries the producer's bytes to the
 * consumer; `<endpoint>.ack` carries the consumer's few control frames back (verification,
 * refusal). A FIFO endpoint carries exactly one connection: a channel is one producer instance
 * and one consumer instance, and two writers on one pipe would interleave.
 *
 * Both ends are opened non-blocking and wrapped in `net.Socket`, so waiting for data parks in
 * the event loop (epoll) rather than holding a libuv threadpool thread: four blocked `fs`
 * readers would starve the whole process.
 *
 * Opening order, so neither side ever blocks:
 * - listen: mkfifo both (mode 0600), open `<endpoint>` read-only. From now on producers can
 *   open its write end (before that, the kernel answers ENXIO).
 * - dial: open `<endpoint>.ack` read-only (always succeeds), then `<endpoint>` write-only,
 *   retrying ENXIO/ENOENT until a listener exists or the timeout passes.
 * - accept: wait until `<endpoint>` is readable (the producer is there, and has opened the ack
 *   pipe already), then open `<endpoint>.ack` write-only.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { promisify } from 'node:util';
import { ConnectError, ErrorCodes, RequestError, codeOf, hasCode } from './errors.js';
import { DEFAULT_DIAL_TIMEOUT_MS, type AcceptOptions, type Connection, type DialOptions, type Listener, type ListenOptions, type Transport } from './transport.js';
import { abortedError, retryUntil } from './waiting.js';

const { O_RDONLY, O_WRONLY, O_NONBLOCK } = fs.constants;
const openFd = promisify(fs.open);
const run = promisify(execFile);

export const ACK_SUFFIX = '.ack';

function readSocket(fd: number): net.Socket {
  return new net.Socket({ fd, readable: true, writable: false });
}
function writeSocket(fd: number): net.Socket {
  return new net.Socket({ fd, readable: false, writable: true });
}

function pairConnection(input: net.Socket, output: net.Socket): Connection {
  return {
    input,
    output,
    destroy(error?: Error) {
      input.destroy(error);
      output.destroy(error);
    },
  };
}

/**
 * Create the endpoint's two FIFOs (`<endpoint>`, `<endpoint>.ack`), or check that existing files are
 * FIFOs. Returns whether it created them. Shared with shm.ts, whose doorbell is this pair.
 */
export async function ensureFifos(endpoint: string, mode: number): Promise<boolean> {
  const missing: string[] = [];
  for (const file of [endpoint, endpoint + ACK_SUFFIX]) {
    try {
      const stat = await fs.promises.lstat(file);
      if (!stat.isFIFO()) throw new RequestError(ErrorCodes.INVALID, `${file} exists and is not a FIFO; refusing to use it`, { details: { endpoint } });
    } catch (err) {
      if (!hasCode(err, 'ENOENT')) throw err;
      missing.push(file);
    }
  }
  if (missing.length === 0) return false;
  try {
    // Node has no mkfifo(3); coreutils' mkfifo is on every Linux image Sluice runs on.
    await run('mkfifo', ['-m', mode.toString(8), '--', ...missing]);
  } catch (err) {
    throw new ConnectError(ErrorCodes.UNAVAILABLE, `cannot create FIFO ${missing.join(', ')}: ${(err as Error).message}`, { cause: err, details: { endpoint } });
  }
  return true;
}

/** An output for a producer that vanished before the ack pipe was opened: every write fails. */
function goneOutput(endpoint: string): net.Socket {
  const socket = new net.Socket({ readable: false, writable: false });
  const err = Object.assign(new Error(`producer on ${endpoint} closed the ack pipe`), { code: 'EPIPE' });
  queueMicrotask(() => socket.destroy(err));
  return socket;
}

class FifoListener implements Listener {
  private accepted = false;
  private closed = false;
  private pendingAbort: ((err: Error) => void) | undefined;

  constructor(
    readonly endpoint: string,
    private readonly data: net.Socket,
    /** remove the FIFOs on close: only when this listener created them */
    private readonly owned: boolean,
  ) {
    // Until accept() takes it, the data socket must not flow or error unobserved.
    data.pause();
    data.on('error', () => undefined);
  }

  accept(options: AcceptOptions = {}): Promise<Connection> {
    const { signal } = options;
    if (this.closed) return Promise.reject(new ConnectError(ErrorCodes.ABORTED, `listener on ${this.endpoint} closed`));
    if (this.accepted) {
      return Promise.reject(new RequestError(ErrorCodes.INVALID, `fifo endpoint ${this.endpoint} carries exactly one connection, and it was accepted`));
    }
    if (signal?.aborted) return Promise.reject(abortedError('accept', signal));
    this.accepted = true;
    const data = this.data;
    return new Promise<Connection>((resolve, reject) => {
      const cleanup = (): void => {
        data.off('readable', onReadable);
        signal?.removeEventListener('abort', onAbort);
        this.pendingAbort = undefined;
      };
      const fail = (err: Error): void => {
        cleanup();
        data.destroy();
        reject(err);
      };
      const onAbort = (): void => fail(abortedError('accept', signal));
      const onReadable = (): void => {
        cleanup();
        // The producer opened the ack pipe before it opened ours; ENXIO means it is gone again.
        openFd(this.endpoint + ACK_SUFFIX, O_WRONLY | O_NONBLOCK).then(
          (fd) => resolve(pairConnection(data, writeSocket(fd))),
          () => resolve(pairConnection(data, goneOutput(this.endpoint))),
        );
      };
      this.pendingAbort = fail;
      signal?.addEventListener('abort', onAbort, { once: true });
      data.on('readable', onReadable);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.pendingAbort?.(new ConnectError(ErrorCodes.ABORTED, `listener on ${this.endpoint} closed`));
    if (!this.accepted) this.data.destroy();
    if (!this.owned) return;
    await Promise.all([fs.promises.unlink(this.endpoint), fs.promises.unlink(this.endpoint + ACK_SUFFIX)].map((p) => p.catch(() => undefined)));
  }
}

export class FifoTransport implements Transport {
  readonly path = 'fifo' as const;

  async listen(endpoint: string, options: ListenOptions = {}): Promise<Listener> {
    const created = await ensureFifos(endpoint, options.mode ?? 0o600);
    const fd = await openFd(endpoint, O_RDONLY | O_NONBLOCK);
    return new FifoListener(endpoint, readSocket(fd), created);
  }

  dial(endpoint: string, options: DialOptions = {}): Promise<Connection> {
    const attempt = async (): Promise<Connection> => {
      const ackFd = await openFd(endpoint + ACK_SUFFIX, O_RDONLY | O_NONBLOCK);
      let dataFd: number;
      try {
        dataFd = await openFd(endpoint, O_WRONLY | O_NONBLOCK);
      } catch (err) {
        fs.close(ackFd, () => undefined);
        throw err;
      }
      return pairConnection(readSocket(ackFd), writeSocket(dataFd));
    };
    return retryUntil('dial fifo', attempt, (err) => ['ENOENT', 'ENXIO'].includes(codeOf(err) ?? ''), {
      signal: options.signal,
      timeoutMs: options.timeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS,
      endpoint,
    });
  }
}

export const fifoTransport = new FifoTransport();
