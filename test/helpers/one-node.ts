/**
 * The in-process pieces of one daemon with no peers — cluster, peer leg, local delivery, the relay
 * socket's ingress, binder — put together as the daemon does, for tests that drive the control API
 * through inject() or a socket.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { Binder } from '../../server/binding.js';
import { Cluster } from '../../server/cluster.js';
import { Fallback } from '../../server/paths/store.js';
import type { Balancer, Lease } from '../../server/balance.js';
import type { Metrics } from '../../server/metrics.js';
import { Ingress } from '../../server/paths/ingress.js';
import { LocalDelivery } from '../../server/paths/local.js';
import { PeerLeg } from '../../server/paths/peer.js';
import type { RunRegistry } from '../../server/runs.js';
import type { Workflow } from '../../server/workflow.js';
import { DirectoryStore, MemoryBudget } from '../../transports/index.js';

export interface OneNode {
  cluster: Cluster;
  relay: Ingress;
  binder: Binder;
  /** the memory budget the ingress, local delivery and the peer leg take their buffers from */
  budget: MemoryBudget;
  fallback: Fallback;
}

/**
 * Wire node-a's pieces over `runs`, its store under `dir`/store, binds held up to `bindTimeoutMs`;
 * by default a 1 s attach timeout, a 64 MiB memory budget, 1 MiB relay buffers and no balance edges.
 */
export function wireOneNode(options: {
  dir: string;
  runs: RunRegistry;
  log: Logger;
  metrics: Metrics;
  workflows: Map<string, Workflow>;
  bindTimeoutMs: number;
  /** default 1 s */
  attachTimeoutMs?: number;
  /** default 64 MiB */
  budgetBytes?: number;
  /** default 1 MiB */
  relayBufferBytes?: number;
  /** picks the instance of a balance edge; default: refuses (no balance edges) */
  balance?: (...args: Parameters<Balancer['pick']>) => Promise<Lease>;
}): OneNode {
  const { dir, runs, log, metrics, workflows } = options;
  const attachTimeoutMs = options.attachTimeoutMs ?? 1000;
  const relayBufferBytes = options.relayBufferBytes ?? 1 << 20;
  const binder = new Binder({ node: 'node-a', runs, timeoutMs: options.bindTimeoutMs, log });
  const fallback = new Fallback({ store: new DirectoryStore(join(dir, 'store')), segmentBytes: 1 << 20, log, metrics });
  const budget = new MemoryBudget(options.budgetBytes ?? 64 << 20);
  const peer = new PeerLeg({ node: 'node-a', runs, peers: undefined, budget, attachTimeoutMs, relayBufferBytes, replayBytes: 3 << 20, log, metrics, fallback });
  const cluster = new Cluster({ node: 'node-a', dir, runs, peers: undefined, log, workflows, fallback, peer, onRunReady: (run) => binder.ready(run) });
  const local = new LocalDelivery({ relayBufferBytes, attachTimeoutMs, log, metrics, fallback, peer });
  const relay = new Ingress({
    runs,
    dir,
    budget,
    relayBufferBytes,
    attachTimeoutMs,
    log,
    metrics,
    peer,
    local,
    balancer: { pick: options.balance ?? (() => Promise.reject(new Error('no balance edges in these tests'))) },
  });
  return { cluster, relay, binder, budget, fallback };
}
