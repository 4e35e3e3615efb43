/**
 * The media a benchmark's processes talk over, both ends: raw sockets and FIFOs, Sluice's framed
 * transports, and channels of a Sluice run through a daemon. Shared by the two-process runs
 * (worker.ts) and the workflow steps (steps.ts).
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { connect } from '../client/index.js';
import { ChannelReader, ChannelWriter, fifoTransport, hasCode, unixTransport } from '../transports/index.js';
import { WS_STEPS, type RunRef, type Subject } from './protocol.js';

const { O_RDONLY, O_WRONLY, O_NONBLOCK } = fs.constants;
const openFd = promisify(fs.open);
const execFileAsync = promisify(execFile);

export interface Served {
  endpoint: string;
  stream: Promise<Readable>;
}

/** The producer's side: a Writable of payload bytes, and how to close it once the consumer has them all. */
export interface Dialed {
  out: Writable;
  close(): Promise<void>;
}

export function listenNet(server: net.Server, address: string | net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(address, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** A Unix socket path (absolute), or HOST:PORT. */
function socketAddress(address: string): { path: string } | { host: string; port: number } {
  if (address.startsWith('/')) return { path: address };
  const colon = address.lastIndexOf(':');
  const port = Number(address.slice(colon + 1));
  if (colon < 1 || !Number.isInteger(port)) throw new Error(`not a socket path or HOST:PORT: ${address}`);
  return { host: address.slice(0, colon), port };
}

/**
 * Nagle off on TCP, as the ws library does for Sluice's peer links: with one small record in
 * flight at a time and no data coming back on that connection, Nagle would wait for a delayed ACK.
 */
export async function connectTo(address: string, allowHalfOpen = false): Promise<net.Socket> {
  const at = socketAddress(address);
  const socket = 'path' in at ? net.connect({ path: at.path, allowHalfOpen }) : net.connect({ host: at.host, port: at.port, allowHalfOpen, noDelay: true });
  await once(socket, 'connect');
  return socket;
}

/** Listen on `address` (TCP: port 0 picks one); resolves with the address served. */
export async function listenOn(server: net.Server, address: string): Promise<string> {
  const at = socketAddress(address);
  await listenNet(server, at);
  return 'path' in at ? at.path : `${at.host}:${(server.address() as net.AddressInfo).port}`;
}

export function firstConnection(server: net.Server): Promise<net.Socket> {
  return new Promise((resolve) => {
    server.once('connection', (socket) => {
      server.close();
      resolve(socket);
    });
  });
}

function runOf(subject: Subject, run: RunRef | undefined): RunRef {
  if (!run) throw new Error(`a ${subject} job needs a run`);
  return run;
}

export async function serve(subject: Subject, endpoint: string, run: RunRef | undefined): Promise<Served> {
  switch (subject) {
    case 'raw-unix':
    case 'raw-tcp': {
      const server = net.createServer({ noDelay: true });
      const served = await listenOn(server, endpoint);
      return { endpoint: served, stream: firstConnection(server) };
    }
    case 'raw-fifo': {
      // as transports/fifo.ts: the read end first, non-blocking, so the writer's open succeeds
      await execFileAsync('mkfifo', ['-m', '600', '--', endpoint]);
      const fd = await openFd(endpoint, O_RDONLY | O_NONBLOCK);
      return { endpoint, stream: Promise.resolve(new net.Socket({ fd, readable: true, writable: false })) };
    }
    case 'unix':
    case 'fifo': {
      const listener = await (subject === 'unix' ? unixTransport : fifoTransport).listen(endpoint);
      const stream = listener.accept().then((conn) => {
        void listener.close();
        return new ChannelReader(conn);
      });
      return { endpoint, stream };
    }
    case 'ws':
    case 's3':
    case 'file': {
      const { id, token } = runOf(subject, run);
      const sl = await connect({ dir: endpoint, run: id, step: WS_STEPS.consumer, token });
      return { endpoint, stream: Promise.resolve(sl.input(WS_STEPS.producer)) };
    }
  }
}

async function openFifoWriter(endpoint: string): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await openFd(endpoint, O_WRONLY | O_NONBLOCK);
    } catch (err) {
      if (!hasCode(err, 'ENXIO') || attempt >= 1000) throw err;
      await sleep(5);
    }
  }
}

export async function dial(subject: Subject, endpoint: string, run: RunRef | undefined): Promise<Dialed> {
  switch (subject) {
    case 'raw-unix':
    case 'raw-tcp': {
      const socket = await connectTo(endpoint);
      // nothing comes back, but reading lets the consumer's FIN through so the socket can finish
      socket.resume();
      return {
        out: socket,
        close: async () => {
          socket.end();
          await finished(socket);
        },
      };
    }
    case 'raw-fifo': {
      const socket = new net.Socket({ fd: await openFifoWriter(endpoint), readable: false, writable: true });
      return {
        out: socket,
        close: async () => {
          socket.end();
          await finished(socket);
        },
      };
    }
    case 'unix':
    case 'fifo': {
      const writer = new ChannelWriter(await (subject === 'unix' ? unixTransport : fifoTransport).dial(endpoint));
      return {
        out: writer,
        close: async () => {
          writer.end();
          await finished(writer);
        },
      };
    }
    case 'ws':
    case 's3':
    case 'file': {
      const { id, token } = runOf(subject, run);
      const sl = await connect({ dir: endpoint, run: id, step: WS_STEPS.producer, token });
      const out = sl.output(WS_STEPS.consumer);
      return {
        out,
        // the output finishes once the consumer has verified the stream
        close: async () => {
          out.end();
          await finished(out);
        },
      };
    }
  }
}

