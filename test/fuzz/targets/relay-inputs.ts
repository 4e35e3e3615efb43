/**
 * What the relay targets (live `relay-socket`, in-process `relay`) send to a relay socket: the
 * corpus of producer streams — the bytes a real ChannelWriter writes (HELLO + DATA + END) for a
 * channel that exists (right or wrong token), one that does not, a balance-edge HELLO, an empty
 * stream — mutated, split into chunks, and ended at a random point: a clean end, a half-close
 * that waits for the relay to close, a reset (destroy) mid-stream, or lingering.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { control } from '../../../client/control.js';
import { prng } from '../../unit/prng.js';
import { chance, chunk, ending, mutate, pick, producerStream, randomBytes, type Ending, type Prng } from '../gen.js';

/** The relay's HELLO timeout (server/paths/ingress.ts, 10 s) plus slack: a half-closed connection must be closed by then. */
export const CLOSE_DEADLINE_MS = 12_000;

export interface RelayInput {
  chunks: Buffer[];
  end: Ending;
  cutAt: number;
  lingerMs: number;
}

/**
 * Register the corpus's workflows and runs on the daemon serving the control API in `dir`, and
 * build the corpus: 8 HELLOs × 4 payload shapes, as a ChannelWriter sends them.
 */
export async function relayCorpus(dir: string): Promise<Buffer[][]> {
  await control(dir, 'POST', '/v1/workflows', { name: 'fz', steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
  await control(dir, 'POST', '/v1/workflows', { name: 'fzb', steps: { p: {}, c: { replicas: 2 } }, edges: [{ from: 'p', to: 'c', fanout: 'balance' }] });
  const { body: run } = await control<{ run: string; token: string }>(dir, 'POST', '/v1/runs', { workflow: 'fz', id: 'fz-run', ttlSeconds: 3600 * 24 });
  const { body: brun } = await control<{ run: string; token: string }>(dir, 'POST', '/v1/runs', { workflow: 'fzb', id: 'fzb-run', ttlSeconds: 3600 * 24 });
  const r0 = { run: run.run, from: { step: 'p', index: 0 }, to: { step: 'c', index: 0 }, token: run.token };
  const hellos: Array<Record<string, unknown>> = [
    r0,
    r0,
    { ...r0, token: 'x'.repeat(run.token.length) },
    { ...r0, run: 'no-such-run' },
    { ...r0, to: { step: 'c', index: 7 } },
    { ...r0, from: { step: '../p', index: 0 } },
    { run: brun.run, from: { step: 'p', index: 0 }, to: { step: 'c' }, token: brun.token, key: 'k' },
    {},
  ];
  const seedR = prng(7);
  const corpus: Buffer[][] = [];
  for (const hello of hellos) {
    for (const sizes of [[], [5], [1000, 70_000], [200_000]]) {
      corpus.push(await producerStream(hello, sizes.map((n) => randomBytes(seedR, n)), chance(seedR, 0.5) ? 16 * 1024 : undefined));
    }
  }
  return corpus;
}

/**
 * One case's input. `lingerMaxMs` bounds how long a lingering producer keeps its connection open
 * before it resets it: about twice the relay's attach timeout, so that some linger past the
 * relay's answer (a spill, an ack) and some reset while it waits for the consumer.
 */
export function relayInput(r: Prng, corpus: Buffer[][], lingerMaxMs: number): RelayInput {
  const { bytes } = mutate(r, pick(r, corpus));
  const chunks = chunk(r, bytes);
  return { chunks, end: ending(r), cutAt: r.int(0, chunks.length), lingerMs: r.int(0, lingerMaxMs) };
}

export function describeRelayInput(i: RelayInput): string {
  return `${i.end} after chunk ${i.cutAt} of ${i.chunks.length} (linger ${i.lingerMs} ms): ${Buffer.concat(i.chunks).toString('hex')}`;
}

/** Resolve true when `p` resolves, false after `ms` (the timer cleared either way). */
function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    void p.then(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/**
 * Send `input` to the relay socket at `path` as its case says, the rest of `r` deciding where
 * writes yield. Resolves once this end of the connection has closed; throws if the relay kept a
 * half-closed connection open past `CLOSE_DEADLINE_MS`. A reset does not wait for the relay: the
 * batch's fd check sees whether it let go of its end.
 */
export async function sendRelayInput(path: string, input: RelayInput, r: Prng, stats: Record<string, number>): Promise<void> {
  const sock: Socket = netConnect(path);
  sock.on('error', () => undefined);
  let answered = false;
  sock.on('data', () => (answered = true));
  const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
  await new Promise<void>((resolve) => {
    sock.once('connect', resolve);
    sock.once('close', resolve);
  });
  const { chunks, end, cutAt } = input;
  const upTo = end === 'destroy-midway' || end === 'half-close-wait' ? cutAt : chunks.length;
  for (let i = 0; i < upTo && !sock.destroyed; i++) {
    if (!sock.write(chunks[i]!) || chance(r, 2 / chunks.length)) await sleep(0);
  }
  if (end === 'destroy' || end === 'destroy-midway') {
    sock.destroy();
  } else if (end === 'linger') {
    if (await within(closed, input.lingerMs)) stats.closedByRelay!++;
    sock.destroy();
  } else {
    // a clean end, or a half-close part way: the relay must close its side in time
    sock.end();
    if (!(await within(closed, CLOSE_DEADLINE_MS))) {
      sock.destroy();
      throw new Error(`the relay kept the connection open ${CLOSE_DEADLINE_MS} ms after the producer half-closed it (${upTo} of ${chunks.length} chunks sent)`);
    }
    stats.closedByRelay!++;
  }
  await closed;
  stats[end] = (stats[end] ?? 0) + 1;
  if (answered) stats.answered!++;
}
