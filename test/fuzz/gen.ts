/**
 * The fuzzers' seeded, structure-aware generator: valid inputs built with Sluice's own encoders
 * (frames from transports/codec.ts, producer streams as a ChannelWriter writes them, mux sessions,
 * records, msgpack values, control API bodies), then mutated — truncated at any point, split into
 * random chunks, bits flipped, length fields set to 0 / oversize / 2^32-1, garbage inserted, frames
 * dropped, repeated or swapped.
 *
 * Every case has its own PRNG, derived from the run's seed and the case's index (`caseRandom`),
 * so one case reproduces on its own: `npm run fuzz -- --target T --seed S --case I`.
 */
import { Readable, Writable } from 'node:stream';
import {
  ChannelWriter,
  FrameType,
  HEADER_BYTES,
  MAX_CONTROL_PAYLOAD,
  DEFAULT_MAX_FRAME_PAYLOAD,
  encodeControl,
  encodeHeader,
  encodeRecord,
  packr,
  type Connection,
} from '../../transports/index.js';
import { prng, type Prng } from '../unit/prng.js';

export type { Prng } from '../unit/prng.js';

/** A 32-bit mix of the run's seed and a case's index (murmur3's finaliser). */
export function caseSeed(seed: number, index: number): number {
  let h = (seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export function caseRandom(seed: number, index: number): Prng {
  return prng(caseSeed(seed, index));
}

/** The seed of the day (UTC): CI explores new cases every day, and prints the seed to replay them. */
export function dailySeed(now = new Date()): number {
  const day = `${now.getUTCFullYear()}${String(now.getUTCMonth() + 1).padStart(2, '0')}${String(now.getUTCDate()).padStart(2, '0')}`;
  return Number(day);
}

/** `length` pseudo-random bytes, fast (xorshift32 seeded from `r`): payloads need not be high-quality. */
export function randomBytes(r: Prng, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let x = r.int(1, 0xfffffffe);
  let i = 0;
  for (; i + 4 <= length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeInt32LE(x | 0, i);
  }
  for (; i < length; i++) out[i] = r.int(0, 255);
  return out;
}

export function pick<T>(r: Prng, items: readonly T[]): T {
  return items[r.int(0, items.length - 1)]!;
}

export function chance(r: Prng, p: number): boolean {
  return r.next() < p;
}

/** A small, skewed size: mostly tiny, sometimes up to `max`. */
export function size(r: Prng, max: number): number {
  const k = r.next();
  if (k < 0.5) return r.int(0, Math.min(max, 16));
  if (k < 0.85) return r.int(0, Math.min(max, 512));
  return r.int(0, max);
}

const INTERESTING_U32 = [0, 1, 2, 11, 12, 13, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, MAX_CONTROL_PAYLOAD - 1, MAX_CONTROL_PAYLOAD, MAX_CONTROL_PAYLOAD + 1, DEFAULT_MAX_FRAME_PAYLOAD, DEFAULT_MAX_FRAME_PAYLOAD + 1, 16 * 1024 * 1024 + 1, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
const STRINGS = ['', 'a', 'p', 'c', 'node-a', 'run-1', '..', '../etc', '/', 'a/b', 'x'.repeat(300), '\u0000', '\ud800', 'é', '__proto__', 'constructor', 'toString', 'sluice.control', 'ch/', 'ch/run-1/p.0-c.0', 'SLUICE_PROTOCOL', 'peer-link'];

export function interestingNumber(r: Prng): number {
  return pick(r, [0, -1, 1, 0.5, -0.0, NaN, Infinity, -Infinity, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 2, -(2 ** 63), Number.MAX_VALUE, Number.MIN_VALUE, ...INTERESTING_U32]);
}

export function interestingString(r: Prng): string {
  if (chance(r, 0.3)) return randomBytes(r, size(r, 40)).toString('latin1');
  return pick(r, STRINGS);
}

/** A JSON-compatible value (msgpack maps, arrays, strings, numbers, booleans, null), at most `depth` deep. */
export function jsonValue(r: Prng, depth = 3): unknown {
  const k = r.int(0, depth > 0 ? 7 : 4);
  switch (k) {
    case 0:
      return null;
    case 1:
      return chance(r, 0.5);
    case 2:
      return chance(r, 0.5) ? r.int(-1000, 1000) : interestingNumber(r);
    case 3:
    case 4:
      return interestingString(r);
    case 5:
      return Array.from({ length: size(r, 6) }, () => jsonValue(r, depth - 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = size(r, 6); i > 0; i--) o[interestingString(r)] = jsonValue(r, depth - 1);
      return o;
    }
  }
}

/** Replace, delete or add one node somewhere in a JSON value. */
export function mutateJson(r: Prng, value: unknown, depth = 0): unknown {
  if (chance(r, depth === 0 ? 0.1 : 0.3) || typeof value !== 'object' || value === null) {
    const k = r.int(0, 5);
    if (k === 0) return jsonValue(r, 2);
    if (k === 1) return interestingString(r);
    if (k === 2) return pick(r, [null, true, 0, -1, 1e308, 2 ** 53 + 1, 1.5, '', [], {}]);
    if (k === 3) return Array(r.int(1, 2000)).fill(value);
    if (k === 4) {
      let v: unknown = value;
      for (let i = r.int(1, 3000); i > 0; i--) v = [v];
      return v;
    }
    return value;
  }
  if (Array.isArray(value)) {
    const copy = [...value];
    if (copy.length > 0 && chance(r, 0.7)) {
      const i = r.int(0, copy.length - 1);
      copy[i] = mutateJson(r, copy[i], depth + 1);
    } else if (chance(r, 0.5)) copy.pop();
    else copy.push(jsonValue(r, 2));
    return copy;
  }
  const copy: Record<string, unknown> = { ...(value as Record<string, unknown>) };
  const keys = Object.keys(copy);
  const k = r.int(0, 9);
  if (keys.length > 0 && k < 6) {
    const key = pick(r, keys);
    copy[key] = mutateJson(r, copy[key], depth + 1);
  } else if (keys.length > 0 && k < 8) delete copy[pick(r, keys)];
  else copy[pick(r, ['__proto__', 'constructor', 'prototype', 'colour', interestingString(r)])] = jsonValue(r, 2);
  return copy;
}

/** A value as records carry it: JSON-ish, plus binary, typed arrays, dates. */
export function recordValue(r: Prng, depth = 3): unknown {
  const k = r.int(0, 9);
  if (k === 0) return randomBytes(r, size(r, 64));
  if (k === 1) return new Uint16Array(r.int(0, 8));
  if (k === 2) return new Date(r.int(0, 2 ** 31) * 1000);
  if (k === 3 && depth > 0) return Array.from({ length: size(r, 8) }, () => recordValue(r, depth - 1));
  return jsonValue(r, depth);
}

/** One valid control frame of `type` with plausible fields, on `channel`. */
export function controlFrame(r: Prng, type: Exclude<FrameType, typeof FrameType.DATA>, channel = 0): Buffer {
  const fields: Record<string, unknown> = (() => {
    switch (type) {
      case FrameType.HELLO:
        return { v: 1, run: 'run-1', from: { step: 'p', index: 0 }, to: { step: 'c', index: 0 }, token: 'x'.repeat(r.int(0, 43)) };
      case FrameType.END:
        return { length: r.int(0, 1 << 20), checksum: randomBytes(r, 8).toString('hex') };
      case FrameType.ACK:
        return { length: r.int(0, 1 << 20) };
      case FrameType.ABORT:
      case FrameType.RESET:
        return { code: pick(r, ['SLUICE_PROTOCOL', 'SLUICE_TRUNCATED', 'NOPE', '']), message: interestingString(r) };
      case FrameType.OPEN:
        return { endpoint: pick(r, ['sluice.control', 'ch/run-1/p.0-c.0', 'fuzz.ep', interestingString(r)]), window: pick(r, [1, 65536, 2 << 20, 0, -1]) };
      case FrameType.CREDIT:
        return { bytes: pick(r, [1, 4096, 1 << 20, 0, -5, 1.5]) };
      default:
        return {};
    }
  })();
  if (chance(r, 0.2)) fields[interestingString(r)] = jsonValue(r, 2);
  const body = packr.pack(fields);
  // encodeControl refuses bodies over MAX_CONTROL_PAYLOAD; an oversized one is a fine input here
  return body.length <= MAX_CONTROL_PAYLOAD ? encodeControl(type, channel, fields) : Buffer.concat([encodeHeader(type, channel, body.length), body]);
}

export function dataFrame(r: Prng, channel = 0, length = size(r, 4096)): Buffer {
  return Buffer.concat([encodeHeader(FrameType.DATA, channel, length), randomBytes(r, length)]);
}

const CONTROL_TYPES = [FrameType.HELLO, FrameType.END, FrameType.ACK, FrameType.ABORT, FrameType.OPEN, FrameType.CREDIT, FrameType.CLOSE, FrameType.RESET] as const;

/** A run of valid frames of any types (what the pure codec target starts from). */
export function frames(r: Prng): Buffer[] {
  const out: Buffer[] = [];
  for (let n = r.int(0, 8); n > 0; n--) {
    const channel = chance(r, 0.7) ? 0 : pick(r, [1, 2, 3, 0xffffffff]);
    out.push(chance(r, 0.5) ? dataFrame(r, channel) : controlFrame(r, pick(r, CONTROL_TYPES), channel));
  }
  return out;
}

/** Mutate a list of frames: drop, repeat, swap, or corrupt one frame's header fields. */
export function mutateFrames(r: Prng, list: Buffer[]): Buffer[] {
  const out: Buffer[] = list.map((f) => Buffer.from(f));
  for (let n = r.int(0, 3); n > 0 && out.length > 0; n--) {
    const i = r.int(0, out.length - 1);
    const f = out[i]!;
    switch (r.int(0, 7)) {
      case 0:
        out.splice(i, 1);
        break;
      case 1:
        out.splice(i, 0, Buffer.from(f));
        break;
      case 2: {
        const j = r.int(0, out.length - 1);
        [out[i], out[j]] = [out[j]!, f];
        break;
      }
      case 3: // length field
        if (f.length >= HEADER_BYTES) f.writeUInt32BE(pick(r, INTERESTING_U32.concat([f.length - HEADER_BYTES + 1, Math.max(0, f.length - HEADER_BYTES - 1)])), 8);
        break;
      case 4: // type
        if (f.length >= 2) f[1] = pick(r, [0, 1, 2, 3, 5, 6, 9, 10, 255]);
        break;
      case 5: // version, reserved
        if (f.length >= 4) f[pick(r, [0, 2, 3])] = r.int(0, 255);
        break;
      case 6: // channel
        if (f.length >= 8) f.writeUInt32BE(pick(r, [0, 1, 2, 3, 4, 5, 0x7fffffff, 0xffffffff]), 4);
        break;
      default:
        out.splice(i, 0, controlFrame(r, pick(r, CONTROL_TYPES), f.length >= 8 ? f.readUInt32BE(4) : 0));
    }
  }
  return out;
}

/** Byte-level mutations of a whole input: bit flips, garbage, deletions, duplications, truncation. */
export function mutateBytes(r: Prng, input: Buffer): Buffer {
  let b: Buffer = Buffer.from(input);
  for (let n = r.int(1, 3); n > 0; n--) {
    switch (r.int(0, 6)) {
      case 0:
        for (let k = r.int(1, 8); k > 0 && b.length > 0; k--) b[r.int(0, b.length - 1)]! ^= 1 << r.int(0, 7);
        break;
      case 1:
        if (b.length > 0) b[r.int(0, b.length - 1)] = pick(r, [0, 1, 0x7f, 0x80, 0xc1, 0xff, r.int(0, 255)]);
        break;
      case 2: {
        const at = r.int(0, b.length);
        b = Buffer.concat([b.subarray(0, at), randomBytes(r, size(r, 64)), b.subarray(at)]);
        break;
      }
      case 3: {
        const at = r.int(0, b.length);
        b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + size(r, 32)))]);
        break;
      }
      case 4: {
        const from = r.int(0, b.length);
        const to = Math.min(b.length, from + size(r, 64));
        const at = r.int(0, b.length);
        b = Buffer.concat([b.subarray(0, at), b.subarray(from, to), b.subarray(at)]);
        break;
      }
      case 5: // a u32 anywhere set to an interesting value (length-like fields of msgpack and records too)
        if (b.length >= 4) b.writeUInt32BE(pick(r, INTERESTING_U32), r.int(0, b.length - 4));
        break;
      default:
        b = b.subarray(0, r.int(0, b.length));
    }
  }
  return b;
}

