/**
 * `--discovery kubernetes` end to end: two real daemons watching a local server that speaks the
 * Kubernetes API (test/fixtures/kube-api.ts). They find each other through the EndpointSlices of
 * their headless Service, and prepare a run's channels when its pods are scheduled — before any
 * function connects; then the functions stream through them, byte-exact.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { runDirectory } from '../../transports/index.js';
import { cli, runFunction } from '../helpers/daemon.js';
import { freePorts, logged, peer, startNodes, stopNodes, waitFor, waitForLink, type LinkedNode } from '../helpers/peers.js';
import { FakeKubeApi, daemonSlice, stepPod } from '../fixtures/kube-api.js';

const SECRET = 'k8s-discovery-test-secret-0123456789';
const MiB = 1024 * 1024;
/** how long a function that connects before its run is known is held (late binding) */
const BIND_TIMEOUT_MS = 8_000;

/** The functions of the run's steps p (at `producer`) and c (at `consumer`) stream `bytes`; c gets exactly what p sent. */
async function streamsByteExact(run: { run: string; token: string }, producer: LinkedNode, consumer: LinkedNode, bytes: number): Promise<void> {
  const c = runFunction(consumer.daemon.dir, run, 'c', ['sink']);
  const sent = await runFunction(producer.daemon.dir, run, 'p', ['source', String(bytes), '7']).done;
  const got = await c.done;
  expect(sent.result.error).toBeUndefined();
  expect(got.result).toEqual({ bytes, sha256: sent.result.sha256 });
}

