/**
 * `fanout: balance` across two nodes, for real: each node a network namespace with its own
 * daemon, a consumer step with one instance on each node, producers on n0. The producer's daemon
 * picks the instance of every stream; the other instance gets an empty stream saying so.
 *
 * Functions are this process (the client library over each node's directory, which the
 * namespaces share); what crosses nodes goes over the veth links only. Every delivered stream is
 * checked by sha256, and every instance not picked must have read zero bytes.
 */
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { connect, type Input } from '../../client/index.js';
import { startDaemonProcess, type DaemonProcess } from '../helpers/daemon.js';
import { createCluster, namespacesAvailable, type Cluster } from '../../harness/netns.js';

const availability = await namespacesAvailable();
const skipReason = availability.ok ? '' : ` (skipped: ${availability.why})`;
const MiB = 1024 * 1024;
const PORT = 7700;
const SECRET = 'replica-routing-test-secret-0123456789';
/** streams in flight at which a replica is saturated (--replica-max-streams) */
const MAX_STREAMS = 2;
/** failures in a row that eject a replica (--eject-after) */
const EJECT_AFTER = 3;

let cluster: Cluster;
let daemons: DaemonProcess[] = [];
let serial = 0;

beforeAll(async () => {
  if (!availability.ok) return;
  cluster = await createCluster(2, { subnet: 58 });
  const secretFile = join(tmpdir(), `sluice-secret-route-${process.pid}`);
  writeFileSync(secretFile, SECRET, { mode: 0o600 });
  const peers = cluster.nodes.map((n) => `n${n.index}=ws://${n.address}:${PORT}`).join(',');
  daemons = await Promise.all(
    cluster.nodes.map((n) =>
      startDaemonProcess(
        [
          ...['--listen', `${n.address}:${PORT}`, '--peers', peers, '--secret-file', secretFile, '--peer-heartbeat', '200ms', '--attach-timeout', '20s'],
          ...['--replica-max-streams', String(MAX_STREAMS), '--eject-after', String(EJECT_AFTER), '--ejection-time', '8s'],
        ],
        { node: `n${n.index}`, spawn: (cmd, args, opts) => n.spawn(cmd, args, opts) },
      ),
    ),
  );
  for (const d of daemons) await until(async () => (await status(d)).peers.some((p) => p.state === 'up'), 'peer link up');
}, 60_000);

afterAll(async () => {
  const died = daemons.filter((d) => d.child.exitCode !== null || d.child.signalCode !== null).map((d) => d.logs().split('\n').slice(-30).join('\n'));
  await Promise.all(daemons.map((d) => d.stop()));
  await cluster?.destroy();
  expect(died).toEqual([]);
});

interface Replica {
  replica: string;
  streams: number;
  saturated: boolean;
  ejected: boolean;
  ejections: number;
  routed: number;
  failed: number;
}
interface Status {
  peers: Array<{ state: string }>;
  replicas: Replica[];
  balanced: { local: number; remote: number; localShare: number | null };
}

const status = async (d: DaemonProcess): Promise<Status> => (await control<Status>(d.dir, 'GET', '/v1/status')).body;

/** Poll `check` until it holds (no time is asserted: the deadline only keeps a broken run from hanging). */
async function until(check: () => Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`never true: ${what}`);
    await sleep(50);
  }
}

async function balancedWorkflow(policy?: string): Promise<string> {
  const name = `bal-${++serial}`;
  await control(daemons[0]!.dir, 'POST', '/v1/workflows', { name, steps: { p: {}, c: { replicas: 2 } }, edges: [{ from: 'p', to: 'c', fanout: 'balance', ...(policy ? { policy } : {}) }] });
  return name;
}

function payload(bytes: number, seed: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let k = 0; k < bytes; k += 4) b.writeUInt32LE((k * 2654435761 + seed) >>> 0, k);
  return b;
}
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function digest(input: Input): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of input as AsyncIterable<Buffer>) {
    hash.update(chunk);
    bytes += chunk.length;
  }
  return { bytes, sha256: hash.digest('hex') };
}

/** A run of `name` with p on n0 and c[0] on n0, c[1] on n1, and both consumers' inputs open. */
async function balancedRun(name: string): Promise<{ run: string; token: string; inputs: [Input, Input] }> {
  const { run, token } = (await control<{ run: string; token: string }>(daemons[0]!.dir, 'POST', '/v1/runs', { workflow: name, placement: { p: 'n0', c: ['n0', 'n1'] } })).body;
  const inputs = (await Promise.all([0, 1].map(async (i) => (await connect({ dir: daemons[i]!.dir, run, step: 'c', token, instance: i })).input('p')))) as [Input, Input];
  return { run, token, inputs };
}

async function send(run: { run: string; token: string }, data: Buffer): Promise<void> {
  const sl = await connect({ dir: daemons[0]!.dir, run: run.run, step: 'p', token: run.token, instance: 0 });
  await pipeline(Readable.from([data]), sl.output('c'));
}

/** Send `data` on a run whose consumers both read: which instance got it (the other must get nothing), verified. */
async function routeOnce(name: string, data: Buffer): Promise<0 | 1> {
  const r = await balancedRun(name);
  const received = Promise.all([digest(r.inputs[0]), digest(r.inputs[1])]);
  await send(r, data);
  const both = await received;
  const got = both[0].bytes > 0 ? 0 : 1;
  expect(both[got]).toEqual({ bytes: data.length, sha256: sha(data) });
  expect(both[1 - got]!.bytes).toBe(0);
  await control(daemons[0]!.dir, 'DELETE', `/v1/runs/${r.run}`);
  return got;
}

