/**
 * Peer links that flap: three namespace nodes on a 50 ms heartbeat, their veth links taken down
 * and up many times — from the daemons' start on, and while streams cross the links. No daemon
 * may die, every stream ends byte-exact or typed at both ends (a producer told "done" means its
 * consumer has every byte), and once the links are back every daemon says so, in its status and
 * its metrics, and logs only JSON (no listener-leak warning as plain text).
 *
 * `SLUICE_TEST_FLAPS` sets the number of flaps (default 300 here; the issue's figure, 1000, is
 * what `SLUICE_TEST_FLAPS=1000 npx vitest run test/e2e/peer-link-flaps.test.ts` runs).
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
import { connect } from '../../client/index.js';
import { startDaemonProcess, type DaemonProcess } from '../helpers/daemon.js';
import { createCluster, namespacesAvailable, type Cluster } from '../../harness/netns.js';
import { seededBytes } from '../helpers/streams.js';
import { prng } from '../unit/prng.js';

const availability = await namespacesAvailable();
const skipReason = availability.ok ? '' : ` (skipped: ${availability.why})`;
const FLAPS = Number(process.env.SLUICE_TEST_FLAPS ?? 300);
const HEARTBEAT_MS = 50;
const PORT = 7700;
const MiB = 1024 * 1024;

interface Node {
  name: string;
  daemon: DaemonProcess;
}

let cluster: Cluster;
let nodes: Node[] = [];

/** Take node links down and up `count` times at random, a few ms to a few heartbeats apart. */
async function flap(count: number, seed: number): Promise<void> {
  const random = prng(seed);
  for (let i = 0; i < count; i++) {
    const n = cluster.nodes[random.int(0, cluster.nodes.length - 1)]!;
    await n.linkDown();
    await sleep(random.int(0, 3 * HEARTBEAT_MS));
    await n.linkUp();
    await sleep(random.int(0, 2 * HEARTBEAT_MS));
  }
}

interface PeerView {
  node: string;
  state: string;
}

async function peersOf(n: Node): Promise<PeerView[]> {
  return (await control<{ peers: PeerView[] }>(n.daemon.dir, 'GET', '/v1/status')).body.peers;
}

async function linkUpMetric(n: Node): Promise<Record<string, number>> {
  const text = (await control<string>(n.daemon.dir, 'GET', '/metrics')).body;
  const found: Record<string, number> = {};
  for (const m of String(text).matchAll(/^sluice_peer_link_up\{[^}]*peer="([^"]+)"[^}]*\} (\S+)$/gm)) found[m[1]!] = Number(m[2]);
  return found;
}

const isTyped = (code: unknown): boolean => typeof code === 'string' && code.startsWith('SLUICE_');

interface Outcome {
  sent: 'ok' | string;
  received: 'ok' | 'wrong bytes' | string;
}

/** One 2 MiB stream n0 → n1 (or n2), producer and consumer in this process. */
async function oneStream(i: number): Promise<Outcome | undefined> {
  const to = i % 2 === 0 ? nodes[1]! : nodes[2]!;
  let run: { run: string; token: string };
  try {
    run = (await control<{ run: string; token: string }>(nodes[0]!.daemon.dir, 'POST', '/v1/runs', { workflow: 'flap', placement: { p: 'n0', c: to.name } })).body;
  } catch (err) {
    // creating a run across a link that is down is refused, typed: nothing to stream then
    expect(isTyped((err as { code?: unknown }).code), String(err)).toBe(true);
    return undefined;
  }
  const payload = seededBytes(2 * MiB, 1000 + i);
  const expected = createHash('sha256').update(payload).digest('hex');
  const consumer = (async (): Promise<Outcome['received']> => {
    try {
      const sl = await connect({ dir: to.daemon.dir, run: run.run, step: 'c', token: run.token, instance: 0, resumeTimeoutMs: 5_000 });
      const hash = createHash('sha256');
      for await (const chunk of sl.input('p') as AsyncIterable<Buffer>) hash.update(chunk);
      return hash.digest('hex') === expected ? 'ok' : 'wrong bytes';
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      return isTyped(code) ? String(code) : `untyped: ${String(err)}`;
    }
  })();
  const producer = (async (): Promise<Outcome['sent']> => {
    try {
      const sl = await connect({ dir: nodes[0]!.daemon.dir, run: run.run, step: 'p', token: run.token, instance: 0 });
      await pipeline(Readable.from([payload.subarray(0, MiB), payload.subarray(MiB)]), sl.output('c'));
      return 'ok';
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      return isTyped(code) ? String(code) : `untyped: ${String(err)}`;
    }
  })();
  const [sent, received] = await Promise.all([producer, consumer]);
  await control(nodes[0]!.daemon.dir, 'DELETE', `/v1/runs/${run.run}`).catch(() => undefined);
  return { sent, received };
}

