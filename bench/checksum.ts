/**
 * Checksum candidates for the stream trailer, measured on this machine:
 * `node dist/bench/checksum.js [--total MiB] [--contended]`. Prints GB/s (10^9 bytes/s) per chunk
 * size. `--contended` runs a second copy of the same sequence in another process at the same
 * time, because while a channel streams both cores are busy, and SMT siblings share a core's
 * execution units: the figures that decide are the contended ones.
 */
import crc from '@node-rs/crc32';
import xxhash from '@node-rs/xxhash';
import { fork } from 'node:child_process';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { StreamChecksum } from '../transports/checksum.js';
import { parseArgs } from 'node:util';
import zlib from 'node:zlib';
import { BLOCK_BYTES, KiB, MiB, makeBlock, nowNs } from './data.js';

/** One candidate: feed it every chunk of a stream, return something derived from the result. */
type Candidate = (chunks: Iterable<Buffer>) => number;

const candidates: Record<string, Candidate> = {
  'zlib.crc32': (chunks) => {
    let c = 0;
    for (const chunk of chunks) c = zlib.crc32(chunk, c);
    return c;
  },
  '@node-rs/crc32 crc32': (chunks) => {
    let c = 0;
    for (const chunk of chunks) c = crc.crc32(chunk, c);
    return c;
  },
  '@node-rs/crc32 crc32c': (chunks) => {
    let c = 0;
    for (const chunk of chunks) c = crc.crc32c(chunk, c);
    return c;
  },
  '@node-rs/xxhash xxh3-64': (chunks) => {
    const h = xxhash.xxh3.Xxh3.withSeed();
    for (const chunk of chunks) h.update(chunk);
    return Number(h.digest() & 0xffn);
  },
  'xxhash-addon xxh3-64 (Sluice StreamChecksum)': (chunks) => {
    const h = new StreamChecksum();
    for (const chunk of chunks) h.update(chunk);
    return h.digest().charCodeAt(0);
  },
  'crypto md5': (chunks) => {
    const h = createHash('md5');
    for (const chunk of chunks) h.update(chunk);
    return h.digest()[0]!;
  },
  'crypto sha256': (chunks) => {
    const h = createHash('sha256');
    for (const chunk of chunks) h.update(chunk);
    return h.digest()[0]!;
  },
  'memcpy (reference)': (chunks) => {
    let dst: Buffer | undefined;
    for (const chunk of chunks) {
      dst ??= Buffer.allocUnsafe(chunk.length);
      chunk.copy(dst);
    }
    return dst?.[0] ?? 0;
  },
};

/** `total` bytes of the block, as views of `size` bytes, cyclically. */
function* chunksOf(block: Buffer, size: number, total: number): Generator<Buffer> {
  for (let done = 0, off = 0; done < total; done += size) {
    yield block.subarray(off, off + size);
    off = (off + size) % BLOCK_BYTES;
  }
}

function main(): void {
  const { values } = parseArgs({
    options: { total: { type: 'string', default: '1024' }, contended: { type: 'boolean' }, load: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) {
    process.stdout.write('Usage: node dist/bench/checksum.js [--total MiB] [--contended]   (default 1024 MiB per candidate and chunk size)\n');
    return;
  }
  const twin = values.contended
    ? fork(fileURLToPath(import.meta.url), ['--load', '--total', String(values.total)], { stdio: 'ignore', execArgv: [] })
    : undefined;
  const quiet = values.load === true;
  const total = Number(values.total) * MiB;
  if (!Number.isInteger(total) || total <= 0) throw new Error(`--total must be a positive number of MiB, got ${values.total}`);
  const block = makeBlock();
  const sizes = [1 * KiB, 64 * KiB, 1 * MiB];
  let sink = 0;
  const rows: string[] = [];
  for (const [name, run] of Object.entries(candidates)) {
    const cells: string[] = [];
    for (const size of sizes) {
      sink ^= run(chunksOf(block, size, 16 * MiB)); // warm up: JIT, native bindings, caches
      const start = nowNs();
      sink ^= run(chunksOf(block, size, total));
      const gbps = total / (nowNs() - start);
      cells.push(gbps.toFixed(2));
      if (!quiet) process.stderr.write(`${name}, ${size / KiB} KiB chunks: ${gbps.toFixed(2)} GB/s\n`);
    }
    rows.push(`| ${name} | ${cells.join(' | ')} |`);
  }
  twin?.kill();
  if (quiet) return;
  process.stdout.write(
    [
      `GB/s over ${total / MiB} MiB per cell, ${values.contended ? 'both cores busy (a twin process runs the same sequence)' : 'one process'} (node ${process.version}; check value ${sink & 0xff})`,
      '',
      '| candidate | 1 KiB | 64 KiB | 1 MiB |',
      '|---|--:|--:|--:|',
      ...rows,
      '',
    ].join('\n'),
  );
}

main();
