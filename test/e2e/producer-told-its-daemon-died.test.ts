/**
 * A producer streaming through its own node's daemon (the relay socket) whose daemon is killed
 * mid-stream is told SLUICE_UNAVAILABLE naming that daemon, not that its consumer closed
 * (issue 16, defect 9). Real daemon process, functions as processes, SIGKILL.
 */
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { runFunction, startDaemonProcess, waitForChannelState, writing } from '../helpers/daemon.js';

const MiB = 1024 * 1024;
const daemonBroke = /this node's daemon \(relay socket \S+relay\.sock\) broke mid-stream/;

async function relayedRun(dir: string, name: string): Promise<{ run: string; token: string }> {
  await control(dir, 'POST', '/v1/workflows', { name, steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
  return (await control<{ run: string; token: string }>(dir, 'POST', '/v1/runs', { workflow: name })).body;
}

describe('a producer whose own daemon dies mid-stream', () => {
  it('is told SLUICE_UNAVAILABLE naming its daemon while it waits for a consumer that has not attached', async () => {
    const daemon = await startDaemonProcess(['--attach-timeout', '20s']);
    try {
      const run = await relayedRun(daemon.dir, 'orphan');
      // less than the relay buffer: all of it with the daemon, the producer waiting for the verdict
      const producer = runFunction(daemon.dir, run, 'p', ['source', String(2 * MiB), '3']);
      await waitForChannelState(daemon.dir, run.run, 'relaying');
      daemon.child.kill('SIGKILL');
      await once(daemon.child, 'exit');
      const sent = await producer.done;
      expect(sent.code).toBe(1);
      expect(sent.result.error).toMatchObject({ code: 'SLUICE_UNAVAILABLE', message: expect.stringMatching(daemonBroke) });
      expect(sent.result.error?.message).not.toMatch(/consumer closed/);
    } finally {
      await daemon.stop();
    }
  });

  it('is told SLUICE_UNAVAILABLE naming its daemon while it is still writing', async () => {
    const daemon = await startDaemonProcess(['--attach-timeout', '20s']);
    try {
      const run = await relayedRun(daemon.dir, 'writing');
      // far more than the daemon takes in before the kill: only what came before it is written
      const producer = runFunction(daemon.dir, run, 'p', ['source', String(512 * MiB), '5']);
      await writing(producer.child);
      // its stream reached the daemon (its first bytes may wait in the process for the connection)
      await waitForChannelState(daemon.dir, run.run, 'relaying');
      daemon.child.kill('SIGKILL');
      await once(daemon.child, 'exit');
      const sent = await producer.done;
      expect(sent.code).toBe(1);
      expect(sent.result.error).toMatchObject({ code: 'SLUICE_UNAVAILABLE', message: expect.stringMatching(daemonBroke) });
    } finally {
      await daemon.stop();
    }
  });
});
