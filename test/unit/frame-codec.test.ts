/**
 * The frame codec (transports/codec.ts) tested from raw bytes: exact wire fixtures, streams split
 * anywhere, limits enforced from the header alone, and garbage refused with SLUICE_PROTOCOL.
 */
import { describe, it, expect } from 'vitest';
import { unpack } from 'msgpackr';
import {
  DEFAULT_MAX_FRAME_PAYLOAD,
  FrameDecoder,
  FrameType,
  HEADER_BYTES,
  MAX_CONTROL_PAYLOAD,
  MAX_FRAME_PAYLOAD_LIMIT,
  ProtocolError,
  SluiceError,
  checksumOf,
  encodeControl,
  encodeHeader,
  packr,
  type FrameSink,
} from '../../transports/index.js';
import { ownCopy, prng, randomChunks, splitAt } from './prng.js';

// ---------------------------------------------------------------------------------------------
// helpers

/** Bytes from a hex string; spaces are ignored. */
function hex(text: string): Buffer {
  const clean = text.replace(/\s+/g, '');
  if (!/^([0-9a-f]{2})*$/i.test(clean)) throw new Error(`bad hex fixture: ${text}`);
  return ownCopy(Buffer.from(clean, 'hex'));
}

type Seen =
  | { kind: 'data'; channel: number; bytes: Buffer }
  | { kind: 'control'; type: number; channel: number; fields: Record<string, unknown> };

/**
 * A sink that records what it is given. Data pieces are copied (they are views only valid during
 * the call); it also checks that each piece is a view of the chunk being pushed, not a copy.
 */
class Recorder implements FrameSink {
  readonly events: Seen[] = [];
  dataCalls = 0;
  emptyPieces = 0;
  /** pieces that were not a view inside the chunk being pushed */
  notViews = 0;
  /** byteOffset of each data piece within the chunk being pushed */
  readonly pieceOffsets: number[] = [];
  current: Buffer | undefined;

  data(channel: number, bytes: Buffer): void {
    this.dataCalls++;
    if (bytes.length === 0) this.emptyPieces++;
    const c = this.current;
    if (
      !c ||
      bytes.buffer !== c.buffer ||
      bytes.byteOffset < c.byteOffset ||
      bytes.byteOffset + bytes.length > c.byteOffset + c.length
    ) {
      this.notViews++;
    } else {
      this.pieceOffsets.push(bytes.byteOffset - c.byteOffset);
    }
    this.events.push({ kind: 'data', channel, bytes: Buffer.from(bytes) });
  }

  control(type: FrameType, channel: number, fields: Record<string, unknown>): void {
    this.events.push({ kind: 'control', type, channel, fields });
  }

  push(decoder: FrameDecoder, chunk: Buffer): void {
    this.current = chunk;
    try {
      decoder.push(chunk, this);
    } finally {
      this.current = undefined;
    }
  }
}

type Normal =
  | { kind: 'data'; channel: number; hex: string }
  | { kind: 'control'; type: number; channel: number; fields: Record<string, unknown> };

/**
 * Adjacent data events of the same channel merged (how data is cut into pieces is not
 * observable), data as hex so that large payloads compare quickly and diff readably.
 */
function normalize(events: readonly Seen[]): Normal[] {
  const out: Array<Seen & { parts?: Buffer[] }> = [];
  for (const e of events) {
    const last = out[out.length - 1];
    if (e.kind === 'data' && last?.kind === 'data' && last.channel === e.channel) {
      last.parts!.push(e.bytes);
    } else {
      out.push(e.kind === 'data' ? { ...e, parts: [e.bytes] } : e);
    }
  }
  return out.map((e) =>
    e.kind === 'data' ? { kind: 'data', channel: e.channel, hex: Buffer.concat(e.parts!).toString('hex') } : e,
  );
}

/** Run `fn`, expect it to throw a SluiceError with code SLUICE_PROTOCOL, and return that error. */
function protocolError(fn: () => void): ProtocolError {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown, 'expected a SLUICE_PROTOCOL error, nothing was thrown').toBeDefined();
  expect(thrown).toBeInstanceOf(SluiceError);
  expect((thrown as SluiceError).code).toBe('SLUICE_PROTOCOL');
  expect(thrown).toBeInstanceOf(ProtocolError);
  return thrown as ProtocolError;
}

