/**
 * Records (transports/records.ts): each record is a 4-byte big-endian length followed by exactly
 * one msgpack value; records are decoded from chunks split anywhere, with an exact size limit
 * (checked from the length alone) and clear SLUICE_PROTOCOL errors for bad streams.
 */
import { isDeepStrictEqual } from 'node:util';
import { describe, it, expect, vi } from 'vitest';
import { Unpackr, unpack } from 'msgpackr';
import {
  DEFAULT_MAX_RECORD_BYTES,
  ProtocolError,
  RECORD_HEADER_BYTES,
  RecordDecoder,
  RequestError,
  SluiceError,
  decodeRecords,
  encodeRecord,
} from '../../transports/index.js';
import { ownCopy, prng, randomChunks, splitAt, type Prng } from './prng.js';

// ---------------------------------------------------------------------------------------------
// helpers

/** Bytes from a hex string; spaces are ignored. */
function hex(text: string): Buffer {
  const clean = text.replace(/\s+/g, '');
  if (!/^([0-9a-f]{2})*$/i.test(clean)) throw new Error(`bad hex fixture: ${text}`);
  return ownCopy(Buffer.from(clean, 'hex'));
}

/** A 4-byte big-endian length prefix. */
function prefix(length: number): Buffer {
  const out = Buffer.alloc(RECORD_HEADER_BYTES);
  out.writeUInt32BE(length, 0);
  return out;
}

/** A record framed by hand around a msgpack body given in hex (independently of encodeRecord). */
function framed(bodyHex: string): Buffer {
  const body = hex(bodyHex);
  return ownCopy(Buffer.concat([prefix(body.length), body]));
}

/** Decode a complete stream given as chunks, checking that it ends on a record boundary. */
function decodeAll(chunks: readonly Buffer[], maxRecordBytes?: number): unknown[] {
  const decoder = new RecordDecoder(maxRecordBytes);
  const out: unknown[] = [];
  for (const chunk of chunks) out.push(...decoder.push(chunk));
  decoder.finish();
  return out;
}

function protocolError(fn: () => unknown): ProtocolError {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown, 'expected a SLUICE_PROTOCOL error, nothing was thrown').toBeInstanceOf(SluiceError);
  expect((thrown as SluiceError).code).toBe('SLUICE_PROTOCOL');
  expect(thrown).toBeInstanceOf(ProtocolError);
  return thrown as ProtocolError;
}

/** What feeding `chunks` one by one did: the values returned, and which push threw what. */
function feed(decoder: RecordDecoder, chunks: readonly Buffer[]): { values: unknown[]; threwAt: number; error: unknown } {
  const values: unknown[] = [];
  for (let i = 0; i < chunks.length; i++) {
    try {
      values.push(...decoder.push(chunks[i]!));
    } catch (error) {
      return { values, threwAt: i, error };
    }
  }
  return { values, threwAt: -1, error: undefined };
}

/**
 * toEqual, but fast on large inputs: vitest's deep equality walks Buffers element by element,
 * node:util's compares them natively (typed arrays byte for byte, and type-sensitively: a
 * Uint8Array is not equal to a Buffer). Falls back to toEqual for a readable diff on mismatch.
 */
function expectSame(actual: unknown, expected: unknown, message?: string): void {
  if (!isDeepStrictEqual(actual, expected)) {
    expect(actual, message).toEqual(expected);
    expect.fail(`${message ?? 'values'}: not deep-strict-equal (a type or byte-level difference toEqual does not show)`);
  }
}

/** The exact bytes a typed array or DataView covers, as hex. */
function bytesOf(view: ArrayBufferView): string {
  return Buffer.from(view.buffer, view.byteOffset, view.byteLength).toString('hex');
}

/** Every set of cut points drawn from `points` (2^n sets, each sorted). */
function subsets(points: readonly number[]): number[][] {
  const out: number[][] = [];
  for (let mask = 0; mask < 1 << points.length; mask++) out.push(points.filter((_, i) => mask & (1 << i)));
  return out;
}

/**
 * Every way of chunking around the length prefix that starts at `start`: cut or not just before
 * it, between any of its 4 bytes, and just after it (32 ways).
 */
function prefixChunkings(start: number): number[][] {
  return subsets([start, start + 1, start + 2, start + 3, start + 4]).map((cuts) => cuts.filter((c) => c > 0));
}

/** Index of the chunk holding byte `offset`, for chunks cut at `cuts`. */
function chunkHolding(offset: number, cuts: readonly number[]): number {
  return cuts.filter((c) => c <= offset).length;
}

async function collect(source: AsyncIterable<unknown>): Promise<unknown[]> {
  const out: unknown[] = [];
  for await (const value of source) out.push(value);
  return out;
}

async function* chunksOf(chunks: readonly Buffer[]): AsyncGenerator<Buffer> {
  for (const chunk of chunks) {
    await Promise.resolve();
    yield chunk;
  }
}

