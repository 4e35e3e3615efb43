/**
 * A rolling update replaces the daemon of a node: SIGTERM, a grace period (`--grace`), a new
 * daemon on the same directory. Streams in flight finish or go through the store; nothing is
 * lost; the daemon exits within the grace period and admits no new work meanwhile.
 */
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { connect } from '../../client/index.js';
import { runFunction, startDaemonProcess, waitForChannelState } from '../helpers/daemon.js';

const MiB = 1024 * 1024;
const GRACE_MS = 3_000;

describe('a graceful rollout', () => {
  it('SIGTERM with a stream whose consumer has not come: no new runs admitted, the stream goes to the store within the grace period, and the next daemon delivers it byte-exact', async () => {
    const daemon = await startDaemonProcess(['--grace', `${GRACE_MS}ms`, '--attach-timeout', '1m', '--segment-size', '1MiB']);
    try {
      await control(daemon.dir, 'POST', '/v1/workflows', { name: 'roll', steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
      const { body: run } = await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: 'roll' });
      // held by the relay (less than its buffer), waiting for a consumer that comes only after the rollout
      const producer = runFunction(daemon.dir, run, 'p', ['source', String(5 * MiB), '31']);
      await waitForChannelState(daemon.dir, run.run, 'relaying');
      const exited = once(daemon.child, 'exit');
      const signalled = Date.now();
      daemon.child.kill('SIGTERM');
      await sleep(300);
      // draining: no new run is admitted, the stream in flight is still held
      await expect(control(daemon.dir, 'POST', '/v1/runs', { workflow: 'roll' })).rejects.toMatchObject({ code: 'SLUICE_UNAVAILABLE', message: expect.stringMatching(/is stopping/) });
      expect(daemon.child.exitCode).toBeNull();
      const [code] = await exited;
      const took = Date.now() - signalled;
      expect(code).toBe(0);
      expect(took).toBeLessThan(GRACE_MS + 1_000);
      expect(daemon.logs()).toMatch(/streams still waiting for their consumer go to the object store/);
      expect(daemon.logs()).not.toMatch(/grace period over: cutting streams in flight/);
      // the producer was acknowledged: its stream is stored
      const sent = await producer.done;
      expect(sent.code).toBe(0);

      await daemon.restart(); // the new daemon of the rollout, on the same directory
      const got = await runFunction(daemon.dir, run, 'c', ['sink']).done;
      expect(got.result).toEqual({ bytes: 5 * MiB, sha256: sent.result.sha256 });
    } finally {
      await daemon.stop();
    }
  }, 60_000);

  it('SIGTERM mid-stream to an attached consumer: the stream completes and the daemon exits at once after it, well within the grace period', async () => {
    const daemon = await startDaemonProcess(['--grace', '20s']);
    try {
      await control(daemon.dir, 'POST', '/v1/workflows', { name: 'live', steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c', persist: true }] });
      const { body: run } = await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: 'live' });
      const consumer = runFunction(daemon.dir, run, 'c', ['sink']);
      const producer = runFunction(daemon.dir, run, 'p', ['source', String(48 * MiB), '5']);
      await waitForChannelState(daemon.dir, run.run, 'relaying');
      const exited = once(daemon.child, 'exit');
      const signalled = Date.now();
      daemon.child.kill('SIGTERM');
      const [sent, got] = await Promise.all([producer.done, consumer.done]);
      const [code] = await exited;
      expect(code).toBe(0);
      expect(Date.now() - signalled).toBeLessThan(15_000);
      expect(sent.result.error).toBeUndefined();
      expect(got.result).toEqual({ bytes: 48 * MiB, sha256: sent.result.sha256 });
    } finally {
      await daemon.stop();
    }
  }, 60_000);

  it('SIGTERM with a consumer that stalls: the daemon still exits within the grace period, and both ends get a typed error, never a short stream that looks complete', async () => {
    const daemon = await startDaemonProcess(['--grace', `${GRACE_MS}ms`]);
    try {
      await control(daemon.dir, 'POST', '/v1/workflows', { name: 'stall', steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c', persist: true }] });
      const { body: run } = await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: 'stall' });
      const consumer = await connect({ dir: daemon.dir, run: run.run, step: 'c', token: run.token });
      const input = consumer.input();
      let received = 0;
      input.on('data', (chunk: Buffer) => (received += chunk.length));
      const outcome = new Promise<{ code?: string }>((resolve) => input.once('end', () => resolve({})).once('error', (err: { code?: string }) => resolve(err)));
      const producer = runFunction(daemon.dir, run, 'p', ['source', String(256 * MiB), '3']);
      while (received === 0) await sleep(10);
      input.pause(); // stalls: the stream cannot finish
      const exited = once(daemon.child, 'exit');
      const signalled = Date.now();
      daemon.child.kill('SIGTERM');
      const [code] = await exited;
      expect(code).toBe(0);
      expect(Date.now() - signalled).toBeLessThan(GRACE_MS + 1_500);
      expect(daemon.logs()).toMatch(/grace period over: cutting streams in flight/);
      input.resume();
      expect((await outcome).code).toMatch(/^SLUICE_(TRUNCATED|PRODUCER_ABORTED|UNAVAILABLE)$/);
      const sent = await producer.done;
      expect(sent.code).toBe(1);
      expect(sent.result.error?.code).toMatch(/^SLUICE_/);
    } finally {
      await daemon.stop();
    }
  }, 60_000);
});
