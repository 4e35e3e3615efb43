/**
 * CI cut of the live relay-socket fuzz target (issue 16): a real daemon, a few hundred mutated
 * producer streams over concurrent connections to relay.sock, each ended, half-closed or reset
 * at a random point, from today's seed. The daemon stays alive, closes every connection, its fds
 * come back to baseline, and a real stream through it afterwards is byte-exact.
 */
import { describe, expect, it } from 'vitest';
import { dailySeed } from './gen.js';
import { fuzz } from './harness.js';
import { relaySocketTarget } from './targets/relay-socket.js';

const seed = Number(process.env.FUZZ_SEED ?? dailySeed());
const cases = Number(process.env.FUZZ_CI_LIVE_CASES ?? 1024);

describe(`the relay socket under fuzzed producer streams (seed ${seed})`, () => {
  it(`keeps the daemon alive, its fds bounded and a stream through it byte-exact (${cases} connections)`, async () => {
    const result = await fuzz(relaySocketTarget(), { cases, seed });
    expect(result.cases).toBe(cases);
  }, 120_000);
});
