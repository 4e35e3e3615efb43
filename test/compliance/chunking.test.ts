/**
 * How a channel cuts a stream, over real FIFOs and Unix sockets. A channel writer puts large
 * writes that queued while the medium was full into shared frames (one header per frame limit,
 * not per write). A channel reader hands on at most one chunk per read from its medium. A read rarely ends on a
 * frame boundary, so it often holds the tail of one DATA frame and the head of the next; handed on
 * apart, a step that forwards what it reads writes two frames for it, and down a chain of such
 * steps the stream splits finer at every hop (1 MiB through five FIFO hops arrived as 59 chunks
 * instead of 16, each costing every process an event-loop turn).
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { finished } from 'node:stream/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { ChannelReader, ChannelWriter, HEADER_BYTES, ShmTransport, fifoTransport, unixTransport, type Transport } from '../../transports/index.js';
import { seededBytes, sha256 } from '../helpers/streams.js';

const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'sluice-chunks-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** 64 KiB writes: each frame is 12 bytes longer than a 64 KiB read, so reads straddle frames. */
const WRITE = 64 * 1024;
const TOTAL = 4 * 1024 * 1024;

describe.each([
  ['fifo', fifoTransport],
  ['unix', unixTransport],
  // a ring smaller than the stream, so that writes queue behind a full medium here too
  ['shm', new ShmTransport({ ringBytes: 256 * 1024 })],
] as Array<[string, Transport]>)('a channel reader over %s', (name, transport) => {
  /** A channel over `transport`: the writer, the reader's chunks, and the medium's reads as the reader got them. */
  async function open(endpoint: string): Promise<{ writer: ChannelWriter; reader: ChannelReader; chunks: Buffer[]; reads: Buffer[]; close(): Promise<void> }> {
    const listener = await transport.listen(join(dir, `${name}-${endpoint}`));
    // the writer sends its HELLO at once: a FIFO's accept waits for the producer's first bytes
    const writer = new ChannelWriter(await transport.dial(join(dir, `${name}-${endpoint}`)));
    const conn = await listener.accept();
    const reads: Buffer[] = [];
    conn.input.on('data', (c: Buffer) => reads.push(c));
    const reader = new ChannelReader(conn);
    const chunks: Buffer[] = [];
    reader.on('data', (c: Buffer) => chunks.push(c));
    return { writer, reader, chunks, reads, close: () => listener.close() };
  }

  it('delivers every byte in no more chunks than the medium was read in', async () => {
    const { writer, reader, chunks, reads, close } = await open('endpoint');
    const data = seededBytes(TOTAL);
    for (let at = 0; at < TOTAL; at += WRITE) {
      if (!writer.write(data.subarray(at, at + WRITE))) await new Promise((resolve) => writer.once('drain', resolve));
    }
    writer.end();
    await Promise.all([finished(writer), finished(reader)]);
    await close();

    expect(sha256(Buffer.concat(chunks))).toBe(sha256(data));
    // the HELLO and END frames arrive in reads of their own or with data: at most one chunk per read
    expect(chunks.length).toBeLessThanOrEqual(reads.length);
    expect(chunks.length).toBeGreaterThan(0);
  });

  it('puts large writes queued behind a full medium into shared frames', async () => {
    const { writer, reader, chunks, reads, close } = await open('frames');
    // every write at once: all but the first queue while the medium is full
    const data = seededBytes(TOTAL);
    for (let at = 0; at < TOTAL; at += WRITE) writer.write(data.subarray(at, at + WRITE));
    writer.end();
    await Promise.all([finished(writer), finished(reader)]);
    await close();

    expect(sha256(Buffer.concat(chunks))).toBe(sha256(data));
    const wireBytes = reads.reduce((sum, c) => sum + c.length, 0);
    // each frame costs a 12-byte header; HELLO and END are two more frames with small bodies
    const overhead = wireBytes - TOTAL;
    const writes = TOTAL / WRITE;
    expect(overhead).toBeLessThan((writes / 4) * HEADER_BYTES + 256);
  });
});
