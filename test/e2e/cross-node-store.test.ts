/**
 * The object-store path across nodes, in network namespaces: `via: s3` between two nodes that
 * share a store, a consumer's node unreachable when its channel opens (the stream goes to the
 * store and reaches the consumer once the link is back), and nodes with different stores refused
 * for a channel that needs one store.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { runFunction, startDaemonProcess, type DaemonProcess, type FnResult } from '../helpers/daemon.js';
import { createCluster, namespacesAvailable, type Cluster } from '../helpers/netns.js';

const availability = await namespacesAvailable();
const skipReason = availability.ok ? '' : ` (skipped: ${availability.why})`;
const MiB = 1024 * 1024;
const PORT = 7700;

let cluster: Cluster;
let daemons: DaemonProcess[] = [];
let shared: string;
let serial = 0;

beforeAll(async () => {
  if (!availability.ok) return;
  cluster = await createCluster(3, { subnet: 43 });
  shared = mkdtempSync(join(tmpdir(), 'sluice-shared-store-'));
  const secretFile = join(shared, 'secret');
  writeFileSync(secretFile, 'cross-node-store-secret-0123456789', { mode: 0o600 });
  const peers = cluster.nodes.map((n) => `n${n.index}=ws://${n.address}:${PORT}`).join(',');
  daemons = await Promise.all(
    cluster.nodes.map((n) =>
      startDaemonProcess(
        [
          ...['--listen', `${n.address}:${PORT}`, '--peers', peers, '--secret-file', secretFile, '--peer-heartbeat', '200ms', '--segment-size', '256KiB'],
          // n0 and n1 share one store (a directory all namespaces see); n2 keeps its own
          ...(n.index < 2 ? ['--store', `file://${join(shared, 'store')}`] : []),
        ],
        { node: `n${n.index}`, spawn: (cmd, args, opts) => n.spawn(cmd, args, opts) },
      ),
    ),
  );
  for (const d of daemons) await linksUp(d, 2);
}, 60_000);

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  await cluster?.destroy();
  if (shared) rmSync(shared, { recursive: true, force: true });
});

async function peerState(d: DaemonProcess, peer: string): Promise<string | undefined> {
  const { body } = await control<{ peers: Array<{ node: string; state: string }> }>(d.dir, 'GET', '/v1/status');
  return body.peers.find((p) => p.node === peer)?.state;
}

async function linksUp(d: DaemonProcess, count: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const { body } = await control<{ peers: Array<{ state: string }> }>(d.dir, 'GET', '/v1/status');
    if (body.peers.filter((p) => p.state === 'up').length >= count) return;
    if (Date.now() > deadline) throw new Error(`links not up: ${JSON.stringify(body.peers)}`);
    await sleep(50);
  }
}

async function runOf(edge: Record<string, unknown>, placement: Record<string, string>, at = daemons[0]!): Promise<{ run: string; token: string }> {
  const name = `xs-${++serial}`;
  await control(at.dir, 'POST', '/v1/workflows', { name, steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c', ...edge }] });
  return (await control<{ run: string; token: string }>(at.dir, 'POST', '/v1/runs', { workflow: name, placement })).body;
}

/** `done`, or a failure that shows the daemons' last words when it does not come within `ms`. */
async function within(done: Promise<FnResult>, ms: number, what: string): Promise<FnResult> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms; daemon logs:\n${daemons.map((d, i) => `n${i}:\n${d.logs().split('\n').slice(-25).join('\n')}`).join('\n')}`)), ms);
  });
  try {
    return await Promise.race([done, late]);
  } finally {
    clearTimeout(timer);
  }
}

function ok(r: FnResult): FnResult['result'] {
  expect(r.result.error, `function failed: ${JSON.stringify(r.result)} ${r.stderr}`).toBeUndefined();
  expect(r.code).toBe(0);
  return r.result;
}

describe.skipIf(!availability.ok)(`the object store across nodes${skipReason}`, () => {
  it('carries a via: s3 channel from one node to another through their shared store', async () => {
    const run = await runOf({ via: 's3' }, { p: 'n0', c: 'n1' });
    const consumer = runFunction(daemons[1]!.dir, run, 'c', ['sink']);
    const producer = ok(await runFunction(daemons[0]!.dir, run, 'p', ['source', String(6 * MiB), '11']).done);
    expect(ok(await consumer.done)).toMatchObject({ bytes: 6 * MiB, sha256: producer.sha256 });
    expect(existsSync(join(shared, 'store', run.run, 'p.0-c.0', 'manifest.json'))).toBe(true);
  });

  it("sends a stream to the store when the consumer's node is unreachable as the channel opens; the consumer gets it once the link is back", async () => {
    const run = await runOf({}, { p: 'n0', c: 'n1' });
    const consumer = runFunction(daemons[1]!.dir, run, 'c', ['sink']);
    await cluster.nodes[1]!.linkDown();
    let producer: FnResult['result'];
    try {
      const deadline = Date.now() + 20_000;
      while ((await peerState(daemons[0]!, 'n1')) === 'up') {
        if (Date.now() > deadline) throw new Error('n0 never noticed the link to n1 down');
        await sleep(50);
      }
      // acknowledged once the store holds the stream: the consumer's node is still cut off
      producer = ok(await within(runFunction(daemons[0]!.dir, run, 'p', ['source', String(3 * MiB), '12']).done, 30_000, 'the producer'));
      expect(existsSync(join(shared, 'store', run.run, 'p.0-c.0', 'manifest.json'))).toBe(true);
      expect(consumer.child.exitCode).toBeNull();
    } finally {
      await cluster.nodes[1]!.linkUp();
    }
    expect(ok(await within(consumer.done, 30_000, 'the consumer'))).toMatchObject({ bytes: 3 * MiB, sha256: producer.sha256 });
  }, 90_000);

  it('refuses a via: s3 channel between nodes that use different stores, and leaves nothing behind', async () => {
    const name = `xs-${++serial}`;
    await control(daemons[0]!.dir, 'POST', '/v1/workflows', { name, steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c', via: 's3' }] });
    const runs = async (): Promise<unknown[]> => Promise.all(daemons.map(async (d) => (await control<unknown[]>(d.dir, 'GET', '/v1/runs')).body.length));
    const before = await runs();
    const refused = await control(daemons[0]!.dir, 'POST', '/v1/runs', { workflow: name, placement: { p: 'n0', c: 'n2' } }).catch((err: { code?: string; message?: string }) => err);
    expect(refused).toMatchObject({ code: 'SLUICE_INVALID', message: expect.stringMatching(/different stores.*give every node the same --store/) });
    expect(await runs()).toEqual(before);
  });
});
