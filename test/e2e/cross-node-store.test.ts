/**
 * The object-store path across nodes, in network namespaces: `via: s3` between two nodes that
 * share a store, a consumer's node unreachable when its channel opens (the stream goes to the
 * store and reaches the consumer once the link is back), nodes with different stores refused
 * for a channel that needs one store, and mid-stream failover: the consumer's daemon killed, or
 * the link lost, while a stream flows — the producer's node resumes it through the store and the
 * consumer reads the complete, verified stream.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { runFunction, type DaemonProcess, type FnResult, ok } from '../helpers/daemon.js';
import { namespacesAvailable, type Cluster } from '../../harness/netns.js';
import { linksUp, startSharedStoreNodes, type SharedStoreNodes } from '../helpers/shared-store-nodes.js';

const availability = await namespacesAvailable();
const skipReason = availability.ok ? '' : ` (skipped: ${availability.why})`;
const MiB = 1024 * 1024;

let nodes: SharedStoreNodes | undefined;
let daemons: DaemonProcess[] = [];
let cluster: Cluster;
let shared: string;
let serial = 0;

beforeAll(async () => {
  if (!availability.ok) return;
  nodes = await startSharedStoreNodes(43);
  ({ daemons, cluster, shared } = nodes);
}, 60_000);

afterAll(async () => {
  await nodes?.stop();
});

async function peerState(d: DaemonProcess, peer: string): Promise<string | undefined> {
  const { body } = await control<{ peers: Array<{ node: string; state: string }> }>(d.dir, 'GET', '/v1/status');
  return body.peers.find((p) => p.node === peer)?.state;
}

async function runOf(edge: Record<string, unknown>, placement: Record<string, string>, at = daemons[0]!): Promise<{ run: string; token: string }> {
  const name = `xs-${++serial}`;
  await control(at.dir, 'POST', '/v1/workflows', { name, steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c', ...edge }] });
  return (await control<{ run: string; token: string }>(at.dir, 'POST', '/v1/runs', { workflow: name, placement })).body;
}

/** Wait until the run's channel on `d` has passed `bytes`. */
async function relayed(d: DaemonProcess, run: string, bytes: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const ch = (await control<{ channels: Array<{ relayedBytes: number }> }>(d.dir, 'GET', `/v1/runs/${run}`)).body.channels[0]!;
    if (ch.relayedBytes > bytes) return;
    if (Date.now() > deadline) throw new Error(`the stream of run ${run} never passed ${bytes} bytes; daemon logs:\n${daemons.map((x, i) => `n${i}:\n${x.logs().split('\n').slice(-25).join('\n')}`).join('\n')}`);
    await sleep(20);
  }
}