/** Run `fn` and the rejection it ends with (undefined if it does not reject). */
async function rejection(fn: () => Promise<unknown>): Promise<unknown> {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

const typedArrayTypes = [
  Int8Array,
  Uint8Array,
  Uint8ClampedArray,
  Int16Array,
  Uint16Array,
  Int32Array,
  Uint32Array,
  Float32Array,
  Float64Array,
  BigInt64Array,
  BigUint64Array,
] as const;

/** A typed array of `ctor` holding random bytes (so floats include NaNs, -0, subnormals, ...). */
function randomTyped(r: Prng, ctor: (typeof typedArrayTypes)[number], length: number): ArrayBufferView {
  const buffer = new ArrayBuffer(length * ctor.BYTES_PER_ELEMENT);
  new Uint8Array(buffer).set(r.bytes(buffer.byteLength));
  return new ctor(buffer);
}

/** A random value of one of many msgpack-representable kinds. */
function randomValue(r: Prng, depth = 0): unknown {
  const kind = r.int(0, depth > 2 ? 9 : 12);
  switch (kind) {
    case 0:
      return r.int(-128, 255);
    case 1:
      return r.int(-(2 ** 31), 2 ** 32);
    case 2:
      return (r.int(0, 1) ? 1 : -1) * r.int(0, 2 ** 21 - 1) * 2 ** 32 + r.int(0, 2 ** 32 - 1); // up to ~2^53
    case 3:
      return (r.next() - 0.5) * 10 ** r.int(-10, 300);
    case 4:
      return Array.from({ length: r.int(0, 40) }, () => String.fromCodePoint(r.int(0, 3) === 0 ? r.int(0x80, 0x2fff) : r.int(0x20, 0x7e))).join('');
    case 5:
      return r.bytes(r.int(0, r.int(0, 1) ? 20 : 3000));
    case 6:
      return r.int(0, 1) ? null : r.int(0, 1) === 1;
    case 7:
      return randomTyped(r, typedArrayTypes[r.int(0, typedArrayTypes.length - 1)]!, r.int(0, r.int(0, 1) ? 8 : 300));
    case 8: {
      const bytes = r.bytes(r.int(0, 40));
      return new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    }
    case 9:
      return r.int(0, 1) === 1;
    case 10:
    case 11: {
      const obj: Record<string, unknown> = {};
      for (let i = r.int(0, 6); i > 0; i--) obj[`k${r.int(0, 99)}`] = randomValue(r, depth + 1);
      return obj;
    }
    default:
      return Array.from({ length: r.int(0, 6) }, () => randomValue(r, depth + 1));
  }
}

function kindOf(v: unknown): string {
  if (v === null) return 'null';
  if (Buffer.isBuffer(v)) return 'buffer';
  if (v instanceof DataView) return 'dataview';
  if (ArrayBuffer.isView(v)) return 'typed array';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

// ---------------------------------------------------------------------------------------------

describe('records: wire format', () => {
  it('has a 4-byte length prefix', () => {
    expect(RECORD_HEADER_BYTES).toBe(4);
  });

  it.each([
    ['1', 1, '00000001 01'],
    ['-1', -1, '00000001 ff'],
    ['1.5', 1.5, '00000009 cb 3ff8000000000000'],
    ['"a"', 'a', '00000002 a161'],
    ['""', '', '00000001 a0'],
    ['null', null, '00000001 c0'],
    ['true', true, '00000001 c3'],
    ['[1, 2]', [1, 2], '00000003 92 01 02'],
    ['[]', [], '00000001 90'],
    ['a Buffer (bin8)', Buffer.from([1, 2]), '00000004 c4 02 0102'],
    ['a Uint8Array (typed-array extension 0x74, code 1)', new Uint8Array([1, 2, 3]), '00000007 c7 04 74 01 010203'],
    ['a Float64Array (code 8, little-endian elements)', new Float64Array([1.5]), '0000000c c7 09 74 08 000000000000f83f'],
    ['a DataView (code 17)', new DataView(new Uint8Array([0xaa, 0xbb, 0xcc]).buffer), '00000007 c7 04 74 11 aabbcc'],
  ])('encodes %s as exactly these bytes', (_name, value, bytesHex) => {
    expect(encodeRecord(value).toString('hex')).toBe(hex(bytesHex).toString('hex'));
  });

  it('writes the length as a big-endian u32 of the msgpack body alone', () => {
    const record = encodeRecord(Buffer.alloc(0x10203, 0xab)); // bin32: c6 + 4 length bytes + data
    expect(record.length).toBe(RECORD_HEADER_BYTES + 0x10208);
    expect(record.subarray(0, 9).toString('hex')).toBe('00010208' + 'c6' + '00010203');
  });

  it('returns exactly prefix + body, in a buffer that later encodes do not touch', () => {
    const first = encodeRecord({ text: 'first record', list: [1, 2, 3] });
    const firstHex = first.toString('hex');
    expect(first.length).toBe(RECORD_HEADER_BYTES + first.readUInt32BE(0));
    // msgpackr packs into a scratch buffer it reuses: the record must not be a view of it
    for (let i = 0; i < 50; i++) encodeRecord({ text: `other record ${i}`, pad: 'z'.repeat(i * 40) });
    expect(first.toString('hex')).toBe(firstHex);
    expect(decodeAll([first])).toEqual([{ text: 'first record', list: [1, 2, 3] }]);
  });

  it('encodes maps as plain msgpack maps that any msgpack decoder reads (no msgpackr record extension)', () => {
    const value = { a: 1, nested: { b: 'two' }, list: [{ c: 3 }, { c: 4 }] };
    const record = encodeRecord(value);
    const body = record.subarray(RECORD_HEADER_BYTES);
    expect(body[0] === 0xde || (body[0]! & 0xf0) === 0x80).toBe(true);
    expect(body.includes(0x72)).toBe(false); // no 0x72 ('r') record-definition extension anywhere
    expect(unpack(body)).toEqual(value);
    // encoding the same shape twice gives the same bytes: no state carried between records
    expect(encodeRecord(value).toString('hex')).toBe(record.toString('hex'));
  });

  it('decodes {a: 1} framed by hand as 00000004 81a16101 (fixmap, as other implementations write it)', () => {
    expect(decodeAll([hex('00000004 81a16101')])).toEqual([{ a: 1 }]);
  });

  it('decodes a stream of records written by hand in hex, one value per record', () => {
    const stream = Buffer.concat([
      framed('81 a1 61 01'), // fixmap {a: 1}
      framed('92 01 a1 62'), // fixarray [1, "b"]
      framed('c0'), // nil
      framed('c3'), // true
      framed('c2'), // false
      framed('cc c8'), // uint8 200
      framed('cd 0100'), // uint16 256
      framed('e0'), // negative fixint -32
      framed('d0 80'), // int8 -128
      framed('ca 3fc00000'), // float32 1.5
      framed('cb 400921fb54442d18'), // float64 pi
      framed('c4 02 0102'), // bin8 [1, 2]
      framed('d9 03 616263'), // str8 "abc"
      framed('de 0001 a1 6b 90'), // map16 {k: []}
      framed('dc 0002 c0 c2'), // array16 [nil, false]
      framed('cf 0000000100000000'), // uint64 2^32
      framed('d3 ffffffff00000000'), // int64 -2^32
      framed('d6 ff 00000001'), // timestamp32: 1 s after the epoch
    ]);
    expect(decodeAll([stream])).toEqual([
      { a: 1 },
      [1, 'b'],
      null,
      true,
      false,
      200,
      256,
      -32,
      -128,
      1.5,
      Math.PI,
      Buffer.from([1, 2]),
      'abc',
      { k: [] },
      [null, false],
      2 ** 32,
      -(2 ** 32),
      new Date(1000),
    ]);
  });

  it('decodes a binary value of a record that arrived whole as a view of the received chunk (documented)', () => {
    const chunk = ownCopy(Buffer.concat([encodeRecord('x'), encodeRecord(Buffer.from('payload'))]));
    const [, bin] = decodeAll([chunk]) as [string, Buffer];
    expect(bin.toString()).toBe('payload');
    expect(bin.buffer).toBe(chunk.buffer);
  });
});

describe('records: values round-trip', () => {
  const values: Array<[string, unknown]> = [
    ['zero', 0],
    ['small positive int', 7],
    ['127 / 128 boundary', [127, 128, 255, 256]],
    ['negative ints', [-1, -32, -33, -128, -129, -32768, -32769, -(2 ** 31), -(2 ** 31) - 1]],
    ['32-bit boundaries', [2 ** 16 - 1, 2 ** 16, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1]],
    ['largest safe integers', [Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER, 2 ** 53]],
    ['large non-safe ints stored as float64', [2 ** 63, -(2 ** 63), 2 ** 64, 1e21]],
    ['floats', [0.1, -1.5, Math.PI, 1e300, -1e-300, Number.MAX_VALUE, Number.MIN_VALUE]],
    ['non-finite floats', [Infinity, -Infinity, NaN]],
    ['empty string', ''],
    ['ascii string', 'hello, sluice'],
    ['unicode string', 'naïve café — 日本語 — 😀🚀 — \u0000 nul inside'],
    ['31/32/255/256-byte strings', ['a'.repeat(31), 'b'.repeat(32), 'c'.repeat(255), 'd'.repeat(256)]],
    ['long string', 'x'.repeat(70_000) + '€'.repeat(10_000)],
    ['null', null],
    ['true', true],
    ['false', false],
    ['empty array', []],
    ['empty map', {}],
    ['nested maps and arrays', { a: { b: [1, { c: null, d: [[], [[]], {}] }] }, list: [1, 'two', 3.5, false, null], 'key with spaces': { '': 0 } }],
    ['array of 70,000 numbers', Array.from({ length: 70_000 }, (_, i) => i * 3 - 1000)],
    ['map with 100 keys', Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`k${i}`, i]))],
    ['Buffer', Buffer.from([0, 1, 2, 253, 254, 255])],
    ['empty Buffer', Buffer.alloc(0)],
    ['Buffer holding the byte 0xc1 (as data, 0xc1 is fine)', Buffer.from([0xc1, 0xc1, 0x00])],
    ['large Buffer', prng(1).bytes(100_000)],
    ['Buffers inside a map', { id: 1, payload: Buffer.from('raw bytes'), parts: [Buffer.from([1]), Buffer.from([2, 3])] }],
    ['typed arrays inside maps and arrays', { f: new Float32Array([1.5, -2]), list: [new Int16Array([-1, 2]), new DataView(new ArrayBuffer(2))] }],
    ['Date (msgpack timestamp)', new Date(1_700_000_000_123)],
    ['Date before the epoch', new Date(-1_000_000_000_500)],
  ];

  it.each(values)('round-trips %s', (_name, value) => {
    const encoded = encodeRecord(value);
    expect(Buffer.isBuffer(encoded)).toBe(true);
    expectSame(decodeAll([encoded]), [value]);
  });

  const r = prng(77);
  const typed: Array<[string, ArrayBufferView]> = [
    ...typedArrayTypes.map((ctor): [string, ArrayBufferView] => [`a ${ctor.name} of random bytes`, randomTyped(r, ctor, 37)]),
    ...typedArrayTypes.map((ctor): [string, ArrayBufferView] => [`an empty ${ctor.name}`, new ctor(0)]),
    ['a Float32Array of NaN, -0, Infinity and a subnormal', new Float32Array([NaN, -0, Infinity, 1e-45])],
    ['a Float64Array holding a NaN with a payload', new Float64Array(new Uint8Array([1, 0, 0, 0, 0, 0, 0xf8, 0x7f]).buffer)],
    ['a BigInt64Array of extremes', new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n, 0n])],
    ['a BigUint64Array of extremes', new BigUint64Array([2n ** 64n - 1n, 0n])],
    ['a Uint8Array of 100,000 bytes', new Uint8Array(prng(3).bytes(100_000))],
    ['a Float64Array view inside a larger buffer (only the view)', new Float64Array(randomTyped(r, Uint8Array, 80).buffer, 16, 5)],
    ['a Uint8Array view at an odd offset (only the view)', new Uint8Array([1, 2, 3, 4, 5, 6]).subarray(1, 4)],
    ['an Int32Array view inside a larger buffer', new Int32Array(randomTyped(r, Uint8Array, 64).buffer, 12, 3)],
    ['a DataView of a whole buffer', new DataView(randomTyped(r, Uint8Array, 33).buffer as ArrayBuffer)],
    ['a DataView of part of a buffer (only its range)', new DataView(randomTyped(r, Uint8Array, 50).buffer as ArrayBuffer, 7, 20)],
    ['an empty DataView', new DataView(new ArrayBuffer(0))],
  ];

  it.each(typed)('round-trips %s exactly: same type, same bytes', (_name, view) => {
    const [back] = decodeAll([encodeRecord(view)]) as [ArrayBufferView];
    expect(Object.getPrototypeOf(back)).toBe(Object.getPrototypeOf(view));
    expect(Buffer.isBuffer(back)).toBe(false);
    expect(back.byteLength).toBe(view.byteLength);
    expect(bytesOf(back)).toBe(bytesOf(view));
  });

  it('round-trips a Uint8Array as a Uint8Array and a Buffer as a Buffer', () => {
    const [u8, buf] = decodeAll([encodeRecord(new Uint8Array([9, 8, 7])), encodeRecord(Buffer.from([9, 8, 7]))]) as [Uint8Array, Buffer];
    expect(Object.getPrototypeOf(u8)).toBe(Uint8Array.prototype);
    expect(Buffer.isBuffer(buf)).toBe(true);
    expect(bytesOf(u8)).toBe('090807');
    expect(bytesOf(buf)).toBe('090807');
  });

  it('decodes typed arrays whose bytes sit at an unaligned offset of the chunk', () => {
    const value = new Float64Array([1.5, -2, Math.PI]);
    for (let pad = 0; pad < 8; pad++) {
      const chunk = Buffer.concat([encodeRecord('p'.repeat(pad)), encodeRecord(value)]);
      const [, back] = decodeAll([chunk]) as [string, Float64Array];
      expect(back).toBeInstanceOf(Float64Array);
      expect(Array.from(back), `pad ${pad}`).toEqual([1.5, -2, Math.PI]);
    }
  });

  it('decodes 64-bit integers as numbers (int64AsType: number)', () => {
    expect(decodeAll([encodeRecord(2n ** 60n)])).toEqual([2 ** 60]);
    expect(decodeAll([encodeRecord(-(2n ** 62n))])).toEqual([-(2 ** 62)]);
    expect(decodeAll([framed('cf 0010000000000000'), framed('d3 8000000000000000')])).toEqual([2 ** 52, -(2 ** 63)]);
  });
});