describe.skipIf(!availability.ok)(`balance edges across two nodes${skipReason}`, () => {
  it('keeps at least 90% of streams on the local instance when it is not loaded (local-first)', async () => {
    const name = await balancedWorkflow();
    const runs = 20;
    let local = 0;
    for (let i = 0; i < runs; i++) if ((await routeOnce(name, payload(256 * 1024, i))) === 0) local++;
    expect(local).toBeGreaterThanOrEqual(Math.ceil(0.9 * runs));
    const shown = await status(daemons[0]!);
    expect(shown.balanced.local).toBeGreaterThanOrEqual(local);
    expect(shown.replicas.find((r) => r.replica === `${name}/c[0]@n0`)).toMatchObject({ routed: local, streams: 0, failed: 0 });
    const metrics = (await control<string>(daemons[0]!.dir, 'GET', '/metrics')).body;
    expect(metrics).toMatch(new RegExp(`sluice_replica_streams\\{workflow="${name}",step="c",instance="0",node="n0"\\} 0`));
    expect(metrics).toMatch(/sluice_balanced_streams_total\{to="local"\} \d+/);
  }, 120_000);

  it('sends new streams to the remote instance while the local one is saturated, and back once it recovers', async () => {
    const name = await balancedWorkflow();
    const local = `${name}/c[0]@n0`;
    // MAX_STREAMS runs whose local consumer reads nothing yet: their streams stay in flight there
    const held = [];
    for (let i = 0; i < MAX_STREAMS; i++) {
      const r = await balancedRun(name);
      r.inputs[0].pause();
      const data = payload(24 * MiB, 100 + i);
      const sending = send(r, data);
      sending.catch(() => undefined); // awaited below; a failure before then is reported there
      const remote = digest(r.inputs[1]);
      await until(async () => (await status(daemons[0]!)).replicas.find((x) => x.replica === local)?.streams === i + 1, `stream ${i + 1} in flight to ${local}`);
      held.push({ r, data, sending, remote });
    }
    const before = await status(daemons[0]!);
    expect(before.replicas.find((x) => x.replica === local)).toMatchObject({ streams: MAX_STREAMS, saturated: true });
    // the peer knows: n0 shared the load of its replica over the link
    await until(async () => (await status(daemons[1]!)).replicas.find((x) => x.replica === local)?.streams === MAX_STREAMS, 'n1 sees the load n0 reported');

    // a new stream goes to n1's instance; the saturated one is told "elsewhere"
    for (let i = 0; i < 3; i++) expect(await routeOnce(name, payload(2 * MiB, 200 + i))).toBe(1);
    expect((await status(daemons[0]!)).balanced.remote).toBeGreaterThanOrEqual(3);

    // the held streams were never moved: each completes, verified, on the instance it started on
    for (const h of held) {
      const [local0, remote1] = await Promise.all([digest(h.r.inputs[0].resume()), h.remote, h.sending]);
      expect(local0).toEqual({ bytes: h.data.length, sha256: sha(h.data) });
      expect(remote1!.bytes).toBe(0);
    }
    await until(async () => (await status(daemons[0]!)).replicas.find((x) => x.replica === local)?.streams === 0, 'held streams ended');
    // recovered: local again
    expect(await routeOnce(name, payload(MiB, 300))).toBe(0);
  }, 180_000);

  it('ejects a local instance that fails repeatedly, routes around it, and admits it again later', async () => {
    const name = await balancedWorkflow();
    const local = `${name}/c[0]@n0`;
    for (let i = 0; i < EJECT_AFTER; i++) {
      const r = await balancedRun(name);
      // the local consumer breaks on its first bytes
      r.inputs[0].once('data', () => r.inputs[0].destroy(new Error('consumer crashed')));
      r.inputs[0].on('error', () => undefined);
      const remote = digest(r.inputs[1]);
      await expect(send(r, payload(8 * MiB, 400 + i))).rejects.toMatchObject({ code: expect.stringMatching(/^SLUICE_/) });
      expect((await remote).bytes).toBe(0);
    }
    const ejected = (await status(daemons[0]!)).replicas.find((x) => x.replica === local)!;
    expect(ejected).toMatchObject({ ejected: true, ejections: 1, failed: EJECT_AFTER });
    // n1 learns of the ejection over the link
    await until(async () => (await status(daemons[1]!)).replicas.find((x) => x.replica === local)?.ejected === true, 'n1 sees the ejection');
    // while ejected, streams go to n1 (the ejection lasts 8 s; a run here takes well under that)
    expect(await routeOnce(name, payload(MiB, 500))).toBe(1);
    // once its back-off ends it is admitted again, and a healthy consumer there gets the stream
    await until(async () => (await status(daemons[0]!)).replicas.find((x) => x.replica === local)?.ejected === false, 'ejection over');
    expect(await routeOnce(name, payload(MiB, 501))).toBe(0);
    const metrics = (await control<string>(daemons[0]!.dir, 'GET', '/metrics')).body;
    expect(metrics).toMatch(new RegExp(`sluice_replica_ejections_total\\{workflow="${name}",step="c",instance="0",node="n0"\\} 1`));
  }, 180_000);
});
