/**
 * `sluice demo`: Sluice end to end on one machine, with nothing set up beforehand.
 *
 * 1. A real daemon (`sluice daemon`, embedded defaults, a temporary directory), a 3-step
 *    workflow produce → transform → consume, a run, and one process per step using the client
 *    library: the bytes go through the channels the daemon prepared.
 * 2. The same-node transports on their own, between two processes.
 *
 * Every byte is checked against the deterministic source, and every channel's trailer verified.
 */
import { fork, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { finished, pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { DAEMON_NODE_FLAGS } from './node-flags.js';
import { connect } from '../client/index.js';
import { control } from '../client/control.js';
import { ChannelReader, ChannelWriter, fifoTransport, unixTransport, type Transport } from '../transports/index.js';

/** The CLI entry point: children of the demo run it with hidden roles. */
const self = fileURLToPath(new URL('./cli.js', import.meta.url));

export const demoPaths: Record<string, Transport> = { unix: unixTransport, fifo: fifoTransport };
const CHUNK = 256 * 1024;

function block(): Buffer {
  // deterministic, so the consumer process can check every byte without receiving a copy
  const out = Buffer.allocUnsafe(4 * 1024 * 1024);
  let x = 0x2545f491;
  for (let i = 0; i < out.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeInt32LE(x | 0, i);
  }
  return out;
}

/** The consuming half of the demo, in its own process: listen, read, verify, report. */
export async function demoConsumer(path: string, endpoint: string, total: number): Promise<void> {
  const transport = demoPaths[path]!;
  const listener = await transport.listen(endpoint);
  process.send!({ listening: true });
  const reader = new ChannelReader(await listener.accept());
  const expected = block();
  let seen = 0;
  let firstByteAt = 0n;
  reader.on('data', (chunk: Buffer) => {
    if (seen === 0) firstByteAt = process.hrtime.bigint();
    for (let off = 0; off < chunk.length; ) {
      const at = (seen + off) % expected.length;
      const n = Math.min(chunk.length - off, expected.length - at);
      if (!chunk.subarray(off, off + n).equals(expected.subarray(at, at + n))) throw new Error(`byte mismatch near offset ${seen + off}`);
      off += n;
    }
    seen += chunk.length;
  });
  await finished(reader);
  await listener.close();
  process.send!({ bytes: seen, verifiedAt: String(process.hrtime.bigint()), firstByteAt: String(firstByteAt) });
  if (seen !== total) process.exitCode = 1;
}

async function transportDemo(mib: number, only: string | undefined): Promise<void> {
  const total = mib * 1024 * 1024;
  const dir = mkdtempSync(join(tmpdir(), 'sluice-demo-'));
  
  try {
    for (const path of only ? [only] : Object.keys(demoPaths)) {
      const endpoint = join(dir, `demo-${path}`);
      const child = fork(self, ['__demo-consume', path, endpoint, String(total)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      const messages: Array<Record<string, string>> = [];
      const next = (): Promise<Record<string, string>> =>
        new Promise((resolve, reject) => {
          child.once('message', (m) => resolve(m as Record<string, string>));
          child.once('exit', (code) => reject(new Error(`consumer exited with ${code}`)));
        });
      messages.push(await next());
      const result = next();
      const writer = new ChannelWriter(await demoPaths[path]!.dial(endpoint));
      const data = block();
      const startedAt = process.hrtime.bigint();
      for (let sent = 0; sent < total; sent += CHUNK) {
        const at = sent % data.length;
        if (!writer.write(data.subarray(at, at + Math.min(CHUNK, total - sent)))) await new Promise((r) => writer.once('drain', r));
      }
      writer.end();
      await finished(writer); // resolves once the consumer verified the trailer
      const report = await result;
      const seconds = Number(BigInt(report.verifiedAt!) - startedAt) / 1e9;
      const ttfbMs = Number(BigInt(report.firstByteAt!) - startedAt) / 1e6;
      process.stdout.write(
        `${path.padEnd(5)} ${mib} MiB between two processes: every byte checked, trailer verified, ` +
          `${(total / 1e6 / seconds).toFixed(0)} MB/s, first byte after ${ttfbMs.toFixed(2)} ms\n`,
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}


/** Check received bytes against the repeating block, wherever chunks fall. */
function verifier(): { check(chunk: Buffer): void; seen: number } {
  const expected = block();
  const state = {
    seen: 0,
    check(chunk: Buffer) {
      for (let off = 0; off < chunk.length; ) {
        const at = (state.seen + off) % expected.length;
        const n = Math.min(chunk.length - off, expected.length - at);
        if (!chunk.subarray(off, off + n).equals(expected.subarray(at, at + n))) throw new Error(`byte mismatch near offset ${state.seen + off}`);
        off += n;
      }
      state.seen += chunk.length;
    },
  };
  return state;
}

/** One step of the demo workflow, in its own process, configured by SLUICE_* like any function. */
export async function demoFunction(role: string, total: number): Promise<void> {
  const sl = await connect();
  const report = (fields: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify(fields)}\n`);
  if (role === 'produce') {
    const out = sl.output();
    const data = block();
    const startedAt = process.hrtime.bigint();
    for (let sent = 0; sent < total; sent += CHUNK) {
      const at = sent % data.length;
      if (!out.write(data.subarray(at, at + Math.min(CHUNK, total - sent)))) await once(out, 'drain');
    }
    out.end();
    await finished(out);
    report({ startedAt: String(startedAt) });
  } else if (role === 'transform') {
    await pipeline(sl.input(), sl.output());
    report({});
  } else {
    const v = verifier();
    let firstByteAt = 0n;
    for await (const chunk of sl.input() as AsyncIterable<Buffer>) {
      if (v.seen === 0) firstByteAt = process.hrtime.bigint();
      v.check(chunk);
    }
    report({ bytes: v.seen, verifiedAt: String(process.hrtime.bigint()), firstByteAt: String(firstByteAt) });
  }
}

async function workflowDemo(mib: number): Promise<void> {
  const total = mib * 1024 * 1024;
  const dir = mkdtempSync(join(tmpdir(), 'sluice-demo-'));
  const daemon = spawn(process.execPath, [...DAEMON_NODE_FLAGS, self, 'daemon', '--dir', dir, '--node', 'demo', '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'inherit'] });
  try {
    for (let i = 0; ; i++) {
      const ready = await control<{ ready: boolean }>(dir, 'GET', '/readyz').then((r) => r.body.ready, () => false);
      if (ready) break;
      if (daemon.exitCode !== null || i > 300) throw new Error('the demo daemon did not start');
      await sleep(20);
    }
    await control(dir, 'POST', '/v1/workflows', {
      name: 'demo',
      steps: { produce: {}, transform: {}, consume: {} },
      edges: [
        { from: 'produce', to: 'transform' },
        { from: 'transform', to: 'consume' },
      ],
    });
    const { body: run } = await control<{ run: string; token: string; channels: number }>(dir, 'POST', '/v1/runs', { workflow: 'demo' });
    const step = (name: string) => {
      const child = spawn(process.execPath, [self, '__demo-fn', name, String(total)], {
        env: { ...process.env, SLUICE_DIR: dir, SLUICE_RUN: run.run, SLUICE_STEP: name, SLUICE_TOKEN: run.token },
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      return once(child, 'exit').then(([code]) => {
        if (code !== 0) throw new Error(`step ${name} failed (exit ${String(code)})`);
        return JSON.parse(out.trim().split('\n').pop()!) as Record<string, string>;
      });
    };
    // consumers first, as a workflow engine would start a DAG's later steps early: their
    // FIFOs are open by the time the producers write, so no byte goes through the daemon
    const consume = step('consume');
    await sleep(300);
    const transform = step('transform');
    await sleep(300);
    const steps = [consume, transform, step('produce')];
    const [consumed, , produced] = await Promise.all(steps);
    const seconds = Number(BigInt(consumed!.verifiedAt!) - BigInt(produced!.startedAt!)) / 1e9;
    const ttfbMs = Number(BigInt(consumed!.firstByteAt!) - BigInt(produced!.startedAt!)) / 1e6;
    const { body: shown } = await control<{ channels: Array<{ name: string; state: string }> }>(dir, 'GET', `/v1/runs/${run.run}`);
    // a channel the relay never touched went straight through its FIFO
    const paths = shown.channels.map((c) => `${c.name} ${c.state === 'prepared' ? 'direct' : 'relayed'}`).join(', ');
    process.stdout.write(
      `workflow produce → transform → consume (3 processes; channels ${paths}): ` +
        `${mib} MiB verified, ${(total / 1e6 / seconds).toFixed(0)} MB/s end to end, first byte after ${ttfbMs.toFixed(2)} ms\n`,
    );
  } finally {
    daemon.kill('SIGTERM');
    if (daemon.exitCode === null) await once(daemon, 'exit');
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function demo(mib: number, only: string | undefined): Promise<void> {
  if (only === undefined) await workflowDemo(mib);
  await transportDemo(mib, only);
}
