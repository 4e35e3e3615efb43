/**
 * The stream trailer's checksum (transports/checksum.ts): XXH3-64 with seed 0, as 16 lowercase
 * hex digits, computed incrementally by StreamChecksum whatever the pieces, equal to the one-shot
 * checksumOf.
 *
 * The reference digests below were computed independently of the library under test, with the
 * system's libxxhash 0.8.1 (XXH3_64bits) through Python ctypes, over the same deterministic
 * inputs (prng(1000 + size).bytes(size), mulberry32 ported to Python). The sizes cover each of
 * XXH3's internal length classes (0, 1-3, 4-8, 9-16, 17-128, 129-240, >240, multi-block).
 */
import { describe, it, expect } from 'vitest';
import { StreamChecksum, checksumOf } from '../../transports/index.js';

// Split sizes around 8 KiB and 64 KiB: where an implementation would switch strategies (coalescing, buffering).
const SMALL_PIECE_BYTES = 8 * 1024;
import { ownCopy, prng, randomChunks, splitAt } from './prng.js';

const reference: Array<[number, string]> = [
  [0, '2d06800538d394c2'],
  [1, '7fe0f41f6d1802c5'],
  [2, '55ddbebbdf0d3821'],
  [3, 'ba3be09f2f405ee1'],
  [4, '6e14b360b243b825'],
  [5, '399c60fabf5b1ef2'],
  [8, '6f5cb4dfa26cbfbb'],
  [9, 'f15db7fdfe3c2517'],
  [16, '9360a5d5d3f6f850'],
  [17, 'a5f8e9dc086519e1'],
  [64, '012450158d45c171'],
  [128, 'b2921326fd64e011'],
  [129, 'd283eb7e38ec305a'],
  [240, '693e0d1e7659fe7f'],
  [241, '35830a1dbcb6ea96'],
  [1024, 'eae0d38994d07751'],
  [4096, 'dba77b0adf2a31ca'],
  [8191, '3be4ea8467177a3d'],
  [8192, '65063154c2c72231'],
  [65536, 'ebc5be31b50e95e7'],
  [100003, '540269a25eec4443'],
];

const referenceInput = (size: number): Buffer => prng(1000 + size).bytes(size);

/** Feed `pieces` to a fresh StreamChecksum and return its digest. */
function streamed(pieces: readonly Buffer[]): string {
  const sum = new StreamChecksum();
  for (const piece of pieces) sum.update(piece);
  return sum.digest();
}

describe('checksumOf', () => {
  it('gives the XXH3-64 (seed 0) reference values of libxxhash', () => {
    expect(checksumOf(Buffer.alloc(0))).toBe('2d06800538d394c2');
    expect(checksumOf(Buffer.from('abc'))).toBe('78af5f94892f3950');
  });

  it.each(reference)('matches libxxhash XXH3_64bits for %i bytes', (size, digest) => {
    expect(checksumOf(referenceInput(size))).toBe(digest);
  });

  it('writes 16 lowercase hex digits, keeping leading zeros', () => {
    // inputs whose digest starts with two zero nibbles (found with libxxhash)
    expect(checksumOf(Buffer.from('sluice-12'))).toBe('003d91f90471a0f3');
    expect(checksumOf(Buffer.from('sluice-125'))).toBe('0043afd458d4e3bf');
    // 64 bytes: digest 012450158d45c171, one leading zero
    expect(checksumOf(referenceInput(64))).toBe('012450158d45c171');
    const r = prng(3);
    for (let i = 0; i < 300; i++) expect(checksumOf(r.bytes(r.int(0, 100)))).toMatch(/^[0-9a-f]{16}$/);
  });

  it('tells apart inputs that differ in one bit, in order, or in length', () => {
    const bytes = prng(4).bytes(1000);
    const flipped = Buffer.from(bytes);
    flipped[500]! ^= 0x01;
    const swapped = Buffer.concat([bytes.subarray(500), bytes.subarray(0, 500)]);
    const longer = Buffer.concat([bytes, Buffer.alloc(1)]);
    const values = new Set([checksumOf(bytes), checksumOf(flipped), checksumOf(swapped), checksumOf(longer)]);
    expect(values.size).toBe(4);
  });

  it('hashes only the bytes of a view, not its neighbours', () => {
    const backing = Buffer.concat([Buffer.from([0xaa, 0xbb]), Buffer.from('abc'), Buffer.from([0xcc])]);
    expect(checksumOf(backing.subarray(2, 5))).toBe('78af5f94892f3950');
    const big = referenceInput(100003);
    const framed = Buffer.concat([Buffer.alloc(7, 1), big, Buffer.alloc(9, 2)]);
    expect(checksumOf(framed.subarray(7, 7 + big.length))).toBe('540269a25eec4443');
  });
});