type Frame =
  | { type: typeof FrameType.DATA; channel: number; payload: Buffer }
  | { type: Exclude<FrameType, typeof FrameType.DATA>; channel: number; fields: Record<string, unknown> };

interface Stream {
  bytes: Buffer;
  /** offsets where a frame ends (and 0): the only places where atBoundary may be true */
  boundaries: Set<number>;
  /** [start, end) of every non-empty DATA payload in `bytes` */
  payloads: Array<[number, number]>;
  expected: Normal[];
}

function buildStream(frames: readonly Frame[]): Stream {
  const parts: Buffer[] = [];
  const boundaries = new Set<number>([0]);
  const payloads: Array<[number, number]> = [];
  const expected: Seen[] = [];
  let at = 0;
  for (const f of frames) {
    let encoded: Buffer;
    if (f.type === FrameType.DATA) {
      encoded = Buffer.concat([encodeHeader(FrameType.DATA, f.channel, f.payload.length), f.payload]);
      if (f.payload.length > 0) {
        payloads.push([at + HEADER_BYTES, at + HEADER_BYTES + f.payload.length]);
        expected.push({ kind: 'data', channel: f.channel, bytes: f.payload });
      }
    } else {
      encoded = encodeControl(f.type, f.channel, f.fields);
      expected.push({ kind: 'control', type: f.type, channel: f.channel, fields: f.fields });
    }
    parts.push(encoded);
    at += encoded.length;
    boundaries.add(at);
  }
  return { bytes: ownCopy(Buffer.concat(parts)), boundaries, payloads, expected: normalize(expected) };
}

/** The HELLO / DATA (0, 1, 2, ... bytes) / ABORT / END sequence used by the split tests. */
function sampleFrames(seed: number, bigPayload = 1000): Frame[] {
  const r = prng(seed);
  const mainData = [0, 1, 2, 13, bigPayload, 1, 300].map((n) => r.bytes(n));
  const all = Buffer.concat(mainData);
  return [
    { type: FrameType.HELLO, channel: 0, fields: { v: 1, producer: 'split', meta: { n: [1, 2, 3], ok: true } } },
    { type: FrameType.DATA, channel: 0, payload: mainData[0]! },
    { type: FrameType.DATA, channel: 0, payload: mainData[1]! },
    { type: FrameType.DATA, channel: 0, payload: mainData[2]! },
    { type: FrameType.DATA, channel: 0xffffffff, payload: r.bytes(13) },
    { type: FrameType.DATA, channel: 0, payload: mainData[3]! },
    { type: FrameType.DATA, channel: 0, payload: mainData[4]! },
    { type: FrameType.DATA, channel: 5, payload: Buffer.alloc(0) },
    { type: FrameType.ABORT, channel: 5, fields: { code: 'SLUICE_PRODUCER_ABORTED', message: 'gave up' } },
    { type: FrameType.DATA, channel: 0, payload: mainData[5]! },
    { type: FrameType.DATA, channel: 0, payload: mainData[6]! },
    { type: FrameType.ACK, channel: 0x01020304, fields: { length: 0 } },
    { type: FrameType.END, channel: 0, fields: { length: all.length, checksum: checksumOf(all) } },
  ];
}

function decodeChunks(chunks: readonly Buffer[], options?: { maxFramePayload?: number }): Recorder {
  const decoder = new FrameDecoder(options);
  const rec = new Recorder();
  for (const chunk of chunks) rec.push(decoder, chunk);
  expect(decoder.atBoundary).toBe(true);
  return rec;
}

// ---------------------------------------------------------------------------------------------

