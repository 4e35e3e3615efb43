/**
 * Pure targets: the frame decoder, the record decoder and the msgpack check, in process. Each
 * input must decode, or make the decoder throw SLUICE_PROTOCOL (and keep throwing it); an
 * unmutated input, however chunked, must decode to exactly what was encoded.
 */
import { isDeepStrictEqual } from 'node:util';
import { FrameDecoder, FrameType, HEADER_BYTES, RecordDecoder, packr, type FrameSink } from '../../../transports/index.js';
import { NO_EXTENSIONS, RECORD_EXTENSIONS, checkMsgpack } from '../../../transports/msgpack-check.js';
import { chance, chunk, frames, msgpackValue, mutate, records, type Prng } from '../gen.js';
import { expectSluice, type Target } from '../harness.js';

/** A decoder's control and data output, for comparing with what was encoded. */
function collector(): { sink: FrameSink; controls: number; data: Buffer[] } {
  const out = { controls: 0, data: [] as Buffer[], sink: undefined as unknown as FrameSink };
  out.sink = {
    data: (_c, bytes) => void out.data.push(Buffer.from(bytes)),
    control: (type, _c, fields) => {
      if (typeof fields !== 'object' || fields === null) throw new Error(`control ${type} delivered a non-object`);
      out.controls++;
    },
  };
  return out;
}

function codecInput(r: Prng): { units: Buffer[]; bytes: Buffer; mutated: boolean; chunks: Buffer[]; max: number } {
  const units = frames(r);
  const { bytes, mutated } = mutate(r, units);
  const max = chance(r, 0.2) ? r.int(1, 8192) : 1 << 20;
  return { units, bytes, mutated, chunks: chunk(r, bytes), max };
}

export function codecTarget(): Target {
  const stats = { decodedWhole: 0, refused: 0 };
  return {
    name: 'codec',
    stats,
    describe: (r) => codecInput(r).bytes.toString('hex'),
    one(r) {
      const { units, mutated, chunks, max } = codecInput(r);
      const decoder = new FrameDecoder({ maxFramePayload: max });
      const got = collector();
      let failure: unknown;
      for (const c of chunks) {
        try {
          decoder.push(c, got.sink);
        } catch (err) {
          expectSluice(err, 'SLUICE_PROTOCOL', 'FrameDecoder.push');
          if (failure !== undefined && err !== failure) throw new Error('after a failure the decoder threw a different error');
          failure = err;
        }
      }
      if (failure !== undefined) {
        stats.refused++;
        return;
      }
      stats.decodedWhole++;
      if (!mutated && units.every((u) => u[1] !== FrameType.DATA || u.length - HEADER_BYTES <= max)) {
        if (!decoder.atBoundary) throw new Error('a whole valid input did not end on a frame boundary');
        const want = units.filter((u) => u[1] === FrameType.DATA).map((u) => u.subarray(HEADER_BYTES));
        if (!Buffer.concat(want).equals(Buffer.concat(got.data))) throw new Error('valid DATA payloads came out different');
        if (got.controls !== units.length - want.length) throw new Error(`valid control frames: ${got.controls} decoded of ${units.length - want.length}`);
      }
    },
  };
}

function recordsInput(r: Prng): { units: Buffer[]; bytes: Buffer; mutated: boolean; chunks: Buffer[]; max: number } {
  const units = records(r);
  const { bytes, mutated } = mutate(r, units, false);
  const max = chance(r, 0.2) ? r.int(1, 256) : 16 * 1024 * 1024;
  return { units, bytes, mutated, chunks: chunk(r, bytes), max };
}

export function recordsTarget(): Target {
  const stats = { decodedWhole: 0, refused: 0 };
  return {
    name: 'records',
    stats,
    describe: (r) => recordsInput(r).bytes.toString('hex'),
    one(r) {
      const { units, mutated, chunks, max } = recordsInput(r);
      const decoder = new RecordDecoder(max);
      let values = 0;
      let failed = false;
      for (const c of [...chunks, undefined]) {
        try {
          if (c === undefined) decoder.finish();
          else values += decoder.push(c).length;
        } catch (err) {
          expectSluice(err, 'SLUICE_PROTOCOL', c === undefined ? 'RecordDecoder.finish' : 'RecordDecoder.push');
          failed = true;
        }
      }
      if (failed) stats.refused++;
      else stats.decodedWhole++;
      if (!mutated && units.every((u) => u.length - 4 <= max)) {
        if (failed) throw new Error('valid records were refused');
        if (values !== units.length) throw new Error(`valid records: ${values} decoded of ${units.length}`);
      }
    },
  };
}

function msgpackInput(r: Prng): { valid: Buffer; bytes: Buffer; mutated: boolean; records: boolean; depth: number } {
  const valid = msgpackValue(r);
  const { bytes, mutated } = mutate(r, [valid], false);
  return { valid, bytes, mutated, records: chance(r, 0.5), depth: chance(r, 0.2) ? r.int(0, 4) : 64 };
}

/**
 * msgpack-check: returns or throws SLUICE_PROTOCOL. The check promises that what it accepts is
 * exactly one value msgpackr decodes; an accepted input that msgpackr then refuses is counted
 * (`acceptedButUndecodable`) — the decoders wrap that failure in SLUICE_PROTOCOL, so it is no
 * crash, but it is a gap in the check.
 */
export function msgpackTarget(): Target {
  const stats = { accepted: 0, refused: 0, acceptedButUndecodable: 0 };
  return {
    name: 'msgpack',
    stats,
    describe: (r) => msgpackInput(r).bytes.toString('hex'),
    one(r) {
      const input = msgpackInput(r);
      try {
        checkMsgpack(input.bytes, input.records ? RECORD_EXTENSIONS : NO_EXTENSIONS, input.depth);
      } catch (err) {
        expectSluice(err, 'SLUICE_PROTOCOL', 'checkMsgpack');
        stats.refused++;
        if (!input.mutated && input.depth === 64) throw new Error('a valid msgpack value was refused', { cause: err });
        return;
      }
      stats.accepted++;
      try {
        const value = packr.unpack(input.bytes);
        if (!input.mutated && !isDeepStrictEqual(value, packr.unpack(input.valid))) throw new Error('unreachable');
      } catch {
        stats.acceptedButUndecodable++;
      }
    },
  };
}
