/**
 * Sluice's frame codec: pure, no I/O.
 *
 * Every byte between two Sluice endpoints travels in frames. A frame is a fixed 12-byte header
 * followed by its payload:
 *
 * ```
 *  offset  size  field
 *  0       1     version      1; anything else is refused (SLUICE_PROTOCOL)
 *  1       1     type         FrameType below (1-5 channel protocol, 6-9 peer links); unknown
 *                             types are refused
 *  2       2     reserved     0; anything else is refused (catches garbage early)
 *  4       4     channel      u32 big-endian; 0 on a connection that carries one channel,
 *                             the channel id on a multiplexed peer link
 *  8       4     length       u32 big-endian payload length in bytes
 *  12      ...   payload      DATA: the producer's bytes, as they are;
 *                             every other type: one msgpack-encoded map (control fields)
 * ```
 *
 * Limits: a DATA payload is at most `maxFramePayload` bytes (default 1 MiB; writers split larger
 * writes); a control payload is at most `MAX_CONTROL_PAYLOAD` (64 KiB). A header announcing more
 * is refused before any of the payload is read, so a peer cannot make the decoder buffer much.
 *
 * The decoder is streaming: chunks may split frames anywhere, headers included. DATA payloads are
 * handed on as views of the incoming chunks (no copy), possibly in several pieces per frame;
 * control payloads are reassembled (bounded by MAX_CONTROL_PAYLOAD) and decoded.
 */
import { Packr } from 'msgpackr';
import { ProtocolError } from './errors.js';
import { NO_EXTENSIONS, checkMsgpack } from './msgpack-check.js';

/** Control maps are flat or nearly so; deep nesting is refused. */
const CONTROL_MAX_DEPTH = 8;

export const WIRE_VERSION = 1;
export const HEADER_BYTES = 12;
/** Default and hard upper bound of a DATA frame's payload, in bytes. */
export const DEFAULT_MAX_FRAME_PAYLOAD = 1024 * 1024;
export const MAX_FRAME_PAYLOAD_LIMIT = 16 * 1024 * 1024;
/** Upper bound of a control frame's (msgpack) payload, in bytes. */
export const MAX_CONTROL_PAYLOAD = 64 * 1024;

