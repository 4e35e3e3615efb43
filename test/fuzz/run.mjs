#!/usr/bin/env node
// npm run fuzz [-- --cases N] [--seed S] [--target NAME[,NAME...]] [--case I] [--batch B]
// Options become FUZZ_CASES / FUZZ_SEED / FUZZ_TARGET / FUZZ_CASE / FUZZ_BATCH (the environment works too) for
// test/fuzz/all-targets.fuzz.ts, run through vitest (TypeScript without a separate loader).
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const names = { '--cases': 'FUZZ_CASES', '--seed': 'FUZZ_SEED', '--target': 'FUZZ_TARGET', '--case': 'FUZZ_CASE', '--batch': 'FUZZ_BATCH' };
const env = { ...process.env };
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  const [flag, inline] = args[i].split('=', 2);
  const name = names[flag];
  if (!name) {
    process.stderr.write(`unknown option ${args[i]}; use --cases N, --seed S, --target NAME, --case I, --batch B\n`);
    process.exit(2);
  }
  env[name] = inline ?? args[++i];
}
const root = fileURLToPath(new URL('../..', import.meta.url));
const vitest = fileURLToPath(new URL('../../node_modules/vitest/vitest.mjs', import.meta.url));
const r = spawnSync(process.execPath, [vitest, 'run', '--config', 'test/fuzz/vitest.fuzz.config.ts', '--reporter', 'dot'], { cwd: root, env, stdio: 'inherit' });
process.exit(r.status ?? 1);
