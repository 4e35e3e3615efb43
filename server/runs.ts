/**
 * Runs: creation with proactive set-up, lookup by id and token, deletion, expiry.
 *
 * Creating a run prepares, before any function starts, every channel whose consumer is placed
 * on this node: the run's capability directory (0700) and a FIFO pair (0600) per channel, plus
 * the manifest the client library reads. A function's first write then needs no set-up round
 * trip: it opens a FIFO that is already there (or, if its consumer has not opened it yet, hands
 * the stream to this daemon's relay).
 */
import { execFile } from 'node:child_process';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import {
  ACK_SUFFIX,
  ConnectError,
  ErrorCodes,
  MANIFEST_FILE,
  RUNS_DIR,
  RequestError,
  channelName,
  checkName,
  fitsUnixPath,
  runDirectory,
  type InstanceRef,
  type RunManifest,
} from '../transports/index.js';
import { validateWorkflow, type Workflow } from './workflow.js';

const run = promisify(execFile);

export interface CreateRunRequest {
  workflow: Workflow;
  /** the run id; default a fresh random one */
  id?: string;
  /** node of each step's instances: one node for all, or one per instance; default this node */
  placement?: Record<string, string | string[]>;
  /** expire the run after this many seconds without deletion; default the daemon's runTtlSeconds */
  ttlSeconds?: number;
  /** the run's token, when the run was created at another node and shared with this one */
  token?: string;
}

export interface ChannelInfo {
  from: InstanceRef;
  to: InstanceRef;
  name: string;
  /**
   * How the bytes reach the consumer when it is on this node: 'fifo' (prepared here), or 'unix'
   * when they come from `peer` and the socket path fits; 'remote' when the consumer is on `peer`.
   */
  path: 'fifo' | 'unix' | 'remote';
  /** the node at the channel's other end, when that is not this node */
  peer?: string;
  /** 'store' when the edge says `via: s3`: the bytes go through the object store only */
  via: 'direct' | 'store';
  /** the edge says `persist: true`: a durable copy in the store besides the direct path */
  persist: boolean;
  /** why the stream went to the object store, once it did */
  stored?: 'spill' | 'forced' | 'unreachable' | 'persist' | 'failover';
  state: 'prepared' | 'relaying' | 'done' | 'failed';
  relayedBytes: number;
  /** the edge says `fanout: balance`: its producer's daemon picks one consumer instance per stream */
  balanced: boolean;
  /**
   * On a balanced channel's producer node, once its producer opened its stream: true when this
   * channel's consumer was picked (the stream is on it), false when another was (an empty stream
   * tells this consumer so).
   */
  routed?: boolean;
}

export interface Run {
  id: string;
  token: string;
  workflow: Workflow;
  createdAt: number;
  expiresAt: number;
  directory: string;
  manifest: RunManifest;
  channels: Map<string, ChannelInfo>;
}

export interface RunRegistryOptions {
  dir: string;
  node: string;
  runTtlSeconds: number;
  maxRuns: number;
  log: Logger;
}

/** Under `$dir`: one file per run, its creation request (0600; the directory 0700). */
const STATE_DIR = 'state/runs';

interface SavedRun {
  id: string;
  token: string;
  workflow: Workflow;
  placement: Record<string, string[]>;
  createdAt: number;
  expiresAt: number;
}

/**
 * A run token: 24 random bytes in base64url, never starting with "-" — a token is passed on
 * command lines (`--token T`), where a leading "-" reads as an option (1 token in 64 did).
 */
function newToken(): string {
  for (;;) {
    const token = randomBytes(24).toString('base64url');
    if (token[0] !== '-') return token;
  }
}

function newRunId(): string {
  return `r-${randomBytes(9).toString('base64url').toLowerCase().replace(/[^a-z0-9]/g, 'x')}`;
}

