/**
 * Two Sluice daemons for the cross-node `ws` subject and the workflows' `ws` path, one in each
 * node's network namespace, peered with each other over the veth: started and given workflows
 * through the `sluice` CLI as a user would, runs created and read through the control API the
 * CLI calls (its Unix socket reaches into the namespace).
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { control } from '../client/control.js';
import { DAEMON_NODE_FLAGS } from '../server/node-flags.js';
import type { PeerStatus } from '../server/peers.js';
import type { NetnsNode } from '../harness/netns.js';
import { WS_STEPS, type RunRef } from './protocol.js';

const CLI = fileURLToPath(new URL('../server/cli.js', import.meta.url));
/** Each daemon's --listen port, on its node's address; peer links use it too. */
const PORT = 7700;
const WORKFLOW = 'bench-pipe';
const READY_TIMEOUT_MS = 20_000;
const RUN_SHARED_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;
/** How much of a daemon's output to keep for error messages, characters. */
const OUTPUT_TAIL = 2_000;

const running = new Set<ChildProcess>();

/** SIGKILL every daemon still running: for the orchestrator's exit. */
export function killDaemons(): void {
  for (const child of running) child.kill('SIGKILL');
}

/** Count `child` among the daemons `killDaemons()` kills; answers the end of what it has printed. */
export function watchDaemon(child: ChildProcess): () => string {
  running.add(child);
  child.on('exit', () => running.delete(child));
  let tail = '';
  const keep = (chunk: Buffer): void => {
    tail = (tail + chunk.toString()).slice(-OUTPUT_TAIL);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  return () => tail.trim();
}

/** SIGTERM a daemon (SIGKILL after STOP_TIMEOUT_MS) and wait for it to exit. */
export async function stopDaemonProcess(child: ChildProcess): Promise<void> {
  if (exitOf(child)) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
  await exited;
  clearTimeout(timer);
}

export interface Daemon {
  /** the Sluice node name (`--node`) */
  name: string;
  node: NetnsNode;
  dir: string;
  child: ChildProcess;
  /** the end of what it printed */
  output(): string;
}

/** A daemon in `node`'s namespace peered with `peer`; `extra.args` are more daemon options, `extra.cpu` pins it to one CPU (taskset). */
export function spawnDaemon(name: string, node: NetnsNode, dir: string, peer: { name: string; node: NetnsNode }, secretFile: string, extra: { args?: string[]; cpu?: number } = {}): Daemon {
  fs.mkdirSync(dir, { mode: 0o700 });
  const args = ['daemon', '--node', name, '--dir', dir, '--listen', `${node.address}:${PORT}`, '--peers', `${peer.name}=ws://${peer.node.address}:${PORT}`, '--secret-file', secretFile, ...(extra.args ?? [])];
  const command = [process.execPath, ...DAEMON_NODE_FLAGS, CLI, ...args];
  if (extra.cpu !== undefined) command.unshift('taskset', '-c', String(extra.cpu));
  const child = node.spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  return { name, node, dir, child, output: watchDaemon(child) };
}

function exitOf(child: ChildProcess): string | undefined {
  if (child.exitCode !== null) return `code ${child.exitCode}`;
  return child.signalCode ?? undefined;
}

/** `sluice ARGS --dir DIR` inside the daemon's namespace; rejects with its error line on a non-zero exit. */
async function sluice(d: Daemon, args: string[]): Promise<string> {
  try {
    return (await d.node.exec(process.execPath, [CLI, ...args, '--dir', d.dir])).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`sluice ${args.join(' ')} on ${d.name}: ${e.stderr?.trim() || e.message}`);
  }
}

export async function waitPeered(d: Daemon, peer: string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let last = 'no answer';
  for (;;) {
    const exit = exitOf(d.child);
    if (exit) throw new Error(`daemon ${d.name} exited with ${exit}: ${d.output()}`);
    try {
      const { peers } = JSON.parse(await sluice(d, ['status', '--json'])) as { peers?: PeerStatus[] };
      const link = peers?.find((p) => p.node === peer);
      if (link?.state === 'up') return;
      last = link ? `${link.state}${link.lastError ? `, last error: ${link.lastError}` : ''}` : 'not in its status';
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`daemon ${d.name}: peer link to ${peer} not up after ${READY_TIMEOUT_MS / 1000} s (${last})`);
    await sleep(100);
  }
}