describe('records: streams split anywhere', () => {
  const r = prng(2024);
  const values = Array.from({ length: 1000 }, () => randomValue(r));
  const stream = ownCopy(Buffer.concat(values.map((v) => encodeRecord(v))));

  it('the sample of 1,000 records mixes many kinds of values', () => {
    // guards the fixture itself: the split tests below are only as good as this sample
    expect(new Set(values.map(kindOf))).toEqual(new Set(['null', 'buffer', 'typed array', 'dataview', 'array', 'object', 'number', 'string', 'boolean']));
    expect(stream.length).toBeGreaterThan(100_000);
  });

  it('decodes the 1,000 records from one chunk', () => {
    expectSame(decodeAll([stream]), values);
  });

  it.each([1, 2, 3, 31337])('decodes 1,000 records in order from chunks cut at random points (seed %i)', (seed) => {
    const rr = prng(seed);
    for (const maxChunk of [3, 64, 1000, 9000]) {
      const chunks = randomChunks(stream, rr, maxChunk);
      expectSame(decodeAll(chunks), values, `maxChunk ${maxChunk}`);
    }
  });

  it('decodes 1,000 records fed byte by byte', () => {
    const chunks = Array.from({ length: stream.length }, (_, i) => ownCopy(stream.subarray(i, i + 1)));
    expectSame(decodeAll(chunks), values);
  });

  it('decodes a record split at every single point, prefix included', () => {
    const value = { id: 42, name: 'split me', tags: ['a', 'bb'], blob: Buffer.from('0123456789'), n: 2 ** 40, f: 0.25, t: new Int16Array([1, -1]) };
    const bytes = Buffer.concat([encodeRecord('before'), encodeRecord(value), encodeRecord('after')]);
    for (let cut = 1; cut < bytes.length; cut++) {
      expectSame(decodeAll(splitAt(bytes, [cut])), ['before', value, 'after'], `cut at ${cut}`);
    }
  });

  it('decodes a record after every way of chunking its length prefix', () => {
    const before = encodeRecord('before');
    const bytes = Buffer.concat([before, encodeRecord({ k: 'v' }), encodeRecord(7)]);
    for (const cuts of prefixChunkings(before.length)) {
      expect(decodeAll(splitAt(bytes, cuts)), `cuts ${cuts.join(',')}`).toEqual(['before', { k: 'v' }, 7]);
    }
  });

  it('returns each record once, as soon as its last byte arrives', () => {
    const a = encodeRecord({ a: 1 });
    const b = encodeRecord('second');
    const decoder = new RecordDecoder();
    expect(decoder.push(ownCopy(a.subarray(0, 2)))).toEqual([]);
    expect(decoder.push(ownCopy(a.subarray(2, a.length - 1)))).toEqual([]);
    expect(decoder.push(ownCopy(Buffer.concat([a.subarray(a.length - 1), b.subarray(0, 2)])))).toEqual([{ a: 1 }]);
    expect(decoder.push(ownCopy(b.subarray(2)))).toEqual(['second']);
    expect(decoder.push(Buffer.alloc(0))).toEqual([]);
    decoder.finish();
  });

  it('returns every record a chunk completes, in order', () => {
    const decoder = new RecordDecoder();
    const many = Array.from({ length: 20 }, (_, i) => ({ i }));
    const bytes = Buffer.concat(many.map((v) => encodeRecord(v)));
    expect(decoder.push(ownCopy(bytes.subarray(0, 3)))).toEqual([]);
    expect(decoder.push(ownCopy(bytes.subarray(3)))).toEqual(many);
    decoder.finish();
  });

  it('an empty chunk changes nothing, at a boundary, inside a prefix or inside a body', () => {
    const bytes = encodeRecord('between the cuts');
    const empty = Buffer.alloc(0);
    expect(decodeAll([empty, ownCopy(bytes.subarray(0, 2)), empty, ownCopy(bytes.subarray(2, 9)), empty, ownCopy(bytes.subarray(9)), empty])).toEqual([
      'between the cuts',
    ]);
  });

  it('keeps a partial record (prefix and body) intact when the caller reuses its chunk buffer', () => {
    const value = { text: 'reused buffers must not corrupt partial records', n: [1, 2, 3], f: new Float64Array([0.5]) };
    const bytes = encodeRecord(value);
    const scratch = Buffer.alloc(bytes.length);
    const decoder = new RecordDecoder();
    const out: unknown[] = [];
    for (const [from, to] of [
      [0, 2],
      [2, 10],
      [10, 30],
      [30, bytes.length],
    ] as const) {
      const chunk = scratch.subarray(0, to - from);
      bytes.copy(chunk, 0, from, to);
      out.push(...decoder.push(chunk));
      scratch.fill(0xc1);
    }
    decoder.finish();
    expectSame(out, [value]);
  });

  it('decodeRecords yields the values of an async byte stream, in order', async () => {
    const chunks = randomChunks(stream, prng(9), 5000);
    expectSame(await collect(decodeRecords(chunksOf(chunks))), values);
  });

  it('decodeRecords of an empty stream yields nothing', async () => {
    expect(await collect(decodeRecords(chunksOf([])))).toEqual([]);
    expect(await collect(decodeRecords(chunksOf([Buffer.alloc(0), Buffer.alloc(0)])))).toEqual([]);
  });
});

