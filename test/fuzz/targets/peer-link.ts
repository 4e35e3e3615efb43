/**
 * Live peer-link target: a real daemon serving peer links on loopback; each case is a peer that
 * knows the cluster secret (it passes the ws HMAC handshake), then sends a mutated peer-link
 * hello (JSON), and — if the daemon answers — mutated mux frames: OPENs of the control endpoint
 * carrying mutated control requests (prepare, open, workflows, stored, failed, delete, replicas)
 * as records, OPENs of channel endpoints with stream bytes, CREDIT, CLOSE, RESET; then it ends,
 * resets, or half-closes and waits for the daemon to close. The daemon must close every link
 * within its handshake timeout once the peer has ended, stay alive, come back to its fds, and
 * carry a real stream byte-exact afterwards. One case = one peer link.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PEER_LINK_PATH } from '../../../server/peers.js';
import { FrameType, WsTransport, encodeControl, encodeHeader, encodeRecord, firstChunk, type Connection } from '../../../transports/index.js';
import { startDaemonProcess, type DaemonProcess } from '../../helpers/daemon.js';
import { freePorts } from '../../helpers/peers.js';
import { chance, chunk, dataFrame, ending, mutate, mutateBytes, mutateJson, pick, type Prng } from '../gen.js';
import type { Target } from '../harness.js';
import { assertAlive, fdCount, fdsBackNear, streamByteExact } from './live.js';

const SECRET = 'fuzz-cluster-secret-0123456789abcdef';
/** the daemon's peer handshake timeout (server/peers.ts) plus slack */
const CLOSE_DEADLINE_MS = 8_000;
const WF = { name: 'pfz', steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] };

function request(r: Prng, from: string): Record<string, unknown> {
  const run = pick(r, ['prun-1', 'prun-2', 'fz-run']);
  switch (r.int(0, 6)) {
    case 0:
      return { op: 'workflows', workflows: [WF] };
    case 1:
      return { op: 'prepare', run, token: 'y'.repeat(43), workflow: WF, placement: { p: [from], c: ['node-a'] }, ttlSeconds: 60, store: 'file:///nowhere' };
    case 2:
      return { op: 'open', run };
    case 3:
      return { op: 'stored', run, channel: 'p.0-c.0' };
    case 4:
      return { op: 'failed', run, channel: 'p.0-c.0', message: 'fuzz' };
    case 5:
      return { op: 'replicas', node: from, replicas: [{ run, step: 'c', index: 0, streams: 1 }] };
    default:
      return { op: 'delete', run };
  }
}

function peerInput(r: Prng, slot: number): { hello: Buffer; chunks: Buffer[]; end: ReturnType<typeof ending>; cutAt: number } {
  const node = `fz-${slot}`;
  const helloValue: unknown = chance(r, 0.8) ? { sluice: 'peer-link', node, to: 'node-a' } : mutateJson(r, { sluice: 'peer-link', node, to: 'node-a' });
  let hello: Buffer = Buffer.from(JSON.stringify(helloValue) ?? '');
  if (chance(r, 0.1)) hello = mutateBytes(r, hello);
  const units: Buffer[] = [];
  let id = 1;
  for (let n = r.int(1, 4); n > 0; n--, id += 2) {
    if (chance(r, 0.6)) {
      units.push(encodeControl(FrameType.OPEN, id, { endpoint: 'sluice.control', window: 1 << 20 }));
      const body = chance(r, 0.8) ? request(r, node) : (mutateJson(r, request(r, node)) as Record<string, unknown>);
      let record: Buffer;
      try {
        record = encodeRecord(body);
      } catch {
        record = encodeRecord({ op: 'delete', run: 'x' });
      }
      units.push(Buffer.concat([encodeHeader(FrameType.DATA, id, record.length), record]));
      units.push(encodeControl(FrameType.CLOSE, id, {}));
    } else {
      units.push(encodeControl(FrameType.OPEN, id, { endpoint: pick(r, ['ch/fz-run/p.0-c.0', 'ch/prun-1/p.0-c.0', 'ch/../x', 'nothing']), window: 1 << 20 }));
      units.push(dataFrame(r, id));
      units.push(encodeControl(pick(r, [FrameType.CLOSE, FrameType.RESET, FrameType.CREDIT]), id, { bytes: 4096, code: 'SLUICE_TRUNCATED', message: 'fuzz' }));
    }
  }
  const { bytes } = mutate(r, units);
  const chunks = chunk(r, bytes);
  return { hello, chunks, end: ending(r), cutAt: r.int(0, chunks.length) };
}