describe('frame codec: exact wire bytes', () => {
  it('encodes a DATA header for channel 7, length 3 as 01 02 0000 00000007 00000003', () => {
    expect(encodeHeader(FrameType.DATA, 7, 3).toString('hex')).toBe('010200000000000700000003');
  });

  it('encodes channel and length as unsigned 32-bit big-endian', () => {
    expect(encodeHeader(FrameType.END, 0xfffffffe, 0x01020304).toString('hex')).toBe('01030000fffffffe01020304');
    expect(encodeHeader(FrameType.ACK, 0x80000000, 0).toString('hex')).toBe('0104000080000000' + '00000000');
  });

  it('decodes a DATA frame for channel 7 from raw bytes', () => {
    const rec = decodeChunks([hex('01 02 0000 00000007 00000003 616263')]);
    expect(rec.events).toEqual([{ kind: 'data', channel: 7, bytes: Buffer.from('abc') }]);
  });

  it('decodes channel ids above 2^31 as unsigned numbers', () => {
    const rec = decodeChunks([hex('01 02 0000 ffffffff 00000001 2a')]);
    expect(rec.events).toEqual([{ kind: 'data', channel: 4294967295, bytes: Buffer.from([0x2a]) }]);
  });

  it.each([
    ['HELLO', FrameType.HELLO, 0, { v: 1, step: 'split' }],
    ['END', FrameType.END, 7, { length: 3, checksum: '78af5f94892f3950' }],
    ['ACK', FrameType.ACK, 7, { length: 3 }],
    ['ABORT', FrameType.ABORT, 7, { code: 'SLUICE_TRUNCATED', message: 'x' }],
  ] as const)('encodes a %s control frame as header + one msgpack map', (_name, type, channel, fields) => {
    const frame = encodeControl(type, channel, fields);
    const header = frame.subarray(0, HEADER_BYTES);
    const channelHex = channel.toString(16).padStart(8, '0');
    expect(header.subarray(0, 8).toString('hex')).toBe(`010${type}0000${channelHex}`);
    expect(header.readUInt32BE(8)).toBe(frame.length - HEADER_BYTES);
    expect(frame.length).toBeGreaterThan(HEADER_BYTES);
    // any msgpack decoder reads the payload back as the same plain map
    expect(unpack(frame.subarray(HEADER_BYTES))).toEqual(fields);
  });

  it.each([
    // canonical (fixmap) msgpack, as another implementation would write it
    ['HELLO', '01 01 0000 00000000 00000004  81 a1 76 01', FrameType.HELLO, 0, { v: 1 }],
    [
      'END',
      '01 03 0000 00000007 00000023  82 a6 6c656e677468 03 a8 636865636b73756d b0 37386166356639343839326633393530',
      FrameType.END,
      7,
      { length: 3, checksum: '78af5f94892f3950' },
    ],
    ['ACK', '01 04 0000 00000007 00000009  81 a6 6c656e677468 03', FrameType.ACK, 7, { length: 3 }],
    [
      'ABORT',
      '01 05 0000 00000007 00000021  82 a4 636f6465 b0 534c554943455f5452554e4341544544 a7 6d657373616765 a1 78',
      FrameType.ABORT,
      7,
      { code: 'SLUICE_TRUNCATED', message: 'x' },
    ],
  ] as const)('decodes a %s control frame from raw bytes', (_name, bytes, type, channel, fields) => {
    const rec = decodeChunks([hex(bytes)]);
    expect(rec.events).toEqual([{ kind: 'control', type, channel, fields }]);
    expect(rec.dataCalls).toBe(0);
  });

  it('decodes a whole channel (HELLO, DATA "abc", END) from one hex string, in order', () => {
    const rec = decodeChunks([
      hex(
        '01 01 0000 00000000 00000004  81 a1 76 01' +
          '01 02 0000 00000000 00000000' + // empty DATA frame: a legal no-op
          '01 02 0000 00000000 00000003  616263' +
          '01 03 0000 00000000 00000023  82 a6 6c656e677468 03 a8 636865636b73756d b0 37386166356639343839326633393530',
      ),
    ]);
    expect(rec.events).toEqual([
      { kind: 'control', type: FrameType.HELLO, channel: 0, fields: { v: 1 } },
      { kind: 'data', channel: 0, bytes: Buffer.from('abc') },
      { kind: 'control', type: FrameType.END, channel: 0, fields: { length: 3, checksum: checksumOf(Buffer.from('abc')) } },
    ]);
  });

  it('hands DATA bytes on unchanged, including bytes that look like headers', () => {
    const payload = Buffer.concat([encodeHeader(FrameType.DATA, 9, 99), encodeControl(FrameType.ABORT, 1, { code: 'x', message: 'y' })]);
    const rec = decodeChunks([ownCopy(Buffer.concat([encodeHeader(FrameType.DATA, 3, payload.length), payload]))]);
    expect(rec.events).toEqual([{ kind: 'data', channel: 3, bytes: payload }]);
  });
});

