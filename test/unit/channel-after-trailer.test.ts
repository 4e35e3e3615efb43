/**
 * What a producer sends after its trailer (END) is dropped: found by the relay fuzz target
 * (test/fuzz/targets/relay.ts), a mutated stream with its END frame repeated and DATA after it,
 * all in one read of the medium. The reader verified the stream at the first END; the frames
 * after it in the same chunk were decoded on, verified (and acknowledged) it again, and their
 * DATA was pushed after the end of the stream: an error on a stream already verified.
 */
import { describe, expect, it } from 'vitest';
import { ChannelReader, FrameDecoder, FrameType, MemoryTransport, checksumOf, encodeControl, encodeHeader, type FrameSink } from '../../transports/index.js';
import { drain, seededBytes } from '../helpers/streams.js';

describe('a channel reader after the trailer', () => {
  it('delivers the verified stream once, acknowledges it once and drops what follows its END in the same chunk', async () => {
    const transport = new MemoryTransport();
    const listener = await transport.listen('ch');
    const dialled = transport.dial('ch');
    let acks = 0;
    const reader = new ChannelReader(await listener.accept(), {
      acknowledge: () => {
        acks++;
        return Promise.resolve();
      },
    });
    const producer = await dialled;
    producer.input.on('error', () => undefined);
    const data = seededBytes(1000, 3);
    const end = encodeControl(FrameType.END, 0, { length: data.length, checksum: checksumOf(data) });
    const after = seededBytes(500, 4);
    producer.output.write(
      Buffer.concat([encodeControl(FrameType.HELLO, 0, { v: 1 }), encodeHeader(FrameType.DATA, 0, data.length), data, end, end, encodeHeader(FrameType.DATA, 0, after.length), after, end]),
    );
    const frames: FrameType[] = [];
    const decoder = new FrameDecoder();
    const sink: FrameSink = { data: () => undefined, control: (type) => void frames.push(type) };
    producer.input.on('data', (chunk: Buffer) => decoder.push(chunk, sink));
    const result = await drain(reader);
    expect(result.error).toBeUndefined();
    expect(result.bytes.equals(data)).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(acks).toBe(1);
    expect(frames).toEqual([FrameType.ACK]);
  });
});
