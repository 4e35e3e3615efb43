/**
 * CI cut of the mux fuzz target: a few thousand mutated peer sessions (OPEN, DATA, CREDIT, CLOSE,
 * RESET, then end / reset at a random point) into a real Mux over an in-memory link, from today's
 * seed: nothing escapes, the link ends with a typed error, no connection is left open.
 */
import { describe, expect, it } from 'vitest';
import { dailySeed } from './gen.js';
import { fuzz } from './harness.js';
import { muxTarget } from './targets/mux.js';

const seed = Number(process.env.FUZZ_SEED ?? dailySeed());
const cases = Number(process.env.FUZZ_CI_CASES ?? 3000);

describe(`the peer-link multiplexer under fuzzed frames (seed ${seed})`, () => {
  it(`closes the link with a typed error or carries on, never throws (${cases} cases)`, async () => {
    const result = await fuzz(muxTarget(), { cases, seed });
    expect(result.cases).toBe(cases);
  });
});
