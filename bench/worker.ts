/**
 * One side of one benchmark run, in its own process: started by run.ts with the job as its only
 * argument (JSON), it reports 'ready' (consumers, relays) and then its 'result' over IPC.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import { createHistogram } from 'node:perf_hooks';
import type { Readable, Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { connect } from '../client/index.js';
import { ChannelReader, ChannelWriter, fifoTransport, unixTransport } from '../transports/index.js';
import { BLOCK_BYTES, MiB, RECORD_BYTES, Verifier, cpuMsSince, makeBlock, nowNs, pump } from './data.js';
import { WS_STEPS, type Job, type RunRef, type Subject, type WorkerMessage } from './protocol.js';

const { O_RDONLY, O_WRONLY, O_NONBLOCK } = fs.constants;
const openFd = promisify(fs.open);
const execFileAsync = promisify(execFile);

function send(message: WorkerMessage): Promise<void> {
  return new Promise((resolve, reject) => {
    process.send!(message, undefined, {}, (err) => (err ? reject(err) : resolve()));
  });
}

/** The consumer's side of a medium: the endpoint it serves, and its payload stream once a producer came. */
interface Served {
  endpoint: string;
  stream: Promise<Readable>;
}

/** The producer's side: a Writable of payload bytes, and how to close it once the consumer has them all. */
interface Dialed {
  out: Writable;
  close(): Promise<void>;
}

function listenNet(server: net.Server, address: string | net.ListenOptions): Promise<void> {
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
async function connectTo(address: string, allowHalfOpen = false): Promise<net.Socket> {
  const at = socketAddress(address);
  const socket = 'path' in at ? net.connect({ path: at.path, allowHalfOpen }) : net.connect({ host: at.host, port: at.port, allowHalfOpen, noDelay: true });
  await once(socket, 'connect');
  return socket;
}

/** Listen on `address` (TCP: port 0 picks one); resolves with the address served. */
async function listenOn(server: net.Server, address: string): Promise<string> {
  const at = socketAddress(address);
  await listenNet(server, at);
  return 'path' in at ? at.path : `${at.host}:${(server.address() as net.AddressInfo).port}`;
}

function firstConnection(server: net.Server): Promise<net.Socket> {
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

async function serve(subject: Subject, endpoint: string, run: RunRef | undefined): Promise<Served> {
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
      if ((err as NodeJS.ErrnoException).code !== 'ENXIO' || attempt >= 1000) throw err;
      await sleep(5);
    }
  }
}

