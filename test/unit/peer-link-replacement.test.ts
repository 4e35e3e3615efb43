/**
 * Two daemons' peer links in one process, over loopback: when a second link forms between the
 * same two nodes (both dialled at once, e.g. after a fault), the streams already on the first one
 * go on to their end on it; new streams take the new link; the old link closes once idle.
 */
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { PeerLinks } from '../../server/peers.js';
import type { Connection } from '../../transports/index.js';

const SECRET = 'peer-link-replacement-test-secret-0123456789';
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function listening(): Promise<{ server: http.Server; url: string }> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { server, url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

/** A TCP proxy to `target` that holds every connection until `release()`: a slow network. */
async function heldProxy(target: string): Promise<{ url: string; release(): void }> {
  const { hostname, port } = new URL(target);
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const server = net.createServer((client) => {
    client.pause();
    client.on('error', () => undefined);
    void released.then(() => {
      const upstream = net.connect(Number(port), hostname);
      upstream.on('error', () => client.destroy());
      client.pipe(upstream).pipe(client);
      client.resume();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => {
    server.close();
    release();
  });
  return { url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`, release };
}

/** Serves every channel by answering, once its input ended, with the sha256 of what arrived. */
function digestEach(conn: Connection): void {
  const hash = createHash('sha256');
  conn.input.on('data', (chunk: Buffer) => hash.update(chunk));
  conn.input.on('end', () => conn.output.end(hash.digest('hex')));
  conn.input.on('error', () => undefined);
  conn.output.on('error', () => undefined);
}

function node(name: string, peers: Record<string, string>): PeerLinks {
  const links = new PeerLinks({
    node: name,
    peers,
    secret: SECRET,
    windowBytes: 256 * 1024,
    heartbeatMs: 1_000,
    log: pino({ level: 'silent' }),
    onRequest: () => Promise.resolve(null),
    onChannel: () => digestEach,
  });
  cleanups.push(() => links.close());
  return links;
}

async function until(what: string, test: () => boolean, timeoutMs = 10_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; !test(); await sleep(20)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
  }
}

function answer(conn: Connection): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    conn.input.on('data', (chunk: Buffer) => (text += chunk.toString()));
    conn.input.on('end', () => resolve(text));
    conn.input.on('error', reject);
    conn.output.on('error', reject);
  });
}

const reconnects = (links: PeerLinks): number => links.status()[0]?.reconnects ?? -1;

describe('a peer link replaced by a simultaneous dial', () => {
  it('keeps carrying the stream already on it to its end, byte-exact, while new streams take the new link', async () => {
    const a = await listening();
    const b = await listening();
    // both dial, but a's dial is slow: b's link comes up first, and both ends give it up for
    // a's (the preferred one) when that arrives
    const slow = await heldProxy(b.url);
    const linksA = node('a', { b: slow.url });
    const linksB = node('b', { a: a.url });
    linksA.start(a.server);
    linksB.start(b.server);
    await until('the first link is up', () => linksA.isUp('b') && linksB.isUp('a'));

    const payload = randomBytes(8 * 1024 * 1024);
    const conn = await linksB.open('a', 'ch/run/early', 5_000);
    const early = answer(conn);
    const half = payload.length / 2;
    conn.output.write(payload.subarray(0, half));

    // now a's link arrives: preferred at both ends, so both switch to it mid-stream
    slow.release();
    await until('both ends took the new link', () => reconnects(linksA) === 1 && reconnects(linksB) === 1);
    expect(linksB.status()[0]).toMatchObject({ state: 'up', channels: 0 });

    const late = await linksB.open('a', 'ch/run/late', 5_000);
    const lateAnswer = answer(late);
    late.output.end(Buffer.from('on the new link'));
    expect(await lateAnswer).toBe(createHash('sha256').update('on the new link').digest('hex'));

    conn.output.end(payload.subarray(half));
    expect(await early).toBe(createHash('sha256').update(payload).digest('hex'));
    // bytes on both links are counted, once each
    await until('the old link closed once idle', () => linksB.status()[0]!.bytesSent >= payload.length + 15);
  });
});
