/**
 * The stream trailer's checksum: CRC-32 (IEEE 802.3 polynomial, the same value as zlib's and
 * Node's `zlib.crc32`), computed incrementally over every payload byte of a stream.
 *
 * Chosen by measurement (`node dist/bench/checksum.js`, figures in README.md): the native
 * `@node-rs/crc32` (hardware carry-less multiply) runs at ~10 GB/s on 64 KiB chunks here, several
 * times the fastest transport, so it never dominates throughput; Node 20's built-in
 * `zlib.crc32` reaches ~3-4 GB/s. Together with the exact length it catches truncation,
 * duplication, reordering and bit errors; it is not a defence against a malicious producer,
 * which the run token and peer authentication are for.
 */
import crc from '@node-rs/crc32';

const native = crc.crc32;

/** Continue a CRC-32 over `bytes`, starting from `previous` (0 for an empty stream). */
export function crc32(bytes: Uint8Array, previous = 0): number {
  return native(bytes as Buffer, previous) >>> 0;
}