describe('records: size limit', () => {
  const MAX = 100;
  /** a record whose body is exactly MAX bytes: str8 header (d9 62) + 98 bytes */
  const exact = encodeRecord('y'.repeat(98), MAX);
  /** a record whose body is MAX + 1 bytes */
  const over = encodeRecord('y'.repeat(99));

  it('the fixtures are exactly maxRecordBytes and maxRecordBytes+1 bytes of body', () => {
    expect(exact.readUInt32BE(0)).toBe(MAX);
    expect(exact.length).toBe(RECORD_HEADER_BYTES + MAX);
    expect(over.readUInt32BE(0)).toBe(MAX + 1);
  });

  it('has a default record limit of 16 MiB', () => {
    expect(DEFAULT_MAX_RECORD_BYTES).toBe(16 * 1024 * 1024);
  });

  describe('encodeRecord', () => {
    it('encodes a body of exactly maxRecordBytes', () => {
      expect(encodeRecord('y'.repeat(98), MAX).toString('hex')).toBe(prefix(MAX).toString('hex') + 'd962' + '79'.repeat(98));
    });

    it('refuses a body of maxRecordBytes+1 with SLUICE_INVALID (RequestError)', () => {
      let thrown: unknown;
      try {
        encodeRecord('y'.repeat(99), MAX);
      } catch (err) {
        thrown = err;
      }
      expect(thrown).toBeInstanceOf(RequestError);
      expect((thrown as SluiceError).code).toBe('SLUICE_INVALID');
      expect((thrown as SluiceError).details).toMatchObject({ maxRecordBytes: MAX });
    });

    it('applies the 16 MiB default: a body of exactly 16 MiB is encoded, one byte more is refused', () => {
      const big = Buffer.alloc(DEFAULT_MAX_RECORD_BYTES - 5, 3); // bin32: 5 header bytes
      const record = encodeRecord(big);
      expect(record.readUInt32BE(0)).toBe(DEFAULT_MAX_RECORD_BYTES);
      expect(record.length).toBe(RECORD_HEADER_BYTES + DEFAULT_MAX_RECORD_BYTES);
      let thrown: unknown;
      try {
        encodeRecord(Buffer.alloc(DEFAULT_MAX_RECORD_BYTES - 4));
      } catch (err) {
        thrown = err;
      }
      expect((thrown as SluiceError | undefined)?.code).toBe('SLUICE_INVALID');
    });
  });

  describe('RecordDecoder', () => {
    const stream = Buffer.concat([encodeRecord('before'), exact, encodeRecord('after')]);
    const start = encodeRecord('before').length;
    const expected = ['before', 'y'.repeat(98), 'after'];

    it('accepts a record of exactly maxRecordBytes arriving whole', () => {
      expect(decodeAll([stream], MAX)).toEqual(expected);
      expect(decodeAll([exact], MAX)).toEqual(['y'.repeat(98)]);
    });

    it('accepts a record of exactly maxRecordBytes split at every single point', () => {
      for (let cut = 1; cut < stream.length; cut++) {
        expect(decodeAll(splitAt(stream, [cut]), MAX), `cut at ${cut}`).toEqual(expected);
      }
    });

    it('accepts a record of exactly maxRecordBytes after every way of chunking its prefix, and byte by byte', () => {
      for (const cuts of prefixChunkings(start)) {
        expect(decodeAll(splitAt(stream, [...cuts, start + 50]), MAX), `cuts ${cuts.join(',')}`).toEqual(expected);
      }
      const bytewise = Array.from({ length: stream.length }, (_, i) => ownCopy(stream.subarray(i, i + 1)));
      expect(decodeAll(bytewise, MAX)).toEqual(expected);
      expect(decodeAll(randomChunks(stream, prng(8), 7), MAX)).toEqual(expected);
    });

    it('refuses maxRecordBytes+1 as soon as its length prefix is in, however the prefix is chunked', () => {
      const bad = Buffer.concat([encodeRecord('before'), over, encodeRecord('after')]);
      let ways = 0;
      for (const prefixCuts of prefixChunkings(start)) {
        // also with the body arriving in the same chunk as the prefix's last byte, or not
        for (const bodyCut of [[], [start + RECORD_HEADER_BYTES + 1]]) {
          const cuts = [...new Set([...prefixCuts, ...bodyCut])].sort((a, b) => a - b);
          const decoder = new RecordDecoder(MAX);
          const chunks = splitAt(bad, cuts);
          const fed = feed(decoder, chunks);
          const { values, threwAt } = fed;
          const where = `cuts ${cuts.join(',')}`;
          const prefixDone = chunkHolding(start + RECORD_HEADER_BYTES - 1, cuts);
          // refused by the push completing the prefix, or, when that push also completed
          // 'before' (delivered first), by the next push or at the latest by finish()
          const sharesChunk = chunkHolding(start - 1, cuts) === prefixDone;
          const expectedAt = !sharesChunk ? prefixDone : prefixDone + 1 < chunks.length ? prefixDone + 1 : -1;
          expect(threwAt, where).toBe(expectedAt);
          const error = threwAt >= 0 ? fed.error : protocolError(() => decoder.finish());
          expect((error as SluiceError).code, where).toBe('SLUICE_PROTOCOL');
          expect((error as SluiceError).details, where).toMatchObject({ length: MAX + 1, maxRecordBytes: MAX });
          expect(values, where).toEqual(['before']);
          ways++;
        }
      }
      expect(ways).toBe(64);
    });

    it('refuses maxRecordBytes+1 byte by byte on the 4th prefix byte, before any body byte', () => {
      const decoder = new RecordDecoder(MAX);
      for (let i = 0; i < RECORD_HEADER_BYTES - 1; i++) expect(decoder.push(ownCopy(over.subarray(i, i + 1)))).toEqual([]);
      protocolError(() => decoder.push(ownCopy(over.subarray(3, 4))));
    });

    it('refuses maxRecordBytes+1 arriving whole, and as [maxRecordBytes bytes] + [the rest]', () => {
      protocolError(() => new RecordDecoder(MAX).push(ownCopy(over)));
      const decoder = new RecordDecoder(MAX);
      protocolError(() => {
        for (const chunk of splitAt(over, [MAX])) decoder.push(chunk);
      });
    });

    it('applies the 16 MiB default to the length prefix alone', () => {
      const atLimit = new RecordDecoder();
      expect(atLimit.push(prefix(DEFAULT_MAX_RECORD_BYTES))).toEqual([]);
      expect(protocolError(() => atLimit.finish()).message).toMatch(/inside a record/);
      for (const length of [DEFAULT_MAX_RECORD_BYTES + 1, 0x7fffffff, 0xffffffff]) {
        const err = protocolError(() => new RecordDecoder().push(prefix(length)));
        expect(err.details).toMatchObject({ length, maxRecordBytes: DEFAULT_MAX_RECORD_BYTES });
      }
    });

    it('decodes a record of exactly 16 MiB with the default limit', () => {
      const big = encodeRecord(Buffer.alloc(DEFAULT_MAX_RECORD_BYTES - 5, 9));
      const [back] = decodeAll(splitAt(big, [3, 1000, 8 * 1024 * 1024])) as [Buffer];
      expect(back.length).toBe(DEFAULT_MAX_RECORD_BYTES - 5);
      expect(back[0]).toBe(9);
      expect(back[back.length - 1]).toBe(9);
    });

    it('decodeRecords applies its maxRecordBytes', async () => {
      const ok = encodeRecord('ok');
      const chunks = [ok, ...randomChunks(encodeRecord('z'.repeat(5000)), prng(4), 64)];
      const seen: unknown[] = [];
      const err = await rejection(async () => {
        for await (const value of decodeRecords(chunksOf(chunks), 1000)) seen.push(value);
      });
      expect((err as SluiceError | undefined)?.code).toBe('SLUICE_PROTOCOL');
      expect(seen).toEqual(['ok']);
      // and the same stream is fine with a larger limit
      expect(await collect(decodeRecords(chunksOf(chunks), 5003))).toEqual(['ok', 'z'.repeat(5000)]);
    });
  });
});