describe('frame codec: chunks split anywhere', () => {
  const stream = buildStream(sampleFrames(7));

  it('the sample stream covers empty, 1-byte and larger DATA frames and every control type', () => {
    // guards the fixture itself: the split tests below are only as good as this stream
    const frames = sampleFrames(7);
    const sizes = frames.flatMap((f) => (f.type === FrameType.DATA ? [f.payload.length] : []));
    expect(sizes).toEqual(expect.arrayContaining([0, 1, 2, 13, 1000]));
    expect(new Set(frames.map((f) => f.type))).toEqual(new Set([1, 2, 3, 4, 5]));
  });

  it('decodes the same frames and bytes when split at every single point', () => {
    for (let cut = 1; cut < stream.bytes.length; cut++) {
      const [first, second] = splitAt(stream.bytes, [cut]) as [Buffer, Buffer];
      const decoder = new FrameDecoder();
      const rec = new Recorder();
      rec.push(decoder, first);
      expect(decoder.atBoundary, `atBoundary after ${cut} bytes`).toBe(stream.boundaries.has(cut));
      rec.push(decoder, second);
      expect(decoder.atBoundary).toBe(true);
      expect(normalize(rec.events), `split at ${cut}`).toEqual(stream.expected);
      expect(rec.emptyPieces).toBe(0);
      expect(rec.notViews).toBe(0);
    }
  });

  it('decodes the same frames and bytes when fed byte by byte, and is at a boundary exactly between frames', () => {
    const decoder = new FrameDecoder();
    const rec = new Recorder();
    expect(decoder.atBoundary).toBe(true);
    for (let i = 0; i < stream.bytes.length; i++) {
      rec.push(decoder, ownCopy(stream.bytes.subarray(i, i + 1)));
      expect(decoder.atBoundary, `after byte ${i + 1}`).toBe(stream.boundaries.has(i + 1));
    }
    expect(normalize(rec.events)).toEqual(stream.expected);
    expect(rec.emptyPieces).toBe(0);
    expect(rec.notViews).toBe(0);
  });

  it.each([1, 2, 3, 42, 1234, 99991])('decodes the same frames and bytes in random-sized chunks (seed %i)', (seed) => {
    const r = prng(seed);
    for (const maxChunk of [3, 17, 100, 700, 5000]) {
      const rec = decodeChunks(randomChunks(stream.bytes, r, maxChunk));
      expect(normalize(rec.events), `maxChunk ${maxChunk}`).toEqual(stream.expected);
      expect(rec.emptyPieces).toBe(0);
      expect(rec.notViews).toBe(0);
    }
  });

  it('reassembles large DATA frames (up to the limit) from random chunks', () => {
    const r = prng(5);
    const big = buildStream([
      { type: FrameType.HELLO, channel: 1, fields: { v: 1 } },
      { type: FrameType.DATA, channel: 1, payload: r.bytes(DEFAULT_MAX_FRAME_PAYLOAD) },
      { type: FrameType.DATA, channel: 1, payload: r.bytes(200_001) },
      { type: FrameType.END, channel: 1, fields: { length: DEFAULT_MAX_FRAME_PAYLOAD + 200_001, checksum: '0000000000000000' } },
    ]);
    const rec = decodeChunks(randomChunks(big.bytes, r, 70_000));
    expect(normalize(rec.events)).toEqual(big.expected);
    expect(rec.notViews).toBe(0);
  });

  it('hands a DATA payload that lies inside one chunk on as a single view of that chunk (no copy)', () => {
    const rec = decodeChunks([stream.bytes]);
    expect(rec.notViews).toBe(0);
    // one call per non-empty DATA frame, each a view at exactly the payload's offset
    expect(rec.pieceOffsets).toEqual(stream.payloads.map(([start]) => start));
    expect(rec.dataCalls).toBe(stream.payloads.length);
  });

  it('delivers a split payload as views of each chunk, one piece per chunk', () => {
    const payload = prng(3).bytes(100);
    const whole = Buffer.concat([encodeHeader(FrameType.DATA, 0, 100), payload]);
    const chunks = splitAt(whole, [HEADER_BYTES + 10, HEADER_BYTES + 60]);
    const decoder = new FrameDecoder();
    const seen: Array<{ chunk: number; view: boolean; length: number }> = [];
    chunks.forEach((chunk, i) => {
      decoder.push(chunk, {
        data: (_channel, bytes) => seen.push({ chunk: i, view: bytes.buffer === chunk.buffer, length: bytes.length }),
        control: () => {
          throw new Error('no control frame here');
        },
      });
    });
    expect(seen).toEqual([
      { chunk: 0, view: true, length: 10 },
      { chunk: 1, view: true, length: 50 },
      { chunk: 2, view: true, length: 40 },
    ]);
  });

  it('keeps control frames intact when the caller reuses its chunk buffers', () => {
    const frame = encodeControl(FrameType.HELLO, 3, { v: 1, name: 'a fairly long step name', list: [1, 2, 3] });
    const decoder = new FrameDecoder();
    const rec = new Recorder();
    const scratch = Buffer.alloc(frame.length);
    // feed the frame through one scratch buffer, overwritten after every push
    for (const [from, to] of [
      [0, 5],
      [5, 20],
      [20, frame.length],
    ] as const) {
      const chunk = scratch.subarray(0, to - from);
      frame.copy(chunk, 0, from, to);
      rec.push(decoder, chunk);
      scratch.fill(0xee);
    }
    expect(rec.events).toEqual([
      { kind: 'control', type: FrameType.HELLO, channel: 3, fields: { v: 1, name: 'a fairly long step name', list: [1, 2, 3] } },
    ]);
  });
});

