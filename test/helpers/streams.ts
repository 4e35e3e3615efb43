/** Small helpers for tests that assert what a stream delivered and how it ended. */
import { createHash } from 'node:crypto';
import { finished } from 'node:stream/promises';
import type { Readable, Writable } from 'node:stream';

export function sha256(data: Buffer | Buffer[]): string {
  const h = createHash('sha256');
  for (const b of Array.isArray(data) ? data : [data]) h.update(b);
  return h.digest('hex');
}

/** How a readable ended: the bytes it delivered, and its error if it did not end cleanly. */
export async function drain(readable: Readable): Promise<{ bytes: Buffer; error?: Error & { code?: string }; ended: boolean }> {
  const chunks: Buffer[] = [];
  let ended = false;
  readable.on('data', (c: Buffer) => chunks.push(c));
  readable.on('end', () => (ended = true));
  try {
    await finished(readable);
    return { bytes: Buffer.concat(chunks), ended };
  } catch (error) {
    return { bytes: Buffer.concat(chunks), error: error as Error, ended };
  }
}

/** The error a writable finished with, or undefined when its end was acknowledged. */
export async function outcome(writable: Writable): Promise<(Error & { code?: string }) | undefined> {
  try {
    await finished(writable);
    return undefined;
  } catch (error) {
    return error as Error;
  }
}

/** Deterministic pseudo-random bytes (xorshift32), for reproducible test data. */
export function seededBytes(length: number, seed = 0x9e3779b9): Buffer {
  const out = Buffer.allocUnsafe(length);
  let x = seed >>> 0 || 1;
  let i = 0;
  for (; i + 4 <= length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.writeUInt32LE(x, i);
  }
  for (; i < length; i++) out[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
  return out;
}
