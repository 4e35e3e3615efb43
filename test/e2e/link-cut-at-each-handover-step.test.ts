/**
 * The end of a cross-node stream, with the peer link cut at each step of the handover between
 * producer, the two daemons and the consumer: two daemons in this process on loopback, sharing a
 * directory store, every byte of their link passing through a TCP relay the test can cut at once
 * (it then drops what it is given, both ways: a dead network, as a veth link taken down). The
 * producer and the consumer are the channel protocol's own ends, so the test knows exactly where
 * the stream is when it cuts. At every step the outcome is one of the two the contract allows:
 * the producer is acknowledged AND the consumer read every byte, verified (sha256 equal), or both
 * fail with typed errors. A producer told "done" while its consumer failed fails the test.
 * The steps inside the store handover (the producer's daemon writing the rest of the stream, the
 * consumer's daemon reading it) are forced through each daemon's store, a real directory store
 * wrapped to hold back or fail one operation.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { loadConfig } from '../../server/config.js';
import { startDaemon, type Daemon } from '../../server/daemon.js';
import { ChannelReader, ChannelWriter, MANIFEST_FILE, RELAY_SOCKET, runDirectory, storeError, unixTransport } from '../../transports/index.js';
import { drain, outcome, seededBytes, sha256 } from '../helpers/streams.js';
import { hookedStore, type StoreHooks } from '../helpers/hooked-store.js';

const SECRET = 'handover-cut-test-secret-0123456789';

/** A TCP relay to a target set later; `cut()` makes it a black hole for what it carries and what comes. */
interface Cuttable {
  port: number;
  target: { host: string; port: number } | undefined;
  readonly dead: boolean;
  cut(): void;
  mend(): void;
  close(): Promise<void>;
}

async function cuttable(): Promise<Cuttable> {
  let dead = false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('error', () => undefined);
    client.on('close', () => sockets.delete(client));
    if (dead || !relay.target) return; // a dial into a dead network: never answered
    const upstream = net.connect(relay.target.port, relay.target.host);
    sockets.add(upstream);
    upstream.on('error', () => client.destroy());
    upstream.on('close', () => sockets.delete(upstream));
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.on('data', (chunk: Buffer) => void (dead || upstream.write(chunk)));
    upstream.on('data', (chunk: Buffer) => void (dead || client.write(chunk)));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const relay: Cuttable = {
    port: (server.address() as AddressInfo).port,
    target: undefined,
    get dead() {
      return dead;
    },
    cut: () => void (dead = true),
    mend: () => {
      dead = false;
      for (const s of sockets) s.destroy(); // black-holed connections stay dead; new ones pass
    },
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return relay;
}

const scratch = mkdtempSync(join(tmpdir(), 'sl-cut-'));
const storeHooks: [StoreHooks, StoreHooks] = [{}, {}];
/** the consumer's daemon missed the last segment while it was held back (the race was forced) */
let raced = false;
const relays: Cuttable[] = [];
const daemons: Daemon[] = [];
let serial = 0;

const cutLink = (): void => relays.forEach((r) => r.cut());

async function linksUp(d: Daemon): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const { body } = await control<{ peers: Array<{ state: string }> }>(d.config.dir, 'GET', '/v1/status');
    if (body.peers.some((p) => p.state === 'up')) return;
    if (Date.now() > deadline) throw new Error(`link not up: ${JSON.stringify(body.peers)}`);
    await sleep(20);
  }
}

async function peerDown(d: Daemon): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const { body } = await control<{ peers: Array<{ state: string }> }>(d.config.dir, 'GET', '/v1/status');
    if (!body.peers.some((p) => p.state === 'up')) return;
    if (Date.now() > deadline) throw new Error('the link never went down');
    await sleep(20);
  }
}

beforeAll(async () => {
  // relays[0] carries what n1 dials to n0, relays[1] what n0 dials to n1
  relays.push(await cuttable(), await cuttable());
  for (const i of [0, 1]) {
    const argv = [
      ...['--node', `n${i}`, '--dir', join(scratch, `n${i}`), '--listen', '127.0.0.1:0', '--store', `file://${join(scratch, 'store')}`],
      ...['--peers', `n${1 - i}=ws://127.0.0.1:${relays[1 - i]!.port}`, '--peer-heartbeat', '100ms', '--segment-size', '256KiB'],
    ];
    const config = loadConfig({ argv, env: { SLUICE_SECRET: SECRET } });
    const store = hookedStore(join(scratch, 'store'), () => storeHooks[i]!);
    const d = await startDaemon(config, { version: 'test', log: pino({ level: 'silent' }), store });
    daemons.push(d);
    const { hostname, port } = new URL(d.tcpAddress!.replace(/^http/, 'ws'));
    relays[i]!.target = { host: hostname, port: Number(port) };
  }
  await Promise.all(daemons.map(linksUp));
}, 60_000);

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.close(1_000)));
  await Promise.all(relays.map((r) => r.close()));
  rmSync(scratch, { recursive: true, force: true });
});

