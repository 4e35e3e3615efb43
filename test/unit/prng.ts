/**
 * Deterministic pseudo-random numbers for the unit tests (mulberry32): the same seed gives the
 * same sequence on every run and machine, so "random" splits and garbage are reproducible.
 */
export interface Prng {
  /** uniform float in [0, 1) */
  next(): number;
  /** uniform integer in [min, max] (both inclusive) */
  int(min: number, max: number): number;
  /** `length` random bytes, in a buffer of its own (never from Node's shared pool) */
  bytes(length: number): Buffer;
}

export function prng(seed: number): Prng {
  let state = seed >>> 0;
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (min: number, max: number): number => min + Math.floor(next() * (max - min + 1));
  const bytes = (length: number): Buffer => {
    const out = Buffer.alloc(length);
    for (let i = 0; i < length; i++) out[i] = int(0, 255);
    return out;
  };
  return { next, int, bytes };
}

/** Cut `whole` into chunks at the given offsets; every chunk is a copy in a buffer of its own. */
export function splitAt(whole: Buffer, cuts: readonly number[]): Buffer[] {
  const chunks: Buffer[] = [];
  let from = 0;
  for (const cut of [...cuts, whole.length]) {
    chunks.push(ownCopy(whole.subarray(from, cut)));
    from = cut;
  }
  return chunks;
}

/** Cut `whole` into chunks of random sizes in 1..maxChunk; each chunk is a copy of its own. */
export function randomChunks(whole: Buffer, random: Prng, maxChunk: number): Buffer[] {
  const cuts: number[] = [];
  let at = 0;
  for (;;) {
    at += random.int(1, maxChunk);
    if (at >= whole.length) break;
    cuts.push(at);
  }
  return splitAt(whole, cuts);
}

/**
 * A copy of `bytes` in a dedicated ArrayBuffer. Buffer.alloc never takes memory from Node's shared
 * 8 KiB pool, so `x.buffer === chunk.buffer` really means "x is a view of chunk".
 */
export function ownCopy(bytes: Uint8Array): Buffer {
  const copy = Buffer.alloc(bytes.length);
  copy.set(bytes);
  return copy;
}
