/**
 * The KNIX-style benchmark row at its largest size: 40 MiB CloudEvent documents through a 5-step
 * chain, every step its own process, over a Sluice daemon's FIFOs (`fifo`) and over Sluice's
 * framed Unix sockets (`unix`). In `npm run bench -- --quick` these rows never finished: not a
 * stall of the channels, but each step warming its JSON framing on 50 documents of the measured
 * size before the clock started (~0.75 s of CPU each at 40 MiB, six processes on two cores:
 * minutes in which no event moved, until the case's time limit). The steps now warm up on
 * events of at most WARM_EVENT_BYTES, and report the size they used.
 *
 * Runs the built benchmark (dist/bench), whose step processes the orchestrator forks.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type * as Data from '../../bench/data.js';
import type * as Stores from '../../bench/stores.js';
import type * as Workflows from '../../bench/workflows.js';

const dist = (file: string): string => new URL(`../../dist/bench/${file}`, import.meta.url).href;
const EVENT_BYTES = 40 * 1024 * 1024;
const HOPS = 5;

let wf: typeof Workflows;
let warmLimit: number;
let daemon: Stores.StoreDaemon;
let env: Workflows.WfEnv;
let dir: string;

beforeAll(async () => {
  wf = (await import(dist('workflows.js'))) as typeof Workflows;
  warmLimit = ((await import(dist('data.js'))) as typeof Data).WARM_EVENT_BYTES;
  const { StoreDaemon } = (await import(dist('stores.js'))) as typeof Stores;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-knix-'));
  daemon = await StoreDaemon.start('file', dir, 'knix');
  await wf.registerWorkflows(daemon, ['chain5']);
  let seq = 0;
  env = { tmpDir: dir, daemon, pathFor: (what) => path.join(dir, `${what}-${++seq}`) };
});

afterAll(async () => {
  await daemon?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('the KNIX-style run at 40 MiB', () => {
  for (const p of ['fifo', 'unix'] as const) {
    it(`moves a 40 MiB CloudEvent through 5 steps on ${p}, every step parsing and verifying it`, { timeout: 600_000 }, async () => {
      const m = await wf.messagesCase(env, p, HOPS, 'events', EVENT_BYTES, 0, 1);
      expect(m.error).toBeUndefined();
      expect(m.verified).toBe(true);
      // one delay per hop, each from a document that parsed and carried the right payload
      expect(m.delaysNs).toHaveLength(HOPS);
      for (const d of m.delaysNs) expect(d).toBeGreaterThan(0);
      // the warm-up's work does not grow with the event size
      expect(m.warmEventBytes).toBeGreaterThan(0);
      expect(m.warmEventBytes).toBeLessThanOrEqual(warmLimit);
    });
  }
});
