/**
 * Several nodes, for real: each node a network namespace with its own `sluice daemon`, the
 * daemons linked over veth through a bridge (peer links carry only what crosses nodes), and every
 * step a process of its own. Runs are created at one daemon and shared with the others.
 *
 * Functions reach their node's daemon through its directory (FIFOs and Unix sockets), which the
 * namespaces share with this process; what crosses nodes goes over the veth links only.
 */
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { connect } from '../../client/index.js';
import { runFunction, startDaemonProcess, type DaemonProcess, ok } from '../helpers/daemon.js';
import { createCluster, namespacesAvailable, type Cluster } from '../../harness/netns.js';

const availability = await namespacesAvailable();
const skipReason = availability.ok ? '' : ` (skipped: ${availability.why})`;
const MiB = 1024 * 1024;
const PORT = 7700;
const SECRET = 'cross-node-test-secret-0123456789abcdef';

interface Node {
  name: string;
  daemon: DaemonProcess;
}

let cluster: Cluster;
let nodes: Node[] = [];
let serial = 0;

beforeAll(async () => {
  if (!availability.ok) return;
  cluster = await createCluster(3, { subnet: 41 });
  const secretFile = join(tmpdir(), `sluice-secret-${process.pid}`);
  writeFileSync(secretFile, SECRET, { mode: 0o600 });
  const peers = cluster.nodes.map((n) => `n${n.index}=ws://${n.address}:${PORT}`).join(',');
  nodes = await Promise.all(
    cluster.nodes.map(async (n) => ({
      name: `n${n.index}`,
      daemon: await startDaemonProcess(
        ['--listen', `${n.address}:${PORT}`, '--peers', peers, '--secret-file', secretFile, '--peer-heartbeat', '200ms', '--attach-timeout', '10s', '--peer-window', '256KiB'],
        { node: `n${n.index}`, spawn: (cmd, args, opts) => n.spawn(cmd, args, opts) },
      ),
    })),
  );
  for (const n of nodes) await linksUp(n, nodes.length - 1);
}, 60_000);

afterAll(async () => {
  const died = nodes.filter((n) => n.daemon.child.exitCode !== null || n.daemon.child.signalCode !== null);
  const logs = died.map((n) => `${n.name} died (${n.daemon.child.exitCode ?? n.daemon.child.signalCode}):\n${n.daemon.logs().split('\n').slice(-30).join('\n')}`);
  await Promise.all(nodes.map((n) => n.daemon.stop()));
  await cluster?.destroy();
  // a daemon must never crash, whatever the tests did to it
  expect(logs).toEqual([]);
});

interface PeerStatus {
  node: string;
  state: string;
  channels: number;
  bytesSent: number;
  reconnects: number;
}

async function peersOf(n: Node): Promise<PeerStatus[]> {
  return (await control<{ peers: PeerStatus[] }>(n.daemon.dir, 'GET', '/v1/status')).body.peers;
}

async function linksUp(n: Node, count: number, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const peers = await peersOf(n);
    const up = peers.filter((p) => p.state === 'up').length;
    if (up >= count) return;
    if (Date.now() > deadline) throw new Error(`${n.name} has ${up} of ${count} peer links up: ${JSON.stringify(peers)}\n${n.daemon.logs()}`);
    await sleep(50);
  }
}

async function workflow(at: Node, steps: Record<string, { replicas?: number }>, edges: Array<{ from: string; to: string }>): Promise<string> {
  const name = `xwf-${++serial}`;
  await control(at.daemon.dir, 'POST', '/v1/workflows', { name, steps, edges });
  return name;
}

async function createRun(at: Node, name: string, placement: Record<string, string | string[]>): Promise<{ run: string; token: string }> {
  return (await control<{ run: string; token: string }>(at.daemon.dir, 'POST', '/v1/runs', { workflow: name, placement })).body;
}