async function dial(subject: Subject, endpoint: string, run: RunRef | undefined): Promise<Dialed> {
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

const framed = (subject: Subject): boolean => !subject.startsWith('raw-');

async function consumer(subject: Subject, endpoint: string, run: RunRef | undefined, bytes: number): Promise<void> {
  const block = makeBlock();
  const served = await serve(subject, endpoint, run);
  await send({ type: 'ready', endpoint: served.endpoint });
  const stream = await served.stream;
  const verifier = new Verifier(block);
  let firstByteNs = 0;
  let lastByteNs = 0;
  let cpuStart = process.cpuUsage();
  stream.on('data', (chunk: Buffer) => {
    if (firstByteNs === 0) {
      firstByteNs = nowNs();
      cpuStart = process.cpuUsage();
    }
    verifier.check(chunk);
    if (verifier.received >= bytes && lastByteNs === 0) lastByteNs = nowNs();
  });
  await once(stream, 'end');
  // framed: 'end' comes only once the trailer's length and checksum were verified
  if (framed(subject)) lastByteNs = nowNs();
  const cpu = cpuMsSince(cpuStart);
  await send({
    type: 'result',
    received: verifier.received,
    verified: verifier.ok && verifier.received === bytes,
    ...(verifier.firstMismatchAt !== undefined && { mismatchAt: verifier.firstMismatchAt }),
    firstByteNs,
    lastByteNs,
    cpu,
  });
}

async function producer(subject: Subject, endpoint: string, run: RunRef | undefined, bytes: number): Promise<void> {
  const block = makeBlock();
  const dialed = await dial(subject, endpoint, run);
  const cpuStart = process.cpuUsage();
  const startNs = await pump(dialed.out, block, bytes);
  await dialed.close();
  await send({ type: 'result', startNs, cpu: cpuMsSince(cpuStart) });
}

/**
 * Latency consumer: each record's first 8 bytes are the producer's hrtime at send; the rest is the
 * block's bytes. Every complete record is answered with one byte on a separate plain unix socket,
 * the same for every subject, so the pong path does not bias the comparison.
 */
async function latencyConsumer(subject: Subject, endpoint: string, run: RunRef | undefined, pongPath: string, warmup: number, count: number): Promise<void> {
  const block = makeBlock();
  const served = await serve(subject, endpoint, run);
  const pongServer = net.createServer();
  await listenNet(pongServer, pongPath);
  let pong: net.Socket | undefined;
  let owed = 0;
  void firstConnection(pongServer).then((socket) => {
    pong = socket;
    if (owed > 0) socket.write(Buffer.alloc(owed));
  });
  const PONG = Buffer.from([1]);
  await send({ type: 'ready', endpoint: served.endpoint });

  const stream = await served.stream;
  const histogram = createHistogram();
  const record = Buffer.alloc(RECORD_BYTES);
  let have = 0;
  let seen = 0;
  let verified = true;
  const complete = (bytes: Buffer, atNs: number): void => {
    const delay = atNs - Number(bytes.readBigUInt64LE(0));
    if (seen >= warmup) histogram.record(Math.max(1, delay));
    if (bytes.compare(block, 8, RECORD_BYTES, 8, RECORD_BYTES) !== 0) verified = false;
    seen++;
    if (pong) pong.write(PONG);
    else owed++;
  };
  stream.on('data', (chunk: Buffer) => {
    const atNs = nowNs();
    if (have === 0 && chunk.length === RECORD_BYTES) return complete(chunk, atNs);
    for (let i = 0; i < chunk.length; ) {
      const n = Math.min(RECORD_BYTES - have, chunk.length - i);
      chunk.copy(record, have, i, i + n);
      have += n;
      i += n;
      if (have === RECORD_BYTES) {
        have = 0;
        complete(record, atNs);
      }
    }
  });
  await once(stream, 'end');
  pong?.end();
  await send({
    type: 'result',
    p50: histogram.percentile(50),
    p90: histogram.percentile(90),
    p99: histogram.percentile(99),
    max: histogram.max,
    records: histogram.count,
    verified: verified && have === 0 && seen === warmup + count,
  });
}

async function latencyProducer(subject: Subject, endpoint: string, run: RunRef | undefined, pongPath: string, warmup: number, count: number): Promise<void> {
  const block = makeBlock();
  const pong = net.connect(pongPath);
  await once(pong, 'connect');
  const dialed = await dial(subject, endpoint, run);
  let credit = 0;
  let wake: (() => void) | undefined;
  pong.on('data', (chunk: Buffer) => {
    credit += chunk.length;
    const w = wake;
    wake = undefined;
    w?.();
  });
  // Reused for every record: the previous one has been received (ponged) before it is overwritten.
  const record = Buffer.from(block.subarray(0, RECORD_BYTES));
  const cpuStart = process.cpuUsage();
  for (let i = 0; i < warmup + count; i++) {
    record.writeBigUInt64LE(process.hrtime.bigint(), 0);
    dialed.out.write(record);
    if (credit === 0) await new Promise<void>((resolve) => (wake = resolve));
    credit--;
  }
  await dialed.close();
  pong.end();
  await send({ type: 'result', startNs: 0, cpu: cpuMsSince(cpuStart) });
}

/**
 * A plain byte copier, both ways: the same topology as a daemon relaying a channel, without
 * framing. Half-open on both sides, so each direction's end is passed on by itself: the
 * producer's FIN reaches the consumer, and the consumer's FIN comes back only after that.
 */
async function relay(listen: string, target: string): Promise<void> {
  const out = await connectTo(target, true);
  const server = net.createServer({ allowHalfOpen: true, noDelay: true });
  const endpoint = await listenOn(server, listen);
  await send({ type: 'ready', endpoint });
  const inbound = await firstConnection(server);
  inbound.pipe(out);
  out.pipe(inbound);
  await Promise.all([finished(inbound), finished(out)]);
}

/** Copies from the block into a 64 MiB ring, so the destination does not just sit in cache. */
async function memcpy(bytes: number): Promise<void> {
  const block = makeBlock();
  // touched before timing: first-touch page faults are not what memcpy measures
  const ring = Buffer.allocUnsafe(64 * MiB).fill(1);
  const startNs = nowNs();
  for (let done = 0, src = 0, dst = 0; done < bytes; done += MiB) {
    block.copy(ring, dst, src, src + MiB);
    src = (src + MiB) % BLOCK_BYTES;
    dst = (dst + MiB) % ring.length;
  }
  await send({ type: 'result', ns: nowNs() - startNs });
}

async function main(job: Job): Promise<void> {
  switch (job.role) {
    case 'consumer':
      return consumer(job.subject, job.endpoint, job.run, job.bytes);
    case 'producer':
      return producer(job.subject, job.endpoint, job.run, job.bytes);
    case 'lat-consumer':
      return latencyConsumer(job.subject, job.endpoint, job.run, job.pongPath, job.warmup, job.count);
    case 'lat-producer':
      return latencyProducer(job.subject, job.endpoint, job.run, job.pongPath, job.warmup, job.count);
    case 'relay':
      return relay(job.listen, job.target);
    case 'memcpy':
      return memcpy(job.bytes);
  }
}

let done = false;
// The orchestrator died: nobody will read our results or clean up after us.
process.on('disconnect', () => {
  if (!done) process.exit(2);
});

async function fail(err: unknown): Promise<void> {
  try {
    await send({ type: 'error', message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
  } finally {
    process.exit(1);
  }
}
// e.g. a stream's 'error' before anything listens to it: report it rather than only die
process.on('uncaughtException', (err) => void fail(err));

main(JSON.parse(process.argv[2] ?? '') as Job).then(() => {
  done = true;
  // Exit by itself once the last sockets closed (a consumer's ACK may still be flushing).
  process.disconnect();
}, fail);
