/**
 * A function host for the balance section: one process per node (pinned to that node's CPU by
 * the orchestrator), running many function instances at once, as a node's functions share its
 * CPU. Commands arrive as JSON lines on stdin, results leave as JSON lines on stdout:
 *
 *   { id, op: 'consume', dir, run, token, step, instance, work }
 *       read the instance's input; hash every byte (the verification) and `work` more times (the
 *       CPU-heavy step) → { id, bytes, sha256, ms }
 *   { id, op: 'produce', dir, run, token, step, to, bytes, seed }
 *       stream `bytes` seeded bytes on the balance edge to `to` → { id, bytes, sha256, ms }
 *
 * A failure answers { id, error: { code, message } }.
 */
import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { connect } from '../client/index.js';

interface Command {
  id: number;
  op: 'consume' | 'produce';
  dir: string;
  run: string;
  token: string;
  step: string;
  instance: number;
  to?: string;
  bytes?: number;
  seed?: number;
  work?: number;
}

const BLOCK = 1024 * 1024;

/** `total` bytes: one 1 MiB pseudo-random block per seed, each copy stamped with its number. */
function* seeded(total: number, seed: number): Generator<Buffer> {
  const block = Buffer.allocUnsafe(BLOCK);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < BLOCK; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    block.writeUInt32LE(x >>> 0, i);
  }
  for (let sent = 0, n = 0; sent < total; n++) {
    const chunk = Buffer.from(block.subarray(0, Math.min(BLOCK, total - sent)));
    chunk.writeUInt32LE(n, 0);
    sent += chunk.length;
    yield chunk;
  }
}

async function serve(c: Command): Promise<Record<string, unknown>> {
  const started = performance.now();
  const sl = await connect({ dir: c.dir, run: c.run, step: c.step, token: c.token, instance: c.instance });
  const hash = createHash('sha256');
  let bytes = 0;
  if (c.op === 'produce') {
    const data = Readable.from(
      (function* () {
        for (const chunk of seeded(c.bytes!, c.seed!)) {
          hash.update(chunk);
          bytes += chunk.length;
          yield chunk;
        }
      })(),
    );
    await pipeline(data, sl.output(c.to));
  } else {
    for await (const chunk of sl.input() as AsyncIterable<Buffer>) {
      hash.update(chunk);
      bytes += chunk.length;
      // the step's own work: CPU, chunk by chunk, as a transform over the data would
      for (let k = 0; k < (c.work ?? 0); k++) createHash('sha256').update(chunk).digest();
    }
  }
  return { bytes, sha256: hash.digest('hex'), ms: performance.now() - started };
}

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const command = JSON.parse(line) as Command;
  serve(command).then(
    (result) => process.stdout.write(`${JSON.stringify({ id: command.id, ...result })}\n`),
    (err: { code?: string; message?: string }) => process.stdout.write(`${JSON.stringify({ id: command.id, error: { code: err.code, message: err.message } })}\n`),
  );
});
lines.on('close', () => process.exit(0));
