/**
 * The bytes every benchmark moves, and the producer's and consumer's handling of them, shared by
 * the raw baselines and the framed transports so both do exactly the same work apart from framing.
 */
import { once } from 'node:events';
import type { Writable } from 'node:stream';

export const GiB = 1024 * 1024 * 1024;
export const MiB = 1024 * 1024;
export const KiB = 1024;
export const BLOCK_BYTES = 4 * MiB;
export const WRITE_BYTES = 256 * KiB;
export const RECORD_BYTES = 1 * KiB;
/** The largest CloudEvent a step warms its JSON framing on before the clock starts (the code is the same at every size), bytes. */
export const WARM_EVENT_BYTES = 64 * KiB;

/**
 * A deterministic pseudo-random block (xorshift32), generated in each process so producer and
 * consumer agree without sharing memory. Random rather than constant so that a misplaced,
 * duplicated or dropped chunk cannot verify by accident.
 */
export function makeBlock(seed = 0x5eed1234): Buffer {
  const words = new Uint32Array(BLOCK_BYTES / 4);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  return Buffer.from(words.buffer);
}

export const nowNs = (): number => Number(process.hrtime.bigint());

/** CPU time this process spent since `since` (a process.cpuUsage() value), in ms. */
export function cpuMsSince(since: NodeJS.CpuUsage): { user: number; system: number } {
  const { user, system } = process.cpuUsage(since);
  return { user: user / 1e3, system: system / 1e3 };
}

/** Checks a received stream against the block, byte for byte, at its position in the stream. */
export class Verifier {
  received = 0;
  ok = true;
  firstMismatchAt: number | undefined;

  constructor(private readonly block: Buffer) {}

  check(chunk: Buffer): void {
    let i = 0;
    while (i < chunk.length) {
      const off = (this.received + i) % BLOCK_BYTES;
      const n = Math.min(chunk.length - i, BLOCK_BYTES - off);
      if (this.ok && chunk.compare(this.block, off, off + n, i, i + n) !== 0) {
        this.ok = false;
        this.firstMismatchAt = this.received + i;
      }
      i += n;
    }
    this.received += chunk.length;
  }
}

/**
 * Write `bytes` bytes of the block to `out` in WRITE_BYTES views, cyclically, waiting for 'drain'
 * whenever write() asks to. Returns hrtime (ns) taken just before the first write.
 */
export async function pump(out: Writable, block: Buffer, bytes: number): Promise<number> {
  const startNs = nowNs();
  let sent = 0;
  let off = 0;
  while (sent < bytes) {
    const n = Math.min(WRITE_BYTES, bytes - sent, BLOCK_BYTES - off);
    const ok = out.write(block.subarray(off, off + n));
    sent += n;
    off = (off + n) % BLOCK_BYTES;
    if (!ok) await once(out, 'drain');
  }
  return startNs;
}