export const FrameType = {
  /** producer → consumer, first frame: `{ v: 1, ...metadata }` */
  HELLO: 1,
  /** producer → consumer: raw bytes of the stream */
  DATA: 2,
  /** producer → consumer, last frame, the trailer: `{ length, checksum }` */
  END: 3,
  /** consumer → producer: the stream was received and verified, `{ length }` */
  ACK: 4,
  /** either way: the stream is abandoned, `{ code, message }` */
  ABORT: 5,
  /** peer links (mux.ts): open a connection, `{ endpoint, window }` */
  OPEN: 6,
  /** peer links: the receiver consumed bytes, `{ bytes }` more may be sent */
  CREDIT: 7,
  /** peer links: the sender's direction of a connection ended, `{}` */
  CLOSE: 8,
  /** peer links: a connection is abandoned or refused, `{ code, message }` */
  RESET: 9,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

const typeNames: Record<number, string> = Object.fromEntries(Object.entries(FrameType).map(([k, v]) => [v, k]));
export function frameTypeName(type: number): string {
  return typeNames[type] ?? `unknown(${type})`;
}

export interface HelloFields {
  v: number;
  [key: string]: unknown;
}
export interface EndFields {
  /** total payload bytes of the stream */
  length: number;
  /** XXH3-64 (seed 0) of all payload bytes, 16 lowercase hex digits */
  checksum: string;
}
export interface AckFields {
  length: number;
}
export interface AbortFields {
  code: string;
  message: string;
}

/** msgpack as plain maps, readable by any msgpack implementation. */
export const packr = new Packr({ useRecords: false, mapsAsObjects: true, variableMapSize: true, int64AsType: 'number' });

/** Write a frame header into `target` at `offset`. */
export function writeHeader(target: Buffer, offset: number, type: FrameType, channel: number, length: number): void {
  target[offset] = WIRE_VERSION;
  target[offset + 1] = type;
  target[offset + 2] = 0;
  target[offset + 3] = 0;
  target.writeUInt32BE(channel, offset + 4);
  target.writeUInt32BE(length, offset + 8);
}

export function encodeHeader(type: FrameType, channel: number, length: number): Buffer {
  const header = Buffer.allocUnsafe(HEADER_BYTES);
  writeHeader(header, 0, type, channel, length);
  return header;
}

/** A whole control frame (header + msgpack payload) in one buffer. */
export function encodeControl(type: Exclude<FrameType, typeof FrameType.DATA>, channel: number, fields: object): Buffer {
  const body = packr.pack(fields);
  if (body.length > MAX_CONTROL_PAYLOAD) {
    throw new ProtocolError(`control frame ${frameTypeName(type)} too large: ${body.length} > ${MAX_CONTROL_PAYLOAD} bytes`);
  }
  return Buffer.concat([encodeHeader(type, channel, body.length), body]);
}

/**
 * Where the decoder delivers what it finds. `data` may be called several times for one frame
 * (as its bytes arrive); the views it gets are only valid until the call returns unless kept.
 */
export interface FrameSink {
  data(channel: number, bytes: Buffer): void;
  control(type: FrameType, channel: number, fields: Record<string, unknown>): void;
}

export interface DecoderOptions {
  /** Largest DATA payload accepted, bytes. Default 1 MiB, at most 16 MiB. */
  maxFramePayload?: number;
}

const enum State {
  Header,
  Data,
  Control,
}

export class FrameDecoder {
  readonly maxFramePayload: number;
  private state = State.Header;
  /** partial header bytes, when a header is split across chunks */
  private headerBuf = Buffer.allocUnsafe(HEADER_BYTES);
  private headerHave = 0;
  private type: FrameType = FrameType.DATA;
  private channel = 0;
  /** payload bytes still to come for the current frame */
  private remaining = 0;
  private controlParts: Buffer[] = [];
  private failed: ProtocolError | undefined;

  constructor(options: DecoderOptions = {}) {
    const max = options.maxFramePayload ?? DEFAULT_MAX_FRAME_PAYLOAD;
    if (!Number.isInteger(max) || max < 1 || max > MAX_FRAME_PAYLOAD_LIMIT) {
      throw new RangeError(`maxFramePayload must be an integer in 1..${MAX_FRAME_PAYLOAD_LIMIT}, got ${max}`);
    }
    this.maxFramePayload = max;
  }

  /** True when the input so far ends exactly on a frame boundary. */
  get atBoundary(): boolean {
    return this.state === State.Header && this.headerHave === 0;
  }

  /** Feed the next chunk. Throws ProtocolError on bad input; after that, every call throws. */
  push(chunk: Buffer, sink: FrameSink): void {
    if (this.failed) throw this.failed;
    try {
      this.consume(chunk, sink);
    } catch (err) {
      if (err instanceof ProtocolError) this.failed = err;
      throw err;
    }
  }

  private consume(chunk: Buffer, sink: FrameSink): void {
    let offset = 0;
    const end = chunk.length;
    while (offset < end) {
      switch (this.state) {
        case State.Header: {
          let header: Buffer;
          if (this.headerHave === 0 && end - offset >= HEADER_BYTES) {
            header = chunk;
          } else {
            const take = Math.min(HEADER_BYTES - this.headerHave, end - offset);
            chunk.copy(this.headerBuf, this.headerHave, offset, offset + take);
            this.headerHave += take;
            offset += take;
            if (this.headerHave < HEADER_BYTES) return;
            header = this.headerBuf;
          }
          const at = header === chunk ? offset : 0;
          this.parseHeader(header, at);
          if (header === chunk) offset += HEADER_BYTES;
          this.headerHave = 0;
          if (this.state === State.Header) {
            // an empty control frame cannot decode to a map; empty DATA frames are legal no-ops
            if (this.type !== FrameType.DATA) this.finishControl(sink);
          }
          break;
        }
        case State.Data: {
          const take = Math.min(this.remaining, end - offset);
          const piece = offset === 0 && take === end ? chunk : chunk.subarray(offset, offset + take);
          offset += take;
          this.remaining -= take;
          if (this.remaining === 0) this.state = State.Header;
          sink.data(this.channel, piece);
          break;
        }
        case State.Control: {
          const take = Math.min(this.remaining, end - offset);
          // copy: the caller may reuse its chunk, and control frames are small
          this.controlParts.push(Buffer.from(chunk.subarray(offset, offset + take)));
          offset += take;
          this.remaining -= take;
          if (this.remaining === 0) {
            this.state = State.Header;
            this.finishControl(sink);
          }
          break;
        }
      }
    }
  }

  private parseHeader(h: Buffer, at: number): void {
    const version = h[at]!;
    const type = h[at + 1]!;
    if (version !== WIRE_VERSION) {
      throw new ProtocolError(`unsupported wire version ${version} (this side speaks ${WIRE_VERSION}); not a Sluice peer?`, {
        details: { header: h.subarray(at, at + HEADER_BYTES).toString('hex') },
      });
    }
    if (typeNames[type] === undefined) {
      throw new ProtocolError(`unknown frame type ${type}`, { details: { header: h.subarray(at, at + HEADER_BYTES).toString('hex') } });
    }
    if (h[at + 2] !== 0 || h[at + 3] !== 0) {
      throw new ProtocolError('reserved header bytes are not zero', { details: { header: h.subarray(at, at + HEADER_BYTES).toString('hex') } });
    }
    this.type = type as FrameType;
    this.channel = h.readUInt32BE(at + 4);
    const length = h.readUInt32BE(at + 8);
    if (type === FrameType.DATA) {
      if (length > this.maxFramePayload) {
        throw new ProtocolError(`DATA frame of ${length} bytes exceeds the limit of ${this.maxFramePayload}`, { details: { length } });
      }
      this.remaining = length;
      this.state = length === 0 ? State.Header : State.Data;
    } else {
      if (length > MAX_CONTROL_PAYLOAD) {
        throw new ProtocolError(`${frameTypeName(type)} frame of ${length} bytes exceeds the control limit of ${MAX_CONTROL_PAYLOAD}`, {
          details: { length },
        });
      }
      this.remaining = length;
      this.state = length === 0 ? State.Header : State.Control;
    }
  }

  private finishControl(sink: FrameSink): void {
    const parts = this.controlParts;
    this.controlParts = [];
    const body = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    let fields: unknown;
    try {
      checkMsgpack(body, NO_EXTENSIONS, CONTROL_MAX_DEPTH);
      fields = packr.unpack(body);
    } catch (err) {
      throw new ProtocolError(`undecodable ${frameTypeName(this.type)} frame`, { cause: err });
    }
    if (typeof fields !== 'object' || fields === null || Array.isArray(fields) || Buffer.isBuffer(fields)) {
      throw new ProtocolError(`${frameTypeName(this.type)} frame does not hold a map`);
    }
    sink.control(this.type, this.channel, fields as Record<string, unknown>);
  }
}
