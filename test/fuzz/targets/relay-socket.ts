/**
 * Live relay-socket target: a real `sluice daemon` process, and many concurrent connections to
 * `<dir>/relay.sock`, each sending a mutated producer stream — the bytes a real ChannelWriter
 * writes (HELLO + DATA + END), for a channel that exists (right or wrong token), one that does
 * not, a balance-edge HELLO, an empty stream — then ending at a random point: a clean end, a
 * half-close that waits for the daemon to close, a reset (destroy) mid-stream, or lingering.
 *
 * A case fails if the daemon keeps a connection open more than `CLOSE_DEADLINE_MS` after the
 * producer half-closed (it must drop it within its HELLO timeout); after each batch the daemon
 * must be alive and back near its baseline of fds; after the last, a real stream through the
 * relay must arrive byte-exact. One case = one connection.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { control } from '../../../client/control.js';
import { RELAY_SOCKET } from '../../../transports/index.js';
import { startDaemonProcess, type DaemonProcess } from '../../helpers/daemon.js';
import { chance, chunk, ending, mutate, pick, randomBytes, type Prng } from '../gen.js';
import { producerStream } from '../gen.js';
import type { Target } from '../harness.js';
import { assertAlive, fdCount, fdsBackNear, streamByteExact } from './live.js';

/** The daemon's HELLO timeout (server/paths/ingress.ts) plus slack. */
const CLOSE_DEADLINE_MS = 12_000;

export function relaySocketTarget(options: { batch?: number } = {}): Target {
  let daemon: DaemonProcess;
  let baseline = 0;
  let corpus: Buffer[][] = [];
  const stats: Record<string, number> = { answered: 0, closedByDaemon: 0 };

  function relayInput(r: Prng): { chunks: Buffer[]; end: ReturnType<typeof ending>; cutAt: number; lingerMs: number } {
    const { bytes } = mutate(r, pick(r, corpus));
    const chunks = chunk(r, bytes);
    return { chunks, end: ending(r), cutAt: r.int(0, chunks.length), lingerMs: r.int(0, 1000) };
  }

  async function send(input: ReturnType<typeof relayInput>, r: Prng): Promise<void> {
    const sock: Socket = netConnect(join(daemon.dir, RELAY_SOCKET));
    sock.on('error', () => undefined);
    let answered = false;
    sock.on('data', () => (answered = true));
    const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
    await new Promise<void>((resolve) => {
      sock.once('connect', resolve);
      sock.once('close', resolve);
    });
    const { chunks, end, cutAt } = input;
    const upTo = end === 'destroy-midway' || end === 'half-close-wait' ? cutAt : chunks.length;
    for (let i = 0; i < upTo && !sock.destroyed; i++) {
      if (!sock.write(chunks[i]!) || chance(r, 2 / chunks.length)) await sleep(0);
    }
    if (end === 'destroy' || end === 'destroy-midway') {
      sock.destroy();
    } else if (end === 'linger') {
      await Promise.race([closed, sleep(input.lingerMs)]);
      sock.destroy();
    } else {
      // a clean end, or a half-close part way: the daemon must close its side in time
      sock.end();
      const inTime = await Promise.race([closed.then(() => true), sleep(CLOSE_DEADLINE_MS).then(() => false)]);
      if (!inTime) {
        sock.destroy();
        throw new Error(`the daemon kept the connection open ${CLOSE_DEADLINE_MS} ms after the producer half-closed it (${upTo} of ${chunks.length} chunks sent)`);
      }
      stats.closedByDaemon!++;
    }
    await closed;
    if (answered) stats.answered!++;
  }

  return {
    name: 'relay-socket',
    batch: options.batch ?? 32,
    stats,
    describe: (r) => {
      const i = relayInput(r);
      return `${i.end} after chunk ${i.cutAt} of ${i.chunks.length}: ${Buffer.concat(i.chunks).toString('hex')}`;
    },
    async setup() {
      daemon = await startDaemonProcess(['--attach-timeout', '1s', '--log-level', 'error']);
      await control(daemon.dir, 'POST', '/v1/workflows', { name: 'fz', steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
      await control(daemon.dir, 'POST', '/v1/workflows', { name: 'fzb', steps: { p: {}, c: { replicas: 2 } }, edges: [{ from: 'p', to: 'c', fanout: 'balance' }] });
      const { body: run } = await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: 'fz', id: 'fz-run', ttlSeconds: 3600 });
      const { body: brun } = await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: 'fzb', id: 'fzb-run', ttlSeconds: 3600 });
      const r0 = { run: run.run, from: { step: 'p', index: 0 }, to: { step: 'c', index: 0 }, token: run.token };
      const hellos: Array<Record<string, unknown>> = [
        r0,
        r0,
        { ...r0, token: 'x'.repeat(run.token.length) },
        { ...r0, run: 'no-such-run' },
        { ...r0, to: { step: 'c', index: 7 } },
        { ...r0, from: { step: '../p', index: 0 } },
        { run: brun.run, from: { step: 'p', index: 0 }, to: { step: 'c' }, token: brun.token, key: 'k' },
        {},
      ];
      const seedR = (await import('../../unit/prng.js')).prng(7);
      corpus = [];
      for (const hello of hellos) {
        for (const sizes of [[], [5], [1000, 70_000], [200_000]]) {
          corpus.push(await producerStream(hello, sizes.map((n) => randomBytes(seedR, n)), chance(seedR, 0.5) ? 16 * 1024 : undefined));
        }
      }
      // warm the relay up (its first connection opens files it keeps), then take the baseline
      await streamByteExact(daemon.dir, 64 * 1024);
      await sleep(200);
      baseline = fdCount(daemon.child.pid!);
    },
    async one(r) {
      await send(relayInput(r), r);
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
      await fdsBackNear(daemon, baseline, 16, 11_000);
    },
    async final() {
      assertAlive(daemon);
      await fdsBackNear(daemon, baseline, 16, 11_000);
      await streamByteExact(daemon.dir);
      assertAlive(daemon);
      stats.fdsAtEnd = fdCount(daemon.child.pid!);
      stats.fdBaseline = baseline;
    },
    async teardown() {
      await daemon?.stop();
    },
  };
}
