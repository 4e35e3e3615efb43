/**
 * CI cut of the control API fuzz target: a few thousand mutated bodies, parameters and content
 * types over every route, from today's seed, through inject(): typed 4xx or 2xx, never a 500.
 */
import { describe, expect, it } from 'vitest';
import { dailySeed } from './gen.js';
import { fuzz } from './harness.js';
import { controlApiTarget } from './targets/control-api.js';

const seed = Number(process.env.FUZZ_SEED ?? dailySeed());
const cases = Number(process.env.FUZZ_CI_CASES ?? 2000);

describe(`the control API under fuzzed bodies (seed ${seed})`, () => {
  it(`answers every request with a typed 4xx or a 2xx, never a 500 (${cases} cases)`, async () => {
    const result = await fuzz(controlApiTarget(), { cases, seed });
    expect(result.cases).toBe(cases);
  });
});