afterEach(async () => {
  if (relays.some((r) => r.dead)) await mended();
}, 30_000);

/** Mend the link (between cases) and wait until both daemons have it up again. */
async function mended(): Promise<void> {
  storeHooks[0] = {};
  storeHooks[1] = {};
  raced = false;
  await Promise.all(daemons.map(peerDown));
  relays.forEach((r) => r.mend());
  await Promise.all(daemons.map(linksUp));
}

interface Ends {
  run: string;
  producer: ChannelWriter;
  consumer: ChannelReader;
}

/**
 * A run with producer p on n0 and consumer c on n1; the consumer listens as a function does
 * (resumable on its Unix socket) and calls `onVerified` before its ACK goes out.
 */
async function openEnds(onVerified: () => void): Promise<Ends> {
  const name = `cut-${++serial}`;
  const [n0, n1] = daemons as [Daemon, Daemon];
  await control(n0.config.dir, 'POST', '/v1/workflows', { name, steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
  const { run, token } = (await control<{ run: string; token: string }>(n0.config.dir, 'POST', '/v1/runs', { workflow: name, placement: { p: 'n0', c: 'n1' } })).body;
  const manifest = JSON.parse(readFileSync(join(runDirectory(n1.config.dir, run, token), MANIFEST_FILE), 'utf8')) as { channels: Array<{ name: string; path: string }> };
  const channel = manifest.channels[0]!;
  expect(channel.path).toBe('unix');
  const listener = await unixTransport.listen(join(runDirectory(n1.config.dir, run, token), channel.name));
  const producer = new ChannelWriter(await unixTransport.dial(join(n0.config.dir, RELAY_SOCKET), { timeoutMs: 5_000 }), {
    hello: { run, from: { step: 'p', index: 0 }, to: { step: 'c', index: 0 }, token },
  });
  const consumer = new ChannelReader(await listener.accept(), {
    reconnect: () => listener.accept({ signal: AbortSignal.timeout(30_000) }),
    acknowledge: async () => onVerified(),
  });
  consumer.once('close', () => void listener.close());
  return { run, producer, consumer };
}

/** The contract at the end of a stream: both succeed with every byte, or both fail with typed errors. */
async function expectAgreement(ends: Ends, data: Buffer, done: Promise<[Error | undefined, Awaited<ReturnType<typeof drain>>]>): Promise<void> {
  const [produced, consumed] = await done;
  const outcomeOf = `producer: ${produced ? `${(produced as { code?: string }).code} ${produced.message}` : 'acknowledged'}; consumer: ${consumed.error ? `${consumed.error.code} ${consumed.error.message}` : `${consumed.bytes.length} bytes`}`;
  if (produced === undefined) {
    expect(consumed.error, `the producer was told "done" while its consumer failed (${outcomeOf})`).toBeUndefined();
    expect(consumed.ended).toBe(true);
    expect(sha256(consumed.bytes), outcomeOf).toBe(sha256(data));
  } else {
    expect((produced as { code?: string }).code, outcomeOf).toMatch(/^SLUICE_/);
    expect(consumed.error?.code, `the consumer read the stream while its producer failed (${outcomeOf})`).toMatch(/^SLUICE_/);
  }
  expect(ends.consumer.length).toBeLessThanOrEqual(data.length);
}

/**
 * Tells, from the resume marker the producer's daemon stores, which key is the last segment of
 * the resumed stream (segments of 256 KiB, as the daemons are configured).
 */
function lastSegmentOf(size: number): { see(key: string, body: Buffer): void; is(key: string): boolean } {
  let last = -1;
  return {
    see(key, body) {
      if (key.endsWith('/resume.json')) last = Math.ceil((size - (JSON.parse(body.toString()) as { start: number }).start) / (256 * 1024)) - 1;
    },
    is: (key) => last >= 0 && key.endsWith(`/seg-${String(last).padStart(6, '0')}`),
  };
}

const SIZES = [100 * 1024, 3 * 1024 * 1024 + 17];

describe('a cross-node stream whose link is cut at each step of its handover', () => {
  for (const size of SIZES) {
    it(`after the last DATA frame reached the consumer, before the trailer left the producer (${size} bytes)`, async () => {
      const data = seededBytes(size, serial + 1);
      const ends = await openEnds(() => undefined);
      const consumed = drain(ends.consumer);
      await new Promise<void>((resolve, reject) => ends.producer.write(data, (err) => (err ? reject(err) : resolve())));
      while (ends.consumer.length < size) await sleep(5);
      cutLink();
      ends.producer.end();
      await expectAgreement(ends, data, Promise.all([outcome(ends.producer), consumed]));
      expect(ends.consumer.resumes, 'the rest came through the store').toBe(1);
    }, 60_000);

    it(`right after the producer sent its trailer (${size} bytes)`, async () => {
      const data = seededBytes(size, serial + 1);
      const ends = await openEnds(() => undefined);
      const consumed = drain(ends.consumer);
      ends.producer.end(data);
      // the END is on its way (written to the producer's daemon): cut before it can arrive
      cutLink();
      await expectAgreement(ends, data, Promise.all([outcome(ends.producer), consumed]));
      expect(ends.consumer.resumes, 'the rest came through the store').toBe(1);
    }, 60_000);

    it(`after the consumer verified the stream, before its ACK left the consumer's daemon (${size} bytes)`, async () => {
      const data = seededBytes(size, serial + 1);
      const ends = await openEnds(cutLink);
      const consumed = drain(ends.consumer);
      ends.producer.end(data);
      await expectAgreement(ends, data, Promise.all([outcome(ends.producer), consumed]));
      // the producer's daemon never saw the ACK: it acknowledged once the store held the rest
      expect(ends.consumer.resumes).toBe(0);
      expect(daemons[0]!.runs.get(ends.run).channels.values().next().value!.stored).toBe('failover');
    }, 60_000);

    it(`after the last DATA frame, when the consumer's daemon looks for the last stored segment just before it and the manifest are stored (${size} bytes)`, async () => {
      const data = seededBytes(size, serial + 1);
      const ends = await openEnds(() => undefined);
      // the producer's daemon holds its upload of the last segment until the consumer's daemon
      // has looked for it and not found it; that one then looks for the manifest only once the
      // segment and the manifest are stored
      const deferred = (): { promise: Promise<void>; resolve: () => void } => {
        let resolve!: () => void;
        return { promise: new Promise<void>((r) => (resolve = r)), resolve };
      };
      const missed = deferred();
      const manifest = deferred();
      const last = lastSegmentOf(size);
      // only once it read the resume marker: looking for the first segment in origin() is no race
      let resumeSeen = false;
      storeHooks[0] = {
        beforePut: async (key, body) => {
          last.see(key, body);
          if (last.is(key)) await missed.promise;
        },
        afterPut: (key) => void (key.endsWith('/manifest.json') && manifest.resolve()),
      };
      storeHooks[1] = {
        afterGet: async (key, found) => {
          if (key.endsWith('/resume.json') && found) resumeSeen = true;
          if (!resumeSeen || !last.is(key) || found) return;
          raced = true;
          missed.resolve();
          await manifest.promise;
        },
      };
      const consumed = drain(ends.consumer);
      await new Promise<void>((resolve, reject) => ends.producer.write(data, (err) => (err ? reject(err) : resolve())));
      while (ends.consumer.length < size) await sleep(5);
      cutLink();
      ends.producer.end();
      await expectAgreement(ends, data, Promise.all([outcome(ends.producer), consumed]));
      expect(raced, 'the race was forced').toBe(true);
    }, 60_000);

    it(`after the last DATA frame, when the producer's daemon's upload of the last stored segment fails (${size} bytes)`, async () => {
      const data = seededBytes(size, serial + 1);
      const ends = await openEnds(() => undefined);
      const last = lastSegmentOf(size);
      storeHooks[0] = {
        beforePut: async (key, body) => {
          last.see(key, body);
          if (!last.is(key)) return;
          await sleep(50); // slow to fail: the writer is waiting for its last uploads by then
          throw storeError(`put ${key}`, new Error('EIO: the store went away'));
        },
      };
      const consumed = drain(ends.consumer);
      await new Promise<void>((resolve, reject) => ends.producer.write(data, (err) => (err ? reject(err) : resolve())));
      while (ends.consumer.length < size) await sleep(5);
      cutLink();
      ends.producer.end();
      const [produced, read] = await Promise.all([outcome(ends.producer), consumed]);
      await expectAgreement(ends, data, Promise.resolve([produced, read]));
      expect(produced?.code).toBe('SLUICE_STORE_UNAVAILABLE');
      expect(read.error?.code).toBe('SLUICE_STORE_UNAVAILABLE');
    }, 60_000);
  }
});
