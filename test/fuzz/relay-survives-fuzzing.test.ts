/**
 * CI cut of the in-process relay fuzz target (issue 16): a real Relay wired as on one node, a
 * thousand mutated producer streams over concurrent connections to its relay.sock, each ended,
 * half-closed or reset at a random point, from today's seed. No uncaught exception or unhandled
 * rejection, every connection and memory grant let go after each batch, the process's fds back,
 * and a real stream through the relay afterwards byte-exact.
 */
import { describe, expect, it } from 'vitest';
import { dailySeed } from './gen.js';
import { fuzz } from './harness.js';
import { relayTarget } from './targets/relay.js';

const seed = Number(process.env.FUZZ_SEED ?? dailySeed());
const cases = Number(process.env.FUZZ_CI_RELAY_CASES ?? 1024);

describe(`the in-process relay under fuzzed producer streams (seed ${seed})`, () => {
  it(`lets go of every connection, grant and fd, and carries a stream byte-exact afterwards (${cases} connections)`, async () => {
    const result = await fuzz(relayTarget(), { cases, seed });
    expect(result.cases).toBe(cases);
  }, 60_000);
});
