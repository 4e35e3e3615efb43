/**
 * The stream trailer's checksum: XXH3-64 (seed 0) over every payload byte of a stream, written
 * in the trailer as 16 lowercase hex digits (the canonical big-endian form `xxhsum -H3` prints).
 *
 * Chosen by measurement (`node dist/bench/checksum.js --contended`, figures in bench/README.md), under
 * the condition that matters: both cores busy, as they are while a producer and a consumer
 * stream. `xxhash-addon` is the reference C xxHash with run-time AVX2 dispatch, prebuilt: ~16-19
 * GB/s on 64 KiB chunks with both cores busy, ~4 GB/s on 1 KiB pieces. The Rust build in
 * `@node-rs/xxhash` runs at half that (no AVX2), the fastest CRC-32 (`@node-rs/crc32`) at a
 * third, a cryptographic hash at a tenth. On 2 cores every cycle a channel spends is a cycle
 * the bytes do not move, so this choice is most of the difference between framed and raw.
 *
 * With the exact length beside it, this catches truncation, duplication, reordering and bit
 * errors. It is not a defence against a malicious producer: the run token and the peer
 * handshake are.
 */
import xxhash from 'xxhash-addon';

const SEED = Buffer.alloc(8);

/** Pieces shorter than this are copied aside and hashed in batches, bytes. */
const BATCH_BELOW_BYTES = 4 * 1024;
const BATCH_BYTES = 64 * 1024;

/**
 * Incremental XXH3-64 of a byte stream. Small pieces (1 KiB records) are copied into a batch
 * buffer and hashed 64 KiB at a time: a ~50 ns copy instead of a native call each, which keeps a
 * record's latency down. The copy also means a caller may reuse or change a small buffer right
 * after `update()`; the digest is the same either way, defined over the bytes, not the pieces.
 */
export class StreamChecksum {
  private readonly hasher = new xxhash.XXHash3(SEED);
  private batch: Buffer | undefined;
  private batched = 0;

  update(bytes: Buffer): void {
    if (bytes.length >= BATCH_BELOW_BYTES) {
      this.flush();
      this.hasher.update(bytes);
      return;
    }
    if (this.batched + bytes.length > BATCH_BYTES) this.flush();
    this.batched += bytes.copy((this.batch ??= Buffer.allocUnsafeSlow(BATCH_BYTES)), this.batched);
  }

  /** The digest of everything so far, as 16 hex digits. Updating afterwards continues the stream. */
  digest(): string {
    this.flush();
    return this.hasher.digest().toString('hex');
  }

  private flush(): void {
    if (this.batched === 0) return;
    this.hasher.update(this.batch!.subarray(0, this.batched));
    this.batched = 0;
  }
}

/** The checksum of one buffer, as the trailer would carry it. */
export function checksumOf(bytes: Buffer): string {
  return xxhash.XXHash3.hash(bytes).toString('hex');
}
