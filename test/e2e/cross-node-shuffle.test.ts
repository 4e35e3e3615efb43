/**
 * A shuffle across three nodes (network namespaces, a daemon each, peer links over veth), one map
 * and one reduce instance per node, each reducer reading every map instance at once with
 * `inputs()` / `interleaved()`, against `input()` (instance after instance) as the control.
 * Subnet 10.213.93.0/24.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { runFunction, startDaemonProcess, type DaemonProcess, ok, said } from '../helpers/daemon.js';
import { createCluster, namespacesAvailable, type Cluster } from '../../harness/netns.js';

const availability = await namespacesAvailable();
const skipReason = availability.ok ? '' : ` (skipped: ${availability.why})`;
const MiB = 1024 * 1024;
const NODES = 3;
const PAIR_BYTES = Number(process.env.SLUICE_SHUFFLE_PAIR_MIB ?? 16) * MiB;
const PORT = 7700;
const SECRET = 'cross-node-shuffle-secret-0123456789abcdef';

let cluster: Cluster;
let daemons: DaemonProcess[] = [];
let scratch: string;
let serial = 0;

beforeAll(async () => {
  if (!availability.ok) return;
  cluster = await createCluster(NODES, { subnet: 93 });
  scratch = mkdtempSync(join(tmpdir(), 'sluice-xshuffle-'));
  const secretFile = join(scratch, 'secret');
  writeFileSync(secretFile, SECRET, { mode: 0o600 });
  const peers = cluster.nodes.map((n) => `n${n.index}=ws://${n.address}:${PORT}`).join(',');
  daemons = await Promise.all(
    cluster.nodes.map((n) =>
      startDaemonProcess(['--listen', `${n.address}:${PORT}`, '--peers', peers, '--secret-file', secretFile, '--peer-heartbeat', '200ms', '--attach-timeout', '20s'], {
        node: `n${n.index}`,
        spawn: (cmd, args, opts) => n.spawn(cmd, args, opts),
      }),
    ),
  );
  for (const d of daemons) {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const { body } = await control<{ peers: Array<{ state: string }> }>(d.dir, 'GET', '/v1/status');
      if (body.peers.filter((p) => p.state === 'up').length >= NODES - 1) break;
      if (Date.now() > deadline) throw new Error(`peer links not up: ${JSON.stringify(body.peers)}\n${d.logs()}`);
      await sleep(50);
    }
  }
}, 60_000);

afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  await cluster?.destroy();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

type Mode = 'sequential' | 'streams' | 'interleaved';
interface PerInstance {
  bytes: number;
  sha256: string;
  firstByteAt: number;
  endAt: number;
}
interface Reduced {
  sources: Record<string, PerInstance>;
  endedAt: number;
}
interface Mapped {
  sha256: string;
  endedAt: number;
}

/** map[i] and reduce[i] on node i; the reducers first, then the maps all at once (a go file). */
async function shuffle(mode: Mode): Promise<{ e2eMs: number; mapEndsMs: number[]; maps: Mapped[]; reducers: Reduced[]; go: number }> {
  const name = `xshuffle-${++serial}`;
  await control(daemons[0]!.dir, 'POST', '/v1/workflows', { name, steps: { map: { replicas: NODES }, reduce: { replicas: NODES } }, edges: [{ from: 'map', to: 'reduce' }] });
  const nodesList = cluster.nodes.map((n) => `n${n.index}`);
  const run = (await control<{ run: string; token: string }>(daemons[0]!.dir, 'POST', '/v1/runs', { workflow: name, placement: { map: nodesList, reduce: nodesList } })).body;
  const goFile = join(scratch, `go-${run.run}`);
  const reducers = daemons.map((d, j) => runFunction(d.dir, run, 'reduce', ['gather-all', 'map', mode, String(PAIR_BYTES)], j));
  await Promise.all(reducers.map((r) => said(r.child, 'sluice-fn: ready')));
  const maps = daemons.map((d, i) => runFunction(d.dir, run, 'map', ['source', String(PAIR_BYTES), String(i + 1), '-', goFile], i));
  await Promise.all(maps.map((m) => said(m.child, 'sluice-fn: ready')));
  const go = performance.timeOrigin + performance.now();
  writeFileSync(goFile, '');
  const mapped = (await Promise.all(maps.map((m) => m.done))).map((r) => ok(r) as unknown as Mapped);
  const reduced = (await Promise.all(reducers.map((r) => r.done))).map((r) => ok(r) as unknown as Reduced);
  // every byte of every channel, against what its map wrote
  reduced.forEach((r, j) => {
    for (let i = 0; i < NODES; i++) expect(r.sources[`map[${i}]`], `map[${i}] → reduce[${j}]`).toMatchObject({ bytes: PAIR_BYTES, sha256: mapped[i]!.sha256 });
  });
  const out = { e2eMs: Math.round(Math.max(...reduced.map((r) => r.endedAt)) - go), mapEndsMs: mapped.map((m) => Math.round(m.endedAt - go)), maps: mapped, reducers: reduced, go };
  console.log(
    `${mode} across ${NODES} nodes, ${PAIR_BYTES / MiB} MiB per pair: e2e ${out.e2eMs} ms; maps ended at ${out.mapEndsMs.join(', ')} ms; reduce first bytes ${reduced
      .map((r) => Object.values(r.sources).map((x) => Math.round(x.firstByteAt - go)).join('/'))
      .join(', ')} ms`,
  );
  return out;
}

