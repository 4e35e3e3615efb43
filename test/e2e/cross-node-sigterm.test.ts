/**
 * A rolling update during a cross-node stream, in network namespaces: the producer's node's
 * daemon, or the consumer's, gets SIGTERM while a stream crosses the peer link. With a grace
 * period long enough, the stream completes and the daemon exits; cut short by the grace period,
 * the stream continues through the store both nodes share and completes once the daemon is back
 * — or, when they share none, both ends get a typed error. Never a short stream that looks
 * complete; the daemon always exits within its grace period.
 */
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { runFunction, type DaemonProcess, ok } from '../helpers/daemon.js';
import { namespacesAvailable } from '../../harness/netns.js';
import { linksUp, startSharedStoreNodes, type SharedStoreNodes } from '../helpers/shared-store-nodes.js';

const availability = await namespacesAvailable();
const skipReason = availability.ok ? '' : ` (skipped: ${availability.why})`;
const MiB = 1024 * 1024;
/** the grace period: long enough for a stream of a few MiB, far too short for a slow consumer's 64 MiB */
const GRACE_MS = 4_000;
/** how long the test waits for a daemon's exit after SIGTERM: its grace period, and the time to close */
const EXIT_WAIT_MS = GRACE_MS + 5_000;

let nodes: SharedStoreNodes | undefined;
let daemons: DaemonProcess[] = [];
let serial = 0;

beforeAll(async () => {
  if (!availability.ok) return;
  nodes = await startSharedStoreNodes(45, ['--grace', `${GRACE_MS}ms`]);
  ({ daemons } = nodes);
}, 60_000);

afterAll(async () => {
  await nodes?.stop();
});