export function peerLinkTarget(options: { batch?: number } = {}): Target {
  const batch = options.batch ?? 8;
  let daemon: DaemonProcess;
  let port = 0;
  let baseline = 0;
  let transport: WsTransport;
  const stats: Record<string, number> = { helloAnswered: 0, helloRefused: 0, closedByDaemon: 0 };

  async function one(r: Prng, index: number): Promise<void> {
    const input = peerInput(r, index % batch);
    const conn: Connection = await transport.dial(`127.0.0.1:${port}`, { timeoutMs: 5_000 });
    conn.input.on('error', () => undefined);
    conn.output.on('error', () => undefined);
    const closed = new Promise<void>((resolve) => {
      conn.input.once('close', () => resolve());
      conn.input.once('end', () => resolve());
    });
    conn.output.write(input.hello);
    let answered = false;
    try {
      await firstChunk(conn.input, 6_000);
      answered = true;
      stats.helloAnswered!++;
    } catch {
      stats.helloRefused!++;
    }
    conn.input.resume();
    const { chunks, end, cutAt } = input;
    if (answered) {
      const upTo = end === 'destroy-midway' || end === 'half-close-wait' ? cutAt : chunks.length;
      for (let i = 0; i < upTo && !conn.output.destroyed; i++) {
        conn.output.write(chunks[i]!);
        if (chance(r, 2 / chunks.length)) await sleep(chance(r, 0.5) ? 0 : 20);
      }
    }
    if (end === 'destroy' || end === 'destroy-midway') conn.destroy();
    else if (end === 'linger') {
      await Promise.race([closed, sleep(r.int(0, 500))]);
      conn.destroy();
    } else {
      conn.output.end();
      const inTime = await Promise.race([closed.then(() => true), sleep(CLOSE_DEADLINE_MS).then(() => false)]);
      conn.destroy();
      if (!inTime) throw new Error(`the daemon kept a peer link open ${CLOSE_DEADLINE_MS} ms after the peer ended it (hello ${answered ? 'answered' : 'not answered'})`);
      stats.closedByDaemon!++;
    }
  }

  return {
    name: 'peer-link',
    batch,
    stats,
    describe: (r) => {
      const i = peerInput(r, 0);
      return `hello ${JSON.stringify(i.hello.toString('latin1'))}, then ${i.end} after chunk ${i.cutAt} of ${i.chunks.length}: ${Buffer.concat(i.chunks).toString('hex')}`;
    },
    async setup() {
      [port] = (await freePorts(1)) as [number];
      daemon = await startDaemonProcess(['--listen', `127.0.0.1:${port}`, '--log-level', 'error', '--attach-timeout', '1s'], { env: { ...process.env, SLUICE_SECRET: SECRET } });
      writeFileSync(join(daemon.dir, 'fuzz-note'), 'peer-link fuzz target\n');
      transport = new WsTransport({ secret: SECRET, path: PEER_LINK_PATH });
      await streamByteExact(daemon.dir, 64 * 1024);
      await sleep(200);
      baseline = fdCount(daemon.child.pid!);
    },
    one,
    async reset() {
      if (daemon.child.exitCode !== null || daemon.child.signalCode !== null) {
        await daemon.restart();
        await sleep(200);
        baseline = fdCount(daemon.child.pid!);
      }
    },
    async check() {
      assertAlive(daemon);
      await fdsBackNear(daemon, baseline, 16, 8_000);
    },
    async final() {
      assertAlive(daemon);
      await fdsBackNear(daemon, baseline, 16, 8_000);
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
