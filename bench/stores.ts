/**
 * A Sluice daemon on this node whose channels go through an object store, for the `file` and `s3`
 * subjects: the workflow's one edge says `via: s3`, so every byte goes producer → daemon → store
 * (segments + manifest) → daemon → consumer, the consumer reading segments while the producer
 * writes. `s3` is a real S3 protocol server (s3rver) in the orchestrator's process; `file` is the
 * embedded directory store. Disk bytes are measured on the store's directory, the daemon's peak
 * memory from /proc.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { DAEMON_NODE_FLAGS } from '../server/node-flags.js';
import { control } from '../client/control.js';
import { S3RVER_CREDENTIALS, startEmbeddedS3, type EmbeddedS3 } from '../harness/s3-server.js';
import { stopDaemonProcess, watchDaemon } from './daemons.js';
import { peakRssMb, resetPeakRss, writeBytes } from './proc.js';
import { WS_STEPS, type RunRef } from './protocol.js';

const CLI = fileURLToPath(new URL('../server/cli.js', import.meta.url));
const WORKFLOW = 'bench-store';
const S3_PREFIX = 'bench';
const READY_TIMEOUT_MS = 20_000;

export type StoreKind = 'file' | 's3';


/** Bytes in the files under `dir` (0 if it does not exist). */
function bytesUnder(dir: string): number {
  let total = 0;
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) total += bytesUnder(p);
    else if (e.isFile()) total += fs.statSync(p).size;
  }
  return total;
}

export class StoreDaemon {
  private constructor(
    readonly kind: StoreKind,
    /** the daemon's directory: what a function connects with */
    readonly dir: string,
    private readonly child: ChildProcess,
    /** where the store keeps a run's objects: `<runsDir>/<run>/...` */
    private readonly runsDir: string,
    private readonly s3: EmbeddedS3 | undefined,
    private readonly output: () => string,
  ) {}

  /**
   * A daemon whose store is `kind`; `name` (default: the kind) names its directories: the store's
   * under `baseDir` (on disk), the daemon's own (runs, FIFOs, state) under `runtimeDir`.
   */
  static async start(kind: StoreKind, baseDir: string, name: string = kind, runtimeDir = baseDir): Promise<StoreDaemon> {
    const s3 = kind === 's3' ? await startEmbeddedS3({ bucket: 'sluice-bench' }) : undefined;
    const dir = path.join(runtimeDir, `${name}-daemon`);
    const storeDir = path.join(baseDir, `${name}-store`);
    fs.mkdirSync(dir, { mode: 0o700 });
    const store = s3 ? s3.storeUrl(`${S3_PREFIX}/`) : `file://${storeDir}`;
    // s3rver keeps an object (and its metadata beside it) at <directory>/<bucket>/<key>
    const runsDir = s3 ? path.join(s3.directory, s3.bucket, S3_PREFIX) : storeDir;
    const child = spawn(process.execPath, [...DAEMON_NODE_FLAGS, CLI, 'daemon', '--node', `bench-${kind}`, '--dir', dir, '--store', store], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...S3RVER_CREDENTIALS },
    });
    const daemon = new StoreDaemon(kind, dir, child, runsDir, s3, watchDaemon(child));
    try {
      const deadline = Date.now() + READY_TIMEOUT_MS;
      for (;;) {
        if (child.exitCode !== null) throw new Error(`the ${kind} store daemon exited with ${child.exitCode}: ${daemon.output()}`);
        const ready = await control<{ ready: boolean }>(dir, 'GET', '/readyz').then(
          ({ body }) => body.ready,
          () => false,
        );
        if (ready) break;
        if (Date.now() > deadline) throw new Error(`the ${kind} store daemon is not ready after ${READY_TIMEOUT_MS / 1000} s: ${daemon.output()}`);
        await sleep(50);
      }
      const { producer, consumer } = WS_STEPS;
      await control(dir, 'POST', '/v1/workflows', { name: WORKFLOW, steps: { [producer]: {}, [consumer]: {} }, edges: [{ from: producer, to: consumer, via: 's3' }] });
    } catch (err) {
      await daemon.stop();
      throw err;
    }
    return daemon;
  }

  /** Register a workflow (the control API's JSON form). */
  async applyWorkflow(workflow: { name: string; steps: Record<string, object>; edges: object[] }): Promise<void> {
    await control(this.dir, 'POST', '/v1/workflows', workflow);
  }

  async createRun(workflow = WORKFLOW): Promise<RunRef> {
    const { body } = await control<{ run: string; token: string }>(this.dir, 'POST', '/v1/runs', { workflow });
    return { id: body.run, token: body.token };
  }

  async deleteRun(id: string): Promise<void> {
    await control(this.dir, 'DELETE', `/v1/runs/${encodeURIComponent(id)}`);
  }

  /** Bytes the store holds on disk for `run` (objects and, for s3rver, their metadata). */
  diskBytes(run: string): number {
    return bytesUnder(path.join(this.runsDir, run));
  }

  /** Each channel of run `id` as the daemon saw it: relayed bytes show a stream that went through it. */
  async channels(id: string): Promise<Array<{ name: string; state: string; relayedBytes: number; stored?: string }>> {
    const { body } = await control<{ channels: Array<{ name: string; state: string; relayedBytes: number; stored?: string }> }>(this.dir, 'GET', `/v1/runs/${encodeURIComponent(id)}`);
    return body.channels;
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** The daemon's peak resident memory so far, or since `resetPeakRss()` (VmHWM), MB. */
  peakRssMb(): number {
    return peakRssMb(this.pid);
  }

  resetPeakRss(): void {
    resetPeakRss(this.pid);
  }

  /** Bytes the daemon has written to storage so far (/proc/PID/io write_bytes). */
  writeBytes(): number {
    return writeBytes(this.pid);
  }

  async stop(): Promise<void> {
    await stopDaemonProcess(this.child);
    await this.s3?.stop();
  }
}