describe('records: malformed streams', () => {
  it('refuses a record of length 0, however it is chunked', () => {
    protocolError(() => new RecordDecoder().push(hex('00000000')));
    const stream = Buffer.concat([encodeRecord(1), hex('00000000'), encodeRecord(2)]);
    for (const cuts of prefixChunkings(5)) {
      // records before the bad one are all delivered, however the bytes were cut; the error
      // comes with the chunk holding the bad prefix, or (if a record shared it) the next call
      const decoder = new RecordDecoder();
      const { values, threwAt, error } = feed(decoder, splitAt(stream, cuts));
      const err = error ?? protocolError(() => decoder.finish());
      expect((err as SluiceError).code, `cuts ${cuts.join(',')}`).toBe('SLUICE_PROTOCOL');
      expect(values).toEqual([1]);
      if (threwAt >= 0) expect(threwAt).toBeGreaterThanOrEqual(chunkHolding(8, cuts));
    }
  });

  it.each([
    ['a value followed by a trailing byte', '00000002 01 02'],
    ['a map followed by nil', '00000005 81a16101 c0'],
    ['two complete values', '00000006 a161 a162 a163'],
    ['a value followed by a 0 byte', '00000003 c2 00 00'],
  ])('refuses a record body that is %s (not exactly one msgpack value)', (_what, recordHex) => {
    const err = protocolError(() => new RecordDecoder().push(hex(recordHex)));
    expect(err.message).toMatch(/after the value/);
  });

  it.each([
    ['a str8 announcing more bytes than the record holds', '00000003 d9 20 61'],
    ['a map missing its value', '00000003 81 a1 61'],
    ['an array missing an element', '00000002 92 01'],
    ['a float64 cut short', '00000003 cb 3ff0'],
    ['a lone str8 type byte', '00000001 d9'],
  ])('refuses a record whose body is %s as soon as the record is in (not waiting for more)', (_what, recordHex) => {
    const bytes = hex(recordHex);
    const decoder = new RecordDecoder();
    expect(decoder.push(ownCopy(bytes.subarray(0, bytes.length - 1)))).toEqual([]);
    protocolError(() => decoder.push(ownCopy(bytes.subarray(bytes.length - 1))));
  });

  it.each([
    ['fixext1 of type 5', 'd4 05 01'],
    ['ext8 of type 5', 'c7 02 05 0102'],
    ['fixext1 of type -2', 'd4 fe 00'],
    ['fixext4 of type 100', 'd6 64 01020304'],
    ['an unknown extension inside a map', '81 a1 61 d4 05 01'],
    ['a typed-array extension with an unknown element code', 'c7 02 74 63 00'],
    ['a Float64Array extension whose bytes are not a whole number of elements', 'c7 04 74 08 010203'],
  ])('refuses a record holding %s', (_what, bodyHex) => {
    const err = protocolError(() => new RecordDecoder().push(framed(bodyHex)));
    expect(err.message).toMatch(/extension|not one msgpack value/);
  });

  it.each([
    ['at top level', 'c1'],
    ['inside an array', '93 01 c1 02'],
    ['as a map value', '82 a1 61 01 a1 62 c1'],
    ['as a map key', '81 c1 01'],
    ['nested 20 levels deep in arrays and maps', '91 81 a1 6b'.repeat(10) + 'c1'],
    ['after a bin holding the byte 0xc1', '92 c4 01 c1 c1'],
  ])('refuses the never-used msgpack byte 0xc1 %s', (_where, bodyHex) => {
    protocolError(() => new RecordDecoder().push(framed(bodyHex)));
  });

  it('refuses a 0xc1 record that arrives byte by byte after valid records, having returned those', () => {
    const stream = Buffer.concat([encodeRecord('a'), encodeRecord({ b: 2 }), framed('92 01 c1')]);
    const chunks = Array.from({ length: stream.length }, (_, i) => ownCopy(stream.subarray(i, i + 1)));
    const { values, threwAt, error } = feed(new RecordDecoder(), chunks);
    expect(values).toEqual(['a', { b: 2 }]);
    expect(threwAt).toBe(stream.length - 1);
    expect((error as SluiceError).code).toBe('SLUICE_PROTOCOL');
  });

  it.each([
    ['uint8 193', 'cc c1', 193],
    ['a bin holding 0xc1 bytes', 'c4 03 c1 c1 c1', Buffer.from([0xc1, 0xc1, 0xc1])],
    ['a float32 whose first byte is 0xc1', 'ca c1200000', -10],
    ['int16 with a 0xc1 byte', 'd1 c1c1', -15935],
  ])('accepts 0xc1 as data: %s', (_what, bodyHex, value) => {
    expect(decodeAll([framed(bodyHex)])).toEqual([value]);
  });

  describe('finish()', () => {
    const stream = Buffer.concat([encodeRecord(1), encodeRecord({ b: 'two' }), encodeRecord('three, cut short')]);
    const lastStart = encodeRecord(1).length + encodeRecord({ b: 'two' }).length;

    it.each([1, 2, 3])('throws SLUICE_PROTOCOL when the stream ends after %i byte(s) of a length prefix', (n) => {
      const decoder = new RecordDecoder();
      expect(decoder.push(ownCopy(stream.subarray(0, lastStart + n)))).toEqual([1, { b: 'two' }]);
      const err = protocolError(() => decoder.finish());
      expect(err.message).toMatch(/inside a record/);
    });

    it.each([
      ['right after the length prefix', RECORD_HEADER_BYTES],
      ['after one body byte', RECORD_HEADER_BYTES + 1],
      ['one byte short of the end', -1],
    ])('throws SLUICE_PROTOCOL when the stream ends inside a body, %s', (_where, at) => {
      const end = at < 0 ? stream.length + at : lastStart + at;
      const decoder = new RecordDecoder();
      expect(decoder.push(ownCopy(stream.subarray(0, end)))).toEqual([1, { b: 'two' }]);
      const err = protocolError(() => decoder.finish());
      expect(err.message).toMatch(/inside a record/);
    });

    it('throws for a hand-written prefix announcing a body that never comes', () => {
      const decoder = new RecordDecoder();
      expect(decoder.push(hex('00000004 81a161'))).toEqual([]);
      protocolError(() => decoder.finish());
    });

    it('is quiet at a record boundary and on an empty stream', () => {
      const decoder = new RecordDecoder();
      expect(() => decoder.finish()).not.toThrow();
      expect(decoder.push(ownCopy(stream.subarray(0, lastStart)))).toEqual([1, { b: 'two' }]);
      expect(() => decoder.finish()).not.toThrow();
    });
  });

  it('decodeRecords yields the complete records, then rejects with SLUICE_PROTOCOL when the stream is cut short', async () => {
    const bytes = Buffer.concat([encodeRecord('a'), encodeRecord('b'), encodeRecord({ c: 'cut' })]);
    const last = encodeRecord({ c: 'cut' }).length;
    for (const cutShort of [1, 2, last - RECORD_HEADER_BYTES, last - 1]) {
      const seen: unknown[] = [];
      const err = await rejection(async () => {
        for await (const value of decodeRecords(chunksOf(splitAt(bytes.subarray(0, bytes.length - cutShort), [3])))) seen.push(value);
      });
      expect(seen, `cut ${cutShort} short`).toEqual(['a', 'b']);
      expect((err as SluiceError | undefined)?.code).toBe('SLUICE_PROTOCOL');
    }
  });

  it('decodeRecords rejects with SLUICE_PROTOCOL on a malformed record', async () => {
    const chunks = [encodeRecord('a'), framed('01 02'), encodeRecord('never')];
    const seen: unknown[] = [];
    const err = await rejection(async () => {
      for await (const value of decodeRecords(chunksOf(chunks))) seen.push(value);
    });
    expect(seen).toEqual(['a']);
    expect((err as SluiceError | undefined)?.code).toBe('SLUICE_PROTOCOL');
  });
});

