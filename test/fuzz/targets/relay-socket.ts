/**
 * Live relay-socket target: a real `sluice daemon` process, and many concurrent connections to
 * `<dir>/relay.sock`, each sending a mutated producer stream (relay-inputs.ts) and ending it at
 * a random point: a clean end, a half-close that waits for the daemon to close, a reset
 * (destroy) mid-stream, or lingering.
 *
 * The daemon runs with a short attach timeout (default 100 ms, its floor), so a complete valid
 * stream spills to the store and is acknowledged in a tenth of a second rather than a second, and
 * a memory budget that gives each of a batch's connections its full relay buffer. A batch is up to
 * 256 connections in flight at once.
 *
 * A case fails if the daemon keeps a connection open more than `CLOSE_DEADLINE_MS` after the
 * producer half-closed (it must drop it within its HELLO timeout); after each batch the daemon
 * must be alive, have printed no MaxListenersExceededWarning, and be back near its baseline of fds; after the last, a real stream through the
 * relay must arrive byte-exact. One case = one connection.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { RELAY_SOCKET } from '../../../transports/index.js';
import { startDaemonProcess, type DaemonProcess } from '../../helpers/daemon.js';
import type { Target } from '../harness.js';
import { describeRelayInput, relayCorpus, relayInput, sendRelayInput } from './relay-inputs.js';
import { assertAlive, fdCount, fdsBackNear, streamByteExact } from './live.js';

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round(Number(m[1]) / 1024) : -1;
}

export function relaySocketTarget(options: { batch?: number; attachTimeoutMs?: number } = {}): Target {
  const attachTimeoutMs = options.attachTimeoutMs ?? 100;
  const lingerMaxMs = 2 * attachTimeoutMs + 50;
  let daemon: DaemonProcess;
  let baseline = 0;
  let corpus: Buffer[][] = [];
  const stats: Record<string, number> = { answered: 0, closedByRelay: 0 };

  return {
    name: 'relay-socket',
    batch: options.batch ?? 256,
    stats,
    describe: (r) => describeRelayInput(relayInput(r, corpus, lingerMaxMs)),
    async setup() {
      // 256 connections × (8 MiB relay buffer + 192 KiB) fit in 4 GiB: a grant is bookkeeping, not an allocation
      daemon = await startDaemonProcess(['--attach-timeout', `${attachTimeoutMs}ms`, '--memory-budget', '4GiB', '--log-level', 'error']);
      corpus = await relayCorpus(daemon.dir);
      // warm the relay up (its first connection opens files it keeps), then take the baseline
      await streamByteExact(daemon.dir, 64 * 1024);
      await sleep(200);
      baseline = fdCount(daemon.child.pid!);
      stats.rssStartMiB = rssMiB(daemon.child.pid!);
    },
    async one(r) {
      await sendRelayInput(join(daemon.dir, RELAY_SOCKET), relayInput(r, corpus, lingerMaxMs), r, stats);
    },
    async reset() {
      if (daemon.child.exitCode !== null || daemon.child.signalCode !== null) {
        await daemon.restart();
        await sleep(200);
        baseline = fdCount(daemon.child.pid!);
      }
    },
    async check() {
      assertAlive(daemon);
      // listeners piling up on a connection (a farewell said twice, ...): the daemon's stderr says so
      if (daemon.logs().includes('MaxListenersExceededWarning')) throw new Error(`the daemon warned:\n${daemon.logs().split('\n').filter((l) => l.includes('Warning')).join('\n')}`);
      await fdsBackNear(daemon, baseline, 16, 11_000, 10);
    },
    async final() {
      assertAlive(daemon);
      await fdsBackNear(daemon, baseline, 16, 11_000);
      await streamByteExact(daemon.dir);
      assertAlive(daemon);
      stats.fdsAtEnd = fdCount(daemon.child.pid!);
      stats.fdBaseline = baseline;
      stats.rssEndMiB = rssMiB(daemon.child.pid!);
    },
    async teardown() {
      await daemon?.stop();
    },
  };
}