describe('frame codec: limits', () => {
  it('refuses a DATA header announcing maxFramePayload+1 bytes as soon as the 12-byte header is in', () => {
    const decoder = new FrameDecoder();
    const header = encodeHeader(FrameType.DATA, 0, DEFAULT_MAX_FRAME_PAYLOAD + 1);
    const rec = new Recorder();
    rec.push(decoder, ownCopy(header.subarray(0, HEADER_BYTES - 1)));
    const err = protocolError(() => rec.push(decoder, ownCopy(header.subarray(HEADER_BYTES - 1))));
    expect(err.details).toMatchObject({ length: DEFAULT_MAX_FRAME_PAYLOAD + 1 });
    expect(rec.dataCalls).toBe(0);
  });

  it('refuses an oversized DATA frame before handing on any of its payload', () => {
    const decoder = new FrameDecoder({ maxFramePayload: 100 });
    const rec = new Recorder();
    const chunk = ownCopy(Buffer.concat([encodeHeader(FrameType.DATA, 0, 101), Buffer.alloc(50, 1)]));
    protocolError(() => rec.push(decoder, chunk));
    expect(rec.dataCalls).toBe(0);
  });

  it('accepts a DATA frame of exactly maxFramePayload bytes', () => {
    const payload = prng(11).bytes(100);
    const rec = decodeChunks([ownCopy(Buffer.concat([encodeHeader(FrameType.DATA, 0, 100), payload]))], { maxFramePayload: 100 });
    expect(rec.events).toEqual([{ kind: 'data', channel: 0, bytes: payload }]);
  });

  it('accepts the header of a DATA frame of exactly the default 1 MiB and waits for its payload', () => {
    const decoder = new FrameDecoder();
    decoder.push(encodeHeader(FrameType.DATA, 0, DEFAULT_MAX_FRAME_PAYLOAD), new Recorder());
    expect(decoder.atBoundary).toBe(false);
  });

  it.each([FrameType.HELLO, FrameType.END, FrameType.ACK, FrameType.ABORT])(
    'refuses a control frame (type %i) announcing more than MAX_CONTROL_PAYLOAD as soon as its header is in',
    (type) => {
      const decoder = new FrameDecoder({ maxFramePayload: MAX_FRAME_PAYLOAD_LIMIT });
      const err = protocolError(() => decoder.push(encodeHeader(type, 0, MAX_CONTROL_PAYLOAD + 1), new Recorder()));
      expect(err.details).toMatchObject({ length: MAX_CONTROL_PAYLOAD + 1 });
    },
  );

  it('accepts a control frame header announcing exactly MAX_CONTROL_PAYLOAD', () => {
    const decoder = new FrameDecoder();
    decoder.push(encodeHeader(FrameType.HELLO, 0, MAX_CONTROL_PAYLOAD), new Recorder());
    expect(decoder.atBoundary).toBe(false);
  });

  it('uses 1 MiB as the default maxFramePayload', () => {
    expect(DEFAULT_MAX_FRAME_PAYLOAD).toBe(1024 * 1024);
    expect(new FrameDecoder().maxFramePayload).toBe(1024 * 1024);
    expect(MAX_FRAME_PAYLOAD_LIMIT).toBe(16 * 1024 * 1024);
  });

  it.each([0, -1, MAX_FRAME_PAYLOAD_LIMIT + 1, 1.5, Number.NaN, Number.POSITIVE_INFINITY])(
    'rejects maxFramePayload %s with a RangeError',
    (value) => {
      expect(() => new FrameDecoder({ maxFramePayload: value })).toThrow(RangeError);
    },
  );

  it.each([1, 4096, MAX_FRAME_PAYLOAD_LIMIT])('accepts maxFramePayload %i', (value) => {
    expect(new FrameDecoder({ maxFramePayload: value }).maxFramePayload).toBe(value);
  });

  it('a decoder with maxFramePayload 1 still passes 1-byte DATA frames', () => {
    const rec = decodeChunks([hex('01 02 0000 00000000 00000001 ff  01 02 0000 00000000 00000001 00')], { maxFramePayload: 1 });
    expect(normalize(rec.events)).toEqual([{ kind: 'data', channel: 0, hex: 'ff00' }]);
  });
});

