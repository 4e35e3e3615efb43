/**
 * Abandoned runs expire from the store: the sweep removes the objects of every run whose
 * `expires.json` has passed, and nothing else — not live runs, not folders that are not runs.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Fallback } from '../../server/paths/store.js';
import { createMetrics } from '../../server/metrics.js';
import { DirectoryStore } from '../../transports/index.js';

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

describe('the expiry sweep', () => {
  it("removes expired runs' objects, keeps live runs and folders without an expiry marker", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sluice-expiry-'));
    dirs.push(dir);
    const store = new DirectoryStore(dir);
    const put = (key: string, body: string): Promise<void> => store.put(key, Buffer.from(body));
    await put('old-run/expires.json', JSON.stringify({ expiresAt: Date.now() - 1_000 }));
    await put('old-run/p.0-c.0/seg-000000', 'x');
    await put('old-run/p.0-c.0/manifest.json', '{}');
    await put('live-run/expires.json', JSON.stringify({ expiresAt: Date.now() + 3_600_000 }));
    await put('live-run/p.0-c.0/seg-000000', 'y');
    await put('damaged-run/expires.json', 'not json');
    await put('damaged-run/p.0-c.0/seg-000000', 'z');
    await put('not-a-run/thing', 'w');
    const fallback = new Fallback({ store, segmentBytes: 1 << 20, log: pino({ level: 'silent' }), metrics: createMetrics({ runs: { list: () => [], created: 0, removed: { deleted: 0, expired: 0 } } }) });
    expect(await fallback.sweepExpired()).toBe(5);
    expect((await store.list('')).map((o) => o.key)).toEqual(['live-run/expires.json', 'live-run/p.0-c.0/seg-000000', 'not-a-run/thing']);
  });
});
