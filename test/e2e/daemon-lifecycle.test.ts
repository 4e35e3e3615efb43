/** The daemon process: start-up errors, graceful shutdown with a stream in flight. */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { connect } from '../../client/index.js';
import { cli, runFunction, startDaemonProcess, waitForChannelState } from '../helpers/daemon.js';

const MiB = 1024 * 1024;

describe('the daemon process', () => {
  it('refuses a bad option at start with a message naming it, exit status 2 (bad usage)', async () => {
    const child = spawn(process.execPath, [cli, 'daemon', '--relay-buffer', '8MB', '--dir', '/tmp/sluice-never'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const [code] = await once(child, 'exit');
    expect(code).toBe(2);
    expect(stderr).toMatch(/SLUICE_CONFIG: .*--relay-buffer/);
  });

  it('refuses to open the control API to the network without a cluster secret', async () => {
    const { mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dir = mkdtempSync(join(tmpdir(), 'sluice-listen-'));
    const child = spawn(process.execPath, [cli, 'daemon', '--dir', dir, '--listen', '0.0.0.0:0', '--log-level', 'silent'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const [code] = await once(child, 'exit');
    expect(code).toBe(1);
    expect(stderr).toMatch(/SLUICE_CONFIG: --listen 0\.0\.0\.0:0 would open the control API to the network/);
  });

  it('on SIGTERM stops taking work, lets a relayed stream finish, then exits 0', async () => {
    const daemon = await startDaemonProcess(['--attach-timeout', '20s']);
    try {
      await control(daemon.dir, 'POST', '/v1/workflows', { name: 'drain', steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
      const { body: run } = await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: 'drain' });
      // less than the relay buffer: held by the relay (a larger stream would spill to the store)
      const producer = runFunction(daemon.dir, run, 'p', ['source', String(6 * MiB), '9']);
      await waitForChannelState(daemon.dir, run.run, 'relaying');
      daemon.child.kill('SIGTERM');
      const exited = once(daemon.child, 'exit');
      await sleep(200);
      // draining: not ready for new work, still alive for the stream in flight
      const ready = await control(daemon.dir, 'GET', '/readyz').then(
        () => 'ready',
        (err: { code?: string }) => err.code,
      );
      expect(ready).not.toBe('ready');
      expect(daemon.child.exitCode).toBeNull();
      const consumer = runFunction(daemon.dir, run, 'c', ['sink']);
      const got = await consumer.done;
      const sent = await producer.done;
      expect(got.result.error).toBeUndefined();
      expect(got.result.sha256).toBe(sent.result.sha256);
      const [code] = await exited;
      expect(code).toBe(0);
      expect(daemon.logs()).toMatch(/sluice daemon stopped/);
    } finally {
      await daemon.stop();
    }
  }, 60_000);

  it('takes its runs up again after a restart: a stream spilled before it reaches a consumer started after it', async () => {
    const daemon = await startDaemonProcess(['--attach-timeout', '500ms', '--segment-size', '1MiB']);
    try {
      await control(daemon.dir, 'POST', '/v1/workflows', { name: 'later', steps: { p: {}, c: {}, d: {} }, edges: [{ from: 'p', to: 'c' }, { from: 'p', to: 'd' }] });
      const { body: run } = await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: 'later' });
      const sent = await runFunction(daemon.dir, run, 'p', ['source', String(5 * MiB), '21', 'c']).done;
      expect(sent.code).toBe(0); // acknowledged: stored
      await daemon.restart(); // SIGKILL, then a new daemon on the same directory
      const { body } = await control<{ channels: Array<{ name: string }> }>(daemon.dir, 'GET', `/v1/runs/${run.run}`);
      expect(body.channels.map((c) => c.name).sort()).toEqual(['p.0-c.0', 'p.0-d.0']);
      const got = await runFunction(daemon.dir, run, 'c', ['sink']).done;
      expect(got.result).toMatchObject({ bytes: 5 * MiB, sha256: sent.result.sha256 });
      // and the run's other channel still works directly, its endpoints kept
      const consumer = runFunction(daemon.dir, run, 'd', ['sink']);
      const second = await runFunction(daemon.dir, run, 'p', ['source', String(2 * MiB), '22', 'd']).done;
      expect((await consumer.done).result).toMatchObject({ bytes: 2 * MiB, sha256: second.result.sha256 });
      await control(daemon.dir, 'DELETE', `/v1/runs/${run.run}`);
      await daemon.restart();
      await expect(control(daemon.dir, 'GET', `/v1/runs/${run.run}`)).rejects.toMatchObject({ code: 'SLUICE_NOT_FOUND' });
    } finally {
      await daemon.stop();
    }
  }, 60_000);

  it('on SIGTERM lets a stored stream being fed to its consumer finish before it exits', async () => {
    const daemon = await startDaemonProcess(['--attach-timeout', '300ms', '--segment-size', '1MiB']);
    try {
      await control(daemon.dir, 'POST', '/v1/workflows', { name: 'fed', steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
      const { body: run } = await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: 'fed' });
      const sent = await runFunction(daemon.dir, run, 'p', ['source', String(16 * MiB), '23']).done;
      expect(sent.code).toBe(0); // spilled: no consumer yet
      const consumer = await connect({ dir: daemon.dir, run: run.run, step: 'c', token: run.token });
      const input = consumer.input();
      const hash = createHash('sha256');
      let received = 0;
      input.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        received += chunk.length;
      });
      const ended = new Promise<void>((resolve, reject) => input.once('end', resolve).once('error', reject));
      while (received === 0) await sleep(10);
      input.pause(); // the daemon's feeder is now held back mid-stream
      const exited = once(daemon.child, 'exit');
      daemon.child.kill('SIGTERM');
      await sleep(500);
      expect(daemon.child.exitCode).toBeNull(); // draining: the stream in flight may finish
      input.resume();
      await ended;
      expect(received).toBe(16 * MiB);
      expect(hash.digest('hex')).toBe(sent.result.sha256);
      const [code] = await exited;
      expect(code).toBe(0);
    } finally {
      await daemon.stop();
    }
  }, 60_000);
});