beforeAll(async () => {
  if (!availability.ok) return;
  cluster = await createCluster(3, { subnet: 77 });
  const secretFile = join(tmpdir(), `sluice-flap-secret-${process.pid}`);
  writeFileSync(secretFile, 'peer-link-flaps-secret-0123456789abcdef', { mode: 0o600 });
  const peers = cluster.nodes.map((n) => `n${n.index}=ws://${n.address}:${PORT}`).join(',');
  // the links flap from the daemons' start on: the handshakes of links that close under them
  const early = flap(Math.min(100, FLAPS), 7);
  nodes = await Promise.all(
    cluster.nodes.map(async (n) => ({
      name: `n${n.index}`,
      daemon: await startDaemonProcess(['--listen', `${n.address}:${PORT}`, '--peers', peers, '--secret-file', secretFile, '--peer-heartbeat', `${HEARTBEAT_MS}ms`, '--attach-timeout', '5s'], {
        node: `n${n.index}`,
        spawn: (cmd, args, opts) => n.spawn(cmd, args, opts),
      }),
    })),
  );
  await early;
  await control(nodes[0]!.daemon.dir, 'POST', '/v1/workflows', { name: 'flap', steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
}, 120_000);

afterAll(async () => {
  await Promise.all(nodes.map((n) => n.daemon.stop()));
  await cluster?.destroy();
});

describe.skipIf(!availability.ok)(`peer links that flap${skipReason}`, () => {
  it(`survive ${FLAPS} flaps with streams running: no daemon dies, every stream exact or typed at both ends, status true after`, async () => {
    let flapping = true;
    const flaps = flap(FLAPS - Math.min(100, FLAPS), 11).finally(() => (flapping = false));
    const outcomes: Outcome[] = [];
    const streams = (async () => {
      for (let i = 0; flapping || i < 4; i++) {
        const two = await Promise.all([oneStream(2 * i), oneStream(2 * i + 1)]);
        for (const o of two) if (o) outcomes.push(o);
      }
    })();
    await flaps;
    await streams;

    const died = nodes.filter((n) => n.daemon.child.exitCode !== null || n.daemon.child.signalCode !== null);
    expect(died.map((n) => `${n.name}:\n${n.daemon.logs().split('\n').slice(-20).join('\n')}`)).toEqual([]);

    for (const o of outcomes) {
      // a consumer that succeeded has exactly the bytes; a producer told "done" has a consumer that has them
      expect(o.received === 'ok' || o.received.startsWith('SLUICE_'), JSON.stringify(o)).toBe(true);
      expect(o.sent === 'ok' || o.sent.startsWith('SLUICE_'), JSON.stringify(o)).toBe(true);
      if (o.sent === 'ok') expect(o.received, JSON.stringify(o)).toBe('ok');
    }
    expect(outcomes.length).toBeGreaterThan(0);

    // the links come back by themselves; then every daemon says up, in status and metrics, and stays so
    const deadline = Date.now() + 20_000;
    for (;;) {
      const views = await Promise.all(nodes.map(peersOf));
      if (views.every((v) => v.length === 2 && v.every((p) => p.state === 'up'))) break;
      if (Date.now() > deadline) throw new Error(`links not all up 20 s after the last flap: ${JSON.stringify(views)}`);
      await sleep(HEARTBEAT_MS);
    }
    await sleep(4 * HEARTBEAT_MS);
    for (const n of nodes) {
      expect((await peersOf(n)).map((p) => p.state), n.name).toEqual(['up', 'up']);
      expect(Object.values(await linkUpMetric(n)), n.name).toEqual([1, 1]);
    }
    // and streams cross every link again, exact
    for (let i = 0; i < 2; i++) expect(await oneStream(10_000 + i)).toEqual({ sent: 'ok', received: 'ok' });

    for (const n of nodes) {
      const lines = n.daemon.logs().split('\n').filter((l) => l.trim().length > 0);
      const notJson = lines.filter((l) => !l.startsWith('{'));
      expect(notJson, `${n.name} wrote non-JSON lines`).toEqual([]);
      expect(lines.filter((l) => l.includes('MaxListenersExceeded')), n.name).toEqual([]);
    }
  }, 600_000);
});
