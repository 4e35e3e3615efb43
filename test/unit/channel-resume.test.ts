/**
 * A resumable ChannelReader: when its connection breaks before the trailer, the stream continues
 * on the next connection from the point that connection's HELLO names, the bytes received twice
 * are dropped, and the trailer still covers the whole stream. Anything else fails typed.
 */
import { describe, expect, it } from 'vitest';
import { ChannelReader, ChannelWriter, FrameType, MemoryTransport, checksumOf, encodeControl, encodeHeader, type Connection } from '../../transports/index.js';
import { drain, outcome, seededBytes, sha256 } from '../helpers/streams.js';

const KiB = 1024;

async function setUp(resumeTimeoutMs = 2_000): Promise<{ reader: ChannelReader; dial: () => Promise<Connection>; first: Connection }> {
  const transport = new MemoryTransport();
  const listener = await transport.listen('ch');
  const dial = (): Promise<Connection> => transport.dial('ch');
  const firstDial = dial();
  const reader = new ChannelReader(await listener.accept(), { reconnect: () => listener.accept({ signal: AbortSignal.timeout(resumeTimeoutMs) }) });
  return { reader, dial, first: await firstDial };
}

async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((resolve) => setTimeout(resolve, 2));
}

describe('a resumable channel reader', () => {
  it('continues on a new connection from its resume point, dropping what it had, and verifies the whole stream', async () => {
    const data = seededBytes(300 * KiB, 7);
    const { reader, dial, first } = await setUp();
    const read = drain(reader);
    const writer1 = new ChannelWriter(first, { hello: { run: 'r' } });
    writer1.on('error', () => undefined);
    writer1.write(data.subarray(0, 200 * KiB));
    await until(() => reader.length === 200 * KiB);
    first.destroy(); // the daemon died mid-stream
    const writer2 = new ChannelWriter(await dial(), { hello: { run: 'r', resume: 150 * KiB }, trailer: () => ({ length: data.length, checksum: checksumOf(data) }) });
    writer2.end(data.subarray(150 * KiB));
    expect(await outcome(writer2)).toBeUndefined(); // acknowledged: the consumer verified the whole stream
    const result = await read;
    expect(result.error).toBeUndefined();
    expect(sha256(result.bytes)).toBe(sha256(data));
    expect(reader.resumes).toBe(1);
  });

  it('resumes a connection that broke in the middle of a frame', async () => {
    const data = seededBytes(4000, 8);
    const { reader, dial, first } = await setUp();
    const read = drain(reader);
    first.input.on('error', () => undefined);
    first.output.write(encodeControl(FrameType.HELLO, 0, { v: 1 }));
    first.output.write(encodeHeader(FrameType.DATA, 0, 1000));
    first.output.write(data.subarray(0, 600)); // 400 bytes of this frame never come
    await until(() => reader.length === 600);
    first.destroy();
    const writer2 = new ChannelWriter(await dial(), { hello: { resume: 100 }, trailer: () => ({ length: data.length, checksum: checksumOf(data) }) });
    writer2.end(data.subarray(100));
    const result = await read;
    expect(result.error).toBeUndefined();
    expect(sha256(result.bytes)).toBe(sha256(data));
  });

  it('fails SLUICE_CORRUPT when the resumed bytes do not match the trailer', async () => {
    const data = seededBytes(100 * KiB, 9);
    const { reader, dial, first } = await setUp();
    const read = drain(reader);
    new ChannelWriter(first, { hello: {} }).on('error', () => undefined).write(data.subarray(0, 50 * KiB));
    await until(() => reader.length === 50 * KiB);
    first.destroy();
    const wrong = Buffer.from(data.subarray(40 * KiB));
    wrong[20 * KiB] = wrong[20 * KiB]! ^ 1;
    const writer2 = new ChannelWriter(await dial(), { hello: { resume: 40 * KiB }, trailer: () => ({ length: data.length, checksum: checksumOf(data) }) });
    writer2.on('error', () => undefined);
    writer2.end(wrong);
    expect((await read).error).toMatchObject({ code: 'SLUICE_CORRUPT' });
  });

  it('fails SLUICE_TRUNCATED when the stream resumes past what it received', async () => {
    const { reader, dial, first } = await setUp();
    const read = drain(reader);
    new ChannelWriter(first, { hello: {} }).on('error', () => undefined).write(seededBytes(10 * KiB, 1));
    await until(() => reader.length === 10 * KiB);
    first.destroy();
    const writer2 = new ChannelWriter(await dial(), { hello: { resume: 12 * KiB } });
    writer2.on('error', () => undefined);
    writer2.write(seededBytes(KiB, 2));
    const result = await read;
    expect(result.error).toMatchObject({ code: 'SLUICE_TRUNCATED', message: expect.stringMatching(/resumed at byte 12288, past the 10240 bytes received/) });
    expect(result.ended).toBe(false);
  });

  it('fails SLUICE_TRUNCATED when nobody resumes the stream in time', async () => {
    const { reader, first } = await setUp(100);
    const read = drain(reader);
    new ChannelWriter(first, { hello: {} }).on('error', () => undefined).write(seededBytes(KiB, 3));
    await until(() => reader.length === KiB);
    first.destroy();
    const result = await read;
    expect(result.error).toMatchObject({ code: 'SLUICE_TRUNCATED', message: expect.stringMatching(/not resumed/) });
    expect(result.ended).toBe(false);
  });

  it('reports the code a daemon sends on a new connection when the stream cannot be resumed', async () => {
    const { reader, dial, first } = await setUp();
    const read = drain(reader);
    new ChannelWriter(first, { hello: {} }).on('error', () => undefined).write(seededBytes(KiB, 4));
    await until(() => reader.length === KiB);
    first.destroy();
    const second = await dial();
    second.input.on('error', () => undefined);
    second.output.end(encodeControl(FrameType.ABORT, 0, { code: 'SLUICE_TRUNCATED', message: 'the link failed and there is no store' }));
    expect((await read).error).toMatchObject({ code: 'SLUICE_TRUNCATED', message: expect.stringMatching(/no store/) });
  });

  it('refuses DATA on a resumed connection before its HELLO: SLUICE_PROTOCOL', async () => {
    const { reader, dial, first } = await setUp();
    const read = drain(reader);
    new ChannelWriter(first, { hello: {} }).on('error', () => undefined).write(seededBytes(KiB, 5));
    await until(() => reader.length === KiB);
    first.destroy();
    const second = await dial();
    second.input.on('error', () => undefined);
    second.output.write(Buffer.concat([encodeHeader(FrameType.DATA, 0, 4), Buffer.from('oops')]));
    expect((await read).error).toMatchObject({ code: 'SLUICE_PROTOCOL' });
  });
});