describe('records: linear work', () => {
  it('a 16 MiB record fed in 64 KiB chunks is concatenated once and parsed once', () => {
    const body = DEFAULT_MAX_RECORD_BYTES;
    const record = encodeRecord(Buffer.alloc(body - 5, 1)); // bin32 header: 5 bytes
    expect(record.readUInt32BE(0)).toBe(body);
    const chunks = splitAt(record, Array.from({ length: Math.floor(record.length / 65536) }, (_, i) => (i + 1) * 65536));
    expect(chunks.length).toBe(257);
    const concat = vi.spyOn(Buffer, 'concat');
    const parse = vi.spyOn(Unpackr.prototype, 'unpack');
    try {
      const decoder = new RecordDecoder();
      const out: unknown[] = [];
      chunks.forEach((chunk, i) => {
        const got = decoder.push(chunk);
        if (i < chunks.length - 1) expect(got).toEqual([]);
        out.push(...got);
      });
      decoder.finish();
      expect(out).toHaveLength(1);
      expect((out[0] as Buffer).length).toBe(body - 5);
      // O(size): the body is joined at most once, and msgpack parses it exactly once
      const joined = concat.mock.results.reduce((sum, res) => sum + (res.value as Buffer).length, 0);
      expect(joined).toBeLessThanOrEqual(body);
      expect(concat.mock.calls.length).toBeLessThanOrEqual(1);
      const parsed = parse.mock.calls.reduce((sum, args) => sum + (args[0] as Uint8Array).length, 0);
      expect(parse).toHaveBeenCalledTimes(1);
      expect(parsed).toBe(body);
    } finally {
      concat.mockRestore();
      parse.mockRestore();
    }
  });

  it('many small records in one chunk are each parsed once, with no concatenation', () => {
    const values = Array.from({ length: 5000 }, (_, i) => ({ i, s: 'v'.repeat(i % 50) }));
    const stream = ownCopy(Buffer.concat(values.map((v) => encodeRecord(v))));
    const concat = vi.spyOn(Buffer, 'concat');
    const parse = vi.spyOn(Unpackr.prototype, 'unpack');
    try {
      expect(decodeAll([stream])).toEqual(values);
      expect(concat).not.toHaveBeenCalled();
      expect(parse).toHaveBeenCalledTimes(values.length);
      const parsed = parse.mock.calls.reduce((sum, args) => sum + (args[0] as Uint8Array).length, 0);
      expect(parsed).toBe(stream.length - values.length * RECORD_HEADER_BYTES);
    } finally {
      concat.mockRestore();
      parse.mockRestore();
    }
  });
});