describe('discovery from the Kubernetes API', () => {
  let api: FakeKubeApi;
  let credentials: string;
  let nodes: Map<string, LinkedNode>;
  let a: LinkedNode;
  let b: LinkedNode;
  /** what `sluice run token RUN` prints, as a workflow engine would call it */
  const tokenOf = (run: string): string => execFileSync(process.execPath, [cli, 'run', 'token', run], { env: { ...process.env, SLUICE_SECRET: SECRET } }).toString().trim();
  const runOn = async (n: LinkedNode, run: string) => (await control<Array<{ run: string }>>(n.daemon.dir, 'GET', '/v1/runs')).body.some((r) => r.run === run);

  beforeAll(async () => {
    api = await new FakeKubeApi().start();
    credentials = mkdtempSync(join(tmpdir(), 'sluice-sa-'));
    writeFileSync(join(credentials, 'token'), api.token);
    writeFileSync(join(credentials, 'namespace'), 'sluice-system\n');
    const [pa, pb] = await freePorts(2);
    process.env.SLUICE_SECRET = SECRET;
    try {
      const args = (port: number) => ['--listen', `127.0.0.1:${port}`, '--discovery', 'kubernetes', '--k8s-api', api.url, '--k8s-credentials', credentials, '--k8s-resync', '2s', '--bind-timeout', `${BIND_TIMEOUT_MS}ms`];
      nodes = await startNodes([
        { name: 'node-a', port: pa!, args: args(pa!) },
        { name: 'node-b', port: pb!, args: args(pb!) },
      ]);
    } finally {
      delete process.env.SLUICE_SECRET;
    }
    a = nodes.get('node-a')!;
    b = nodes.get('node-b')!;
  }, 60_000);

  afterAll(async () => {
    const died = nodes ? await stopNodes(nodes) : [];
    await api?.close();
    rmSync(credentials, { recursive: true, force: true });
    expect(died).toEqual([]);
  });

  it('links the daemons listed by the EndpointSlices of the headless Service, and only them', async () => {
    expect(await peer(a, 'node-b')).toBeUndefined();
    api.apply('EndpointSlice', daemonSlice({ namespace: 'sluice-system', name: 'sluice-x7k2p', service: 'sluice', port: a.port, endpoints: [{ node: 'node-a', ip: '127.0.0.1' }] }));
    // another Service's slice in the namespace is not about peers
    api.apply('EndpointSlice', daemonSlice({ namespace: 'sluice-system', name: 'other-q9z', service: 'other', port: 1, endpoints: [{ node: 'node-z', ip: '127.0.0.9' }] }));
    // node-b's endpoint in a second slice, as the controller splits large Services
    api.apply('EndpointSlice', daemonSlice({ namespace: 'sluice-system', name: 'sluice-m3v8d', service: 'sluice', port: b.port, endpoints: [{ node: 'node-b', ip: '127.0.0.1' }] }));
    await waitForLink(a, b);
    expect((await peer(a, 'node-b'))?.url).toBe(`ws://127.0.0.1:${b.port}`);
    expect(await peer(a, 'node-z')).toBeUndefined();
    const watches = api.requests.filter((r) => r.path === '/apis/discovery.k8s.io/v1/namespaces/sluice-system/endpointslices');
    expect(watches.map((r) => r.query['labelSelector'])).toContain('kubernetes.io/service-name=sluice');
  });

  it("prepares a run's channels when its pods are scheduled to the node, before the functions connect; then they stream byte-exact", async () => {
    await control(a.daemon.dir, 'POST', '/v1/workflows', { name: 'wc', steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
    // unscheduled pods are not this node's yet; the consumer's pod first: the run waits for the producer's
    api.apply('Pod', stepPod({ namespace: 'team-1', name: 'wc-r1-c', run: 'wc-r1', step: 'c', workflow: 'wc', node: 'node-a' }));
    api.apply('Pod', stepPod({ namespace: 'team-1', name: 'wc-r1-p', run: 'wc-r1', step: 'p', workflow: 'wc' }));
    await waitFor('the run to wait for its producer', async () => (logged(a, 'run waits for the pods').length > 0 ? true : undefined));
    expect(await runOn(a, 'wc-r1')).toBe(false);
    // the scheduler binds the producer's pod to node-a: its containers have not started
    api.apply('Pod', stepPod({ namespace: 'team-1', name: 'wc-r1-p', run: 'wc-r1', step: 'p', workflow: 'wc', node: 'node-a' }));
    await waitFor('the run prepared at node-a', async () => ((await runOn(a, 'wc-r1')) ? true : undefined), 10_000);

    const token = tokenOf('wc-r1');
    const dir = runDirectory(a.daemon.dir, 'wc-r1', token);
    expect(statSync(join(dir, 'p.0-c.0')).isFIFO()).toBe(true);
    const { body } = await control<{ channels: Array<{ name: string; state: string; path: string; relayedBytes: number }> }>(a.daemon.dir, 'GET', '/v1/runs/wc-r1');
    expect(body.channels).toEqual([expect.objectContaining({ name: 'p.0-c.0', path: 'fifo', state: 'prepared', relayedBytes: 0 })]);
    expect(await runOn(b, 'wc-r1')).toBe(false); // node-b has no part in it

    await streamsByteExact({ run: 'wc-r1', token }, a, a, 3 * MiB);

    // deleted, the run is not created again by its pods' next events
    await control(a.daemon.dir, 'DELETE', '/v1/runs/wc-r1');
    api.apply('Pod', { ...stepPod({ namespace: 'team-1', name: 'wc-r1-c', run: 'wc-r1', step: 'c', workflow: 'wc', node: 'node-a' }), status: { phase: 'Running' } });
    await sleep(800);
    expect(await runOn(a, 'wc-r1')).toBe(false);
  });

  it('places a run across nodes: the daemon whose pod is scheduled last creates it on both, and the stream crosses the link', async () => {
    api.apply('Pod', stepPod({ namespace: 'team-1', name: 'wc-r2-p', run: 'wc-r2', step: 'p', workflow: 'wc', node: 'node-a' }));
    await waitFor('node-a to wait for the consumer', async () => (logged(a, 'run waits for the pods', (l) => l.run === 'wc-r2').length > 0 ? true : undefined));
    api.apply('Pod', stepPod({ namespace: 'team-1', name: 'wc-r2-c', run: 'wc-r2', step: 'c', workflow: 'wc', node: 'node-b' }));
    await waitFor('the run at both nodes', async () => ((await runOn(a, 'wc-r2')) && (await runOn(b, 'wc-r2')) ? true : undefined), 10_000);
    expect(logged(b, 'run placed by its pods', (l) => l.run === 'wc-r2')).toHaveLength(1);
    const { body } = await control<{ channels: Array<{ name: string; state: string; path: string; peer?: string }> }>(b.daemon.dir, 'GET', '/v1/runs/wc-r2');
    expect(body.channels).toEqual([expect.objectContaining({ name: 'p.0-c.0', state: 'prepared', peer: 'node-a' })]);

    await streamsByteExact({ run: 'wc-r2', token: tokenOf('wc-r2') }, a, b, 2 * MiB);
  });

  it('binds functions that start before their pods are all scheduled (late binding): held, then bound once the run is placed and shared, byte-exact', async () => {
    const run = { run: 'wc-r3', token: tokenOf('wc-r3') };
    // the producer's pod is scheduled to node-a and its function starts at once: the run cannot be placed yet
    api.apply('Pod', stepPod({ namespace: 'team-1', name: 'wc-r3-p', run: 'wc-r3', step: 'p', workflow: 'wc', node: 'node-a' }));
    const bytes = 3 * MiB + 17;
    const producer = runFunction(a.daemon.dir, run, 'p', ['source', String(bytes), '11']).done;
    await waitFor('the producer held at node-a', async () => (logged(a, 'a function waits for its run', (l) => l.run === 'wc-r3' && l.verified === true).length > 0 ? true : undefined));
    expect(await runOn(a, 'wc-r3')).toBe(false);
    // a token other than the derived one is refused at once for a run whose pods are scheduled here
    const wrong = await runFunction(a.daemon.dir, { run: 'wc-r3', token: 'x'.repeat(32) }, 'p', ['source', '1']).done;
    expect(wrong.result.error).toMatchObject({ code: 'SLUICE_UNAUTHORIZED', message: expect.stringContaining('derived from the cluster secret') });
    // node-b's function starts before node-b has even seen its pod
    const consumer = runFunction(b.daemon.dir, run, 'c', ['sink']).done;
    await waitFor('the consumer held at node-b', async () => (logged(b, 'a function waits for its run', (l) => l.run === 'wc-r3').length > 0 ? true : undefined));
    // the scheduler binds the consumer's pod to node-b, whose daemon places the run and shares it with node-a
    api.apply('Pod', stepPod({ namespace: 'team-1', name: 'wc-r3-c', run: 'wc-r3', step: 'c', workflow: 'wc', node: 'node-b' }));
    const [sent, got] = await Promise.all([producer, consumer]);
    expect(sent.result.error).toBeUndefined();
    expect(got.result).toEqual({ bytes, sha256: sent.result.sha256 });
    expect(logged(b, 'run placed by its pods', (l) => l.run === 'wc-r3')).toHaveLength(1);
  });

  it('answers SLUICE_NOT_FOUND, saying it waited, to a function whose run never appears', async () => {
    const never = await runFunction(a.daemon.dir, { run: 'wc-never', token: tokenOf('wc-never') }, 'p', ['source', '1']).done;
    expect(never.code).toBe(1);
    expect(never.result.error).toMatchObject({ code: 'SLUICE_NOT_FOUND', message: expect.stringContaining(`waited ${BIND_TIMEOUT_MS} ms`) });
  });

  it('drops a peer whose endpoint is gone from the slices', async () => {
    api.delete('EndpointSlice', 'sluice-system', 'sluice-m3v8d');
    await waitFor('node-b gone from node-a\'s discovered peers', async () => (logged(a, 'peer gone from discovery').length > 0 ? true : undefined));
    expect((await peer(a, 'node-b'))?.url ?? null).toBeNull();
  });
});
