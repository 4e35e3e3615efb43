/**
 * The channel contract, one suite, every transport. A transport that passes it can carry Sluice
 * channels: exact bytes or a typed error, back-pressure with bounded memory, and a producer that
 * learns the outcome.
 */
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  ChannelReader,
  ChannelWriter,
  DEFAULT_MAX_FRAME_PAYLOAD,
  FrameDecoder,
  FrameType,
  MemoryTransport,
  Mux,
  MuxTransport,
  decodeRecords,
  encodeControl,
  encodeHeader,
  encodeRecord,
  fifoTransport,
  shmTransport,
  unixTransport,
  WsTransport,
  type Connection,
  type Listener,
  type Transport,
} from '../../transports/index.js';
import { drain, outcome, seededBytes, sha256 } from '../helpers/streams.js';

interface Medium {
  transport: Transport;
  /** can a peer live in another process (so the test can kill it)? */
  crossProcess: boolean;
  /** endpoints are plain names (memory, connections over a peer link), not paths or addresses */
  names?: boolean;
  /** endpoints belong on tmpfs, as the runtime directory is in production */
  tmpfs?: boolean;
}

/** The runtime directory's tmpfs where this machine has one. */
const tmpfsDir = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();

/**
 * Virtual connections over one peer link (mux.ts), the link itself over `base`: the suite then
 * checks that every connection multiplexed on a link keeps the whole contract. Small windows and
 * pieces make credit and interleaving work hard.
 */
function overPeerLink(base: Transport, linkEndpoint: () => string): Transport {
  let ready: Promise<MuxTransport> | undefined;
  const link = (): Promise<MuxTransport> =>
    (ready ??= (async () => {
      const listener = await base.listen(linkEndpoint());
      const accepted = listener.accept();
      const dialed = await base.dial(listener.endpoint);
      const options = { windowBytes: 96 * 1024, maxFramePayload: 16 * 1024 };
      return new MuxTransport(new Mux(dialed, 'dialer', options), new Mux(await accepted, 'listener', options));
    })());
  return {
    path: 'ws',
    listen: async (endpoint) => (await link()).listen(endpoint),
    dial: async (endpoint, options) => (await link()).dial(endpoint, options),
  };
}

const media: Record<string, Medium> = {
  memory: { transport: new MemoryTransport(), crossProcess: false },
  unix: { transport: unixTransport, crossProcess: true },
  fifo: { transport: fifoTransport, crossProcess: true },
  shm: { transport: shmTransport, crossProcess: true, tmpfs: true },
  ws: { transport: new WsTransport({ secret: 'compliance-secret-0123456789' }), crossProcess: false },
  'peer link over memory': { transport: overPeerLink(new MemoryTransport(), () => 'link'), crossProcess: false, names: true },
  'peer link over unix': { transport: overPeerLink(unixTransport, () => join(tmpdir(), `sluice-link-${process.pid}.sock`)), crossProcess: false, names: true },
  'peer link over ws': { transport: overPeerLink(new WsTransport({ secret: 'compliance-secret-0123456789', heartbeatMs: 1000 }), () => '127.0.0.1:0'), crossProcess: false, names: true },
};

const peerScript = fileURLToPath(new URL('../../dist/test/fixtures/peer.js', import.meta.url));
const MiB = 1024 * 1024;

