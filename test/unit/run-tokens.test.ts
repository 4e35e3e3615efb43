/** Run tokens are safe on a command line: `sluice recv --token T` must never read T as an option. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, expect, it } from 'vitest';
import { RunRegistry } from '../../server/runs.js';
import { validateWorkflow } from '../../server/workflow.js';

const dir = mkdtempSync(join(tmpdir(), 'sluice-tokens-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

it('never starts a run token with "-" (1 in 64 random base64url strings would)', async () => {
  const runs = new RunRegistry({ dir, node: 'n', runTtlSeconds: 60, maxRuns: 1000, log: pino({ level: 'silent' }) });
  await runs.start();
  const workflow = validateWorkflow({ name: 'lone', steps: { a: {} }, edges: [] });
  const tokens: string[] = [];
  for (let i = 0; i < 400; i++) tokens.push((await runs.create({ workflow })).token);
  await runs.stop();
  expect(tokens.filter((t) => t.startsWith('-'))).toEqual([]);
  expect(tokens.every((t) => /^[A-Za-z0-9_][A-Za-z0-9_-]{31}$/.test(t))).toBe(true);
});