describe('records: strictness and recovery', () => {
  // recordPackr lacks `variableMapSize: true`, so msgpackr writes every map with a 16-bit size
  // (map16, de xxxx): {a: 1} takes 6 bytes instead of the 4 of a fixmap, and a map of 65,536
  // keys or more cannot be encoded at all (msgpackr throws a plain Error, not a SluiceError),
  // although msgpack has map32 and the record would be far below the limit.
  it('encodes {a: 1} as 00000004 81a16101 and {} as 00000001 80 (fixmap, as any msgpack encoder does)', () => {
    expect(encodeRecord({ a: 1 }).toString('hex')).toBe('00000004' + '81a16101');
    expect(encodeRecord({}).toString('hex')).toBe('00000001' + '80');
  });

  it('round-trips a map of 70,000 keys (msgpack map32)', () => {
    const value = Object.fromEntries(Array.from({ length: 70_000 }, (_, i) => [`k${i}`, i % 3]));
    const record = encodeRecord(value);
    expect(record.length).toBeLessThan(DEFAULT_MAX_RECORD_BYTES);
    expectSame(decodeAll([record]), [value]);
  });

  // holdsC1 stops looking below 64 levels of nesting, but msgpackr decodes much deeper values:
  // 0xc1 at level 65 or below is returned as msgpackr's C1 marker object.
  it('refuses 0xc1 nested 100 levels deep', () => {
    protocolError(() => new RecordDecoder().push(framed('91'.repeat(100) + 'c1')));
  });

  // holdsC1 walks arrays and Object.values only: a value inside one of msgpackr's extension
  // objects (a Set, ext 0x73; an Error's non-enumerable `cause`, ext 0x65) is never looked at.
  it('refuses 0xc1 inside a Set (msgpackr extension 0x73)', () => {
    protocolError(() => new RecordDecoder().push(framed('d4 73 00 91 c1')));
  });

  it('refuses 0xc1 as the cause of an Error (msgpackr extension 0x65)', () => {
    protocolError(() => new RecordDecoder().push(framed('d4 65 00 93 a5 4572726f72 a1 65 c1')));
  });

  // msgpackr's structured-clone extensions (0x69 "id", 0x70 "pointer") are not disabled, so a
  // record can reference one object many times. When the body holds a 0xc1 byte anywhere (here:
  // uint8 193), holdsC1 walks every path through the shared objects: 2^n visits for n levels.
  // This 20-level record (~450 bytes) costs ~2 million visits; each 2 more levels cost 4x.
  // A 25-byte record referencing itself twice (00000015 d669 00000001 93 d670 00000001
  // d670 00000001 cc c1) is walked 2^64 times: push() never returns (not run here).
  it('a record with shared references is checked for 0xc1 in linear, not exponential, work', () => {
    const levels = 20;
    const parts = ['d669 00000001 81 a1 78 cc c1']; // id 1 = { x: 193 }
    for (let id = 2; id <= levels; id++) {
      const prev = (id - 1).toString(16).padStart(8, '0');
      parts.push(`d669 ${id.toString(16).padStart(8, '0')} 82 a1 61 d670 ${prev} a1 62 d670 ${prev}`); // { a: <id-1>, b: <id-1> }
    }
    const record = framed('dc' + levels.toString(16).padStart(4, '0') + parts.join(''));
    // count the object visits of the check (it uses Object.values and Array.isArray on each)
    const { values, isArray } = { values: Object.values, isArray: Array.isArray };
    let visits = 0;
    Object.values = ((o: object) => (visits++, values(o))) as typeof Object.values;
    Array.isArray = ((o: unknown) => (visits++, isArray(o))) as typeof Array.isArray;
    let thrown: unknown;
    try {
      new RecordDecoder().push(record);
    } catch (err) {
      thrown = err; // refusing shared references altogether would be fine too
    } finally {
      Object.values = values;
      Array.isArray = isArray;
    }
    if (thrown !== undefined) expect((thrown as SluiceError).code).toBe('SLUICE_PROTOCOL');
    expect(visits).toBeLessThanOrEqual(10 * record.length);
  });

  // When push() throws, the records its chunk completed before the bad one are dropped with the
  // exception, so whether a consumer sees them depends on how transit chunked the stream. (Here:
  // "ok" is yielded when the oversized record's prefix comes in a later chunk, lost when it comes
  // in the same chunk.)
  it('decodeRecords yields the records before a bad one even when they share its chunk', async () => {
    const stream = Buffer.concat([encodeRecord('ok'), encodeRecord('z'.repeat(5000))]);
    const seen: unknown[] = [];
    const err = await rejection(async () => {
      for await (const value of decodeRecords(chunksOf([stream]), 1000)) seen.push(value);
    });
    expect((err as SluiceError | undefined)?.code).toBe('SLUICE_PROTOCOL');
    expect(seen).toEqual(['ok']);
  });

  // After throwing, the decoder keeps its state mid-record (a refused body's length stays set,
  // a refused prefix is already consumed), so further pushes decode the stream out of step and
  // return values made up from length bytes (here: 0, from the next record's prefix).
  // FrameDecoder instead keeps throwing the same error.
  it('after a SLUICE_PROTOCOL error, push() keeps refusing instead of decoding out of step', () => {
    const decoder = new RecordDecoder();
    protocolError(() => decoder.push(framed('c1')));
    protocolError(() => decoder.push(encodeRecord('next')));
  });

  // The msgpack spec defines timestamps (ext -1) of 4, 8 and 12 bytes only; msgpackr turns any
  // other length into an Invalid Date instead of failing.
  it('refuses a msgpack timestamp of an undefined length (3 bytes)', () => {
    protocolError(() => new RecordDecoder().push(framed('c7 03 ff 000000')));
  });
});