async function channelOn(d: DaemonProcess, run: string): Promise<{ state: string; stored?: string }> {
  return (await control<{ channels: Array<{ state: string; stored?: string }> }>(d.dir, 'GET', `/v1/runs/${run}`)).body.channels[0]!;
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

  it("resumes a stream through the store when the consumer's daemon is killed mid-stream: once it is back, the consumer reads every byte, verified", async () => {
    const run = await runOf({}, { p: 'n0', c: 'n1' });
    // a slow consumer (about 20 MB/s), so that the stream is still flowing when its daemon dies
    const consumer = runFunction(daemons[1]!.dir, run, 'c', ['sink', '-', '50']);
    const producer = runFunction(daemons[0]!.dir, run, 'p', ['source', String(48 * MiB), '21']);
    // counted on the producer's node: a link replaced by a simultaneous dial (after the previous
    // tests' link faults) may send the stream through the store before any byte reached n1
    await relayed(daemons[0]!, run.run, 8 * MiB);
    await daemons[1]!.restart();
    const produced = ok(await within(producer.done, 60_000, 'the producer'));
    expect(ok(await within(consumer.done, 60_000, 'the consumer'))).toMatchObject({ bytes: 48 * MiB, sha256: produced.sha256 });
    // the rest went through the store, as a resumed stream that starts past the first byte
    const resume = JSON.parse(readFileSync(join(shared, 'store', run.run, 'p.0-c.0', 'resume.json'), 'utf8')) as { start: number };
    expect(resume.start).toBeGreaterThanOrEqual(0);
    expect(resume.start).toBeLessThan(48 * MiB);
    expect(await channelOn(daemons[0]!, run.run)).toMatchObject({ state: 'done', stored: 'failover' });
    await linksUp(daemons[1]!, 2);
  }, 120_000);

  it('resumes a stream through the store when the link goes down mid-stream: the consumer completes, verified, while the link is still down', async () => {
    const run = await runOf({}, { p: 'n0', c: 'n1' });
    const consumer = runFunction(daemons[1]!.dir, run, 'c', ['sink', '-', '50']);
    const producer = runFunction(daemons[0]!.dir, run, 'p', ['source', String(48 * MiB), '22']);
    await relayed(daemons[0]!, run.run, 8 * MiB);
    await cluster.nodes[1]!.linkDown();
    try {
      const produced = ok(await within(producer.done, 60_000, 'the producer'));
      expect(ok(await within(consumer.done, 60_000, 'the consumer'))).toMatchObject({ bytes: 48 * MiB, sha256: produced.sha256 });
      expect(await peerState(daemons[0]!, 'n1')).not.toBe('up');
      expect(existsSync(join(shared, 'store', run.run, 'p.0-c.0', 'resume.json'))).toBe(true);
      expect(await channelOn(daemons[1]!, run.run)).toMatchObject({ state: 'done' });
    } finally {
      await cluster.nodes[1]!.linkUp();
    }
    await linksUp(daemons[0]!, 2);
  }, 120_000);

  it('fails the consumer with SLUICE_TRUNCATED, not a clean end, when the link goes down mid-stream between nodes that share no store', async () => {
    const run = await runOf({}, { p: 'n0', c: 'n2' });
    const consumer = runFunction(daemons[2]!.dir, run, 'c', ['sink', '-', '50']);
    const producer = runFunction(daemons[0]!.dir, run, 'p', ['source', String(48 * MiB), '23']);
    await relayed(daemons[2]!, run.run, 8 * MiB);
    await cluster.nodes[2]!.linkDown();
    try {
      const [produced, consumed] = await Promise.all([within(producer.done, 60_000, 'the producer'), within(consumer.done, 60_000, 'the consumer')]);
      expect(produced.result.error?.code).toBe('SLUICE_UNAVAILABLE');
      expect(consumed.result.error).toMatchObject({ code: 'SLUICE_TRUNCATED', message: expect.stringMatching(/share no object store/) });
    } finally {
      await cluster.nodes[2]!.linkUp();
    }
    await linksUp(daemons[0]!, 2);
  }, 120_000);

  it("tells a consumer whose daemon was killed mid-stream, once the daemon is back, that its stream cannot be resumed when the nodes share no store", async () => {
    const run = await runOf({}, { p: 'n0', c: 'n2' });
    const consumer = runFunction(daemons[2]!.dir, run, 'c', ['sink', '-', '50']);
    const producer = runFunction(daemons[0]!.dir, run, 'p', ['source', String(48 * MiB), '24']);
    await relayed(daemons[2]!, run.run, 8 * MiB);
    await daemons[2]!.restart();
    expect((await within(producer.done, 30_000, 'the producer')).result.error?.code).toBe('SLUICE_UNAVAILABLE');
    // well before the consumer's own resume timeout (60 s): its node told it
    const consumed = await within(consumer.done, 30_000, 'the consumer');
    expect(consumed.result.error).toMatchObject({ code: 'SLUICE_TRUNCATED', message: expect.stringMatching(/share no object store/) });
    await linksUp(daemons[2]!, 2);
  }, 120_000);
});