/**
 * The whole mutation pipeline on a list of frames (or other units): unchanged (10 %), frame-level,
 * byte-level, both, or garbage only; then maybe truncated at a random point.
 */
export function mutate(r: Prng, units: Buffer[], frameAware = true): { bytes: Buffer; mutated: boolean } {
  const k = r.next();
  if (k < 0.1) return { bytes: Buffer.concat(units), mutated: false };
  if (k < 0.13) return { bytes: randomBytes(r, size(r, 256)), mutated: true };
  let list = units;
  if (frameAware && k < 0.7) list = mutateFrames(r, units);
  let bytes: Buffer = Buffer.concat(list);
  if (!frameAware || k >= 0.45) bytes = mutateBytes(r, bytes);
  if (chance(r, 0.25)) bytes = bytes.subarray(0, r.int(0, bytes.length));
  return { bytes, mutated: true };
}

/** Split `bytes` into chunks: whole, every byte alone, or random sizes; at most about 512 chunks. */
export function chunk(r: Prng, bytes: Buffer): Buffer[] {
  const k = r.int(0, 5);
  if (k === 0 || bytes.length === 0) return [bytes];
  const max = Math.max(k === 1 ? 1 : k === 2 ? 13 : bytes.length >> r.int(0, 4), Math.ceil(bytes.length / 256), 1);
  const out: Buffer[] = [];
  for (let at = 0; at < bytes.length; ) {
    const n = r.int(1, max);
    out.push(bytes.subarray(at, at + n));
    at += n;
  }
  return out;
}