/** Wait until the run's first channel at `n` has passed more than `bytes`: the stream is mid-way. */
async function relayed(n: Node, run: string, bytes: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const ch = (await control<{ channels: Array<{ relayedBytes: number }> }>(n.daemon.dir, 'GET', `/v1/runs/${run}`)).body.channels[0]!;
    if (ch.relayedBytes > bytes) return;
    if (Date.now() > deadline) throw new Error(`the stream of run ${run} never passed ${bytes} bytes`);
    await sleep(20);
  }
}

const node = (name: string): Node => nodes.find((n) => n.name === name)!;

describe.skipIf(!availability.ok)(`across nodes in network namespaces${skipReason}`, () => {
  it('links every pair of daemons and shows the links in status and metrics', async () => {
    for (const n of nodes) {
      const peers = await peersOf(n);
      expect(peers.map((p) => p.node).sort()).toEqual(nodes.filter((m) => m !== n).map((m) => m.name));
      expect(peers.every((p) => p.state === 'up')).toBe(true);
    }
    const metrics = (await control<string>(nodes[0]!.daemon.dir, 'GET', '/metrics')).body;
    expect(metrics).toMatch(/sluice_peer_link_up\{peer="n1"\} 1/);
    expect(metrics).toMatch(/sluice_peer_bytes_sent_total\{peer="n2"\}/);
    expect(metrics).toMatch(/sluice_peer_reconnects_total\{peer="n1"\} 0/);
  });

  it('carries a 5-step chain alternating between 2 nodes, 256 MiB, with equal sha256', async () => {
    const name = await workflow(node('n0'), { s0: {}, s1: {}, s2: {}, s3: {}, s4: {} }, [
      { from: 's0', to: 's1' },
      { from: 's1', to: 's2' },
      { from: 's2', to: 's3' },
      { from: 's3', to: 's4' },
    ]);
    // created at n1, which hosts half the steps: runs can be created at any daemon
    const run = await createRun(node('n1'), name, { s0: 'n0', s1: 'n1', s2: 'n0', s3: 'n1', s4: 'n0' });
    const dirOf = (step: string): string => node(['s0', 's2', 's4'].includes(step) ? 'n0' : 'n1').daemon.dir;
    const sink = runFunction(dirOf('s4'), run, 's4', ['sink']);
    const passes = ['s1', 's2', 's3'].map((s) => runFunction(dirOf(s), run, s, ['pass']));
    const source = runFunction(dirOf('s0'), run, 's0', ['source', String(256 * MiB), '7']);
    const sent = ok(await source.done);
    for (const p of passes) expect(ok(await p.done).bytes).toBe(256 * MiB);
    const received = ok(await sink.done);
    expect(received.bytes).toBe(256 * MiB);
    expect(received.sha256).toBe(sent.sha256);
    const shown = (await control<{ channels: Array<{ name: string; path: string; state: string; relayedBytes: number }> }>(node('n0').daemon.dir, 'GET', `/v1/runs/${run.run}`)).body;
    const out = shown.channels.find((c) => c.name === 's0.0-s1.0')!;
    expect(out).toMatchObject({ path: 'remote', state: 'done' });
    expect(out.relayedBytes).toBeGreaterThan(256 * MiB);
  }, 180_000);

  it('broadcasts 1→3 across 3 nodes (one consumer local, two remote), every copy verified', async () => {
    const name = await workflow(node('n0'), { src: {}, a: {}, b: {}, c: {} }, [
      { from: 'src', to: 'a' },
      { from: 'src', to: 'b' },
      { from: 'src', to: 'c' },
    ]);
    const run = await createRun(node('n2'), name, { src: 'n0', a: 'n0', b: 'n1', c: 'n2' });
    const sinks = [
      runFunction(node('n0').daemon.dir, run, 'a', ['sink']),
      runFunction(node('n1').daemon.dir, run, 'b', ['sink']),
      runFunction(node('n2').daemon.dir, run, 'c', ['sink']),
    ];
    const sent = ok(await runFunction(node('n0').daemon.dir, run, 'src', ['source', String(48 * MiB), '3']).done);
    for (const s of sinks) expect(ok(await s.done)).toEqual({ bytes: 48 * MiB, sha256: sent.sha256 });
  }, 120_000);

  it('opens a cross-node channel at run creation, before any function starts', async () => {
    const name = await workflow(node('n0'), { p: {}, c: {} }, [{ from: 'p', to: 'c' }]);
    const before = (await peersOf(node('n0'))).find((p) => p.node === 'n1')!.channels;
    const run = await createRun(node('n0'), name, { p: 'n0', c: 'n1' });
    const after = (await peersOf(node('n0'))).find((p) => p.node === 'n1')!.channels;
    expect(after).toBe(before + 1);
    // and the consumer's node holds the run too, with the consumer's channel delivered over a Unix socket
    const there = (await control<{ channels: Array<{ name: string; path: string; state: string }> }>(node('n1').daemon.dir, 'GET', `/v1/runs/${run.run}`)).body;
    expect(there.channels).toEqual([expect.objectContaining({ name: 'p.0-c.0', path: 'unix', state: 'prepared' })]);
    await control(node('n0').daemon.dir, 'DELETE', `/v1/runs/${run.run}`);
    await expect(control(node('n1').daemon.dir, 'GET', `/v1/runs/${run.run}`)).rejects.toMatchObject({ code: 'SLUICE_NOT_FOUND' });
    expect((await peersOf(node('n0'))).find((p) => p.node === 'n1')!.channels).toBe(before);
  });

  it('refuses a placement on a node that is not a peer, and leaves nothing behind', async () => {
    const name = await workflow(node('n0'), { p: {}, c: {} }, [{ from: 'p', to: 'c' }]);
    const before = (await control<unknown[]>(node('n0').daemon.dir, 'GET', '/v1/runs')).body.length;
    await expect(createRun(node('n0'), name, { p: 'n0', c: 'n9' })).rejects.toMatchObject({ code: 'SLUICE_INVALID', message: expect.stringMatching(/"n9".*not a peer/) });
    expect((await control<unknown[]>(node('n0').daemon.dir, 'GET', '/v1/runs')).body.length).toBe(before);
  });

  it('keeps 99 channels flowing over one link while the 100th consumer stalls, each verified', async () => {
    const name = await workflow(node('n0'), { p: {}, c: {} }, [{ from: 'p', to: 'c' }]);
    const runs = [];
    for (let i = 0; i < 100; i++) runs.push(await createRun(node('n0'), name, { p: 'n0', c: 'n1' }));
    const perChannel = 4 * MiB;
    const payload = (i: number): Buffer => {
      const b = Buffer.alloc(perChannel);
      for (let k = 0; k < perChannel; k += 4) b.writeUInt32LE((k * 2654435761 + i) >>> 0, k);
      return b;
    };
    const digest = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
    const stalled = 0;
    const inputs = await Promise.all(runs.map(async (r) => (await connect({ dir: node('n1').daemon.dir, run: r.run, step: 'c', token: r.token, instance: 0 })).input('p')));
    inputs[stalled]!.pause(); // its consumer reads nothing for now
    const received = inputs.map(async (input, i) => {
      if (i === stalled) return '';
      const hash = createHash('sha256');
      for await (const chunk of input as AsyncIterable<Buffer>) hash.update(chunk);
      return hash.digest('hex');
    });
    const outputs = await Promise.all(runs.map(async (r) => (await connect({ dir: node('n0').daemon.dir, run: r.run, step: 'p', token: r.token, instance: 0 })).output('c')));
    const sent = outputs.map((out, i) => pipeline(Readable.from([payload(i)]), out));
    // the other 99 complete, verified, while one consumer holds its channel
    const others = await Promise.all(received.filter((_, i) => i !== stalled));
    others.forEach((d, k) => expect(d).toBe(digest(payload(k + 1))));
    await Promise.all(sent.filter((_, i) => i !== stalled));
    // the stalled channel holds at most its window in the daemons, and has not finished
    const state = (await control<{ channels: Array<{ relayedBytes: number; state: string }> }>(node('n0').daemon.dir, 'GET', `/v1/runs/${runs[stalled]!.run}`)).body.channels[0]!;
    expect(state.state).toBe('relaying');
    expect(state.relayedBytes).toBeLessThan(3 * MiB);
    // then it reads, and completes too
    const hash = createHash('sha256');
    for await (const chunk of inputs[stalled]! as AsyncIterable<Buffer>) hash.update(chunk);
    expect(hash.digest('hex')).toBe(digest(payload(stalled)));
    await sent[stalled];
    await Promise.all(runs.map((r) => control(node('n0').daemon.dir, 'DELETE', `/v1/runs/${r.run}`)));
  }, 120_000);
});

