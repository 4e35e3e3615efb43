/**
 * `sluice run create --place` spreads a replicated step's instances over nodes, through the real
 * command against two real daemons linked on loopback: STEP=N1,N2,... puts instance i on the
 * i-th node, STEP.I=NODE one instance, STEP=NODE every instance; placing an instance twice is
 * refused with the reason (never last-wins).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { cli } from '../helpers/daemon.js';
import { freePorts, startNodes, stopNodes, waitForLink, type LinkedNode } from '../helpers/peers.js';

const SECRET = 'cli-placement-test-secret-0123456789';
const secrets = mkdtempSync(join(tmpdir(), 'sluice-cli-place-'));
let nodes = new Map<string, LinkedNode>();
const a = (): LinkedNode => nodes.get('a')!;
const WORKFLOW = 'spread';

beforeAll(async () => {
  const secretFile = join(secrets, 'cluster.secret');
  writeFileSync(secretFile, `${SECRET}\n`, { mode: 0o600 });
  const [pa, pb] = (await freePorts(2)) as [number, number];
  const peers = `a=ws://127.0.0.1:${pa},b=ws://127.0.0.1:${pb}`;
  nodes = await startNodes(
    [
      { name: 'a', port: pa },
      { name: 'b', port: pb },
    ].map((s) => ({ ...s, args: ['--listen', `127.0.0.1:${s.port}`, '--peers', peers, '--secret-file', secretFile, '--peer-heartbeat', '200ms'] })),
  );
  await waitForLink(nodes.get('a')!, nodes.get('b')!);
  await control(a().daemon.dir, 'POST', '/v1/workflows', { name: WORKFLOW, steps: { split: {}, map: { replicas: 4 } }, edges: [{ from: 'split', to: 'map' }] });
}, 60_000);

afterAll(async () => {
  const deaths = await stopNodes(nodes);
  rmSync(secrets, { recursive: true, force: true });
  expect(deaths).toEqual([]);
});

function sluice(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, SLUICE_DIR: a().daemon.dir }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return once(child, 'exit').then(([code]) => ({ code: code as number | null, stdout, stderr }));
}

/** `sluice run create spread PLACES...`, then the nodes of each step as `run show --json` gives them. */
async function placed(...places: string[]): Promise<Record<string, string[]>> {
  const created = await sluice(['run', 'create', WORKFLOW, ...places.flatMap((p) => ['--place', p]), '--json']);
  expect(created.code, created.stderr).toBe(0);
  const { run } = JSON.parse(created.stdout) as { run: string };
  const shown = await sluice(['run', 'show', run, '--json']);
  expect(shown.code, shown.stderr).toBe(0);
  const { steps } = JSON.parse(shown.stdout) as { steps: Record<string, { nodes: string[] }> };
  expect((await sluice(['run', 'delete', run])).code).toBe(0);
  return Object.fromEntries(Object.entries(steps).map(([step, s]) => [step, s.nodes]));
}

describe('run create --place', () => {
  it('STEP=N1,N2,... puts instance i on the i-th node', async () => {
    expect(await placed('map=a,b,b,a', 'split=b')).toEqual({ map: ['a', 'b', 'b', 'a'], split: ['b'] });
  });

  it('STEP.I=NODE places one instance; the others stay on the node asked, as for a step not placed', async () => {
    expect(await placed('map.1=b', 'map.3=b')).toEqual({ map: ['a', 'b', 'a', 'b'], split: ['a'] });
    expect(await placed('map=b,b', 'map.3=b')).toEqual({ map: ['b', 'b', 'a', 'b'], split: ['a'] });
  });

  it('STEP=NODE keeps its meaning: every instance there', async () => {
    expect(await placed('map=b')).toEqual({ map: ['b', 'b', 'b', 'b'], split: ['a'] });
  });

  it.each([
    [['map=a', 'map=b'], '--place "map=b": step "map" (every instance) is already placed by --place "map=a"; place each instance once'],
    [['map=a,b', 'map.1=a'], '--place "map.1=a": instance 1 of step "map" (on b) is already placed by --place "map=a,b"; place each instance once'],
    [['map.2=b', 'map=a'], '--place "map=a": instance 2 of step "map" is already placed by --place "map.2=b"; place each instance once'],
    [['map.0=a', 'map.0=b'], '--place "map.0=b": instance 0 of step "map" (on a) is already placed by --place "map.0=a"; place each instance once'],
    [['map.0=a,b'], '--place "map.0=a,b": one instance goes on one node; for instance i on the i-th node write map=a,b'],
    [['map.4=b'], '--place "map.4=b": step "map" of workflow "spread" has 4 instance(s), numbered 0 to 3; there is no instance 4'],
    [['map=a,,b'], '--place "map=a,,b": "" is not a node name'],
    [['map'], '--place "map": use STEP=NODE (every instance there), STEP=N1,N2,... (instance i on the i-th node) or STEP.I=NODE (instance I)'],
  ])('refuses %j with the reason, exit status 2, creating nothing', async (places, message) => {
    const before = (await control<unknown[]>(a().daemon.dir, 'GET', '/v1/runs')).body.length;
    const created = await sluice(['run', 'create', WORKFLOW, ...places.flatMap((p) => ['--place', p])]);
    expect(created.stderr.startsWith(`sluice: ${message}`), created.stderr).toBe(true);
    expect(created.code).toBe(2);
    expect((await control<unknown[]>(a().daemon.dir, 'GET', '/v1/runs')).body.length).toBe(before);
  });

  it('a list of more nodes than the step has instances is refused', async () => {
    const created = await sluice(['run', 'create', WORKFLOW, '--place', 'map=a,b,a,b,a']);
    expect(created.code).toBe(2);
    expect(created.stderr).toMatch(/^sluice: --place "map=a,b,a,b,a": step "map" of workflow "spread" has 4 instance\(s\), numbered 0 to 3; there is no instance 4/);
  });

  it('a step the workflow lacks is refused by the daemon, with its reason (exit status 1)', async () => {
    for (const place of ['nope=a', 'nope.1=a']) {
      const created = await sluice(['run', 'create', WORKFLOW, '--place', place]);
      expect(created.code).toBe(1);
      expect(created.stderr).toMatch(/^sluice: SLUICE_INVALID: placement names step "nope", which workflow "spread" does not have/);
    }
  });
});
