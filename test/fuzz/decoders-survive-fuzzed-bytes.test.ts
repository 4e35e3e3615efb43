/**
 * CI cut of the pure fuzz targets: a few thousand mutated inputs each, from today's seed, into
 * the frame decoder, the record decoder and the msgpack check. `npm run fuzz` runs a million.
 */
import { describe, expect, it } from 'vitest';
import { dailySeed } from './gen.js';
import { fuzz } from './harness.js';
import { codecTarget, msgpackTarget, recordsTarget } from './targets/pure.js';

const seed = Number(process.env.FUZZ_SEED ?? dailySeed());
const cases = Number(process.env.FUZZ_CI_CASES ?? 5000);

describe(`pure decoders under fuzzed bytes (seed ${seed})`, () => {
  it.each([
    ['the frame decoder decodes or throws SLUICE_PROTOCOL', codecTarget],
    ['the record decoder decodes or throws SLUICE_PROTOCOL', recordsTarget],
    ['the msgpack check accepts or throws SLUICE_PROTOCOL', msgpackTarget],
  ])(`%s (${cases} cases)`, async (_what, make) => {
    const result = await fuzz(make(), { cases, seed });
    expect(result.cases).toBe(cases);
  });
});