describe.skipIf(!availability.ok)(`faults across nodes${skipReason}`, () => {
  it('fails both ends with typed errors when the link goes down mid-stream, never a clean end', async () => {
    const name = await workflow(node('n0'), { p: {}, c: {} }, [{ from: 'p', to: 'c' }]);
    const run = await createRun(node('n0'), name, { p: 'n0', c: 'n2' });
    await cluster.nodes[2]!.shape(200); // slow enough to cut it mid-stream
    try {
      const sink = runFunction(node('n2').daemon.dir, run, 'c', ['sink']);
      const source = runFunction(node('n0').daemon.dir, run, 'p', ['source', String(512 * MiB), '5']);
      await relayed(node('n0'), run.run, 4 * MiB);
      await cluster.nodes[2]!.linkDown();
      const [produced, consumed] = await Promise.all([source.done, sink.done]);
      expect(produced.code).toBe(1);
      expect(produced.result.error?.code).toBe('SLUICE_UNAVAILABLE');
      expect(produced.result.error?.message).toMatch(/peer link to node "n2"/);
      expect(consumed.code).toBe(1);
      expect(consumed.result.error?.code).toBe('SLUICE_TRUNCATED');
    } finally {
      await cluster.nodes[2]!.linkUp();
      await cluster.nodes[2]!.unshape();
    }
    // the link comes back by itself, and new runs work over it
    await linksUp(node('n0'), 2);
    await linksUp(node('n2'), 2);
    expect((await peersOf(node('n0'))).find((p) => p.node === 'n2')!.reconnects).toBeGreaterThanOrEqual(1);
    const again = await createRun(node('n0'), name, { p: 'n0', c: 'n2' });
    const sink = runFunction(node('n2').daemon.dir, again, 'c', ['sink']);
    const sent = ok(await runFunction(node('n0').daemon.dir, again, 'p', ['source', String(8 * MiB), '6']).done);
    expect(ok(await sink.done).sha256).toBe(sent.sha256);
  }, 120_000);

  it('truncates the consumer when the producer is killed mid-stream on another node', async () => {
    const name = await workflow(node('n0'), { p: {}, c: {} }, [{ from: 'p', to: 'c' }]);
    const run = await createRun(node('n0'), name, { p: 'n0', c: 'n1' });
    const sink = runFunction(node('n1').daemon.dir, run, 'c', ['sink']);
    const source = runFunction(node('n0').daemon.dir, run, 'p', ['source', String(4096 * MiB), '8']);
    await relayed(node('n0'), run.run, 8 * MiB);
    source.child.kill('SIGKILL');
    const consumed = await sink.done;
    expect(consumed.code).toBe(1);
    expect(consumed.result.error?.code).toBe('SLUICE_TRUNCATED');
  }, 60_000);

  it('links again after a peer daemon restarts, and new runs work', async () => {
    const n1 = node('n1');
    await n1.daemon.restart();
    await linksUp(n1, 2);
    await linksUp(node('n0'), 2);
    const name = await workflow(node('n0'), { p: {}, c: {} }, [{ from: 'p', to: 'c' }]);
    const run = await createRun(node('n0'), name, { p: 'n0', c: 'n1' });
    const sink = runFunction(n1.daemon.dir, run, 'c', ['sink']);
    const sent = ok(await runFunction(node('n0').daemon.dir, run, 'p', ['source', String(16 * MiB), '9']).done);
    expect(ok(await sink.done).sha256).toBe(sent.sha256);
  }, 60_000);
});
