/**
 * `shm` against `fifo` through chains of processes, same harness, same run:
 *
 *   node dist/bench/shm-hop.js [--sizes 1048576,268435456] [--hops 1,5] [--reps 5] [--paths shm,fifo]
 *
 * A chain of `hops` is hops+1 processes: a source that writes, hops-1 steps that each read one
 * channel and write the next (`pipeline(reader, writer)`), a sink that reads and verifies. Every
 * process is started, its endpoint listened on and dialed before the clock; the clock runs from
 * the source's first write to the sink's verified end (wall clock shared by the processes).
 * Prints one JSON line per (path, hops, bytes) with every repetition and the median.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { finished } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ChannelReader, ChannelWriter, fifoTransport, shmTransport, type Transport } from '../transports/index.js';

const transports: Record<string, Transport> = { shm: shmTransport, fifo: fifoTransport };
const now = (): number => performance.timeOrigin + performance.now();
const CHUNK = 1024 * 1024;

async function role(kind: string, path: string, inEp: string, outEp: string, bytes: number): Promise<void> {
  const transport = transports[path]!;
  const send = (m: object): void => void process.send!(m);
  const listener = inEp ? await transport.listen(inEp) : undefined;
  send({ listening: true });
  const go = new Promise<void>((resolve) => process.once('message', () => resolve()));
  const accepted = listener?.accept();
  const writer = outEp ? new ChannelWriter(await transport.dial(outEp)) : undefined;
  const reader = accepted ? new ChannelReader(await accepted) : undefined;
  send({ ready: true });
  if (kind === 'source') {
    await go;
    const data = Buffer.alloc(Math.min(CHUNK, bytes), 0x5a);
    const t0 = now();
    for (let sent = 0; sent < bytes; sent += data.length) {
      if (!writer!.write(sent + data.length <= bytes ? data : data.subarray(0, bytes - sent))) await once(writer!, 'drain');
    }
    writer!.end();
    await finished(writer!);
    send({ t0 });
  } else if (kind === 'step') {
    await pipeline(reader!, writer!);
    send({ step: true });
  } else {
    let got = 0;
    for await (const chunk of reader! as AsyncIterable<Buffer>) got += (chunk as Buffer).length;
    send({ t1: now(), got });
  }
  await listener?.close();
  process.disconnect();
}

function child(args: string[]): ChildProcess {
  return fork(fileURLToPath(import.meta.url), ['--role', ...args], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
}
const next = (c: ChildProcess, key: string): Promise<Record<string, number>> =>
  new Promise((resolve) => {
    const on = (m: Record<string, number>): void => {
      if (key in m) {
        c.off('message', on);
        resolve(m);
      }
    };
    c.on('message', on);
  });

async function chain(dir: string, path: string, hops: number, bytes: number, rep: number): Promise<number> {
  const ep = (i: number): string => join(dir, `${path}-${hops}-${bytes}-${rep}-${i}`);
  const procs: ChildProcess[] = [];
  // consumers first, so every dial finds its listener
  for (let i = hops; i >= 0; i--) {
    const kind = i === 0 ? 'source' : i === hops ? 'sink' : 'step';
    const c = child([kind, path, i === 0 ? '' : ep(i), i === hops ? '' : ep(i + 1), String(bytes)]);
    await next(c, 'listening');
    procs.unshift(c);
  }
  await Promise.all(procs.map((c) => next(c, 'ready')));
  const source = procs[0]!;
  const sink = procs[hops]!;
  const started = next(source, 't0');
  const ended = next(sink, 't1');
  source.send('go');
  const [{ t0 }, { t1, got }] = await Promise.all([started, ended]);
  if (got !== bytes) throw new Error(`${path} ${hops} hops: ${got} of ${bytes} bytes`);
  await Promise.all(procs.map((c) => (c.exitCode === null ? once(c, 'exit') : undefined)));
  return t1! - t0!;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const { values } = parseArgs({
  options: {
    role: { type: 'boolean' },
    sizes: { type: 'string', default: `${1024 * 1024},${256 * 1024 * 1024}` },
    hops: { type: 'string', default: '1,5' },
    reps: { type: 'string', default: '5' },
    paths: { type: 'string', default: 'shm,fifo' },
  },
  allowPositionals: true,
  strict: false,
});
if (values.role) {
  const [kind, path, inEp, outEp, bytes] = process.argv.slice(process.argv.indexOf('--role') + 1);
  await role(kind!, path!, inEp!, outEp!, Number(bytes));
} else {
  const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'sluice-shm-bench-'));
  try {
    for (const hops of String(values.hops).split(',').map(Number)) {
      for (const bytes of String(values.sizes).split(',').map(Number)) {
        const runs: Record<string, number[]> = {};
        const paths = String(values.paths).split(',');
        // paths interleaved within each repetition, so both see the same machine
        for (let rep = 0; rep < Number(values.reps); rep++) {
          for (const path of paths) (runs[path] ??= []).push(await chain(dir, path, hops, bytes, rep));
        }
        for (const path of paths) {
          const ms = runs[path]!;
          process.stdout.write(JSON.stringify({ path, hops, bytes, median_ms: Number(median(ms).toFixed(2)), MBps: Number((bytes / 1e6 / (median(ms) / 1000)).toFixed(0)), runs_ms: ms.map((x) => Number(x.toFixed(2))) }) + '\n');
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
