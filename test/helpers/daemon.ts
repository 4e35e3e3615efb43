/** A real `sluice daemon` process for end-to-end tests, and functions run as processes. */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { DAEMON_NODE_FLAGS } from '../../server/node-flags.js';
import { control } from '../../client/control.js';

export const cli = fileURLToPath(new URL('../../dist/server/cli.js', import.meta.url));
export const fnScript = fileURLToPath(new URL('../../dist/test/fixtures/fn.js', import.meta.url));

export interface DaemonProcess {
  dir: string;
  child: ChildProcess;
  /** everything the daemon logged, for assertions and for a failing test's message */
  logs: () => string;
  /** SIGKILL the daemon (if running) and start it again on the same directory and arguments. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export interface DaemonProcessOptions {
  /** the node name; default node-a */
  node?: string;
  /** how to start it, e.g. inside a network namespace; default child_process.spawn */
  spawn?: (cmd: string, args: string[], opts: SpawnOptions) => ChildProcess;
  /** its environment; default this process's */
  env?: NodeJS.ProcessEnv;
}

/** Not exited: a child killed by a signal has no exit code, but a signal code. */
const running = (child: ChildProcess): boolean => child.exitCode === null && child.signalCode === null;

/** Start `sluice daemon` in a fresh directory and wait until it is ready. */
export async function startDaemonProcess(extraArgs: string[] = [], options: DaemonProcessOptions = {}): Promise<DaemonProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-e2e-'));
  const start = options.spawn ?? spawn;
  let output = '';
  const launch = async (): Promise<ChildProcess> => {
    const child = start(process.execPath, [...DAEMON_NODE_FLAGS, cli, 'daemon', '--dir', dir, '--node', options.node ?? 'node-a', '--log-level', 'info', ...extraArgs], { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env });
    child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`daemon exited with ${child.exitCode}:\n${output}`);
      try {
        const { body } = await control<{ ready: boolean }>(dir, 'GET', '/readyz');
        if (body.ready) return child;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`daemon not ready after 15 s:\n${output}`);
      await sleep(50);
    }
  };
  const handle: DaemonProcess = {
    dir,
    child: await launch(),
    logs: () => output,
    async restart() {
      if (running(handle.child)) {
        handle.child.kill('SIGKILL');
        await once(handle.child, 'exit');
      }
      handle.child = await launch();
    },
    async stop() {
      if (running(handle.child)) {
        handle.child.kill('SIGTERM');
        await once(handle.child, 'exit');
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return handle;
}

export interface FnResult {
  code: number | null;
  result: Record<string, unknown> & { error?: { code?: string; message?: string } };
  stderr: string;
}

/** Run test/fixtures/fn.js as a function of `step` in `run`; resolves when it exits. */
export function runFunction(dir: string, run: { run: string; token: string }, step: string, args: string[], instance = 0): { child: ChildProcess; done: Promise<FnResult> } {
  const child = spawn(process.execPath, [fnScript, ...args], {
    env: { ...process.env, SLUICE_DIR: dir, SLUICE_RUN: run.run, SLUICE_STEP: step, SLUICE_TOKEN: run.token, SLUICE_INSTANCE: String(instance) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const done = once(child, 'exit').then(([code]) => {
    const line = stdout.trim().split('\n').pop() ?? '';
    let result: FnResult['result'];
    try {
      result = JSON.parse(line) as FnResult['result'];
    } catch {
      result = { error: { message: `no result line; stdout: ${stdout} stderr: ${stderr}` } };
    }
    return { code: code as number | null, result, stderr };
  });
  return { child, done };
}

/** The result of a function that must have succeeded: the test fails, with its output, otherwise. */
export function ok(r: FnResult): FnResult['result'] {
  expect(r.result.error, `function failed: ${JSON.stringify(r.result)} ${r.stderr}`).toBeUndefined();
  expect(r.code).toBe(0);
  return r.result;
}

/** Resolve once `child` has written `line` to its stderr; reject if it exits first. */
export function said(child: ChildProcess, line: string): Promise<void> {
  let seen = '';
  return new Promise((resolve, reject) => {
    child.stderr!.on('data', (c: Buffer) => {
      seen += c.toString();
      if (seen.includes(line)) resolve();
    });
    child.once('exit', () => reject(new Error(`exited before "${line}": ${seen}`)));
  });
}

/** Resolve once a `fn.js source` function has handed its first bytes to its output. */
export function writing(child: ChildProcess): Promise<void> {
  return said(child, 'sluice-fn: writing');
}

/** Wait until the run's first channel is in `state` (e.g. 'relaying'), polling the control API. */
export async function waitForChannelState(dir: string, run: string, state: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { body } = await control<{ channels: Array<{ state: string }> }>(dir, 'GET', `/v1/runs/${run}`);
    if (body.channels[0]?.state === state) return;
    if (Date.now() > deadline) throw new Error(`channel of run ${run} never reached state ${state}`);
    await sleep(20);
  }
}