export class RunRegistry {
  private readonly runs = new Map<string, Run>();
  private sweeper: NodeJS.Timeout | undefined;
  /** Called after a run was deleted (by request or by its TTL), to release what else it holds. */
  onDeleted: ((run: Run) => void) | undefined;
  /** Runs created since this registry started (not those taken up again after a restart), for the metrics. */
  created = 0;
  /** Runs removed since this registry started, by reason, for the metrics. */
  readonly removed = { deleted: 0, expired: 0 };

  constructor(private readonly options: RunRegistryOptions) {}

  /** Create `$dir/runs` (0711: traversable, not listable) and start expiring runs. */
  /**
   * Create `$dir/runs` (0711: traversable, not listable), take up the runs a previous daemon left
   * on this directory (unexpired ones), and start expiring runs.
   */
  async start(): Promise<void> {
    const runsDir = join(this.options.dir, RUNS_DIR);
    await fs.mkdir(runsDir, { recursive: true, mode: 0o711 });
    await fs.chmod(runsDir, 0o711);
    await fs.mkdir(this.stateDir, { recursive: true, mode: 0o700 });
    await this.restore();
    this.sweeper = setInterval(() => void this.sweep(), Math.min(60_000, this.options.runTtlSeconds * 250));
    this.sweeper.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.sweeper);
  }

  get size(): number {
    return this.runs.size;
  }

  list(): Run[] {
    return [...this.runs.values()];
  }

  /** The run, or SLUICE_NOT_FOUND. */
  get(id: string): Run {
    const found = this.runs.get(id);
    if (!found) throw new RequestError(ErrorCodes.NOT_FOUND, `no run "${id}" on node ${this.options.node}`, { details: { run: id } });
    return found;
  }

  /** The run if `token` is its token; SLUICE_NOT_FOUND or SLUICE_UNAUTHORIZED otherwise. */
  authorize(id: string, token: unknown): Run {
    const found = this.get(id);
    const given = Buffer.from(typeof token === 'string' ? token : '');
    const expected = Buffer.from(found.token);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw new RequestError(ErrorCodes.UNAUTHORIZED, `wrong or missing token for run "${id}"`, { details: { run: id } });
    }
    return found;
  }

  /** Where each run's creation request is kept (0600, it holds the token), so a restarted daemon takes its runs up again. */
  private get stateDir(): string {
    return join(this.options.dir, STATE_DIR);
  }

  private async restore(): Promise<void> {
    const { log } = this.options;
    for (const file of await fs.readdir(this.stateDir)) {
      if (!file.endsWith('.json')) continue;
      const path = join(this.stateDir, file);
      try {
        const saved = JSON.parse(await fs.readFile(path, 'utf8')) as SavedRun;
        if (saved.expiresAt <= Date.now()) {
          await fs.rm(runDirectory(this.options.dir, saved.id, saved.token), { recursive: true, force: true });
          await fs.rm(path, { force: true });
          this.removed.expired++;
          log.info({ run: saved.id }, 'run expired while the daemon was down: removed');
          continue;
        }
        await this.create({ workflow: validateWorkflow(saved.workflow), id: saved.id, token: saved.token, placement: saved.placement }, saved);
        log.info({ run: saved.id }, 'run taken up again after a restart');
      } catch (err) {
        log.warn({ err, file: path }, 'cannot take up a run saved by a previous daemon: dropped');
        await fs.rm(path, { force: true });
      }
    }
  }

  /**
   * Create a run and prepare its part on this node. `restored` (the saved times) takes up a run
   * saved by a previous daemon on this directory: its endpoints may exist already, and are kept.
   */
  async create(request: CreateRunRequest, restored?: { createdAt: number; expiresAt: number }): Promise<Run> {
    const { workflow } = request;
    const id = request.id === undefined ? newRunId() : checkName('run id', request.id);
    if (this.runs.has(id)) throw new RequestError(ErrorCodes.CONFLICT, `run "${id}" exists already`, { details: { run: id } });
    if (this.runs.size >= this.options.maxRuns) {
      throw new ConnectError(ErrorCodes.UNAVAILABLE, `this node holds ${this.runs.size} runs, its limit (--max-runs); delete finished runs first`, { details: { limit: 'maxRuns' } });
    }
    const ttl = request.ttlSeconds ?? this.options.runTtlSeconds;
    if (!Number.isInteger(ttl) || ttl < 1 || ttl > 30 * 86400) throw new RequestError(ErrorCodes.INVALID, `ttlSeconds must be an integer in 1..2592000, got ${JSON.stringify(ttl) ?? typeof ttl}`);
    const steps = placeSteps(workflow, request.placement ?? {}, this.options.node);
    if (request.token !== undefined && (typeof request.token !== 'string' || !/^[A-Za-z0-9_-]{32}$/.test(request.token))) {
      throw new RequestError(ErrorCodes.INVALID, 'a shared run token must be 32 base64url characters');
    }
    const token = request.token ?? newToken();
    const directory = runDirectory(this.options.dir, id, token);
    const channels = new Map<string, ChannelInfo>();
    for (const edge of workflow.edges) {
      const from = steps[edge.from]!;
      const to = steps[edge.to]!;
      for (let i = 0; i < from.replicas; i++) {
        for (let j = 0; j < to.replicas; j++) {
          if (from.nodes[i] !== this.options.node && to.nodes[j] !== this.options.node) continue;
          const f = { step: edge.from, index: i };
          const t = { step: edge.to, index: j };
          const name = channelName(f, t);
          const local = to.nodes[j] === this.options.node;
          const other = local ? from.nodes[i]! : to.nodes[j]!;
          const path = !local ? 'remote' : other !== this.options.node && fitsUnixPath(join(directory, name)) ? 'unix' : 'fifo';
          channels.set(name, {
            from: f,
            to: t,
            name,
            path,
            ...(other !== this.options.node ? { peer: other } : {}),
            via: edge.via === 's3' ? 'store' : 'direct',
            persist: edge.persist === true,
            balanced: edge.fanout === 'balance',
            state: 'prepared',
            relayedBytes: 0,
          });
        }
      }
    }
    const manifest: RunManifest = {
      v: 1,
      run: id,
      workflow: workflow.name,
      node: this.options.node,
      steps,
      edges: workflow.edges.map((e) => ({ ...e })),
      // what the client does with each channel: `relay`, a producer here streams to this daemon's
      // relay (which forwards, stores or tees); `fifo`, it tries the consumer's FIFO first; `unix`,
      // a consumer here listens on a socket its daemon feeds (the producer is elsewhere). A
      // consumer here of a `relay` channel listens on its FIFO. A balanced stream always goes
      // through the daemon, which picks its consumer.
      channels: [...channels.values()].map((c) => ({
        from: c.from,
        to: c.to,
        name: c.name,
        path: c.path === 'unix' ? ('unix' as const) : c.path === 'fifo' && c.via === 'direct' && !c.persist && !c.balanced ? ('fifo' as const) : ('relay' as const),
      })),
    };
    const created: Run = { id, token, workflow, createdAt: restored?.createdAt ?? Date.now(), expiresAt: restored?.expiresAt ?? Date.now() + ttl * 1000, directory, manifest, channels };
    // reserve the id before the first await: two concurrent creates of one id must not both win
    this.runs.set(id, created);
    try {
      await prepareDirectory(directory, manifest, [...channels.values()].filter((c) => c.path === 'fifo').map((c) => c.name), restored !== undefined);
      const saved: SavedRun = { id, token, workflow, placement: Object.fromEntries(Object.entries(steps).map(([step, s]) => [step, s.nodes])), createdAt: created.createdAt, expiresAt: created.expiresAt };
      const statePath = join(this.stateDir, `${id}.json`);
      await fs.writeFile(statePath + '.tmp', JSON.stringify(saved), { mode: 0o600 });
      await fs.rename(statePath + '.tmp', statePath);
    } catch (err) {
      this.runs.delete(id);
      await fs.rm(directory, { recursive: true, force: true });
      await fs.rm(join(this.stateDir, `${id}.json`), { force: true });
      throw new ConnectError(ErrorCodes.UNAVAILABLE, `cannot prepare run "${id}" under ${this.options.dir}: ${(err as Error).message}`, { cause: err });
    }
    if (!restored) this.created++;
    this.options.log.info({ run: id, workflow: workflow.name, channels: manifest.channels.length, shared: request.token !== undefined }, 'run prepared');
    return created;
  }

  /** Remove a run and everything it left on disk; `reason` is what the metrics count it as. */
  async delete(id: string, reason: 'deleted' | 'expired' = 'deleted'): Promise<void> {
    const found = this.get(id);
    this.runs.delete(id);
    this.removed[reason]++;
    this.onDeleted?.(found);
    await fs.rm(join(this.stateDir, `${id}.json`), { force: true });
    await fs.rm(found.directory, { recursive: true, force: true });
    this.options.log.info({ run: id }, 'run deleted');
  }

  /** Remove every run past its TTL. Runs by itself every min(60 s, TTL / 4); callable at will. */
  async sweep(): Promise<void> {
    const now = Date.now();
    for (const r of this.runs.values()) {
      if (r.expiresAt <= now) {
        this.options.log.warn({ run: r.id }, 'run expired (TTL)');
        await this.delete(r.id, 'expired').catch(() => undefined);
      }
    }
  }
}

