/**
 * One node, for real: a `sluice daemon` process, and every step of a workflow a process of its
 * own using the client library, talking through the channels the daemon prepared.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, statSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { connect } from '../../client/index.js';
import { ChannelWriter, MANIFEST_FILE, RELAY_SOCKET, runDirectory, unixTransport } from '../../transports/index.js';
import { cli, runFunction, startDaemonProcess, waitForChannelState, writing, type DaemonProcess, ok } from '../helpers/daemon.js';
import { outcome } from '../helpers/streams.js';

const MiB = 1024 * 1024;
let daemon: DaemonProcess;
let serial = 0;

beforeAll(async () => {
  daemon = await startDaemonProcess(['--attach-timeout', '3s']);
});
afterAll(async () => {
  await daemon?.stop();
});

async function workflow(steps: Record<string, { replicas?: number }>, edges: Array<{ from: string; to: string; fanout?: string }>): Promise<string> {
  const name = `wf-${++serial}`;
  await control(daemon.dir, 'POST', '/v1/workflows', { name, steps, edges });
  return name;
}

async function createRun(name: string): Promise<{ run: string; token: string }> {
  const { body } = await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: name });
  return body;
}

describe('proactive set-up', () => {
  it("prepares a run's endpoints before any function connects", async () => {
    const name = await workflow({ split: {}, count: { replicas: 2 }, merge: {} }, [
      { from: 'split', to: 'count' },
      { from: 'count', to: 'merge' },
    ]);
    const run = await createRun(name);
    const dir = runDirectory(daemon.dir, run.run, run.token);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(join(daemon.dir, 'runs')).mode & 0o777).toBe(0o711);
    const manifest = JSON.parse(readFileSync(join(dir, MANIFEST_FILE), 'utf8')) as { channels: Array<{ name: string }> };
    expect(manifest.channels.map((c) => c.name).sort()).toEqual(['count.0-merge.0', 'count.1-merge.0', 'split.0-count.0', 'split.0-count.1']);
    for (const { name: channel } of manifest.channels) {
      for (const file of [channel, `${channel}.ack`]) {
        const stat = statSync(join(dir, file));
        expect(stat.isFIFO(), file).toBe(true);
        expect(stat.mode & 0o777).toBe(0o600);
      }
    }
    await control(daemon.dir, 'DELETE', `/v1/runs/${run.run}`);
    expect(existsSync(dir)).toBe(false);
  });
});

describe('workflows between processes', () => {
  it('carries 256 MiB through a 5-step chain, byte-exact', async () => {
    const steps = ['s1', 's2', 's3', 's4', 's5'];
    const name = await workflow(Object.fromEntries(steps.map((s) => [s, {}])), steps.slice(1).map((s, i) => ({ from: steps[i]!, to: s })));
    const run = await createRun(name);
    const fns = [
      runFunction(daemon.dir, run, 's1', ['source', String(256 * MiB), '7']),
      runFunction(daemon.dir, run, 's2', ['pass']),
      runFunction(daemon.dir, run, 's3', ['pass']),
      runFunction(daemon.dir, run, 's4', ['pass']),
      runFunction(daemon.dir, run, 's5', ['sink']),
    ];
    const results = (await Promise.all(fns.map((f) => f.done))).map(ok);
    expect(results[4]!.bytes).toBe(256 * MiB);
    expect(results[4]!.sha256).toBe(results[0]!.sha256);
  }, 120_000);

  it('broadcasts 1→3: every successor gets every byte', async () => {
    const name = await workflow({ src: {}, a: {}, b: {}, c: {} }, [
      { from: 'src', to: 'a' },
      { from: 'src', to: 'b' },
      { from: 'src', to: 'c' },
    ]);
    const run = await createRun(name);
    const sinks = ['a', 'b', 'c'].map((s) => runFunction(daemon.dir, run, s, ['sink']));
    const source = runFunction(daemon.dir, run, 'src', ['source', String(32 * MiB + 13), '3']);
    const sent = ok(await source.done);
    for (const s of sinks) {
      const got = ok(await s.done);
      expect(got.bytes).toBe(32 * MiB + 13);
      expect(got.sha256).toBe(sent.sha256);
    }
  }, 60_000);

  it('gathers 3→1: the consumer reads each predecessor on its own', async () => {
    const name = await workflow({ a: {}, b: {}, c: {}, d: {} }, [
      { from: 'a', to: 'd' },
      { from: 'b', to: 'd' },
      { from: 'c', to: 'd' },
    ]);
    const run = await createRun(name);
    const sources = ['a', 'b', 'c'].map((s, i) => runFunction(daemon.dir, run, s, ['source', String((i + 1) * 5 * MiB), String(i + 11)]));
    // one consumer process reading its three inputs at once
    const gather = runFunction(daemon.dir, run, 'd', ['gather', 'a', 'b', 'c']);
    const got = ok(await gather.done).sources as Record<string, { bytes: number; sha256: string }>;
    const sent = (await Promise.all(sources.map((s) => s.done))).map(ok);
    ['a', 'b', 'c'].forEach((from, i) => {
      expect(got[from]!.bytes).toBe(sent[i]!.bytes);
      expect(got[from]!.sha256).toBe(sent[i]!.sha256);
    });
  }, 60_000);

  it('delivers 10,000 records in order', async () => {
    const name = await workflow({ p: {}, q: {} }, [{ from: 'p', to: 'q' }]);
    const run = await createRun(name);
    const sink = runFunction(daemon.dir, run, 'q', ['records-sink']);
    const source = runFunction(daemon.dir, run, 'p', ['records-source', '10000']);
    expect(ok(await source.done).records).toBe(10_000);
    expect(ok(await sink.done).records).toBe(10_000);
  }, 60_000);

  it('relays for a consumer that starts after its producer began, within the relay buffer', async () => {
    const name = await workflow({ early: {}, late: {} }, [{ from: 'early', to: 'late' }]);
    const run = await createRun(name);
    const source = runFunction(daemon.dir, run, 'early', ['source', String(4 * MiB), '5']);
    // the producer found no consumer on the FIFO and went to the relay, which holds the stream
    // (less than its buffer) and does not acknowledge it before the consumer verified it
    await waitForChannelState(daemon.dir, run.run, 'relaying');
    await sleep(300);
    expect(source.child.exitCode).toBeNull();
    const sink = runFunction(daemon.dir, run, 'late', ['sink']);
    const got = ok(await sink.done);
    const sent = ok(await source.done);
    expect(got.bytes).toBe(4 * MiB);
    expect(got.sha256).toBe(sent.sha256);
    const { body } = await control<{ channels: Array<{ state: string; relayedBytes: number; stored?: string }> }>(daemon.dir, 'GET', `/v1/runs/${run.run}`);
    expect(body.channels[0]).toMatchObject({ state: 'done', relayedBytes: 4 * MiB });
    expect(body.channels[0]!.stored).toBeUndefined();
  }, 60_000);
});

describe('access control', () => {
  it('refuses a wrong token at connect: SLUICE_UNAUTHORIZED; an unknown run: SLUICE_NOT_FOUND', async () => {
    const name = await workflow({ x: {}, y: {} }, [{ from: 'x', to: 'y' }]);
    const run = await createRun(name);
    await expect(connect({ dir: daemon.dir, run: run.run, step: 'x', token: 'not-the-token' })).rejects.toMatchObject({ code: 'SLUICE_UNAUTHORIZED' });
    await expect(connect({ dir: daemon.dir, run: 'no-such-run', step: 'x', token: run.token })).rejects.toMatchObject({ code: 'SLUICE_NOT_FOUND' });
  });

  it("refuses a relayed stream with another run's token: SLUICE_UNAUTHORIZED", async () => {
    const name = await workflow({ x: {}, y: {} }, [{ from: 'x', to: 'y' }]);
    const mine = await createRun(name);
    const other = await createRun(name);
    const writer = new ChannelWriter(await unixTransport.dial(join(daemon.dir, RELAY_SOCKET)), {
      hello: { run: mine.run, token: other.token, from: { step: 'x', index: 0 }, to: { step: 'y', index: 0 } },
    });
    writer.end(Buffer.from('sneaky'));
    expect((await outcome(writer))?.code).toBe('SLUICE_UNAUTHORIZED');
  });
});

describe('the CLI', () => {
  function sluice(args: string[], input?: Buffer): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
    const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, SLUICE_DIR: daemon.dir }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.stdin.end(input);
    return once(child, 'exit').then(([code]) => ({ code: code as number | null, stdout: Buffer.concat(out), stderr }));
  }

  it('applies a workflow file, creates a run, sends and receives through it', async () => {
    const { writeFileSync, mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const file = join(mkdtempSync(join(tmpdir(), 'sluice-wf-')), 'pipe.yaml');
    writeFileSync(file, 'name: cli-pipe\nsteps:\n  up: {}\n  down: {}\nedges:\n  - { from: up, to: down }\n');
    expect((await sluice(['workflow', 'apply', file])).code).toBe(0);
    const created = await sluice(['run', 'create', 'cli-pipe', '--json']);
    expect(created.code).toBe(0);
    const { run, token } = JSON.parse(created.stdout.toString()) as { run: string; token: string };
    const payload = Buffer.from('hello through sluice\n'.repeat(10_000));
    const receiving = sluice(['recv', '--run', run, '--step', 'down', '--token', token]);
    const sent = await sluice(['send', '--run', run, '--step', 'up', '--token', token], payload);
    expect(sent.stderr).toBe('');
    expect(sent.code).toBe(0);
    const received = await receiving;
    expect(received.code).toBe(0);
    expect(received.stdout.equals(payload)).toBe(true);
    const shown = await sluice(['run', 'show', run, '--json']);
    expect(JSON.parse(shown.stdout.toString())).toMatchObject({ run, workflow: 'cli-pipe' });
    expect((await sluice(['run', 'delete', run])).code).toBe(0);
    const gone = await sluice(['run', 'show', run]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/SLUICE_NOT_FOUND/);
  });

  it('exits non-zero with SLUICE_TRUNCATED when the producer dies mid-stream', async () => {
    const name = await workflow({ dying: {}, reader: {} }, [{ from: 'dying', to: 'reader' }]);
    const run = await createRun(name);
    const receiving = sluice(['recv', '--run', run.run, '--step', 'reader', '--token', run.token]);
    const source = runFunction(daemon.dir, run, 'dying', ['source', String(1024 * MiB)]);
    await writing(source.child);
    await sleep(300);
    source.child.kill('SIGKILL');
    const received = await receiving;
    expect(received.code).toBe(1);
    expect(received.stderr).toMatch(/SLUICE_TRUNCATED/);
  }, 30_000);

  it('refuses a bad workflow with the reason and exit status 1', async () => {
    const { writeFileSync, mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const file = join(mkdtempSync(join(tmpdir(), 'sluice-wf-')), 'cycle.json');
    writeFileSync(file, JSON.stringify({ name: 'loop', steps: { a: {}, b: {} }, edges: [{ from: 'a', to: 'b' }, { from: 'b', to: 'a' }] }));
    const applied = await sluice(['workflow', 'apply', file]);
    expect(applied.code).toBe(1);
    expect(applied.stderr).toMatch(/SLUICE_INVALID: .*cycle/);
  });

  it('shows status with the runs', async () => {
    const status = await sluice(['status', '--json']);
    expect(status.code).toBe(0);
    expect(JSON.parse(status.stdout.toString())).toMatchObject({ node: 'node-a', ready: true });
  });
});
