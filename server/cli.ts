#!/usr/bin/env node
/**
 * `sluice`: the command line, and the composition root. Only this file (and config files)
 * read the environment.
 */
import { fork } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { finished } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ChannelReader, ChannelWriter, fifoTransport, isErrorCode, unixTransport, type Transport } from '../transports/index.js';

const usage = `sluice — proactive data forwarding for serverless workflows

Usage:
  sluice demo [--mib N] [--path unix|fifo]
      Streams N MiB (default 256) of pseudo-random bytes from one process to another over
      each same-node path (or only --path), verified end to end, and prints the rate.
  sluice --version
  sluice --help

The daemon, workflows and runs (sluice daemon, workflow, run, send, recv, status) are being
built; see README.md for what works today.
`;

const paths: Record<string, Transport> = { unix: unixTransport, fifo: fifoTransport };
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
async function demoConsumer(path: string, endpoint: string, total: number): Promise<void> {
  const transport = paths[path]!;
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

async function demo(mib: number, only: string | undefined): Promise<void> {
  const total = mib * 1024 * 1024;
  const dir = mkdtempSync(join(tmpdir(), 'sluice-demo-'));
  const self = fileURLToPath(import.meta.url);
  try {
    for (const path of only ? [only] : Object.keys(paths)) {
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
      const writer = new ChannelWriter(await paths[path]!.dial(endpoint));
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

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      process.stdout.write(usage);
      return 0;
    case '--version':
    case '-v': {
      const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
      process.stdout.write(`${pkg.version}\n`);
      return 0;
    }
    case 'demo': {
      const { values } = parseArgs({ args: rest, options: { mib: { type: 'string', default: '256' }, path: { type: 'string' }, help: { type: 'boolean', short: 'h' } } });
      if (values.help) {
        process.stdout.write(usage);
        return 0;
      }
      const mib = Number(values.mib);
      if (!Number.isInteger(mib) || mib < 1 || mib > 65536) throw new UsageError(`--mib must be a whole number of MiB in 1..65536, got "${values.mib}"`);
      if (values.path !== undefined && !(values.path in paths)) throw new UsageError(`--path must be one of ${Object.keys(paths).join(', ')}, got "${values.path}"`);
      await demo(mib, values.path);
      return 0;
    }
    case '__demo-consume':
      await demoConsumer(rest[0]!, rest[1]!, Number(rest[2]));
      return 0;
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

class UsageError extends Error {}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof UsageError || (err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      process.stderr.write(`sluice: ${(err as Error).message}\nRun "sluice --help" for usage.\n`);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`sluice: ${isErrorCode((err as { code?: unknown }).code) ? `${(err as { code: string }).code}: ` : ''}${(err as Error).message}\n`);
    process.exitCode = 1;
  },
);