describe('frame codec: encodeControl limit', () => {
  /** fields whose msgpack body is exactly `size` bytes */
  function fieldsOfSize(size: number): { s: string } {
    const probe = 60_000; // str16 range, like the sizes we aim at
    const overhead = packr.pack({ s: 'x'.repeat(probe) }).length - probe;
    const fields = { s: 'x'.repeat(size - overhead) };
    expect(packr.pack(fields).length).toBe(size);
    return fields;
  }

  it('encodes a control body of exactly MAX_CONTROL_PAYLOAD bytes, and the decoder accepts it', () => {
    const fields = fieldsOfSize(MAX_CONTROL_PAYLOAD);
    const frame = encodeControl(FrameType.HELLO, 0, fields);
    expect(frame.length).toBe(HEADER_BYTES + MAX_CONTROL_PAYLOAD);
    const rec = decodeChunks(randomChunks(ownCopy(frame), prng(1), 9000));
    expect(rec.events).toEqual([{ kind: 'control', type: FrameType.HELLO, channel: 0, fields }]);
  });

  it('refuses a control body of MAX_CONTROL_PAYLOAD+1 bytes with SLUICE_PROTOCOL', () => {
    const fields = fieldsOfSize(MAX_CONTROL_PAYLOAD + 1);
    protocolError(() => encodeControl(FrameType.HELLO, 0, fields));
    protocolError(() => encodeControl(FrameType.ABORT, 0, { code: 'x', message: 'm'.repeat(100_000) }));
  });
});

