/**
 * In-process relay target: a real `Relay` (the `Ingress` of server/paths/ingress.ts) wired as the daemon wires it on one
 * node (test/helpers/one-node.ts: cluster, fallback to a directory store, memory budget, a real
 * balancer), listening on `<dir>/relay.sock`, with the control API on `<dir>/daemon.sock`; many
 * concurrent connections from this same process to relay.sock, each sending a mutated producer
 * stream (relay-inputs.ts) and ending it by EOF, half-close, reset or lingering.
 *
 * A case fails if the relay keeps a half-closed connection open past `CLOSE_DEADLINE_MS` (its
 * HELLO timeout plus slack); the harness fails a batch on any uncaught exception or unhandled
 * rejection in the process, and a batch on a MaxListenersExceededWarning (listeners piling up on a
 * connection); after each batch the relay must hold no connection
 * (`activeChannels` 0), every grant of the memory budget must be back, and the process's fds must
 * be back near their baseline. After the last batch a real stream (ChannelWriter → relay →
 * consumer, through the client library) must arrive byte-exact. One case = one connection.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { buildApi, type ApiServer } from '../../../server/api.js';
import { Balancer } from '../../../server/balance.js';
import { createMetrics } from '../../../server/metrics.js';
import type { Ingress as Relay } from '../../../server/paths/ingress.js';
import { RunRegistry } from '../../../server/runs.js';
import type { Workflow } from '../../../server/workflow.js';
import { DAEMON_SOCKET, RELAY_SOCKET, type MemoryBudget } from '../../../transports/index.js';
import { wireOneNode } from '../../helpers/one-node.js';
import type { Target } from '../harness.js';
import { describeRelayInput, relayCorpus, relayInput, sendRelayInput } from './relay-inputs.js';
import { streamByteExact } from './live.js';

const fds = (): number => readdirSync('/proc/self/fd').length;

export function relayTarget(options: { batch?: number; attachTimeoutMs?: number } = {}): Target {
  const attachTimeoutMs = options.attachTimeoutMs ?? 100;
  const lingerMaxMs = 2 * attachTimeoutMs + 50;
  let dir = '';
  let runs: RunRegistry;
  let relay: Relay;
  let budget: MemoryBudget;
  let balancer: Balancer;
  let api: ApiServer;
  let stopFallback: () => void = () => undefined;
  let baseline = 0;
  let corpus: Buffer[][] = [];
  const stats: Record<string, number> = { answered: 0, closedByRelay: 0, processWarnings: 0 };
  /** a MaxListenersExceededWarning on a socket: listeners piling up on one connection (a farewell said twice, ...) */
  let listenerWarning: Error | undefined;
  const onWarning = (w: Error): void => {
    stats.processWarnings!++;
    if (w.name === 'MaxListenersExceededWarning') listenerWarning ??= w;
  };

  /** Wait up to `timeoutMs` until the relay has let go of every connection and grant, and the fds are back. */
  async function settled(timeoutMs: number): Promise<void> {
    if (listenerWarning) {
      const w = listenerWarning;
      listenerWarning = undefined;
      throw new Error(`listeners piled up on one emitter: ${w.message}`, { cause: w });
    }
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const active = relay.activeChannels;
      const used = budget.used;
      const n = fds();
      if (active === 0 && used === 0 && n <= baseline + 8) return;
      if (Date.now() > deadline) {
        throw new Error(`${timeoutMs} ms after the batch's last connection closed the relay still holds ${active} connection(s), ${used} bytes of the memory budget (${budget.queued} waiting), and the process ${n} fds (baseline ${baseline}): a leak`);
      }
      await sleep(5);
    }
  }

  return {
    name: 'relay',
    batch: options.batch ?? 256,
    stats,
    describe: (r) => describeRelayInput(relayInput(r, corpus, lingerMaxMs)),
    async setup() {
      process.on('warning', onWarning);
      dir = mkdtempSync(join(tmpdir(), 'sluice-fuzz-relay-'));
      // FUZZ_DEBUG=1: the relay's debug log on standard output
      const log = pino({ level: process.env.FUZZ_DEBUG ? 'debug' : 'silent' });
      runs = new RunRegistry({ dir, node: 'node-a', runTtlSeconds: 3600, maxRuns: 64, log });
      await runs.start();
      const metrics = createMetrics({ runs });
      const workflows = new Map<string, Workflow>();
      balancer = new Balancer({
        node: 'node-a',
        maxStreams: 4,
        outlier: { consecutiveFailures: 5, baseEjectionMs: 1000, maxEjectionMs: 10_000, maxEjectedPercent: 50 },
        waitMs: attachTimeoutMs,
        log,
        share: () => undefined,
      });
      // as the daemon with --attach-timeout 100ms and a budget a batch's connections all fit in
      const wired = wireOneNode({
        dir,
        runs,
        log,
        metrics,
        workflows,
        bindTimeoutMs: 1000,
        attachTimeoutMs,
        budgetBytes: 4 * 2 ** 30,
        relayBufferBytes: 8 << 20,
        balance: (run, edge, from, key) => balancer.pick(run, edge, from, key),
      });
      ({ relay, budget } = wired);
      await wired.fallback.start();
      stopFallback = () => wired.fallback.stop();
      await relay.start();
      api = buildApi({ node: 'node-a', version: 'fuzz', runs, cluster: wired.cluster, peers: undefined, relay, balancer, metrics, workflows, binder: wired.binder, maxBodyBytes: 1 << 20, ready: () => true });
      await api.listen({ path: join(dir, DAEMON_SOCKET) });
      corpus = await relayCorpus(dir);
      // warm up (the first stream opens what the relay keeps open), then take the baseline
      await streamByteExact(dir, 64 * 1024);
      await sleep(200);
      baseline = fds();
    },
    async one(r) {
      await sendRelayInput(join(dir, RELAY_SOCKET), relayInput(r, corpus, lingerMaxMs), r, stats);
    },
    async check() {
      await settled(11_000);
    },
    async final() {
      await settled(11_000);
      await streamByteExact(dir);
      await settled(11_000);
      stats.fdsAtEnd = fds();
      stats.fdBaseline = baseline;
      stats.budgetPeakMiB = Math.round(budget.peak / 2 ** 20);
      stats.rssMiB = Math.round(process.memoryUsage().rss / 2 ** 20);
    },
    async teardown() {
      process.off('warning', onWarning);
      await api?.close();
      await relay?.stop();
      relay?.abortInFlight();
      balancer?.stop();
      stopFallback();
      await runs?.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    },
  };
}
