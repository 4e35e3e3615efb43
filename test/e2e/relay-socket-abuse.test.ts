/**
 * The relay socket is 0666: any local user can connect and send anything. Nothing sent there may
 * stop the daemon or make it hold a file descriptor after the connection ends.
 */
import { execFile } from 'node:child_process';
import { chmodSync, readdirSync } from 'node:fs';
import { promisify } from 'node:util';
import net from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { encodeControl, FrameType, RELAY_SOCKET } from '../../transports/index.js';
import { runFunction, startDaemonProcess, type DaemonProcess } from '../helpers/daemon.js';

const MiB = 1024 * 1024;
const run = promisify(execFile);
/** Can this process run a command as the unprivileged user `nobody` (root, with util-linux's setpriv)? */
const asNobody = process.getuid?.() === 0 && (await run('setpriv', ['--version']).then(() => true, () => false));

function fds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Connect to the relay socket, send `bytes`, then half-close (`end`) or vanish (`destroy`). */
function poke(dir: string, bytes: Buffer, then: 'end' | 'destroy' | 'stay'): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ path: join(dir, RELAY_SOCKET), allowHalfOpen: true });
    socket.on('error', () => undefined);
    socket.once('connect', () => {
      if (then !== 'stay') socket.resume(); // read what the daemon answers, so 'end' is seen
      if (bytes.length > 0) socket.write(bytes);
      if (then === 'end') socket.end();
      if (then === 'destroy') socket.destroy();
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/** Poll until `probe` holds, or fail after `timeoutMs` with `what`. */
async function eventually(what: string, probe: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`${what} within ${timeoutMs} ms`);
    await sleep(50);
  }
}

describe('the relay socket, abused by a local user', () => {
  let daemon: DaemonProcess;
  let baseline: number;

  beforeAll(async () => {
    daemon = await startDaemonProcess();
    await control(daemon.dir, 'POST', '/v1/workflows', { name: 'abuse', steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
    await sleep(200);
    baseline = fds(daemon.child.pid!);
  });

  afterAll(async () => {
    await daemon?.stop();
  });

  async function streamStillExact(): Promise<void> {
    expect(daemon.child.exitCode, daemon.logs()).toBeNull();
    const { body: run } = await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: 'abuse' });
    // producer first: its stream goes through the relay until the consumer attaches
    const producer = runFunction(daemon.dir, run, 'p', ['source', String(3 * MiB + 17), '5']);
    await sleep(100);
    const consumer = runFunction(daemon.dir, run, 'c', ['sink']);
    const [sent, got] = await Promise.all([producer.done, consumer.done]);
    expect(sent.result.error).toBeUndefined();
    expect(got.result.error).toBeUndefined();
    expect(got.result.sha256).toBe(sent.result.sha256);
  }

  it('survives a partial frame header followed by EOF (five bytes)', async () => {
    await poke(daemon.dir, Buffer.from([0x01, 0x01, 0x00, 0x00, 0x00]), 'end');
    await sleep(500);
    await streamStillExact();
  });

  it('survives a frame header and two payload bytes of a frame that promises more, then EOF', async () => {
    const frame = encodeControl(FrameType.HELLO, 0, { v: 1, run: 'x'.repeat(40) });
    await poke(daemon.dir, frame.subarray(0, 14), 'end');
    await poke(daemon.dir, frame.subarray(0, 14), 'destroy');
    await sleep(500);
    await streamStillExact();
  });

  it('survives garbage, and answers it with a typed ABORT before closing', async () => {
    const socket = await poke(daemon.dir, Buffer.from('GET / HTTP/1.1\r\n\r\n'), 'stay');
    const answer = await new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('end', () => resolve(Buffer.concat(chunks)));
    });
    expect(answer.length).toBeGreaterThan(0);
    expect(answer.toString('latin1')).toMatch(/SLUICE_PROTOCOL/);
    await streamStillExact();
  });

  it('gives back the descriptor of every connection half-closed before its first byte, within the HELLO timeout', async () => {
    const sockets = await Promise.all(Array.from({ length: 300 }, () => poke(daemon.dir, Buffer.alloc(0), 'end')));
    // the daemon closes its side of each: the clients see their sockets end
    await eventually('not every half-closed connection was closed by the daemon', () => sockets.every((s) => s.readableEnded || s.destroyed), 10_000);
    for (const s of sockets) s.destroy();
    await eventually(`the daemon's descriptors did not come back to ${baseline}`, () => fds(daemon.child.pid!) <= baseline + 2, 10_000);
    await streamStillExact();
  });

  it.skipIf(!asNobody)(`survives the five bytes and the fourteen sent by an unprivileged user${asNobody ? '' : ' (skipped: needs root and setpriv to act as nobody)'}`, async () => {
    chmodSync(daemon.dir, 0o711); // as a runtime directory is: traversable, so the 0666 socket is reachable
    const frame = encodeControl(FrameType.HELLO, 0, { v: 1, run: 'x'.repeat(40) });
    for (const bytes of [Buffer.from([0x01, 0x01, 0x00, 0x00, 0x00]), frame.subarray(0, 14)]) {
      // a plain socket client, run as nobody: connect, send, half-close, read the answer until the daemon closes
      const script = `const s = require('node:net').connect(process.argv[1], () => s.end(Buffer.from(process.argv[2], 'hex'))); s.resume(); s.on('error', () => {});`;
      await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script, join(daemon.dir, RELAY_SOCKET), bytes.toString('hex')], { timeout: 10_000 });
    }
    await sleep(500);
    await streamStillExact();
  });

  it('gives back the descriptor of connections that vanish mid-header', async () => {
    const frame = encodeControl(FrameType.HELLO, 0, { v: 1, run: 'r' });
    await Promise.all(Array.from({ length: 100 }, (_, i) => poke(daemon.dir, frame.subarray(0, 1 + (i % (frame.length - 1))), i % 2 ? 'destroy' : 'end')));
    await eventually(`the daemon's descriptors did not come back to ${baseline}`, () => fds(daemon.child.pid!) <= baseline + 2, 10_000);
    await streamStillExact();
  });
});