describe('frame codec: garbage', () => {
  const valid = hex('01 02 0000 00000007 00000003 616263');

  function withByte(bytes: Buffer, index: number, value: number): Buffer {
    const copy = ownCopy(bytes);
    copy[index] = value;
    return copy;
  }

  it.each([0, 2, 0x7f, 0xff])('refuses wire version %i', (version) => {
    const rec = new Recorder();
    protocolError(() => rec.push(new FrameDecoder(), withByte(valid, 0, version)));
    expect(rec.events).toEqual([]);
  });

  it.each([0, 10, 0x42, 0xff])('refuses unknown frame type %i', (type) => {
    const rec = new Recorder();
    protocolError(() => rec.push(new FrameDecoder(), withByte(valid, 1, type)));
    expect(rec.events).toEqual([]);
  });

  it.each([
    [2, 1],
    [3, 1],
    [2, 0x80],
    [3, 0xff],
  ])('refuses a non-zero reserved byte (byte %i = %i)', (index, value) => {
    const rec = new Recorder();
    protocolError(() => rec.push(new FrameDecoder(), withByte(valid, index, value)));
    expect(rec.events).toEqual([]);
  });

  it('refuses a bad header that arrives split across chunks', () => {
    const bad = withByte(valid, 3, 9);
    const decoder = new FrameDecoder();
    const rec = new Recorder();
    rec.push(decoder, ownCopy(bad.subarray(0, 2)));
    rec.push(decoder, ownCopy(bad.subarray(2, 3)));
    protocolError(() => rec.push(decoder, ownCopy(bad.subarray(3))));
    expect(rec.events).toEqual([]);
  });

  function controlFrame(type: FrameType, payload: Buffer): Buffer {
    return ownCopy(Buffer.concat([encodeHeader(type, 0, payload.length), payload]));
  }

  it.each([
    ['a truncated map', '82 a1 76 01'],
    ['a map followed by trailing bytes', '81 a1 76 01 00'],
    ['an unknown extension type', 'd4 05 01'],
    ['a string header longer than the payload', 'd9 20 616263'],
  ])('refuses a control payload that is not one msgpack value: %s', (_what, payload) => {
    const rec = new Recorder();
    protocolError(() => rec.push(new FrameDecoder(), controlFrame(FrameType.HELLO, hex(payload))));
    expect(rec.events).toEqual([]);
  });

  it.each([
    ['an array', '93 01 02 03'],
    ['a number', '2a'],
    ['a negative number', 'ff'],
    ['a float', 'cb 3ff8000000000000'],
    ['a string', 'a3 616263'],
    ['nil', 'c0'],
    ['true', 'c3'],
    ['binary bytes', 'c4 02 0102'],
    ['an empty array', '90'],
    ['the never-used byte 0xc1', 'c1'],
    ['a timestamp32 (decodes to a Date)', 'd6 ff 00000000'],
    ['a timestamp64 (decodes to a Date)', 'd7 ff 0000000000000000'],
    ['a timestamp96 (decodes to a Date)', 'c7 0c ff 00000000 0000000000000001'],
    ['an undefined (msgpackr extension 0)', 'd4 00 00'],
    ['a Set of a map (msgpackr extension 0x73)', 'd4 73 00 91 80'],
    ['a RegExp (msgpackr extension 0x78)', 'd4 78 00 92 a1 78 a0'],
    ['an Error (msgpackr extension 0x65)', 'd4 65 00 93 a5 4572726f72 a1 65 c0'],
    ['a Uint8Array (msgpackr typed-array extension 0x74)', 'c7 02 74 01 05'],
    ['a DataView (msgpackr typed-array extension 0x74)', 'c7 02 74 11 05'],
    ['a BigInt (msgpackr extension 0x42)', 'd4 42 05'],
  ])('refuses a control payload that is msgpack but not a plain map: %s', (_what, payload) => {
    for (const type of [FrameType.HELLO, FrameType.END, FrameType.ACK, FrameType.ABORT]) {
      const rec = new Recorder();
      protocolError(() => rec.push(new FrameDecoder(), controlFrame(type, hex(payload))));
      expect(rec.events).toEqual([]);
    }
  });

  it('accepts an empty msgpack map as a control payload (the map check is not over-strict)', () => {
    const rec = decodeChunks([controlFrame(FrameType.ACK, hex('80'))]);
    expect(rec.events).toEqual([{ kind: 'control', type: FrameType.ACK, channel: 0, fields: {} }]);
  });

  it.each([FrameType.HELLO, FrameType.END, FrameType.ACK, FrameType.ABORT])('refuses an empty control frame (type %i, length 0)', (type) => {
    const rec = new Recorder();
    protocolError(() => rec.push(new FrameDecoder(), ownCopy(encodeHeader(type, 0, 0))));
    expect(rec.events).toEqual([]);
  });

  it('delivers the valid frames before a bad one, then throws', () => {
    const decoder = new FrameDecoder();
    const rec = new Recorder();
    const chunk = ownCopy(Buffer.concat([valid, withByte(valid, 0, 9)]));
    protocolError(() => rec.push(decoder, chunk));
    expect(rec.events).toEqual([{ kind: 'data', channel: 7, bytes: Buffer.from('abc') }]);
  });

  it('keeps throwing the same error after a failure, even for valid input', () => {
    const decoder = new FrameDecoder();
    const rec = new Recorder();
    const first = protocolError(() => rec.push(decoder, withByte(valid, 1, 0x09)));
    for (const next of [valid, ownCopy(encodeControl(FrameType.HELLO, 0, { v: 1 })), Buffer.alloc(0)]) {
      let again: unknown;
      try {
        rec.push(decoder, next);
      } catch (err) {
        again = err;
      }
      expect(again).toBe(first);
    }
    expect(rec.events).toEqual([]);
  });

  it.each([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 2024, 65537])(
    'refuses random garbage with SLUICE_PROTOCOL and never hands it on (seed %i)',
    (seed) => {
      const r = prng(seed);
      const garbage = r.bytes(4096);
      const decoder = new FrameDecoder();
      const rec = new Recorder();
      let thrown: unknown;
      for (const chunk of randomChunks(garbage, r, 64)) {
        try {
          rec.push(decoder, chunk);
        } catch (err) {
          thrown = err;
          break;
        }
      }
      expect((thrown as SluiceError | undefined)?.code).toBe('SLUICE_PROTOCOL');
      expect(rec.dataCalls).toBe(0);
      expect(rec.events).toEqual([]);
    },
  );

  it.each([11, 12, 13, 14, 15, 16, 17, 18])(
    'after valid frames, random garbage is refused and only the valid bytes are handed on (seed %i)',
    (seed) => {
      const r = prng(seed);
      const good = buildStream(sampleFrames(seed, 50));
      const input = Buffer.concat([good.bytes, r.bytes(2048)]);
      const decoder = new FrameDecoder();
      const rec = new Recorder();
      let thrown: unknown;
      for (const chunk of randomChunks(input, r, 200)) {
        try {
          rec.push(decoder, chunk);
        } catch (err) {
          thrown = err;
          break;
        }
      }
      expect((thrown as SluiceError | undefined)?.code).toBe('SLUICE_PROTOCOL');
      expect(normalize(rec.events)).toEqual(good.expected);
    },
  );

  it.each([21, 22, 23, 24, 25, 26])('refuses a control frame whose payload is random bytes (seed %i)', (seed) => {
    const r = prng(seed);
    const rec = new Recorder();
    protocolError(() => rec.push(new FrameDecoder(), controlFrame(FrameType.END, r.bytes(r.int(1, 300)))));
    expect(rec.events).toEqual([]);
  });
});

