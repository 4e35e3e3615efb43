/**
 * `unix`: Unix domain stream sockets. One socket file per endpoint; a listener accepts any number
 * of connections. Both directions share the socket, so a Connection's input and output are the
 * same `net.Socket`.
 */
import fs from 'node:fs/promises';
import net from 'node:net';
import { ConnectError, ErrorCodes, RequestError, codeOf } from './errors.js';
import { DEFAULT_DIAL_TIMEOUT_MS, type Connection, type DialOptions, type Listener, type ListenOptions, type Transport } from './transport.js';
import { AcceptQueue, retryUntil } from './waiting.js';

/** Linux's sun_path holds 108 bytes including the terminating NUL. */
export const MAX_UNIX_PATH_BYTES = 107;

function socketConnection(socket: net.Socket): Connection {
  return {
    input: socket,
    output: socket,
    destroy: (error?: Error) => socket.destroy(error),
  };
}

/** Can a Unix socket live at `endpoint`? */
export function fitsUnixPath(endpoint: string): boolean {
  return Buffer.byteLength(endpoint) <= MAX_UNIX_PATH_BYTES;
}

function checkPath(endpoint: string): void {
  if (!fitsUnixPath(endpoint)) {
    throw new RequestError(ErrorCodes.INVALID, `unix socket path is ${Buffer.byteLength(endpoint)} bytes, over the limit of ${MAX_UNIX_PATH_BYTES}: use a shorter directory`, {
      details: { endpoint },
    });
  }
}

/** A socket file left by a process that died: nothing accepts on it, so it can be replaced. */
export async function removeStaleSocket(endpoint: string): Promise<void> {
  let stat;
  try {
    stat = await fs.lstat(endpoint);
  } catch {
    return;
  }
  if (!stat.isSocket()) {
    throw new RequestError(ErrorCodes.INVALID, `${endpoint} exists and is not a socket; refusing to replace it`, { details: { endpoint } });
  }
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(endpoint);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new ConnectError(ErrorCodes.INVALID, `${endpoint} is already served by another process`, { details: { endpoint } });
  await fs.unlink(endpoint).catch(() => undefined);
}

class UnixListener implements Listener {
  private readonly queue: AcceptQueue;
  private closed = false;

  constructor(
    readonly endpoint: string,
    private readonly server: net.Server,
    queue: AcceptQueue,
  ) {
    this.queue = queue;
  }

  accept(options?: { signal?: AbortSignal }): Promise<Connection> {
    return this.queue.take(options);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.queue.close();
    // Stop listening only: server.close()'s callback would wait for every accepted
    // connection to end, and those belong to their channels.
    this.server.close();
    await fs.unlink(this.endpoint).catch(() => undefined);
  }
}

export class UnixTransport implements Transport {
  readonly path = 'unix' as const;

  async listen(endpoint: string, options: ListenOptions = {}): Promise<Listener> {
    checkPath(endpoint);
    await removeStaleSocket(endpoint);
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: options.paused ?? false });
    // queued from the first moment: a peer may connect while the listen below is still settling
    const queue = new AcceptQueue(endpoint);
    server.on('connection', (socket) => queue.offer(socketConnection(socket)));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(endpoint, () => {
        server.off('error', reject);
        resolve();
      });
    }).catch((err: unknown) => {
      throw new ConnectError(ErrorCodes.UNAVAILABLE, `cannot listen on ${endpoint}: ${(err as Error).message}`, { cause: err, details: { endpoint } });
    });
    await fs.chmod(endpoint, options.mode ?? 0o600);
    return new UnixListener(endpoint, server, queue);
  }

  async dial(endpoint: string, options: DialOptions = {}): Promise<Connection> {
    checkPath(endpoint);
    const attempt = () =>
      new Promise<Connection>((resolve, reject) => {
        const socket = net.connect({ path: endpoint, allowHalfOpen: true });
        socket.once('connect', () => {
          socket.off('error', reject);
          resolve(socketConnection(socket));
        });
        socket.once('error', reject);
      });
    return retryUntil('dial unix', attempt, (err) => ['ENOENT', 'ECONNREFUSED'].includes(codeOf(err) ?? ''), {
      signal: options.signal,
      timeoutMs: options.timeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS,
      endpoint,
    });
  }
}

export const unixTransport = new UnixTransport();