/** How a connection ends once its bytes are sent (or cut short). */
export type Ending = 'end' | 'half-close-wait' | 'destroy' | 'destroy-midway' | 'linger';
export function ending(r: Prng): Ending {
  return pick(r, ['end', 'end', 'half-close-wait', 'half-close-wait', 'destroy', 'destroy-midway', 'linger']);
}

/** The bytes a ChannelWriter sends for `payload` with `hello`: HELLO, DATA frames, END — captured, not sent. */
export async function producerStream(hello: Record<string, unknown>, payload: Buffer[], maxFramePayload?: number): Promise<Buffer[]> {
  const sent: Buffer[] = [];
  const input = new Readable({ read() {} });
  const output = new Writable({
    write(c: Buffer, _e, cb) {
      sent.push(Buffer.from(c));
      cb();
    },
  });
  const conn: Connection = { input, output, destroy: () => undefined };
  const writer = new ChannelWriter(conn, { hello, ...(maxFramePayload ? { maxFramePayload } : {}) });
  writer.on('error', () => undefined);
  for (const p of payload) writer.write(p);
  writer.end();
  // the END frame is written in final(), before the writer waits for the ACK
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
  writer.destroy();
  input.destroy();
  return sent;
}

/** A valid msgpack value's bytes (for the msgpack checker). */
export function msgpackValue(r: Prng): Buffer {
  return Buffer.from(packr.pack(jsonValue(r, 4)));
}

/** Valid records of random values, each a unit. */
export function records(r: Prng): Buffer[] {
  const out: Buffer[] = [];
  for (let n = r.int(0, 6); n > 0; n--) out.push(encodeRecord(recordValue(r)));
  return out;
}
