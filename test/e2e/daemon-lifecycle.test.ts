/** The daemon process: start-up errors, graceful shutdown with a stream in flight. */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { cli, runFunction, startDaemonProcess, waitForChannelState } from '../helpers/daemon.js';

const MiB = 1024 * 1024;

describe('the daemon process', () => {
  it('refuses a bad option at start with a message naming it, exit status 1', async () => {
    const child = spawn(process.execPath, [cli, 'daemon', '--relay-buffer', '8MB', '--dir', '/tmp/sluice-never'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const [code] = await once(child, 'exit');
    expect(code).toBe(1);
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
});
