/** The strict msgpack check that runs before any untrusted bytes are decoded. */
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { NO_EXTENSIONS, RECORD_EXTENSIONS, checkMsgpack } from '../../transports/msgpack-check.js';

const packr = new Packr({ useRecords: false, variableMapSize: true, moreTypes: true });
const hex = (h: string): Buffer => Buffer.from(h.replace(/\s+/g, ''), 'hex');
const refusal = (bytes: Buffer, ext = NO_EXTENSIONS, depth?: number): string => {
  try {
    checkMsgpack(bytes, ext, depth);
  } catch (err) {
    expect((err as { code?: string }).code).toBe('SLUICE_PROTOCOL');
    return (err as Error).message;
  }
  throw new Error('expected a refusal');
};

describe('checkMsgpack', () => {
  it('accepts every plain msgpack type, as msgpackr encodes them', () => {
    const values = [
      0, 127, 128, 65536, 2 ** 32, -1, -33, -129, -40000, -(2 ** 31) - 1, 1.5, 2 ** 60,
      '', 'x'.repeat(31), 'y'.repeat(300), 'z'.repeat(70_000), Buffer.alloc(3), Buffer.alloc(300), Buffer.alloc(70_000),
      null, true, false, [], [1, [2, [3]]], Array.from({ length: 20 }, (_, i) => i), Array.from({ length: 70_000 }, () => 0),
      {}, { a: { b: { c: 1 } } }, Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`k${i}`, i])),
    ];
    for (const v of values) expect(() => checkMsgpack(packr.pack(v), NO_EXTENSIONS), JSON.stringify(v)?.slice(0, 40)).not.toThrow();
  });

  it('accepts timestamps and typed arrays only where records allow them', () => {
    for (const v of [new Date(0), new Date(2 ** 40), new Float64Array([1, 2]), new Uint16Array([3])]) {
      const bytes = packr.pack(v);
      expect(() => checkMsgpack(bytes, RECORD_EXTENSIONS)).not.toThrow();
      expect(refusal(bytes)).toMatch(/extension/);
    }
  });

  it('refuses 0xc1, even deep inside, and accepts it inside a string or binary body', () => {
    expect(refusal(hex('93 01 92 02 c1 03'))).toMatch(/0xc1/);
    expect(() => checkMsgpack(hex('92 a1 c1 c4 01 c1'), NO_EXTENSIONS)).not.toThrow();
  });

  it('refuses trailing bytes, truncated values and impossible container counts at once', () => {
    expect(refusal(hex('01 02'))).toMatch(/1 bytes after the value/);
    expect(refusal(hex('cb 3ff0'))).toMatch(/needs 8 more bytes/);
    expect(refusal(hex('da 0005 6162'))).toMatch(/needs 5 more bytes/);
    // a 5-byte input announcing 4 billion elements is refused up front, not item by item
    expect(refusal(hex('dd ffffffff'))).toMatch(/announces 4294967295 items, only 0 bytes left/);
    expect(refusal(hex('df 7fffffff 00'))).toMatch(/announces 4294967294 items, only 1 bytes left/);
  });

  it('refuses nesting beyond the limit, and accepts it at the limit', () => {
    const nested = (depth: number): Buffer => Buffer.concat([Buffer.alloc(depth, 0x91), hex('01')]);
    expect(() => checkMsgpack(nested(8), NO_EXTENSIONS, 8)).not.toThrow();
    expect(refusal(nested(9), NO_EXTENSIONS, 8)).toMatch(/deeper than 8/);
    expect(refusal(nested(100_000))).toMatch(/deeper than 64/);
  });

  it('refuses timestamps of a length msgpack does not define', () => {
    expect(refusal(hex('c7 03 ff 000000'), RECORD_EXTENSIONS)).toMatch(/extension type -1 of 3 bytes/);
  });
});
