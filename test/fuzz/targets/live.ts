/** What the live targets check on a real daemon: it is alive, its fds are back, a stream through it is byte-exact. */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect } from '../../../client/sluice.js';
import { control } from '../../../client/control.js';
import type { DaemonProcess } from '../../helpers/daemon.js';

export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Throw, with the end of its log, if the daemon process has died. */
export function assertAlive(daemon: DaemonProcess): void {
  const { child } = daemon;
  if (child.exitCode !== null || child.signalCode !== null) {
    throw new Error(`the daemon died (${child.exitCode ?? child.signalCode}):\n${daemon.logs().split('\n').slice(-15).join('\n')}`);
  }
}

/** Wait up to `timeoutMs` for the daemon's open fds to come back to `baseline + slack`, looking every `pollMs`; throw if they do not. */
export async function fdsBackNear(daemon: DaemonProcess, baseline: number, slack: number, timeoutMs: number, pollMs = 100): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    assertAlive(daemon);
    const n = fdCount(daemon.child.pid!);
    if (n <= baseline + slack) return n;
    if (Date.now() > deadline) throw new Error(`the daemon holds ${n} fds, ${n - baseline} over its baseline of ${baseline}, ${timeoutMs} ms after the last connection closed (leak)`);
    await sleep(pollMs);
  }
}

let serial = 0;

/**
 * A fresh run p → c on the daemon, and `bytes` random bytes through it with the consumer
 * attaching late (so the stream goes producer → relay → consumer): throws unless the consumer
 * got exactly the producer's bytes (sha256), or if the producer fails, or it takes over `timeoutMs`.
 */
export async function streamByteExact(dir: string, bytes = 4 * 1024 * 1024, timeoutMs = 60_000): Promise<void> {
  const name = `fuzz-check-${process.pid}-${++serial}`;
  await control(dir, 'POST', '/v1/workflows', { name, steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
  const { body: run } = await control<{ run: string; token: string }>(dir, 'POST', '/v1/runs', { workflow: name });
  const payload = randomBytes(bytes);
  const want = createHash('sha256').update(payload).digest('hex');
  const producer = await connect({ dir, run: run.run, token: run.token, step: 'p', instance: 0 });
  const sent = pipeline(Readable.from([payload.subarray(0, bytes >> 1), payload.subarray(bytes >> 1)]), producer.output('c'));
  await sleep(300);
  const consumer = await connect({ dir, run: run.run, token: run.token, step: 'c', instance: 0 });
  const hash = createHash('sha256');
  let got = 0;
  const read = (async () => {
    for await (const chunk of consumer.input('p')) {
      hash.update(chunk as Buffer);
      got += (chunk as Buffer).length;
    }
  })();
  // a producer refused (or a stream stuck) fails the check rather than leave the consumer waiting
  let timer: NodeJS.Timeout | undefined;
  const stuck = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the check stream was not through after ${timeoutMs} ms: ${got} of ${bytes} bytes`)), timeoutMs);
  });
  try {
    await Promise.race([Promise.all([read, sent]), sent.then(() => read), stuck]);
  } finally {
    clearTimeout(timer);
  }
  const digest = hash.digest('hex');
  if (got !== bytes || digest !== want) throw new Error(`the stream through the daemon was not byte-exact: ${got} of ${bytes} bytes, sha256 ${digest} vs ${want}`);
  const shown = await control<{ channels: Array<{ path: string; state: string }> }>(dir, 'GET', `/v1/runs/${run.run}`);
  await control(dir, 'DELETE', `/v1/runs/${run.run}`);
  if (shown.body.channels[0]?.state !== 'done') throw new Error(`the check stream's channel ended ${shown.body.channels[0]?.state}`);
}
