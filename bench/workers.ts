/**
 * The orchestrator's side of the worker processes (worker.ts): start one, on this machine or
 * inside a node's network namespace, and talk to it over IPC.
 */
import { fork, type ChildProcess, type StdioOptions } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { NetnsNode } from '../harness/netns.js';
import type { Job, StepCommand, WorkerMessage } from './protocol.js';

const WORKER = fileURLToPath(new URL('./worker.js', import.meta.url));
/** A run that takes longer than this is stuck, not slow (1 GiB at a mere 20 MB/s takes under a minute). */
const RUN_TIMEOUT_MS = 120_000;

const children = new Set<ChildProcess>();
let execArgv: string[] = [];

/** Node options for every worker (e.g. --cpu-prof). */
export function setWorkerExecArgv(args: string[]): void {
  execArgv = args;
}

/** SIGKILL every worker still running: for the orchestrator's exit. */
export function killWorkers(): void {
  for (const child of children) child.kill('SIGKILL');
}

export interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(err: Error): void;
}
export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined); // a failure nobody waits for yet must not crash the orchestrator
  return { promise, resolve, reject };
}

export interface Worker {
  /** the next message of `type` (each type is answered once) */
  message(type: WorkerMessage['type']): Promise<WorkerMessage>;
  /** tell the worker (a step's commands) */
  send(command: StepCommand): void;
  /** resolves when the process exited with code 0 */
  exited: Promise<void>;
  kill(): void;
}

/** Start a worker for `job`: here, or inside `node`'s namespace (IPC survives `ip netns exec`). */
export function startWorker(job: Job, label: string, node?: NetnsNode): Worker {
  const stdio: StdioOptions = ['ignore', 'inherit', 'inherit', 'ipc'];
  const child = node ? node.spawn(process.execPath, [...execArgv, WORKER, JSON.stringify(job)], { stdio }) : fork(WORKER, [JSON.stringify(job)], { execArgv, stdio });
  children.add(child);
  const slots = new Map<string, Deferred<WorkerMessage>>();
  const exited = deferred<void>();
  let failure: Error | undefined;
  const slot = (type: string): Deferred<WorkerMessage> => {
    let d = slots.get(type);
    if (!d) {
      d = deferred();
      if (failure) d.reject(failure);
      slots.set(type, d);
    }
    return d;
  };
  const fail = (err: Error): void => {
    failure ??= err;
    for (const d of slots.values()) d.reject(failure);
  };
  child.on('message', (m: WorkerMessage) => (m.type === 'error' ? fail(new Error(`${label}: ${m.message}`)) : slot(m.type).resolve(m)));
  child.on('error', (err) => fail(new Error(`${label}: ${err.message}`)));
  child.on('exit', (code, signal) => {
    children.delete(child);
    const err = new Error(`${label} exited with ${signal ?? `code ${code}`}`);
    fail(err);
    if (code === 0) exited.resolve();
    else exited.reject(failure ?? err);
  });
  return {
    message: (type) => slot(type).promise,
    send: (command) => void child.send(command),
    exited: exited.promise,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

export type StartWorker = typeof startWorker;

/**
 * Run `body` with the workers it starts, then wait until all of them exited. Fails as soon as any
 * of them fails (a relay that dies fails the run even if its neighbours would only hang), or
 * after `timeoutMs` (default RUN_TIMEOUT_MS); kills whatever is left in every case.
 */
export async function withWorkers<T>(body: (start: StartWorker) => Promise<T>): Promise<T>;
export async function withWorkers<T>(timeoutMs: number, body: (start: StartWorker) => Promise<T>): Promise<T>;
export async function withWorkers<T>(a: number | ((start: StartWorker) => Promise<T>), b?: (start: StartWorker) => Promise<T>): Promise<T> {
  const [timeoutMs, body] = typeof a === 'number' ? [a, b!] : [RUN_TIMEOUT_MS, a];
  const started: Worker[] = [];
  const anyFailed = deferred<never>();
  const start: StartWorker = (job, label, node) => {
    const w = startWorker(job, label, node);
    started.push(w);
    w.exited.catch((err: Error) => anyFailed.reject(err));
    return w;
  };
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs / 1000} s`)), timeoutMs);
  });
  const all = async (): Promise<T> => {
    const result = await body(start);
    await Promise.all(started.map((w) => w.exited));
    return result;
  };
  try {
    return await Promise.race([all(), anyFailed.promise, timeout]);
  } finally {
    clearTimeout(timer);
    for (const w of started) w.kill();
  }
}
