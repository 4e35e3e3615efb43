/**
 * The producer's node keeps the last bytes of each outgoing cross-node stream (StreamTap) to
 * resume it through the store should the link fail: taken over at any point, it hands on exactly
 * the kept tail, then the rest of the stream, and the producer's trailer.
 */
import { randomBytes } from 'node:crypto';
import { buffer } from 'node:stream/consumers';
import { describe, expect, it } from 'vitest';
import { StreamTap } from '../../server/paths/tap.js';
import { FrameType, encodeControl, encodeHeader } from '../../transports/index.js';

/** A producer's stream on the wire: HELLO, DATA frames of `frame` bytes, END. */
function wire(payload: Buffer, frame: number): Buffer {
  const parts = [encodeControl(FrameType.HELLO, 0, { v: 1 })];
  for (let at = 0; at < payload.length; at += frame) {
    const piece = payload.subarray(at, at + frame);
    parts.push(encodeHeader(FrameType.DATA, 0, piece.length), piece);
  }
  parts.push(encodeControl(FrameType.END, 0, { length: payload.length, checksum: 'c' }));
  return Buffer.concat(parts);
}

/** `bytes` cut into uneven pieces, as socket reads come. */
function* pieces(bytes: Buffer, seed: number): Generator<Buffer> {
  let at = 0;
  for (let i = seed; at < bytes.length; i++) {
    const n = 1 + ((i * 7919) % 70_000);
    yield bytes.subarray(at, at + n);
    at += n;
  }
}

describe('StreamTap', () => {
  const payload = randomBytes(1024 * 1024 + 123);
  const bytes = wire(payload, 64 * 1024 + 5);

  it.each([
    ['before any payload', 0, 256 * 1024],
    ['with less than it keeps', 100_000, 256 * 1024],
    ['exactly when the ring is full', 256 * 1024, 256 * 1024],
    ['after the ring wrapped', 700_000, 256 * 1024],
    ['keeping more than the whole stream', 700_000, 4 * 1024 * 1024],
  ])('taken over %s: the kept tail, then the rest, byte-exact, with the trailer', async (_when, cut, keep) => {
    const tap = new StreamTap(keep);
    const all = [...pieces(bytes, cut)];
    let i = 0;
    for (; i < all.length && tap.offset < cut; i++) tap.push(all[i]!);
    const seen = tap.offset;
    const { start, payload: rest, trailer } = tap.takeOver(1024 * 1024, () => undefined);
    // at least the last `keep` bytes (whole pieces of them)
    expect(start).toBeLessThanOrEqual(Math.max(0, seen - keep));
    for (; i < all.length; i++) tap.push(all[i]!);
    expect((await buffer(rest)).equals(payload.subarray(start))).toBe(true);
    expect(trailer()).toEqual({ length: payload.length, checksum: 'c' });
  });
});