/** Each step's instance count and the node of each instance. */
function placeSteps(workflow: Workflow, placement: Record<string, string | string[]>, self: string): RunManifest['steps'] {
  for (const step of Object.keys(placement)) {
    if (!(step in workflow.steps)) throw new RequestError(ErrorCodes.INVALID, `placement names step "${step}", which workflow "${workflow.name}" does not have`, { details: { step } });
  }
  const steps: RunManifest['steps'] = {};
  for (const [name, { replicas }] of Object.entries(workflow.steps)) {
    const where = placement[name] ?? self;
    const nodes = typeof where === 'string' ? Array.from({ length: replicas }, () => where) : where;
    if (!Array.isArray(nodes) || nodes.length !== replicas) {
      throw new RequestError(ErrorCodes.INVALID, `placement of step "${name}" must be one node, or a list of ${replicas} nodes (one per replica)`, { details: { step: name } });
    }
    nodes.forEach((n) => checkName(`node of step "${name}"`, n));
    steps[name] = { replicas, nodes: [...nodes] };
  }
  return steps;
}

/** The run directory, one FIFO pair per channel whose consumer is here, and the manifest, written last. */
async function prepareDirectory(directory: string, manifest: RunManifest, consumedHere: string[], keepExisting: boolean): Promise<void> {
  await fs.mkdir(directory, { mode: 0o700, recursive: keepExisting });
  let fifos = consumedHere.flatMap((name) => [join(directory, name), join(directory, name + ACK_SUFFIX)]);
  // a consumer may hold a FIFO open across its daemon's restart: keep the very same file
  if (keepExisting) fifos = (await Promise.all(fifos.map(async (f) => ((await fs.stat(f).catch(() => undefined))?.isFIFO() ? undefined : f)))).filter((f): f is string => f !== undefined);
  // one mkfifo process for the whole run, in batches that fit a command line
  for (let i = 0; i < fifos.length; i += 512) await run('mkfifo', ['-m', '600', '--', ...fifos.slice(i, i + 512)]);
  const manifestPath = join(directory, MANIFEST_FILE);
  await fs.writeFile(manifestPath + '.tmp', JSON.stringify(manifest), { mode: 0o600 });
  await fs.rename(manifestPath + '.tmp', manifestPath);
}