export class Daemons {
  private constructor(private readonly daemons: readonly [Daemon, Daemon]) {}

  /**
   * Start a daemon on each of the two nodes, peered with the other under one cluster secret, and
   * register the benchmark's workflow (producer → consumer) on the first. Resolves once both
   * report their peer link up. `baseDir` holds their directories and the secret.
   */
  static async start(nodes: readonly [NetnsNode, NetnsNode], baseDir: string): Promise<Daemons> {
    const secretFile = path.join(baseDir, 'cluster-secret');
    fs.writeFileSync(secretFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const [n0, n1] = nodes;
    const first = spawnDaemon('n0', n0, path.join(baseDir, 'n0'), { name: 'n1', node: n1 }, secretFile);
    const second = spawnDaemon('n1', n1, path.join(baseDir, 'n1'), { name: 'n0', node: n0 }, secretFile);
    const daemons = new Daemons([first, second]);
    try {
      await Promise.all([waitPeered(first, second.name), waitPeered(second, first.name)]);
      const { producer, consumer } = WS_STEPS;
      await daemons.applyWorkflow({ name: WORKFLOW, steps: { [producer]: {}, [consumer]: {} }, edges: [{ from: producer, to: consumer }] }, baseDir);
    } catch (err) {
      await daemons.stop();
      throw err;
    }
    return daemons;
  }

  /** Register `workflow` (the JSON form, written to a file in `scratchDir`) on n0 with `sluice workflow apply`. */
  async applyWorkflow(workflow: { name: string; steps: Record<string, object>; edges: object[] }, scratchDir: string): Promise<void> {
    const file = path.join(scratchDir, `${workflow.name}.json`);
    fs.writeFileSync(file, JSON.stringify(workflow));
    await sluice(this.daemons[0], ['workflow', 'apply', file]);
  }

  /** The Sluice directory on node `i`: what a function there connects with. */
  dir(i: 0 | 1): string {
    return this.daemons[i].dir;
  }

  /** The daemon processes' pids (for /proc: memory, disk bytes). */
  pids(): number[] {
    return this.daemons.map((d) => d.child.pid!);
  }

  /**
   * A fresh run of `workflow` (default: the producer on n0 and the consumer on n1), each step on
   * the node `place` gives it, created through n0's control API (what `sluice run create --place`
   * calls: the CLI's own start-up would be most of a small case's set-up); resolves once n1 knows it.
   */
  async createRun(workflow = WORKFLOW, place: Record<string, 0 | 1> = { [WS_STEPS.producer]: 0, [WS_STEPS.consumer]: 1 }): Promise<RunRef> {
    const [first, second] = this.daemons;
    const placement = Object.fromEntries(Object.entries(place).map(([step, i]) => [step, this.daemons[i].name]));
    const { body } = await control<{ run: string; token: string }>(first.dir, 'POST', '/v1/runs', { workflow, placement });
    const { run, token } = body;
    // n0's daemon shares the run with n1's; a function there can only connect once n1 has it
    const deadline = Date.now() + RUN_SHARED_TIMEOUT_MS;
    for (;;) {
      try {
        await control(second.dir, 'GET', `/v1/runs/${encodeURIComponent(run)}`);
        return { id: run, token };
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`run ${run}, created on ${first.name}, unknown on ${second.name} after ${RUN_SHARED_TIMEOUT_MS / 1000} s: ${(err as Error).message}`);
      }
      await sleep(5);
    }
  }

  /** Each channel of run `id` as node `i`'s daemon saw it. */
  async channels(id: string, i: 0 | 1): Promise<Array<{ name: string; state: string; relayedBytes: number; path?: string }>> {
    const { body } = await control<{ channels: Array<{ name: string; state: string; relayedBytes: number; path?: string }> }>(this.daemons[i].dir, 'GET', `/v1/runs/${encodeURIComponent(id)}`);
    return body.channels;
  }

  async deleteRun(id: string): Promise<void> {
    await control(this.daemons[0].dir, 'DELETE', `/v1/runs/${encodeURIComponent(id)}`);
  }

  /** SIGTERM both (SIGKILL after STOP_TIMEOUT_MS) and wait for them to exit. */
  async stop(): Promise<void> {
    await Promise.all(this.daemons.map((d) => stopDaemonProcess(d.child)));
  }
}
