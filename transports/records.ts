/**
 * Records: msgpack-encoded values carried in a channel's byte stream, each behind a 4-byte
 * big-endian length:
 *
 * ```
 *   u32 length | msgpack value (length bytes) | u32 length | msgpack value | ...
 * ```
 *
 * Records are part of the bytes, not of the frames, so they travel unchanged on every path —
 * pipe, socket, peer link, store segments — and may be split anywhere in transit. The length
 * prefix makes the size limit exact (checked before a byte of the body is buffered), keeps
 * decoding linear (each record is parsed once, when complete), and lets the decoder insist that
 * a record is exactly one msgpack value.
 *
 * Values are plain msgpack (maps, arrays, strings, numbers, binary, nil, booleans, timestamps);
 * typed arrays and DataViews use msgpackr's typed-array extension so they come back as they
 * went, byte for byte. Anything else (sets, errors, class instances msgpackr would encode as
 * its own extensions) is refused at `encodeRecord`, and by the decoder if a peer sends it. Nesting
 * is limited to 64 levels. Integers beyond 2^53 decode as (rounded) numbers. A decoded binary
 * value is a view of the received bytes.
 *
 * After a malformed record the decoder refuses everything that follows (the stream is out of
 * step), but first delivers every record completed before it, however the bytes were chunked.
 */
import { Packr } from 'msgpackr';
import { ErrorCodes, ProtocolError, RequestError } from './errors.js';
import { RECORD_EXTENSIONS, checkMsgpack } from './msgpack-check.js';

/** Largest record accepted by default (the msgpack body, without its length), bytes. */
export const DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024;
export const RECORD_HEADER_BYTES = 4;

const recordPackr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: true, variableMapSize: true, int64AsType: 'number' });

/** Encode one value as a record: its length, then its msgpack bytes, in one new buffer. */
export function encodeRecord(value: unknown, maxRecordBytes = DEFAULT_MAX_RECORD_BYTES): Buffer {
  let body: Buffer;
  try {
    body = recordPackr.pack(value);
    checkMsgpack(body, RECORD_EXTENSIONS);
  } catch (err) {
    throw new RequestError(ErrorCodes.INVALID, `value cannot be sent as a record: ${(err as Error).message}`, { cause: err });
  }
  if (body.length > maxRecordBytes) {
    throw new RequestError(ErrorCodes.INVALID, `record of ${body.length} bytes exceeds the limit of ${maxRecordBytes}`, { details: { maxRecordBytes } });
  }
  // a new buffer: msgpackr's output is a view of a scratch buffer it reuses
  const out = Buffer.allocUnsafe(RECORD_HEADER_BYTES + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, RECORD_HEADER_BYTES);
  return out;
}

function decodeBody(body: Buffer): unknown {
  checkMsgpack(body, RECORD_EXTENSIONS);
  try {
    return recordPackr.unpack(body);
  } catch (err) {
    throw new ProtocolError('a record is not one msgpack value', { cause: err });
  }
}

/** Turns a byte stream back into values; chunks may split records anywhere. */
export class RecordDecoder {
  private readonly header = Buffer.alloc(RECORD_HEADER_BYTES);
  private headerHave = 0;
  /** body length of the record being read, or -1 while reading a header */
  private bodyLength = -1;
  private parts: Buffer[] = [];
  private have = 0;
  private failure: ProtocolError | undefined;

  constructor(private readonly maxRecordBytes = DEFAULT_MAX_RECORD_BYTES) {}

  /**
   * The records completed by `chunk`, in order. Malformed input throws SLUICE_PROTOCOL — on this
   * call if no record came before it in the chunk, else on the next call — and every later call
   * throws it again.
   */
  push(chunk: Buffer): unknown[] {
    if (this.failure) throw this.failure;
    const values: unknown[] = [];
    try {
      this.decode(chunk, values);
    } catch (err) {
      this.failure = err instanceof ProtocolError ? err : new ProtocolError('malformed records stream', { cause: err });
      if (values.length === 0) throw this.failure;
    }
    return values;
  }

  private decode(chunk: Buffer, values: unknown[]): void {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.bodyLength < 0) {
        let length: number;
        if (this.headerHave === 0 && chunk.length - offset >= RECORD_HEADER_BYTES) {
          length = chunk.readUInt32BE(offset);
          offset += RECORD_HEADER_BYTES;
        } else {
          const take = Math.min(RECORD_HEADER_BYTES - this.headerHave, chunk.length - offset);
          chunk.copy(this.header, this.headerHave, offset, offset + take);
          this.headerHave += take;
          offset += take;
          if (this.headerHave < RECORD_HEADER_BYTES) break;
          this.headerHave = 0;
          length = this.header.readUInt32BE(0);
        }
        if (length === 0) throw new ProtocolError('a record of 0 bytes (a msgpack value takes at least 1)');
        if (length > this.maxRecordBytes) {
          throw new ProtocolError(`record of ${length} bytes exceeds the limit of ${this.maxRecordBytes}`, { details: { length, maxRecordBytes: this.maxRecordBytes } });
        }
        this.bodyLength = length;
        continue;
      }
      const take = Math.min(this.bodyLength - this.have, chunk.length - offset);
      if (this.have === 0 && take === this.bodyLength) {
        values.push(decodeBody(chunk.subarray(offset, offset + take)));
        this.bodyLength = -1;
      } else {
        // copy: the caller may reuse its chunk before the record completes
        this.parts.push(Buffer.from(chunk.subarray(offset, offset + take)));
        this.have += take;
        if (this.have === this.bodyLength) {
          const body = Buffer.concat(this.parts, this.have);
          this.parts = [];
          this.have = 0;
          this.bodyLength = -1;
          values.push(decodeBody(body));
        }
      }
      offset += take;
    }
  }

  /** Call at end of stream: a partial record left over means the stream was cut inside it. */
  finish(): void {
    if (this.failure) throw this.failure;
    if (this.headerHave > 0 || this.bodyLength >= 0) {
      throw new ProtocolError(`stream ended inside a record (${this.headerHave > 0 ? `${this.headerHave} bytes of its length` : `${this.have} of ${this.bodyLength} bytes`})`);
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
