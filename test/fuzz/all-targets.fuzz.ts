/**
 * `npm run fuzz`: every fuzz target with FUZZ_CASES cases (default 1,000,000 each), from
 * FUZZ_SEED (default: random, printed), optionally only FUZZ_TARGET (comma-separated names) or
 * only case FUZZ_CASE (with its batch, for the live targets), FUZZ_BATCH connections at once for the
 * relay targets. Prints cases per second per target;
 * a failure names the seed and case that reproduce it. Run by test/fuzz/run.mjs through vitest
 * (vitest.fuzz.config.ts), which builds dist/ first for the daemon targets.
 */
import { it } from 'vitest';
import { fuzz, type FuzzResult, type Target } from './harness.js';
import { controlApiTarget } from './targets/control-api.js';
import { muxTarget } from './targets/mux.js';
import { peerLinkTarget } from './targets/peer-link.js';
import { codecTarget, msgpackTarget, recordsTarget } from './targets/pure.js';
import { relaySocketTarget } from './targets/relay-socket.js';
import { relayTarget } from './targets/relay.js';

/** FUZZ_BATCH: connections in flight per batch for the relay targets (default 256) */
const batch = process.env.FUZZ_BATCH === undefined ? undefined : Number(process.env.FUZZ_BATCH);
const relayOptions = batch === undefined ? {} : { batch };

const targets: Record<string, () => Target> = {
  codec: codecTarget,
  records: recordsTarget,
  msgpack: msgpackTarget,
  mux: muxTarget,
  'control-api': controlApiTarget,
  'peer-link': peerLinkTarget,
  'relay-socket': () => relaySocketTarget(relayOptions),
  relay: () => relayTarget(relayOptions),
};

const cases = Number(process.env.FUZZ_CASES ?? 1_000_000);
const seed = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const only = process.env.FUZZ_CASE === undefined ? undefined : Number(process.env.FUZZ_CASE);
const chosen = (process.env.FUZZ_TARGET ?? Object.keys(targets).join(',')).split(',').filter(Boolean);
const unknown = chosen.filter((t) => !targets[t]);
if (unknown.length > 0) throw new Error(`unknown fuzz target(s) ${unknown.join(', ')}; known: ${Object.keys(targets).join(', ')}`);

const say = (line: string): void => void process.stderr.write(`${line}\n`);
const results: FuzzResult[] = [];

say(`fuzz: seed ${seed}, ${only === undefined ? `${cases} cases per target` : `case ${only} only`}, targets ${chosen.join(', ')}`);

for (const name of chosen) {
  it(`fuzz ${name}`, async () => {
    const result = await fuzz(targets[name]!(), { cases, seed, only, progressMs: 10_000, log: say });
    results.push(result);
    say(`${name.padEnd(13)} ${String(result.cases).padStart(9)} cases in ${(result.ms / 1000).toFixed(1).padStart(7)} s  ${String(Math.round(result.perSecond)).padStart(7)} cases/s  ${JSON.stringify(result.stats)}`);
  }, 24 * 3600 * 1000);
}
