/**
 * The Kubernetes list + watch client (server/k8s.ts) against a local server speaking the API's
 * protocol (test/fixtures/kube-api.ts): events reach the cache, bookmarks move the
 * resourceVersion, 410 Gone (HTTP or ERROR event) makes it list again, a dropped connection is
 * resumed from the last resourceVersion, the token file is read again at every connection.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Informer, KubeClient, type KubeObject, type WatchEventType } from '../../server/k8s.js';
import { peersOf, runTokenFor } from '../../server/k8s-discovery.js';
import { FakeKubeApi, daemonSlice, stepPod } from '../fixtures/kube-api.js';

const log = pino({ level: 'silent' });

async function until(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('the Kubernetes watch client', () => {
  let api: FakeKubeApi;
  let credentials: string;
  let informer: Informer<KubeObject & { spec?: { nodeName?: string } }> | undefined;
  let events: Array<[WatchEventType, string]>;

  beforeEach(async () => {
    api = await new FakeKubeApi().start();
    credentials = mkdtempSync(join(tmpdir(), 'sluice-k8s-'));
    writeFileSync(join(credentials, 'token'), `${api.token}\n`);
    events = [];
  });
  afterEach(async () => {
    informer?.stop();
    informer = undefined;
    await api.close();
    rmSync(credentials, { recursive: true, force: true });
  });

  function watchPods(resyncMs = 60_000): Informer<KubeObject & { spec?: { nodeName?: string } }> {
    informer = new Informer({
      client: new KubeClient({ api: api.url, credentials }),
      path: '/api/v1/pods',
      query: { fieldSelector: 'spec.nodeName=node-a', labelSelector: 'sluice.dev/run' },
      resyncMs,
      log,
      onEvent: (type, pod) => events.push([type, pod.metadata!.name!]),
    });
    informer.start();
    return informer;
  }
  const pod = (name: string, node = 'node-a') => stepPod({ namespace: 'wf', name, run: 'r1', step: 'p', workflow: 'w', node });
  const watches = () => api.requests.filter((r) => r.query['watch'] === '1');
  const lists = () => api.requests.filter((r) => r.query['watch'] === undefined);

  it('lists, then watches from the list resourceVersion with bookmarks asked for; events reach the cache', async () => {
    api.apply('Pod', pod('a'));
    api.apply('Pod', pod('elsewhere', 'node-b'));
    const inf = watchPods();
    await until('the watch', () => api.openWatches === 1);
    expect(events).toEqual([['ADDED', 'a']]);
    expect(lists()[0]!.query).toMatchObject({ fieldSelector: 'spec.nodeName=node-a', labelSelector: 'sluice.dev/run' });
    expect(watches()[0]!.query).toMatchObject({ watch: '1', allowWatchBookmarks: 'true', resourceVersion: '102' });
    api.apply('Pod', pod('b'));
    api.apply('Pod', { ...pod('a'), status: { phase: 'Running' } });
    api.delete('Pod', 'wf', 'b');
    await until('three events', () => events.length === 4);
    expect(events.slice(1)).toEqual([
      ['ADDED', 'b'],
      ['MODIFIED', 'a'],
      ['DELETED', 'b'],
    ]);
    expect([...inf.cache.keys()]).toEqual(['wf/a']);
    expect((inf.cache.get('wf/a') as { status?: { phase?: string } }).status?.phase).toBe('Running');
  });

  it('resumes a dropped watch from the last resourceVersion, a bookmark included, without listing again', async () => {
    api.apply('Pod', pod('a'));
    const inf = watchPods();
    await until('the watch', () => api.openWatches === 1);
    api.apply('Pod', pod('elsewhere', 'node-b')); // not this node's: no event, but the version moves
    api.bookmark();
    await sleep(100);
    const bookmarked = api.resourceVersion;
    api.dropWatches();
    api.apply('Pod', pod('c')); // while the watch is down
    await until('the second watch', () => watches().length === 2 && api.openWatches === 1);
    expect(watches()[1]!.query['resourceVersion']).toBe(bookmarked);
    await until('the event missed while down', () => events.some(([, name]) => name === 'c'));
    expect(lists()).toHaveLength(1);
    expect(inf.lists).toBe(1);
    expect([...inf.cache.keys()].sort()).toEqual(['wf/a', 'wf/c']);
  });

  it('lists again on an ERROR event with code 410, telling what changed meanwhile', async () => {
    api.apply('Pod', pod('a'));
    api.apply('Pod', pod('b'));
    const inf = watchPods();
    await until('the watch', () => api.openWatches === 1);
    api.dropWatches();
    // while it is away, b goes and d comes, and the history is compacted
    api.delete('Pod', 'wf', 'b');
    api.apply('Pod', pod('d'));
    await until('the watch again', () => api.openWatches === 1);
    api.expireWatches();
    await until('a second list', () => inf.lists === 2 && api.openWatches === 1);
    expect(events).toContainEqual(['DELETED', 'b']);
    expect(events).toContainEqual(['ADDED', 'd']);
    expect([...inf.cache.keys()].sort()).toEqual(['wf/a', 'wf/d']);
  });

  it('lists again when resuming gets HTTP 410 Gone', async () => {
    api.apply('Pod', pod('a'));
    const inf = watchPods();
    await until('the watch', () => api.openWatches === 1);
    api.dropWatches();
    api.delete('Pod', 'wf', 'a');
    api.compact(); // the resume's resourceVersion is now too old
    await until('a second list', () => inf.lists === 2);
    expect(api.requests.some((r) => r.query['watch'] === '1' && Number(r.query['resourceVersion']) < Number(api.resourceVersion))).toBe(true);
    await until('the deletion', () => events.some((e) => e[0] === 'DELETED' && e[1] === 'a'));
    expect(inf.cache.size).toBe(0);
  });

  it('reads the token file again at every connection (bound tokens rotate)', async () => {
    watchPods();
    await until('the watch', () => api.openWatches === 1);
    api.token = 'token-2';
    writeFileSync(join(credentials, 'token'), 'token-2\n');
    api.dropWatches();
    await until('a watch with the new token', () => api.openWatches === 1);
    expect(api.requests.map((r) => r.token)).toEqual(expect.arrayContaining(['token-1', 'token-2']));
    expect(api.requests.at(-1)!.token).toBe('token-2');
  });

  it('keeps trying, with back-off, while the token is refused', async () => {
    api.token = 'other';
    const inf = watchPods();
    await sleep(700);
    const tries = api.requests.length;
    expect(tries).toBeGreaterThanOrEqual(2);
    expect(tries).toBeLessThan(8);
    api.token = 'token-1';
    api.apply('Pod', pod('a'));
    await until('the list', () => inf.cache.size === 1, 15_000);
  });

  it('stopped while its first list is in flight, it leaves no request open and starts no watch (a stopping daemon would not exit)', async () => {
    api.apply('Pod', pod('early'));
    const w = watchPods();
    w.stop();
    await sleep(300);
    expect(api.openWatches).toBe(0);
    expect(watches()).toHaveLength(0);
  });

  it('stopped while it watches, it closes the watch', async () => {
    const w = watchPods();
    await until('the watch', () => api.openWatches === 1);
    w.stop();
    await until('the watch closed', () => api.openWatches === 0);
    await sleep(100);
    expect(watches()).toHaveLength(1);
  });

  it('resyncs: lists again every resyncMs and replays the cache as MODIFIED', async () => {
    api.apply('Pod', pod('a'));
    const inf = watchPods(1_000);
    await until('two lists', () => inf.lists >= 2, 5_000);
    expect(events).toContainEqual(['MODIFIED', 'a']);
  });
});

describe('peers from EndpointSlices', () => {
  it('maps each endpoint to its node, at the port named "peer", skipping terminating ones and ones without a node', () => {
    const a = daemonSlice({ namespace: 'sluice', name: 'sluice-abc', service: 'sluice', port: 7700, endpoints: [{ node: 'n1', ip: '10.0.0.1' }, { node: 'n2', ip: '10.0.0.2', terminating: true }] });
    const b = daemonSlice({ namespace: 'sluice', name: 'sluice-def', service: 'sluice', port: 7700, endpoints: [{ node: 'n3', ip: '10.0.0.3' }] });
    (b['ports'] as unknown[]).unshift({ name: 'metrics', port: 9100, protocol: 'TCP' });
    delete ((b['endpoints'] as Array<Record<string, unknown>>)[0]!)['nodeName'];
    (b['endpoints'] as unknown[]).push({ addresses: ['fd00::4'], conditions: { ready: true }, nodeName: 'n4' });
    expect(peersOf([a, b] as never[], 'ws')).toEqual({ n1: 'ws://10.0.0.1:7700', n4: 'ws://[fd00::4]:7700' });
    expect(peersOf([a] as never[], 'wss')).toEqual({ n1: 'wss://10.0.0.1:7700' });
  });
});

describe('run tokens derived from the cluster secret', () => {
  it('are stable, 32 base64url characters, differ by run and by secret', () => {
    const t = runTokenFor('s'.repeat(32), 'r1');
    expect(t).toMatch(/^[A-Za-z0-9_][A-Za-z0-9_-]{31}$/);
    expect(runTokenFor('s'.repeat(32), 'r1')).toBe(t);
    expect(runTokenFor('s'.repeat(32), 'r2')).not.toBe(t);
    expect(runTokenFor('t'.repeat(32), 'r1')).not.toBe(t);
  });
});