const allStartedBeforeAnyEnded = (r: Reduced): boolean => {
  const s = Object.values(r.sources);
  return Math.max(...s.map((x) => x.firstByteAt)) < Math.min(...s.map((x) => x.endAt));
};

describe.skipIf(!availability.ok)(`a shuffle across ${NODES} namespace nodes${skipReason}`, () => {
  it('control: with input() each reducer reads the maps one after another, and they finish one after another', async () => {
    const s = await shuffle('sequential');
    for (const r of s.reducers) expect(allStartedBeforeAnyEnded(r)).toBe(false);
    for (let i = 1; i < NODES; i++) expect(s.maps[i]!.endedAt).toBeGreaterThan(s.maps[i - 1]!.endedAt);
  }, 120_000);

  for (const mode of ['streams', 'interleaved'] as const) {
    it(`with ${mode === 'streams' ? 'inputs()' : 'interleaved()'} every map streams to every reducer at once, local and remote`, async () => {
      const s = await shuffle(mode);
      for (const r of s.reducers) expect(allStartedBeforeAnyEnded(r), JSON.stringify(r.sources)).toBe(true);
      const lastFirstByte = Math.max(...s.reducers.flatMap((r) => Object.values(r.sources).map((x) => x.firstByteAt)));
      expect(Math.min(...s.maps.map((m) => m.endedAt))).toBeGreaterThan(lastFirstByte);
    }, 120_000);
  }

  // measurement, not a check: SLUICE_SHUFFLE_RUNS=3 [SLUICE_SHUFFLE_SHAPE_MBIT=400] npx vitest run test/e2e/cross-node-shuffle.test.ts -t measures
  // (the shape limits every node's link, both ways: the network, not the two cores, sets the pace)
  const runs = Number(process.env.SLUICE_SHUFFLE_RUNS ?? 0);
  const shapeMbit = Number(process.env.SLUICE_SHUFFLE_SHAPE_MBIT ?? 0);
  it.skipIf(runs === 0)(`measures it, ${runs} runs per mode${shapeMbit ? `, links shaped to ${shapeMbit} Mbit/s` : ''}`, async () => {
    if (shapeMbit) for (const n of cluster.nodes) await n.shape(shapeMbit);
    const table: Record<Mode, number[]> = { sequential: [], streams: [], interleaved: [] };
    const spreads: Record<Mode, number[]> = { sequential: [], streams: [], interleaved: [] };
    for (let k = 0; k < runs; k++) {
      for (const mode of ['sequential', 'streams', 'interleaved'] as const) {
        const s = await shuffle(mode);
        table[mode].push(s.e2eMs);
        spreads[mode].push(Math.max(...s.mapEndsMs) - Math.min(...s.mapEndsMs));
      }
    }
    for (const mode of ['sequential', 'streams', 'interleaved'] as const) {
      const sorted = [...table[mode]].sort((a, b) => a - b);
      console.log(`${mode}: e2e ms ${table[mode].join(', ')} (median ${sorted[Math.floor(sorted.length / 2)]}); first→last map end ms ${spreads[mode].join(', ')}`);
    }
    if (shapeMbit) for (const n of cluster.nodes) await n.unshape();
  }, 900_000);
});