describe('StreamChecksum', () => {
  it('of an empty stream is the digest of no bytes', () => {
    expect(new StreamChecksum().digest()).toBe('2d06800538d394c2');
    expect(streamed([Buffer.alloc(0), Buffer.alloc(0)])).toBe('2d06800538d394c2');
  });

  it.each(reference)('fed %i bytes in one piece matches libxxhash', (size, digest) => {
    expect(streamed([referenceInput(size)])).toBe(digest);
  });

  it('split at every point equals the one-shot value (small pieces, coalesced)', () => {
    const bytes = referenceInput(1024);
    for (let cut = 0; cut <= bytes.length; cut++) {
      expect(streamed(splitAt(bytes, [cut])), `cut at ${cut}`).toBe('eae0d38994d07751');
    }
  });

  it('split around the small-piece threshold equals the one-shot value', () => {
    const bytes = referenceInput(65536);
    const t = SMALL_PIECE_BYTES;
    for (const cut of [1, t - 1, t, t + 1, 2 * t - 1, 2 * t, 65536 - t - 1, 65536 - t, 65536 - t + 1, 65535]) {
      expect(streamed(splitAt(bytes, [cut])), `cut at ${cut}`).toBe('ebc5be31b50e95e7');
      if (cut > 1) expect(streamed(splitAt(bytes, [1, cut])), `1 + cut at ${cut}`).toBe('ebc5be31b50e95e7');
    }
  });

  it('fed byte by byte equals the one-shot value', () => {
    const bytes = referenceInput(100003);
    const sum = new StreamChecksum();
    for (let i = 0; i < bytes.length; i++) sum.update(bytes.subarray(i, i + 1));
    expect(sum.digest()).toBe('540269a25eec4443');
  });

  it('pieces that fill the coalescing buffer exactly, then overflow it, equal the one-shot value', () => {
    const bytes = referenceInput(100003);
    // 4 KiB pieces: 16 of them fill a 64 KiB scratch buffer exactly; also 1 byte short/over
    for (const size of [4096, 4095, 4097, SMALL_PIECE_BYTES - 1]) {
      const cuts: number[] = [];
      for (let at = size; at < bytes.length; at += size) cuts.push(at);
      expect(streamed(splitAt(bytes, cuts)), `pieces of ${size}`).toBe('540269a25eec4443');
    }
  });

  it.each([1, 2, 3, 4, 5])('random mixes of small and large pieces equal the one-shot value (seed %i)', (seed) => {
    const r = prng(seed);
    const bytes = r.bytes(r.int(200_000, 400_000));
    const whole = checksumOf(bytes);
    for (const maxChunk of [13, 3 * 1024, SMALL_PIECE_BYTES + 10, 20_000, 90_000]) {
      expect(streamed(randomChunks(bytes, r, maxChunk)), `maxChunk ${maxChunk}`).toBe(whole);
    }
    // alternate tiny and large pieces: the buffered small bytes must go in before a large piece
    const cuts: number[] = [];
    for (let at = 0; ; ) {
      at += cuts.length % 2 === 0 ? r.int(1, 100) : r.int(SMALL_PIECE_BYTES, 3 * SMALL_PIECE_BYTES);
      if (at >= bytes.length) break;
      cuts.push(at);
    }
    expect(streamed(splitAt(bytes, cuts))).toBe(whole);
  });

  it('is not affected by the caller reusing its buffers after update()', () => {
    const bytes = referenceInput(100003);
    const scratch = Buffer.alloc(20_000);
    const sum = new StreamChecksum();
    const r = prng(6);
    for (let at = 0; at < bytes.length; ) {
      const n = Math.min(r.next() < 0.5 ? r.int(1, 2000) : r.int(SMALL_PIECE_BYTES, 20_000), bytes.length - at);
      const piece = scratch.subarray(0, n);
      bytes.copy(piece, 0, at, at + n);
      sum.update(piece);
      scratch.fill(0x5a); // the caller reuses its buffer
      at += n;
    }
    expect(sum.digest()).toBe('540269a25eec4443');
  });

  it('hashes only the bytes of each view', () => {
    const bytes = referenceInput(100003);
    const framed = ownCopy(Buffer.concat([Buffer.alloc(3, 0xff), bytes, Buffer.alloc(5, 0xee)]));
    const inner = framed.subarray(3, 3 + bytes.length);
    const cuts = [10, 20_000, 20_010, 60_000];
    const pieces = [0, ...cuts].map((from, i) => inner.subarray(from, [...cuts, inner.length][i]));
    expect(streamed(pieces)).toBe('540269a25eec4443');
  });

  it('digest() can be taken mid-stream and the stream continues', () => {
    const bytes = referenceInput(100003);
    const sum = new StreamChecksum();
    sum.update(bytes.subarray(0, 1000)); // small: still coalesced when digest() is called
    expect(sum.digest()).toBe(checksumOf(bytes.subarray(0, 1000)));
    expect(sum.digest()).toBe(checksumOf(bytes.subarray(0, 1000)));
    sum.update(bytes.subarray(1000, 50_000));
    sum.update(bytes.subarray(50_000, 50_007));
    expect(sum.digest()).toBe(checksumOf(bytes.subarray(0, 50_007)));
    sum.update(bytes.subarray(50_007));
    expect(sum.digest()).toBe('540269a25eec4443');
  });

  it('two streams hashed side by side do not share state', () => {
    const a = referenceInput(4096);
    const b = referenceInput(65536);
    const sa = new StreamChecksum();
    const sb = new StreamChecksum();
    for (let i = 0; i < 16; i++) {
      sa.update(a.subarray(i * 256, (i + 1) * 256));
      sb.update(b.subarray(i * 4096, (i + 1) * 4096));
    }
    expect(sa.digest()).toBe('dba77b0adf2a31ca');
    expect(sb.digest()).toBe('ebc5be31b50e95e7');
  });
});
