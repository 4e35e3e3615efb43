/**
 * The benchmark's cross-node workflow path (`ws`): each step a process in one of two network
 * namespaces, a Sluice daemon on each, every edge across the daemons' peer link. A chain
 * alternates its steps between the nodes; a shuffle puts its mappers on n0 and reducers on n1.
 * Every byte is verified at every step, and the run's channels must all have gone through the
 * daemons' relay (a channel between two steps on one node would not).
 *
 * Runs the built benchmark (dist/bench), whose step processes the orchestrator starts inside the
 * namespaces.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type * as Workflows from '../../bench/workflows.js';
import { namespacesAvailable } from '../../harness/netns.js';

const availability = await namespacesAvailable();
const skipReason = availability.ok ? '' : ` (skipped: ${availability.why})`;
const dist = (file: string): string => new URL(`../../dist/bench/${file}`, import.meta.url).href;
const MiB = 1024 * 1024;

let wf: typeof Workflows;
let nodes: Workflows.WfNodes | undefined;
let env: Workflows.WfEnv;
let dir: string;

beforeAll(async () => {
  if (!availability.ok) return;
  wf = (await import(dist('workflows.js'))) as typeof Workflows;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-ws-'));
  nodes = await wf.startCrossNode(path.join(dir, 'nodes'), ['chain5', 'shuffle4'], 47);
  let seq = 0;
  env = { tmpDir: dir, nodes, pathFor: (what) => path.join(dir, `${what}-${++seq}`) };
}, 60_000);

afterAll(async () => {
  await nodes?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!availability.ok)(`the benchmark's cross-node workflow path${skipReason}`, () => {
  it('streams 3 MiB + 17 bytes through a 5-hop chain whose steps alternate between two nodes, byte-exact, every channel over the peer link', { timeout: 120_000 }, async () => {
    const bytes = 3 * MiB + 17;
    const sample = await wf.throughputCase(env, wf.shapeOf('chain5'), 'ws', bytes, true);
    expect(sample.error).toBeUndefined();
    expect(sample.verified).toBe(true);
    expect(sample.delivered).toBe(bytes);
    expect(sample.channels).toBe(5);
    expect(sample.relayed).toBe(5);
    expect(sample.ttfb_ms).toBeGreaterThan(0);
    expect(sample.e2e_ms).toBeGreaterThanOrEqual(sample.ttfb_ms);
    // nothing went to a disk on the way
    expect(sample.disk_bytes).toBe(0);
  });

  it('shuffles 4 MiB from four mappers on n0 to four reducers on n1: 16 channels, each verified', { timeout: 120_000 }, async () => {
    const sample = await wf.throughputCase(env, wf.shapeOf('shuffle4'), 'ws', 4 * MiB, true);
    expect(sample.error).toBeUndefined();
    expect(sample.verified).toBe(true);
    expect(sample.delivered).toBe(4 * MiB);
    expect(sample.channels).toBe(16);
    expect(sample.relayed).toBe(16);
  });

  it('measures 1 KiB records hop by hop across the nodes', { timeout: 120_000 }, async () => {
    const m = await wf.messagesCase(env, 'ws', 5, 'latency', 1024, 20, 50);
    expect(m.error).toBeUndefined();
    expect(m.verified).toBe(true);
    expect(m.delaysNs).toHaveLength(5 * 50);
  });
});
