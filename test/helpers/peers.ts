/**
 * Daemons linked on loopback, for end-to-end tests of peer links: real `sluice daemon`
 * processes on distinct TCP ports, their status and logs, and a run carried across a link.
 */
import { createServer, type AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'vitest';
import { control } from '../../client/control.js';
import type { PeerStatus } from '../../server/peers.js';
import { runFunction, startDaemonProcess, type DaemonProcess, type FnResult } from './daemon.js';

export interface LinkedNode {
  name: string;
  /** its --listen port on 127.0.0.1 */
  port: number;
  daemon: DaemonProcess;
}

/** Distinct free TCP ports on loopback (held all at once, so they differ). */
export async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: count }, () => new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
      const s = createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => resolve(s));
    })),
  );
  const ports = servers.map((s) => (s.address() as AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/** Start one daemon per spec, all at once (node name, its port, its arguments); fails if any fails. */
export async function startNodes(specs: Array<{ name: string; port: number; args: string[] }>): Promise<Map<string, LinkedNode>> {
  const nodes = new Map<string, LinkedNode>();
  const started = await Promise.allSettled(
    specs.map(async (s) => {
      const daemon = await startDaemonProcess(s.args, { node: s.name });
      nodes.set(s.name, { name: s.name, port: s.port, daemon });
    }),
  );
  const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await stopNodes(nodes);
    throw failed.reason;
  }
  return nodes;
}

/** Stop every node; returns the last log lines of those that had died on their own (none, in a good run). */
export async function stopNodes(nodes: Map<string, LinkedNode>): Promise<string[]> {
  const all = [...nodes.values()];
  const died = all.filter((n) => n.daemon.child.exitCode !== null || n.daemon.child.signalCode !== null);
  const logs = died.map((n) => `${n.name} died (${n.daemon.child.exitCode ?? n.daemon.child.signalCode}):\n${n.daemon.logs().split('\n').slice(-30).join('\n')}`);
  await Promise.all(all.map((n) => n.daemon.stop()));
  return logs;
}

export async function peersOf(n: LinkedNode): Promise<PeerStatus[]> {
  return (await control<{ peers: PeerStatus[] }>(n.daemon.dir, 'GET', '/v1/status')).body.peers;
}

/** What `n`'s status says about its link to `name`. */
export async function peer(n: LinkedNode, name: string): Promise<PeerStatus | undefined> {
  return (await peersOf(n)).find((p) => p.node === name);
}

/** Poll `probe` every 50 ms until it returns something, for up to `timeoutMs`. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** Wait until both ends report their link up. */
export async function waitForLink(a: LinkedNode, b: LinkedNode): Promise<void> {
  await waitFor(`${a.name} → ${b.name} up`, async () => ((await peer(a, b.name))?.state === 'up' ? true : undefined));
  await waitFor(`${b.name} → ${a.name} up`, async () => ((await peer(b, a.name))?.state === 'up' ? true : undefined));
}

/** The daemon's log lines, parsed (pino JSON; other lines are skipped). */
export function logLines(n: LinkedNode): Array<Record<string, unknown>> {
  return n.daemon
    .logs()
    .split('\n')
    .flatMap((line) => {
      try {
        const parsed: unknown = JSON.parse(line);
        return typeof parsed === 'object' && parsed !== null ? [parsed as Record<string, unknown>] : [];
      } catch {
        return [];
      }
    });
}

/** Log lines of `n` whose msg starts with `msg` and that match `fields`. */
export function logged(n: LinkedNode, msg: string, fields: (line: Record<string, unknown>) => boolean = () => true): Array<Record<string, unknown>> {
  return logLines(n).filter((l) => typeof l.msg === 'string' && l.msg.startsWith(msg) && fields(l));
}

let serial = 0;

/** Apply a fresh two-step workflow p → c at `at` and create a run of it with `placement`. */
export async function createRun(at: LinkedNode, placement: Record<string, string>): Promise<{ run: string; token: string }> {
  const name = `peer-wf-${++serial}`;
  await control(at.daemon.dir, 'POST', '/v1/workflows', { name, steps: { p: {}, c: {} }, edges: [{ from: 'p', to: 'c' }] });
  return (await control<{ run: string; token: string }>(at.daemon.dir, 'POST', '/v1/runs', { workflow: name, placement })).body;
}

/** How creating a run ended: failed with `err`, or not (succeeded, or still waiting after the cap); `after` ms. */
export type RunAttempt = { failed: true; err: { code?: string; message?: string }; after: number } | { failed: false; after: number };

/**
 * Start creating a run that needs a link that should never come up, so the caller can check other
 * things meanwhile; resolves when it ends, or after `capMs` with `after` Infinity.
 */
export function attemptRun(at: LinkedNode, placement: Record<string, string>, capMs = 40_000): Promise<RunAttempt> {
  const started = Date.now();
  const attempt = createRun(at, placement).then(
    (): RunAttempt => ({ failed: false, after: Date.now() - started }),
    (err: { code?: string; message?: string }): RunAttempt => ({ failed: true, err, after: Date.now() - started }),
  );
  return Promise.race([attempt, sleep(capMs, undefined, { ref: false }).then((): RunAttempt => ({ failed: false, after: Infinity }))]);
}

/** What a failed attempt says; fails the test, saying how it ended, when it did not fail. */
export function failureOf(attempt: RunAttempt): { code?: string; message?: string } {
  if (!attempt.failed) throw new Error(`creating the run ${attempt.after === Infinity ? 'hung' : 'succeeded'} instead of failing`);
  return attempt.err;
}

export async function runCount(n: LinkedNode): Promise<number> {
  return (await control<unknown[]>(n.daemon.dir, 'GET', '/v1/runs')).body.length;
}

/** The function's result line, after asserting it succeeded. */
export function ok(r: FnResult): FnResult['result'] {
  expect(r.result.error, `function failed: ${JSON.stringify(r.result)} ${r.stderr}`).toBeUndefined();
  expect(r.code).toBe(0);
  return r.result;
}

/**
 * A run created at `from` with its producer there and its consumer on `to`: `bytes` seeded
 * random bytes arrive complete (same length and sha256), over the remote path, and the channel
 * ends done.
 */
export async function carryAcross(from: LinkedNode, to: LinkedNode, bytes: number, seed: number): Promise<void> {
  const run = await createRun(from, { p: from.name, c: to.name });
  const sink = runFunction(to.daemon.dir, run, 'c', ['sink']);
  const sent = ok(await runFunction(from.daemon.dir, run, 'p', ['source', String(bytes), String(seed)]).done);
  expect(ok(await sink.done)).toEqual({ bytes, sha256: sent.sha256 });
  const shown = (await control<{ channels: Array<{ path: string; state: string }> }>(from.daemon.dir, 'GET', `/v1/runs/${run.run}`)).body;
  expect(shown.channels).toEqual([expect.objectContaining({ path: 'remote', state: 'done' })]);
}
