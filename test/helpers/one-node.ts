/**
 * The in-process pieces of one daemon with no peers — cluster, relay, binder — put together as
 * the daemon does, for tests that drive the control API through inject() or a socket.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { Binder } from '../../server/binding.js';
import { Cluster } from '../../server/cluster.js';
import { Fallback } from '../../server/fallback.js';
import type { Metrics } from '../../server/metrics.js';
import { Relay, type RelayOptions } from '../../server/relay.js';
import type { RunRegistry } from '../../server/runs.js';
import type { Workflow } from '../../server/workflow.js';
import { DirectoryStore, MemoryBudget } from '../../transports/index.js';

export interface OneNode {
  cluster: Cluster;
  relay: Relay;
  binder: Binder;
  /** the memory budget the relay and the cluster take their buffers from */
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
  balance?: RelayOptions['balance'];
}): OneNode {
  const { dir, runs, log, metrics, workflows } = options;
  const attachTimeoutMs = options.attachTimeoutMs ?? 1000;
  const relayBufferBytes = options.relayBufferBytes ?? 1 << 20;
  const binder = new Binder({ node: 'node-a', runs, timeoutMs: options.bindTimeoutMs, log });
  const fallback = new Fallback({ store: new DirectoryStore(join(dir, 'store')), segmentBytes: 1 << 20, log, metrics });
  const budget = new MemoryBudget(options.budgetBytes ?? 64 << 20);
  const cluster = new Cluster({ node: 'node-a', dir, runs, peers: undefined, budget, attachTimeoutMs, relayBufferBytes, replayBytes: 3 << 20, log, metrics, workflows, fallback, onRunReady: (run) => binder.ready(run) });
  const relay = new Relay(runs, {
    dir,
    budget,
    relayBufferBytes,
    attachTimeoutMs,
    log,
    metrics,
    fallback,
    plan: (channel) => cluster.routeOf(channel, 'producer'),
    forward: (...args) => cluster.forward(...args),
    link: (...args) => cluster.link(...args),
    balance: options.balance ?? (() => Promise.reject(new Error('no balance edges in these tests'))),
  });
  return { cluster, relay, binder, budget, fallback };
}
