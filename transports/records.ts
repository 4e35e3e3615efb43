/**
 * Records: msgpack-encoded values carried on a channel's byte stream, back to back. msgpack
 * values delimit themselves, so records need no framing of their own and travel unchanged on
 * every path — pipe, socket, peer link, store segments — and can be split anywhere in transit.
 */
import { packr } from './codec.js';
import { ProtocolError } from './errors.js';

/** Largest record accepted by default, bytes. */
export const DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024;

/** Encode one value as a record (plain msgpack). */
export function encodeRecord(value: unknown): Buffer {
  return packr.pack(value);
}

/** Turns a byte stream back into values; chunks may split records anywhere. */
export class RecordDecoder {
  private partial: Buffer | undefined;

  constructor(private readonly maxRecordBytes = DEFAULT_MAX_RECORD_BYTES) {}

  /** The complete values in `chunk` (plus what was left from before). */
  push(chunk: Buffer): unknown[] {
    const input = this.partial ? Buffer.concat([this.partial, chunk]) : chunk;
    this.partial = undefined;
    try {
      return packr.unpackMultiple(input) ?? [];
    } catch (err) {
      const e = err as { incomplete?: boolean; lastPosition?: number; values?: unknown[] };
      if (!e.incomplete) throw new ProtocolError('records stream holds bytes that are not msgpack', { cause: err });
      const rest = input.subarray(e.lastPosition ?? 0);
      if (rest.length > this.maxRecordBytes) {
        throw new ProtocolError(`record larger than ${this.maxRecordBytes} bytes`, { details: { maxRecordBytes: this.maxRecordBytes } });
      }
      // copy: the rest is small next to the chunk it would otherwise pin
      this.partial = Buffer.from(rest);
      return e.values ?? [];
    }
  }

  /** Call at end of stream: bytes left over mean the last record was cut short. */
  finish(): void {
    if (this.partial && this.partial.length > 0) {
      throw new ProtocolError(`stream ended inside a record (${this.partial.length} bytes of it)`);
    }
  }
}

/** The values of a byte stream of records, in order. */
export async function* decodeRecords(source: AsyncIterable<Buffer>, maxRecordBytes = DEFAULT_MAX_RECORD_BYTES): AsyncGenerator<unknown> {
  const decoder = new RecordDecoder(maxRecordBytes);
  for await (const chunk of source) {
    yield* decoder.push(chunk);
  }
  decoder.finish();
}
