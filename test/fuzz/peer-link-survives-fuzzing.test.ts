/**
 * CI cut of the live peer-link fuzz target: a real daemon, a couple of hundred peer links that
 * pass the HMAC handshake (they know the cluster secret) and then send mutated hellos, mux
 * frames and control requests, from today's seed: the daemon closes every link in time, stays
 * alive, its fds come back, and a stream through it afterwards is byte-exact.
 */
import { describe, expect, it } from 'vitest';
import { dailySeed } from './gen.js';
import { fuzz } from './harness.js';
import { peerLinkTarget } from './targets/peer-link.js';

const seed = Number(process.env.FUZZ_SEED ?? dailySeed());
const cases = Number(process.env.FUZZ_CI_LIVE_CASES ?? 160);

describe(`peer links under fuzzed handshakes, frames and requests (seed ${seed})`, () => {
  it(`keep the daemon alive, its fds bounded and a stream through it byte-exact (${cases} links)`, async () => {
    const result = await fuzz(peerLinkTarget(), { cases, seed });
    expect(result.cases).toBe(cases);
  }, 120_000);
});