describe('frame codec: control payloads must be plain maps', () => {
  it('refuses a control payload of the never-used msgpack byte 0xc1, whole or split', () => {
    const frame = hex('01 03 0000 00000000 00000001 c1');
    for (let cut = 0; cut < frame.length; cut++) {
      const decoder = new FrameDecoder();
      const rec = new Recorder();
      protocolError(() => {
        for (const chunk of splitAt(frame, cut === 0 ? [] : [cut])) rec.push(decoder, chunk);
      });
      expect(rec.events).toEqual([]);
    }
  });

  it('refuses a control payload that is a msgpack timestamp (decodes to a Date, not a map)', () => {
    const rec = new Recorder();
    protocolError(() => rec.push(new FrameDecoder(), hex('01 03 0000 00000000 00000006 d6ff00000000')));
    expect(rec.events).toEqual([]);
  });

  it('delivers the frames before a control frame holding 0xc1, then refuses it', () => {
    const decoder = new FrameDecoder();
    const rec = new Recorder();
    const stream = ownCopy(
      Buffer.concat([encodeControl(FrameType.HELLO, 0, { v: 1 }), hex('01 02 0000 00000000 00000002 c1c1'), hex('01 03 0000 00000000 00000001 c1')]),
    );
    protocolError(() => rec.push(decoder, stream));
    expect(rec.events).toEqual([
      { kind: 'control', type: FrameType.HELLO, channel: 0, fields: { v: 1 } },
      { kind: 'data', channel: 0, bytes: Buffer.from([0xc1, 0xc1]) }, // 0xc1 in DATA is just a byte
    ]);
  });

  it('hands on control fields as plain objects', () => {
    const rec = decodeChunks([hex('01 01 0000 00000000 00000004  81 a1 76 01'), hex('01 04 0000 00000000 00000001  80')]);
    for (const e of rec.events) {
      expect(e.kind).toBe('control');
      if (e.kind === 'control') expect(Object.getPrototypeOf(e.fields)).toBe(Object.prototype);
    }
    expect(rec.events).toHaveLength(2);
  });
});

describe('frame codec: strict control maps', () => {
  // FrameDecoder.finishControl checks only that the payload's top level is a plain map: 0xc1 as
  // one of its values decodes to msgpackr's C1 marker object and is handed to sink.control()
  // as a field (e.g. HELLO metadata, or an END length that then fails as SLUICE_CORRUPT rather
  // than SLUICE_PROTOCOL). The payload is not valid msgpack; records refuse the same bytes.
  it('refuses a control map holding the never-used byte 0xc1 as a value', () => {
    const rec = new Recorder();
    protocolError(() => rec.push(new FrameDecoder(), hex('01 01 0000 00000000 00000004  81 a1 76 c1')));
    expect(rec.events).toEqual([]);
  });
});
