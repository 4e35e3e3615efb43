/**
 * What `shm` adds to the channel contract (which channel-contract.test.ts checks over it): the
 * ring's files, the ring as the only buffer (a producer's memory stays flat against a stalled
 * consumer, the ring file keeps its size), and real processes killed while the ring is full.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ACK_SUFFIX, ChannelReader, ChannelWriter, RING_SUFFIX, ShmTransport, encodeControl, FrameType, shmTransport, type Listener } from '../../transports/index.js';
import { drain, outcome, seededBytes, sha256 } from '../helpers/streams.js';

const fixture = fileURLToPath(new URL('../../dist/test/fixtures/shm-peer.js', import.meta.url));
const MiB = 1024 * 1024;
const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'sluice-shm-'));
let serial = 0;
const endpoint = (): string => join(dir, `ep-${++serial}`);
const listeners: Listener[] = [];
const children: ChildProcess[] = [];

afterEach(async () => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  await Promise.all(listeners.splice(0).map((l) => l.close()));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function listen(transport = shmTransport, ep = endpoint()): Promise<Listener> {
  const listener = await transport.listen(ep);
  listeners.push(listener);
  return listener;
}

function child(args: string[]): ChildProcess {
  // --expose-gc: the producer collects before it measures, so its RSS is what it holds, not garbage
  const c = fork(fixture, args, { stdio: 'ignore', execArgv: ['--expose-gc'] });
  children.push(c);
  return c;
}

/** The next IPC message of `c` that has `key`. */
function message<T extends Record<string, unknown>>(c: ChildProcess, key: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (m: T): void => {
      if (!(key in m)) return;
      c.off('message', onMessage);
      c.off('exit', onExit);
      resolve(m);
    };
    const onExit = (code: number | null): void => reject(new Error(`child exited (${code}) before sending ${key}`));
    c.on('message', onMessage);
    c.once('exit', onExit);
  });
}

/** Resolves once `value()` has not changed for `quietMs`. */
async function settled(value: () => number, quietMs = 300): Promise<number> {
  let last = -1;
  while (value() !== last) {
    last = value();
    await sleep(quietMs);
  }
  return last;
}