describe.each(Object.keys(media))('channel contract over %s', (name) => {
  const { transport, crossProcess, names, tmpfs } = media[name]!;
  let dir: string;
  let serial = 0;
  const listeners: Listener[] = [];
  const endpoint = (): string => {
    if (transport.path === 'memory' || names) return `ep-${++serial}`;
    if (transport.path === 'ws') return '127.0.0.1:0'; // the listener reports the port it got
    return join(dir, `ep-${++serial}`);
  };
  /** An endpoint nobody serves (yet), which a test may dial and later listen on. */
  const unservedEndpoint = async (): Promise<string> => (transport.path === 'ws' && !names ? `127.0.0.1:${await freePort()}` : endpoint());

  beforeAll(() => {
    dir = mkdtempSync(join(tmpfs ? tmpfsDir : tmpdir(), `sluice-${name}-`));
  });
  afterEach(async () => {
    await Promise.all(listeners.splice(0).map((l) => l.close()));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  async function listen(ep = endpoint()): Promise<Listener> {
    const listener = await transport.listen(ep);
    listeners.push(listener);
    return listener;
  }

  /** A producer and a consumer joined by a fresh endpoint. */
  async function open(hello?: Record<string, unknown>): Promise<{ writer: ChannelWriter; reader: ChannelReader; producerConn: Connection; consumerConn: Connection }> {
    const listener = await listen();
    const accepted = listener.accept();
    const producerConn = await transport.dial(listener.endpoint);
    const writer = new ChannelWriter(producerConn, hello ? { hello } : {});
    const consumerConn = await accepted;
    return { writer, reader: new ChannelReader(consumerConn), producerConn, consumerConn };
  }

  /** A producer that writes raw bytes (to break the protocol on purpose) and a real reader. */
  async function openRaw(): Promise<{ raw: Connection; reader: ChannelReader }> {
    const listener = await listen();
    const accepted = listener.accept();
    const raw = quiet(await transport.dial(listener.endpoint));
    raw.output.write(encodeControl(FrameType.HELLO, 0, { v: 1 }));
    return { raw, reader: new ChannelReader(await accepted) };
  }

  /** The control frames a raw end received until its input ended. */
  async function controlFramesFrom(conn: Connection): Promise<Array<{ type: number; fields: Record<string, unknown> }>> {
    const frames: Array<{ type: number; fields: Record<string, unknown> }> = [];
    const decoder = new FrameDecoder();
    const sink = { data: () => undefined, control: (type: number, _c: number, fields: Record<string, unknown>) => frames.push({ type, fields }) };
    await new Promise<void>((resolve) => {
      conn.input.on('data', (chunk: Buffer) => decoder.push(chunk, sink));
      conn.input.on('end', resolve);
      conn.input.on('error', () => resolve());
      conn.input.on('close', resolve);
    });
    return frames;
  }

  async function roundTrip(chunks: Buffer[]): Promise<Buffer> {
    const { writer, reader } = await open();
    const received = drain(reader);
    for (const c of chunks) writer.write(c);
    writer.end();
    expect(await outcome(writer)).toBeUndefined();
    const { bytes, error, ended } = await received;
    expect(error).toBeUndefined();
    expect(ended).toBe(true);
    return bytes;
  }

  it('delivers an empty stream as a verified, clean end', async () => {
    const bytes = await roundTrip([]);
    expect(bytes.length).toBe(0);
  });

  it('delivers 1 byte', async () => {
    const bytes = await roundTrip([Buffer.from([0xa5])]);
    expect(bytes).toEqual(Buffer.from([0xa5]));
  });

  it('delivers exactly one full frame, and one byte more than a frame', async () => {
    const frame = seededBytes(DEFAULT_MAX_FRAME_PAYLOAD, 1);
    expect(sha256(await roundTrip([frame]))).toBe(sha256(frame));
    const more = seededBytes(DEFAULT_MAX_FRAME_PAYLOAD + 1, 2);
    expect(sha256(await roundTrip([more]))).toBe(sha256(more));
  });

  it('delivers 64 MiB of random bytes written in uneven chunks, byte-exact', async () => {
    const data = randomBytes(64 * MiB);
    const chunks: Buffer[] = [];
    const sizes = seededBytes(4096, 3);
    for (let off = 0, i = 0; off < data.length; i++) {
      const size = 1 + ((sizes.readUInt16LE((i * 2) % 4094) * 37) % (3 * MiB));
      chunks.push(data.subarray(off, off + size));
      off += size;
    }
    const { writer, reader } = await open();
    const received = drain(reader);
    await pipeline(Readable.from(chunks), writer);
    const { bytes, error } = await received;
    expect(error).toBeUndefined();
    expect(bytes.length).toBe(data.length);
    expect(sha256(bytes)).toBe(sha256(data));
  });

  it('keeps many small writes in order', async () => {
    const chunks: Buffer[] = [];
    for (let i = 0; i < 20_000; i++) {
      const b = Buffer.alloc(4 + (i % 7), i & 0xff);
      b.writeUInt32BE(i, b.length - 4);
      chunks.push(b);
    }
    const bytes = await roundTrip(chunks);
    expect(bytes).toEqual(Buffer.concat(chunks));
  });

  it('splits writes larger than maxFramePayload into several frames, byte-exact', async () => {
    const listener = await listen();
    const accepted = listener.accept();
    const writer = new ChannelWriter(await transport.dial(listener.endpoint), { maxFramePayload: 1000 });
    const received = drain(new ChannelReader(await accepted, { maxFramePayload: 1000 }));
    const data = seededBytes(100_000, 4);
    writer.end(data);
    const { bytes, error } = await received;
    expect(error).toBeUndefined();
    expect(bytes.equals(data)).toBe(true);
    // and refuses a frame limit that would not make progress
    expect(() => new ChannelWriter(listener as never, { maxFramePayload: 0 })).toThrow(RangeError);
  });

  it('carries the producer HELLO metadata to the consumer', async () => {
    const { writer, reader } = await open({ run: 'r1', from: 'split', to: 'count' });
    const received = drain(reader);
    writer.end();
    await received;
    expect(reader.hello).toMatchObject({ v: 1, run: 'r1', from: 'split', to: 'count' });
  });

  it('holds the producer end until a deferred acknowledge resolves', async () => {
    const listener = await listen();
    const accepted = listener.accept();
    const writer = new ChannelWriter(await transport.dial(listener.endpoint));
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const reader = new ChannelReader(await accepted, { acknowledge: () => gate });
    const received = drain(reader);
    let writerDone = false;
    const result = outcome(writer).then((e) => ((writerDone = true), e));
    writer.end(Buffer.from('relayed'));
    expect((await received).ended).toBe(true); // the reader verified and ended...
    await sleep(50);
    expect(writerDone).toBe(false); // ...but the producer waits for the acknowledgement
    release();
    expect(await result).toBeUndefined();
  });

  it('fails the producer with the code of a rejected deferred acknowledge', async () => {
    const listener = await listen();
    const accepted = listener.accept();
    const writer = new ChannelWriter(await transport.dial(listener.endpoint));
    const downstream = Object.assign(new Error('downstream consumer found the stream corrupt'), { code: 'SLUICE_CORRUPT' });
    const reader = new ChannelReader(await accepted, { acknowledge: () => Promise.reject(downstream) });
    const received = drain(reader);
    writer.end(Buffer.from('relayed'));
    await received;
    const err = await outcome(writer);
    expect(err?.code).toBe('SLUICE_CORRUPT');
    expect(err?.message).toMatch(/downstream consumer/);
  });

  it('carries records (msgpack values) in order', async () => {
    const values = Array.from({ length: 1000 }, (_, i) => ({ i, word: `w${i}`, blob: Buffer.alloc(i % 50, i & 0xff) }));
    const { writer, reader } = await open();
    const got: unknown[] = [];
    const reading = (async () => {
      for await (const v of decodeRecords(reader)) got.push(v);
    })();
    for (const v of values) writer.write(encodeRecord(v));
    writer.end();
    await reading;
    expect(await outcome(writer)).toBeUndefined();
    expect(got).toEqual(values);
  });

  it('pauses a writer whose reader stalls, with bounded memory, then completes', async () => {
    const { writer, reader } = await open();
    const total = 96 * MiB;
    const chunkSize = 64 * 1024;
    let pulled = 0;
    const source = new Readable({
      read() {
        if (pulled >= total) return void this.push(null);
        // a fresh buffer per chunk: if anything queued without bound, memory would show it
        const chunk = Buffer.alloc(chunkSize, (pulled / chunkSize) & 0xff);
        pulled += chunk.length;
        this.push(chunk);
      },
    });
    const baseline = process.memoryUsage().arrayBuffers;
    const sending = pipeline(source, writer);
    // the reader reads nothing; wait until the writer has stopped pulling
    let last = -1;
    while (pulled !== last) {
      last = pulled;
      await sleep(150);
    }
    expect(pulled).toBeGreaterThan(0);
    expect(pulled).toBeLessThan(16 * MiB);
    expect(process.memoryUsage().arrayBuffers - baseline).toBeLessThan(32 * MiB);
    const { bytes, error } = await drainHashing(reader);
    await sending;
    expect(error).toBeUndefined();
    expect(bytes).toBe(total);
  });

  it('tells the consumer when the producer aborts mid-stream: SLUICE_PRODUCER_ABORTED, no clean end', async () => {
    const { writer, reader } = await open();
    const received = drain(reader);
    writer.write(Buffer.alloc(100_000, 1));
    await sleep(20);
    writer.on('error', () => undefined);
    writer.destroy(new Error('upstream failed'));
    const { error, ended } = await received;
    expect(ended).toBe(false);
    expect(error?.code).toBe('SLUICE_PRODUCER_ABORTED');
    expect(error?.message).toMatch(/upstream failed/);
  });

  it('tells the producer when the consumer closes early: SLUICE_CONSUMER_GONE', async () => {
    const { writer, reader } = await open();
    reader.once('data', () => reader.destroy());
    const result = outcome(writer);
    pump(writer);
    expect((await result)?.code).toBe('SLUICE_CONSUMER_GONE');
  });

  it('reports a vanished producer connection as SLUICE_TRUNCATED, never a clean end', async () => {
    const { writer, reader, producerConn } = await open();
    writer.on('error', () => undefined);
    const received = drain(reader);
    writer.write(Buffer.alloc(300_000, 2));
    await sleep(20);
    producerConn.destroy(); // as if its process died: no ABORT, no trailer
    const { error, ended, bytes } = await received;
    expect(ended).toBe(false);
    expect(error?.code).toBe('SLUICE_TRUNCATED');
    expect(bytes.length).toBeLessThanOrEqual(300_000);
  });

  it('reports a vanished consumer connection to the producer as SLUICE_CONSUMER_GONE', async () => {
    const { writer, reader, consumerConn } = await open();
    reader.on('error', () => undefined);
    const result = outcome(writer);
    reader.once('data', () => consumerConn.destroy());
    pump(writer);
    expect((await result)?.code).toBe('SLUICE_CONSUMER_GONE');
  });

  it.skipIf(!crossProcess)('reports a producer process killed mid-stream as SLUICE_TRUNCATED', async () => {
    const listener = await listen();
    const child = fork(peerScript, ['produce', name, listener.endpoint], { stdio: 'ignore' });
    const reader = new ChannelReader(await listener.accept());
    const received = drain(reader);
    await new Promise((resolve) => child.once('message', resolve));
    child.kill('SIGKILL');
    const { error, ended, bytes } = await received;
    expect(ended).toBe(false);
    expect(error?.code).toBe('SLUICE_TRUNCATED');
    expect(bytes.length).toBeGreaterThan(0);
  });

  it.skipIf(!crossProcess)('reports a consumer process killed mid-stream to the producer as SLUICE_CONSUMER_GONE', async () => {
    const ep = endpoint();
    const child = fork(peerScript, ['consume', name, ep], { stdio: 'ignore' });
    await new Promise((resolve) => child.once('message', resolve)); // listening
    const writer = new ChannelWriter(await transport.dial(ep));
    const result = outcome(writer);
    child.once('message', () => child.kill('SIGKILL')); // it has read 4 MiB
    pump(writer);
    expect((await result)?.code).toBe('SLUICE_CONSUMER_GONE');
  });

  it('refuses a stream whose checksum does not match: SLUICE_CORRUPT on both ends', async () => {
    const { raw, reader } = await openRaw();
    const answer = controlFramesFrom(raw);
    const received = drain(reader);
    raw.output.write(encodeHeader(FrameType.DATA, 0, 5));
    raw.output.write(Buffer.from('hello'));
    raw.output.write(encodeControl(FrameType.END, 0, { length: 5, checksum: 12345 }));
    const { error, ended } = await received;
    expect(ended).toBe(false);
    expect(error?.code).toBe('SLUICE_CORRUPT');
    expect((await answer).find((f) => f.type === FrameType.ABORT)?.fields.code).toBe('SLUICE_CORRUPT');
    raw.destroy();
  });

  it('refuses a stream whose length does not match its trailer: SLUICE_CORRUPT', async () => {
    const { raw, reader } = await openRaw();
    const received = drain(reader);
    raw.output.write(encodeHeader(FrameType.DATA, 0, 3));
    raw.output.write(Buffer.from('abc'));
    raw.output.write(encodeControl(FrameType.END, 0, { length: 4, checksum: 0 }));
    expect((await received).error?.code).toBe('SLUICE_CORRUPT');
    raw.destroy();
  });

  it('fails the producer with SLUICE_CORRUPT when the consumer rejects the trailer', async () => {
    const listener = await listen();
    const accepted = listener.accept();
    const writer = new ChannelWriter(await transport.dial(listener.endpoint));
    const raw = quiet(await accepted);
    const decoder = new FrameDecoder();
    raw.input.on('data', (chunk: Buffer) =>
      decoder.push(chunk, {
        data: () => undefined,
        control: (type) => {
          if (type === FrameType.END) raw.output.end(encodeControl(FrameType.ABORT, 0, { code: 'SLUICE_CORRUPT', message: 'checksum mismatch' }));
        },
      }),
    );
    writer.end(Buffer.from('payload'));
    expect((await outcome(writer))?.code).toBe('SLUICE_CORRUPT');
    raw.destroy();
  });

  it('refuses garbage bytes with SLUICE_PROTOCOL and tells the sender', async () => {
    const listener = await listen();
    const accepted = listener.accept();
    const raw = quiet(await transport.dial(listener.endpoint));
    raw.output.write(Buffer.from('GET / HTTP/1.1\r\nHost: sluice\r\n\r\n'));
    const reader = new ChannelReader(await accepted);
    const answer = controlFramesFrom(raw);
    const { error, ended } = await drain(reader);
    expect(ended).toBe(false);
    expect(error?.code).toBe('SLUICE_PROTOCOL');
    expect((await answer).find((f) => f.type === FrameType.ABORT)?.fields.code).toBe('SLUICE_PROTOCOL');
    raw.destroy();
  });

  it('refuses seeded random garbage after a valid HELLO with SLUICE_PROTOCOL', async () => {
    for (const seed of [7, 8, 9]) {
      const { raw, reader } = await openRaw();
      const received = drain(reader);
      const garbage = seededBytes(4096, seed);
      garbage[0] = 0xee; // not the wire version, whatever the seed
      raw.output.write(garbage);
      const { error, ended } = await received;
      expect(ended).toBe(false);
      expect(error?.code).toBe('SLUICE_PROTOCOL');
      raw.destroy();
    }
  });

  it('refuses DATA before HELLO with SLUICE_PROTOCOL', async () => {
    const listener = await listen();
    const accepted = listener.accept();
    const raw = quiet(await transport.dial(listener.endpoint));
    raw.output.write(Buffer.concat([encodeHeader(FrameType.DATA, 0, 2), Buffer.from('hi')]));
    const { error } = await drain(new ChannelReader(await accepted));
    expect(error?.code).toBe('SLUICE_PROTOCOL');
    raw.destroy();
  });

  it('fails the producer with SLUICE_PROTOCOL when the consumer answers garbage', async () => {
    const listener = await listen();
    const accepted = listener.accept();
    const writer = new ChannelWriter(await transport.dial(listener.endpoint));
    const raw = quiet(await accepted);
    raw.output.write(Buffer.from('\xff\xff\xff\xff garbage that is not a frame header', 'latin1'));
    writer.write(Buffer.from('x'));
    expect((await outcome(writer))?.code).toBe('SLUICE_PROTOCOL');
    raw.destroy();
  });

  it('aborts a dial whose signal fired before the call: SLUICE_ABORTED', async () => {
    await expect(transport.dial(await unservedEndpoint(), { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'SLUICE_ABORTED' });
  });

  it('aborts a dial waiting for an absent listener when the signal fires: SLUICE_ABORTED', async () => {
    const started = performance.now();
    await expect(transport.dial(await unservedEndpoint(), { signal: AbortSignal.timeout(50), timeoutMs: 30_000 })).rejects.toMatchObject({ code: 'SLUICE_ABORTED' });
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it('gives up on an endpoint nobody serves after timeoutMs: SLUICE_UNAVAILABLE', async () => {
    await expect(transport.dial(await unservedEndpoint(), { timeoutMs: 50 })).rejects.toMatchObject({ code: 'SLUICE_UNAVAILABLE' });
  });

  it('connects a producer that dials before the consumer listens, within timeoutMs', async () => {
    const ep = await unservedEndpoint();
    const dialing = transport.dial(ep, { timeoutMs: 5_000 });
    await sleep(50);
    const listener = await listen(ep);
    const accepted = listener.accept();
    const writer = new ChannelWriter(await dialing);
    const received = drain(new ChannelReader(await accepted));
    writer.end(Buffer.from('late consumer'));
    expect((await received).bytes.toString()).toBe('late consumer');
  });

  it('aborts accept() on its signal and on close(): SLUICE_ABORTED', async () => {
    const listener = await listen();
    await expect(listener.accept({ signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'SLUICE_ABORTED' });
    const other = await listen();
    const pending = expect(other.accept()).rejects.toMatchObject({ code: 'SLUICE_ABORTED' });
    await other.close();
    await pending;
  });
});

/** A loopback TCP port nobody listens on: bound, then closed. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A raw end the test drives by hand: the peer's resets are expected, not failures. */
function quiet(conn: Connection): Connection {
  conn.input.on('error', () => undefined);
  conn.output.on('error', () => undefined);
  return conn;
}

/** Write as fast as back-pressure allows, until the writer fails. */
function pump(writer: ChannelWriter): void {
  const chunk = Buffer.alloc(64 * 1024, 3);
  const go = (): void => {
    if (writer.destroyed) return;
    while (writer.write(chunk)) if (writer.destroyed) return;
    writer.once('drain', go);
  };
  writer.on('error', () => undefined);
  go();
}

/** Read everything, counting bytes and checking the per-64-KiB fill pattern of the stall test. */
async function drainHashing(reader: ChannelReader): Promise<{ bytes: number; error?: Error }> {
  let bytes = 0;
  try {
    for await (const chunk of reader as AsyncIterable<Buffer>) {
      for (let i = 0; i < chunk.length; i += 4099) {
        const at = bytes + i;
        if (chunk[i] !== (Math.floor(at / 65536) & 0xff)) throw new Error(`wrong byte at ${at}`);
      }
      bytes += chunk.length;
    }
    return { bytes };
  } catch (error) {
    return { bytes, error: error as Error };
  }
}
