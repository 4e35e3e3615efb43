/**
 * Mid-stream failover of a cross-node stream, on the producer's node.
 *
 * A cross-node channel passes the producer's bytes through its daemon untouched. To be able to
 * resume it when the peer link (or the consumer's daemon) is lost mid-stream, the daemon also
 * reads the frames as they pass (`StreamTap`: no copy, no checksum) and keeps the last
 * `keepBytes` of payload. The consumer cannot have missed more than what was still in flight:
 * the link's credit window plus a few socket buffers, which `keepBytes` covers. On a failure the
 * daemon takes the stream over: the kept bytes and everything the producer still sends become a
 * *resumed* stored stream (`transports/store.ts`) starting at the first kept byte, with the
 * producer's own trailer. The consumer's node feeds it to the consumer, which drops the bytes it
 * has and verifies the whole stream against that trailer.
 */
import { PassThrough } from 'node:stream';
import { FrameDecoder, FrameType, MAX_FRAME_PAYLOAD_LIMIT, ErrorCodes, ProtocolError, StreamError, type FrameSink } from '../../transports/index.js';

export interface Takeover {
  /** payload offset of the first byte of `payload`, bytes */
  start: number;
  /** the kept bytes, then the rest of the producer's payload; ends at its END, fails at its ABORT or if it vanishes */
  payload: PassThrough;
  /** the producer's END fields, once `payload` ended */
  trailer: () => { length: number; checksum: string };
}

export class StreamTap {
  /** payload bytes seen so far */
  offset = 0;
  private readonly decoder = new FrameDecoder({ maxFramePayload: MAX_FRAME_PAYLOAD_LIMIT });
  private kept: Buffer[] = [];
  private keptBytes = 0;
  private trailer: { length: number; checksum: string } | undefined;
  /** the producer aborted, or sent bytes that are not the protocol: nothing worth resuming */
  private dead = false;
  private payload: PassThrough | undefined;
  private onFull: (() => void) | undefined;

  /** @param keepBytes payload bytes to keep for a resume, at least */
  constructor(private readonly keepBytes: number) {}

  /** The producer's next chunk, in order (the HELLO included). */
  push(chunk: Buffer): void {
    if (this.dead) return;
    try {
      this.decoder.push(chunk, this.sink);
    } catch (err) {
      this.dead = true;
      this.payload?.destroy(err as ProtocolError);
    }
  }

  /** Can the stream be taken over now? */
  get resumable(): boolean {
    return !this.dead && this.payload === undefined;
  }

  /** Has the producer sent its END? */
  get ended(): boolean {
    return this.trailer !== undefined;
  }

  /**
   * Stop keeping bytes: from now on the payload goes into the returned stream, which starts with
   * the kept bytes. `onFull` is called when it is full: the caller pauses the producer until it drains.
   */
  takeOver(highWaterMark: number, onFull: () => void): Takeover {
    const start = this.offset - this.keptBytes;
    const payload = new PassThrough({ highWaterMark });
    payload.on('error', () => undefined); // reported by whoever reads it
    this.onFull = onFull;
    for (const piece of this.kept) payload.write(piece);
    this.kept = [];
    this.keptBytes = 0;
    if (this.trailer) payload.end();
    this.payload = payload;
    return { start, payload, trailer: () => this.trailer! };
  }

  /** The producer's connection ended or failed: a stream without its END is truncated. */
  producerGone(err?: Error): void {
    if (this.trailer || !this.payload) return;
    this.payload.destroy(new StreamError(ErrorCodes.TRUNCATED, `the producer went away after ${this.offset} bytes, without its trailer`, { ...(err ? { cause: err } : {}) }));
  }

  private readonly sink: FrameSink = {
    data: (_channel, bytes) => {
      this.offset += bytes.length;
      if (this.payload) {
        if (!this.payload.write(bytes)) this.onFull?.();
        return;
      }
      this.kept.push(bytes);
      this.keptBytes += bytes.length;
      while (this.keptBytes - this.kept[0]!.length >= this.keepBytes) this.keptBytes -= this.kept.shift()!.length;
    },
    control: (type, _channel, fields) => {
      if (type === FrameType.END) {
        this.trailer = { length: fields.length as number, checksum: fields.checksum as string };
        this.payload?.end();
      } else if (type === FrameType.ABORT) {
        this.dead = true;
        this.payload?.destroy(new StreamError(ErrorCodes.PRODUCER_ABORTED, `the producer aborted the stream: ${String(fields.message)}`));
      }
    },
  };
}