async function runOf(placement: Record<string, string>): Promise<{ run: string; token: string }> {
  const name = `st-${++serial}`;
  await control(daemons[0]!.dir, 'POST', '/v1/workflows', { name, steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
  return (await control<{ run: string; token: string }>(daemons[0]!.dir, 'POST', '/v1/runs', { workflow: name, placement })).body;
}

/**
 * A stream from p on n0 to c on node `consumerNode`: the consumer sleeping `pauseMs` per chunk
 * (its pace), the producer writing `bytes` seeded by `seed`; resolves once 4 MiB have passed n0's
 * relay, so the stream is flowing when the test acts.
 */
async function streamFlowing(consumerNode: 1 | 2, bytes: number, pauseMs: string, seed: string): Promise<{ producer: ReturnType<typeof runFunction>; consumer: ReturnType<typeof runFunction> }> {
  const run = await runOf({ p: 'n0', c: `n${consumerNode}` });
  const consumer = runFunction(daemons[consumerNode]!.dir, run, 'c', ['sink', '-', pauseMs]);
  const producer = runFunction(daemons[0]!.dir, run, 'p', ['source', String(bytes), seed]);
  await relayed(daemons[0]!, run.run, 4 * MiB);
  return { producer, consumer };
}

/** Wait until the run's channel on `d` has passed `bytes`. */
async function relayed(d: DaemonProcess, run: string, bytes: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const ch = (await control<{ channels: Array<{ relayedBytes: number }> }>(d.dir, 'GET', `/v1/runs/${run}`)).body.channels[0]!;
    if (ch.relayedBytes > bytes) return;
    if (Date.now() > deadline) throw new Error(`the stream of run ${run} never passed ${bytes} bytes; ${lastWords()}`);
    await sleep(20);
  }
}

function lastWords(): string {
  return `daemon logs:\n${daemons.map((x, i) => `n${i}:\n${x.logs().split('\n').slice(-25).join('\n')}`).join('\n')}`;
}

/** `done`, or a failure that shows the daemons' last words when it does not come within `ms`. */
async function within<T>(done: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms; ${lastWords()}`)), ms);
  });
  try {
    return await Promise.race([done, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** SIGTERM the daemon as a rolling update does; resolves with its exit code once it has exited. */
async function terminate(d: DaemonProcess): Promise<number | null> {
  const exited = once(d.child, 'exit');
  d.child.kill('SIGTERM');
  const [code] = (await within(exited, EXIT_WAIT_MS, 'the daemon after SIGTERM')) as [number | null];
  return code;
}

describe.skipIf(!availability.ok)(`SIGTERM during a cross-node stream${skipReason}`, () => {
  it.each([
    ['producer', 0],
    ['consumer', 1],
  ])("to the %s's node, with time enough: the stream completes, byte-exact, and the daemon exits", async (_which, node) => {
    // about 40 MB/s: flowing when the signal comes, done well within the grace period
    const { producer, consumer } = await streamFlowing(1, 24 * MiB, '25', '41');
    expect(await terminate(daemons[node]!)).toBe(0);
    expect(daemons[node]!.logs()).not.toMatch(/grace period over/);
    const produced = ok(await within(producer.done, 30_000, 'the producer'));
    expect(ok(await within(consumer.done, 30_000, 'the consumer'))).toMatchObject({ bytes: 24 * MiB, sha256: produced.sha256 });
    await daemons[node]!.restart();
    await linksUp(daemons[node]!, 2);
  }, 90_000);

  it("to the consumer's node, with a stream longer than the grace period: it continues through the shared store and completes, byte-exact, once the daemon is back", async () => {
    // about 10 MB/s: far from done when the grace period ends
    const { producer, consumer } = await streamFlowing(1, 64 * MiB, '100', '42');
    expect(await terminate(daemons[1]!)).toBe(0);
    expect(daemons[1]!.logs()).toMatch(/grace period over: cutting streams in flight/);
    await daemons[1]!.restart();
    const produced = ok(await within(producer.done, 90_000, 'the producer'));
    expect(ok(await within(consumer.done, 90_000, 'the consumer'))).toMatchObject({ bytes: 64 * MiB, sha256: produced.sha256 });
    await linksUp(daemons[1]!, 2);
  }, 180_000);

  it("to the producer's node, with a stream longer than the grace period: the producer's connection goes with its daemon, so both ends get a typed error, never a short stream that looks complete", async () => {
    const { producer, consumer } = await streamFlowing(1, 64 * MiB, '100', '43');
    expect(await terminate(daemons[0]!)).toBe(0);
    expect(daemons[0]!.logs()).toMatch(/grace period over: cutting streams in flight/);
    await daemons[0]!.restart();
    const [produced, consumed] = await Promise.all([within(producer.done, 90_000, 'the producer'), within(consumer.done, 90_000, 'the consumer')]);
    expect(produced.code).toBe(1);
    // told by its daemon, not left to blame its consumer for a reset
    expect(produced.result.error).toMatchObject({ code: 'SLUICE_UNAVAILABLE', message: expect.stringMatching(/daemon is stopping/) });
    expect(consumed.code).toBe(1);
    expect(consumed.result.error?.code).toBe('SLUICE_TRUNCATED');
    await linksUp(daemons[0]!, 2);
  }, 180_000);

  it.each([
    ['producer', 0],
    ['consumer', 2],
  ])("to the %s's node, with a stream longer than the grace period and no shared store: a typed error at both ends", async (_which, node) => {
    const { producer, consumer } = await streamFlowing(2, 64 * MiB, '100', '44');
    expect(await terminate(daemons[node]!)).toBe(0);
    expect(daemons[node]!.logs()).toMatch(/grace period over: cutting streams in flight/);
    await daemons[node]!.restart();
    const [produced, consumed] = await Promise.all([within(producer.done, 90_000, 'the producer'), within(consumer.done, 90_000, 'the consumer')]);
    expect([produced.code, consumed.code]).toEqual([1, 1]);
    expect(produced.result.error).toMatchObject({ code: 'SLUICE_UNAVAILABLE', message: expect.stringMatching(node === 0 ? /daemon is stopping/ : /peer link to node "n2" failed/) });
    expect(consumed.result.error?.code).toBe('SLUICE_TRUNCATED');
    await linksUp(daemons[node]!, 2);
  }, 180_000);
});