describe('shm endpoint files', () => {
  it('creates the ring (ringBytes, mode 0600) beside the FIFO pair, and close removes what listen created', async () => {
    const ep = endpoint();
    const listener = await new ShmTransport({ ringBytes: 4 * MiB }).listen(ep);
    const ring = statSync(ep + RING_SUFFIX);
    expect(ring.isFile()).toBe(true);
    expect(ring.size).toBe(4 * MiB);
    expect(ring.mode & 0o777).toBe(0o600);
    // reserved at set-up: every page is there, not a sparse file
    expect(ring.blocks * 512).toBeGreaterThanOrEqual(4 * MiB);
    expect(statSync(ep).isFIFO() && statSync(ep + ACK_SUFFIX).isFIFO()).toBe(true);
    await listener.close();
    expect([ep, ep + ACK_SUFFIX, ep + RING_SUFFIX].filter(existsSync)).toEqual([]);
  });

  it('uses files prepared beforehand with the ring size they have, and leaves them on close', async () => {
    const ep = endpoint();
    execFileSync('mkfifo', ['-m', '600', ep, ep + ACK_SUFFIX]);
    writeFileSync(ep + RING_SUFFIX, Buffer.alloc(64 * 1024), { mode: 0o600 });
    const listener = await listen(new ShmTransport({ ringBytes: 16 * MiB }), ep);
    const accepted = listener.accept();
    const writer = new ChannelWriter(await shmTransport.dial(ep));
    const received = drain(new ChannelReader(await accepted));
    // 30 times the ring: it wraps, and the producer waits for room again and again
    const data = seededBytes(30 * 64 * 1024, 11);
    writer.end(data);
    const { bytes, error } = await received;
    expect(error).toBeUndefined();
    expect(sha256(bytes)).toBe(sha256(data));
    expect(await outcome(writer)).toBeUndefined();
    await listener.close();
    expect(statSync(ep + RING_SUFFIX).size).toBe(64 * 1024);
    expect([ep, ep + ACK_SUFFIX, ep + RING_SUFFIX].every(existsSync)).toBe(true);
  });

  it('refuses a ring size outside its bounds, and a non-file where the ring goes: SLUICE_INVALID', async () => {
    expect(() => new ShmTransport({ ringBytes: 1000 })).toThrow(expect.objectContaining({ code: 'SLUICE_INVALID' }));
    const ep = endpoint();
    fs.mkdirSync(ep + RING_SUFFIX);
    await expect(shmTransport.listen(ep)).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
  });

  it('refuses a doorbell that claims more than the ring holds: SLUICE_PROTOCOL at the consumer', async () => {
    const listener = await listen(new ShmTransport({ ringBytes: 64 * 1024 }));
    const accepted = listener.accept();
    const ackFd = fs.openSync(listener.endpoint + ACK_SUFFIX, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const bellFd = fs.openSync(listener.endpoint, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    try {
      // a real HELLO in the ring, then a doorbell past the ring's end
      const hello = encodeControl(FrameType.HELLO, 0, { v: 1 });
      const ringFd = fs.openSync(listener.endpoint + RING_SUFFIX, 'r+');
      fs.writeSync(ringFd, hello, 0, hello.length, 0);
      fs.closeSync(ringFd);
      const bell = Buffer.alloc(8);
      bell.writeUInt32BE(64 * 1024 + 1, 4);
      fs.writeSync(bellFd, bell);
      const { error, ended } = await drain(new ChannelReader(await accepted));
      expect(ended).toBe(false);
      expect(error?.code).toBe('SLUICE_PROTOCOL');
      expect(error?.message).toMatch(/written up to 65537/);
    } finally {
      fs.closeSync(bellFd);
      fs.closeSync(ackFd);
    }
  });
});

describe('shm ring: bounded memory and processes killed mid-ring', () => {
  it('keeps a 256 MiB producer process within the ring against a stalled consumer; the ring keeps its size', async () => {
    const listener = await listen();
    const total = 256 * MiB;
    const producer = child(['produce', listener.endpoint, String(total)]);
    let accepted = 0;
    let rss = 0;
    let peakRss = 0;
    let firstRss = 0;
    producer.on('message', (m: { accepted?: number; rss?: number }) => {
      if (m.rss === undefined) return;
      accepted = m.accepted!;
      rss = m.rss;
      firstRss ||= rss;
      peakRss = Math.max(peakRss, rss);
    });
    const conn = await listener.accept();
    const reader = new ChannelReader(conn);
    reader.pause(); // the consumer reads nothing yet
    await settled(() => accepted);
    const ringFile = listener.endpoint + RING_SUFFIX;
    // the producer stopped: its writes are in the ring (8 MiB), the reader's buffer and one slot
    expect(accepted).toBeGreaterThan(4 * MiB);
    expect(accepted).toBeLessThan(8 * MiB + 4 * MiB);
    expect(rss - firstRss).toBeLessThan(8 * MiB + 8 * MiB);
    expect(statSync(ringFile).size).toBe(8 * MiB);

    const done = message<{ done: boolean; error?: string }>(producer, 'done');
    let bytes = 0;
    let wrong = -1;
    for await (const chunk of reader as AsyncIterable<Buffer>) {
      for (let i = 0; i < chunk.length; i += 8191) if (wrong < 0 && chunk[i] !== (Math.floor((bytes + i) / 65536) & 0xff)) wrong = bytes + i;
      bytes += chunk.length;
    }
    expect(wrong).toBe(-1);
    expect(bytes).toBe(total);
    expect((await done).error).toBeUndefined();
    // while 256 MiB went through, 32 times the ring, the producer's RSS grew by what a streaming
    // Node process grows (V8 heap, malloc arenas that keep freed buffers: 20-33 MiB measured),
    // far from what it sent
    expect(peakRss - firstRss).toBeLessThan(64 * MiB);
    expect(statSync(ringFile).size).toBe(8 * MiB);
  });

  it('tells a producer waiting on a full ring that its consumer process was killed: SLUICE_CONSUMER_GONE', async () => {
    const ep = endpoint();
    const consumer = child(['stall', ep]);
    await message(consumer, 'listening');
    const writer = new ChannelWriter(await shmTransport.dial(ep));
    const result = outcome(writer);
    let written = 0;
    const chunk = Buffer.alloc(64 * 1024, 7);
    const pump = (): void => {
      while (!writer.destroyed && writer.write(chunk)) written += chunk.length;
      if (!writer.destroyed) writer.once('drain', pump);
    };
    writer.on('error', () => undefined);
    pump();
    await message(consumer, 'accepted');
    await settled(() => written);
    expect(written).toBeLessThan(16 * MiB); // stuck on the full ring, not buffering
    consumer.kill('SIGKILL');
    const started = performance.now();
    const err = await result;
    expect(err?.code).toBe('SLUICE_CONSUMER_GONE');
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it('gives the consumer every byte the killed producer put in the ring, then SLUICE_TRUNCATED, never a clean end', async () => {
    const listener = await listen();
    const producer = child(['produce', listener.endpoint, String(1024 * MiB)]);
    let accepted = 0;
    producer.on('message', (m: { accepted?: number }) => (accepted = m.accepted ?? accepted));
    const reader = new ChannelReader(await listener.accept());
    reader.pause();
    await settled(() => accepted); // the ring is full
    producer.kill('SIGKILL');
    await once(producer, 'exit');
    const received = drain(reader);
    reader.resume();
    const { bytes, error, ended } = await received;
    expect(ended).toBe(false);
    expect(error?.code).toBe('SLUICE_TRUNCATED');
    // what was in the ring when it died: more than the reader had taken before, never more than written
    expect(bytes.length).toBeGreaterThan(4 * MiB);
    expect(bytes.length).toBeLessThanOrEqual(accepted);
    for (let i = 0; i < bytes.length; i += 65536) expect(bytes[i]).toBe((i / 65536) & 0xff);
  });
});
