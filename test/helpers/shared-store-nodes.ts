/**
 * Three nodes as network namespaces with a `sluice daemon` on each, all peered: n0 and n1 share
 * one directory store (a directory every namespace sees), n2 keeps its own. The set-up of the
 * tests that move streams through a store across nodes (failover, rollouts).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { control } from '../../client/control.js';
import { startDaemonProcess, type DaemonProcess } from './daemon.js';
import { createCluster, type Cluster } from '../../harness/netns.js';

/** Each daemon's --listen port, on its node's address. */
const PORT = 7700;

export interface SharedStoreNodes {
  cluster: Cluster;
  /** n0, n1, n2 */
  daemons: DaemonProcess[];
  /** the directory holding the shared store and the cluster secret */
  shared: string;
  stop(): Promise<void>;
}

/**
 * Start the three nodes on subnet 10.213.`subnet`.0/24 (distinct per test file: files run in
 * parallel), each daemon with `--peer-heartbeat 200ms --segment-size 256KiB` and `extraArgs`;
 * resolves once every daemon has both its links up.
 */
export async function startSharedStoreNodes(subnet: number, extraArgs: string[] = []): Promise<SharedStoreNodes> {
  const cluster = await createCluster(3, { subnet });
  const shared = mkdtempSync(join(tmpdir(), 'sluice-shared-store-'));
  let daemons: DaemonProcess[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(daemons.map((d) => d.stop()));
    await cluster.destroy();
    rmSync(shared, { recursive: true, force: true });
  };
  try {
    const secretFile = join(shared, 'secret');
    writeFileSync(secretFile, `shared-store-nodes-secret-${subnet}-0123456789`, { mode: 0o600 });
    const peers = cluster.nodes.map((n) => `n${n.index}=ws://${n.address}:${PORT}`).join(',');
    daemons = await Promise.all(
      cluster.nodes.map((n) =>
        startDaemonProcess(
          [
            ...['--listen', `${n.address}:${PORT}`, '--peers', peers, '--secret-file', secretFile, '--peer-heartbeat', '200ms', '--segment-size', '256KiB', ...extraArgs],
            ...(n.index < 2 ? ['--store', `file://${join(shared, 'store')}`] : []),
          ],
          { node: `n${n.index}`, spawn: (cmd, args, opts) => n.spawn(cmd, args, opts) },
        ),
      ),
    );
    for (const d of daemons) await linksUp(d, 2);
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  return { cluster, daemons, shared, stop };
}

/** Until `d` reports at least `count` peer links up (20 s at most). */
export async function linksUp(d: DaemonProcess, count: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const { body } = await control<{ peers: Array<{ state: string }> }>(d.dir, 'GET', '/v1/status');
    if (body.peers.filter((p) => p.state === 'up').length >= count) return;
    if (Date.now() > deadline) throw new Error(`links not up: ${JSON.stringify(body.peers)}`);
    await sleep(50);
  }
}
