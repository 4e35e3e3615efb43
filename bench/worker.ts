/**
 * One side of one benchmark run, in its own process: started by run.ts with the job as its only
 * argument (JSON), it reports 'ready' (consumers, relays) and then its 'result' over IPC.
 */
import { once } from 'node:events';
import net from 'node:net';
import { createHistogram } from 'node:perf_hooks';
import { finished } from 'node:stream/promises';
import { BLOCK_BYTES, MiB, RECORD_BYTES, Verifier, cpuMsSince, makeBlock, nowNs, pump } from './data.js';
import { connectTo, dial, firstConnection, listenNet, listenOn, serve } from './media.js';
import { runS3Hops, runStep } from './steps.js';
import { send, type Job, type RunRef, type Subject } from './protocol.js';


/** The consumer's side of a medium: the endpoint it serves, and its payload stream once a producer came. */

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
    case 'step':
      return runStep(job);
    case 's3-hops':
      return runS3Hops(job);
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
