/**
 * Runs that span nodes: sharing workflows and runs with the peers they involve. The channels of a
 * run that cross nodes are the peer leg's (server/paths/peer.ts): this file opens them when a run
 * is created, and hands the peer leg the notices peers send about them.
 *
 * **Creating a run** (at any daemon): this node prepares its part, then every other node in the
 * placement prepares its part (endpoints for the consumers it hosts), then every involved node opens
 * a connection on the peer link for each channel whose producer it hosts and whose consumer is
 * elsewhere — with its credit window — and parks it (the peer leg's `openChannels`). Only then does
 * the request return: when the functions start, no dial, no handshake and no OPEN is left on the
 * path of the first byte. If any node fails, the run is deleted everywhere and the error names the
 * node; a node known to be down (PeerLinks.whyDown) fails it before anything is sent, rather than
 * after the request timeout. A run deleted while a node it involves is down is deleted there once
 * its link is up again (tombstones, kept on disk under the daemon's state/).
 */
import fs from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ConnectError, ErrorCodes, RequestError, checkName } from '../transports/index.js';
import { PEER_REQUEST_TIMEOUT_MS, type PeerLeg } from './paths/peer.js';
import type { Fallback } from './paths/store.js';
import type { PeerLinks } from './peers.js';
import type { CreateRunRequest, Run, RunRegistry } from './runs.js';
import { validateWorkflow, type Workflow } from './workflow.js';

export interface ClusterOptions {
  node: string;
  /** the daemon's directory: the deletes owed to peers that were down are kept under its state/ */
  dir: string;
  runs: RunRegistry;
  /** undefined when this daemon has no peers (no secret, no --peers) */
  peers: PeerLinks | undefined;
  log: Logger;
  /** the workflows applied at this node or shared by a peer, by name */
  workflows: Map<string, Workflow>;
  /** the object-store path */
  fallback: Fallback;
  /** the cross-node half of the channels: parked connections, forwarding, delivery, notices */
  peer: PeerLeg;
  /** told when a run is ready here: created, and, when it spans nodes, shared with them and its channels opened */
  onRunReady?: (run: Run) => void;
}

/** How often deletes owed to peers that were down are sent again while their links are up, ms. */
const BURY_RETRY_MS = 2_000;

/** Under the daemon's directory: the runs deleted here that peers, down then, still hold (0600). */
const TOMBSTONES_FILE = 'state/tombstones.json';

/** A run deleted here whose part on a peer could not be deleted then: deleted there once its link is up. */
interface Tombstone {
  run: string;
  /** the run's token: a later run of the same id on the peer is not deleted by mistake */
  token: string;
  /** the run's TTL ends the part on the peer by itself then: the tombstone is dropped */
  expiresAt: number;
}

export class Cluster {
  /** per peer, by run id: runs deleted here that the peer could not be told of (down); see TOMBSTONES_FILE */
  private readonly tombstones = new Map<string, Map<string, Tombstone>>();
  /** per peer: tombstones being sent now */
  private readonly burying = new Set<string>();
  /** the last write of the tombstones file; writes follow one another */
  private saving: Promise<void> = Promise.resolve();

  constructor(private readonly options: ClusterOptions) {
    options.runs.onDeleted = (run) => this.forget(run);
    // a delete that could not be delivered when its link came up is tried again while the link is up
    setInterval(() => {
      for (const peer of this.tombstones.keys()) if (options.peers?.isUp(peer)) void this.bury(peer);
    }, BURY_RETRY_MS).unref();
  }


  /**
   * Take up the deletes a previous daemon on this directory still owed to peers that were down
   * (call before the peer links start). An unreadable file is logged and dropped: the runs'
   * TTLs remove what it named.
   */
  async restore(): Promise<void> {
    const path = join(this.options.dir, TOMBSTONES_FILE);
    let saved: unknown;
    try {
      saved = JSON.parse(await fs.readFile(path, 'utf8'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      this.options.log.warn({ err, file: path }, 'cannot read the runs owed a delete on peers: dropped (their TTLs remove them)');
      return;
    }
    const now = Date.now();
    for (const [peer, list] of Object.entries((saved ?? {}) as Record<string, Tombstone[]>)) {
      if (!Array.isArray(list)) continue;
      for (const t of list) {
        if (typeof t?.run !== 'string' || typeof t.token !== 'string' || typeof t.expiresAt !== 'number' || t.expiresAt <= now) continue;
        let stones = this.tombstones.get(peer);
        if (!stones) this.tombstones.set(peer, (stones = new Map()));
        stones.set(t.run, { run: t.run, token: t.token, expiresAt: t.expiresAt });
      }
    }
    if (this.tombstones.size > 0) this.options.log.info({ peers: [...this.tombstones.keys()] }, 'runs deleted while peers were down: deleted there once their links are up');
  }

  /** Remember that `peer` still holds its part of `run`, deleted here, and save it. */
  private entomb(peer: string, run: Run): void {
    let stones = this.tombstones.get(peer);
    if (!stones) this.tombstones.set(peer, (stones = new Map()));
    stones.set(run.id, { run: run.id, token: run.token, expiresAt: run.expiresAt });
    this.saveTombstones();
  }

  /** Write the tombstones file (atomically; one write after another); a failure is logged, the tombstones stay in memory. */
  private saveTombstones(): void {
    const now = Date.now();
    const content: Record<string, Tombstone[]> = {};
    for (const [peer, stones] of this.tombstones) {
      for (const [id, t] of stones) if (t.expiresAt <= now) stones.delete(id);
      if (stones.size === 0) this.tombstones.delete(peer);
      else content[peer] = [...stones.values()];
    }
    const path = join(this.options.dir, TOMBSTONES_FILE);
    const text = JSON.stringify(content);
    this.saving = this.saving.then(async () => {
      try {
        if (text === '{}') return await fs.rm(path, { force: true });
        await fs.writeFile(path + '.tmp', text, { mode: 0o600 });
        await fs.rename(path + '.tmp', path);
      } catch (err) {
        this.options.log.warn({ err, file: path }, 'cannot save the runs owed a delete on peers: a restart of this daemon forgets them (their TTLs remove them)');
      }
    });
  }

  /** Send `peer` the deletes it is owed (its link is up); those it answered are forgotten, the others tried again later. */
  private async bury(peer: string): Promise<void> {
    const stones = this.tombstones.get(peer);
    if (!stones || this.burying.has(peer)) return;
    this.burying.add(peer);
    try {
      const now = Date.now();
      const before = stones.size;
      for (const t of [...stones.values()]) {
        if (t.expiresAt > now) {
          try {
            await this.options.peers!.request(peer, { op: 'delete', run: t.run, token: t.token }, PEER_REQUEST_TIMEOUT_MS);
            this.options.log.info({ run: t.run, peer }, 'run deleted on a peer that was down when it was deleted here');
          } catch (err) {
            this.options.log.debug({ run: t.run, peer, err }, 'a peer did not take the delete of a run it was owed; tried again later');
            continue;
          }
        }
        if (stones.get(t.run) === t) stones.delete(t.run);
      }
      if (stones.size !== before) this.saveTombstones();
    } finally {
      this.burying.delete(peer);
    }
  }

  /**
   * Register a workflow here and share it with every peer linked now (a peer linked later gets
   * it when its link comes up), so that runs of it can be created at any daemon.
   */
  async applyWorkflow(workflow: Workflow): Promise<void> {
    this.options.workflows.set(workflow.name, workflow);
    const { peers } = this.options;
    if (!peers) return;
    const up = peers.status().filter((p) => peers.isUp(p.node));
    await Promise.all(up.map((p) => this.shareWorkflows(p.node, [workflow])));
  }

  /** A link to `node` came up: give it our workflows, and tell it which of its channels went to the store. */
  readonly onLinkUp = (node: string): void => {
    void this.shareWorkflows(node, [...this.options.workflows.values()]);
    this.options.peer.onLinkUp(node);
    void this.bury(node);
  };


  private async shareWorkflows(node: string, workflows: Workflow[]): Promise<void> {
    if (workflows.length === 0) return;
    try {
      await this.options.peers!.request(node, { op: 'workflows', workflows }, PEER_REQUEST_TIMEOUT_MS);
    } catch (err) {
      this.options.log.warn({ peer: node, err }, 'could not share workflows with a peer');
    }
  }

  /** Create a run here and on every node its placement names; see the file comment. */
  async createRun(request: CreateRunRequest): Promise<Run> {
    const { runs, peers, node } = this.options;
    const run = await runs.create(request);
    this.options.fallback.prepare(run);
    const others = this.nodesOf(run).filter((n) => n !== node);
    /** the nodes sent the run: they may hold a part of it, to delete should creation fail */
    const asked = new Set<string>();
    try {
      for (const other of others) {
        if (!peers?.knows(other)) {
          throw new RequestError(ErrorCodes.INVALID, `run places steps on node "${other}", which is not a peer of node "${node}": list it in --peers (and set the cluster secret)`, {
            details: { node: other },
          });
        }
      }
      // a node known to be down fails the run now: waiting out the request timeout would not bring it back
      for (const other of others) {
        const down = peers!.whyDown(other);
        if (down) throw new ConnectError(ErrorCodes.UNAVAILABLE, `cannot create run "${run.id}": ${down.message}`, { cause: down, details: { run: run.id, node: other, link: 'down' } });
      }
      const shared = {
        run: run.id,
        token: run.token,
        workflow: run.workflow,
        placement: Object.fromEntries(Object.entries(run.manifest.steps).map(([step, s]) => [step, s.nodes])),
        ttlSeconds: Math.max(1, Math.round((run.expiresAt - Date.now()) / 1000)),
      };
      const store = this.options.fallback.store.location;
      await Promise.all(
        others.map(async (other) => {
          asked.add(other);
          const answer = (await peers!.request(other, { op: 'prepare', ...shared, store }, PEER_REQUEST_TIMEOUT_MS)) as { store?: unknown } | null;
          if (typeof answer?.store === 'string') this.options.peer.learnStore(other, answer.store);
        }),
      );
      await Promise.all([this.options.peer.openChannels(run), ...others.map((other) => peers!.request(other, { op: 'open', run: run.id }, PEER_REQUEST_TIMEOUT_MS))]);
    } catch (err) {
      await this.deleteRun(run.id, asked).catch(() => undefined);
      throw err;
    }
    this.options.onRunReady?.(run);
    return run;
  }

  /**
   * Delete a run here and on the other nodes it involves (which may have forgotten it already);
   * `only`: just those of them (the ones a failed creation reached). A node without a link now
   * is not waited for, nor one that does not answer: this node keeps a tombstone for it (on
   * disk, under state/) and deletes its part when its link comes up — until the run's TTL would
   * have removed it anyway.
   */
  async deleteRun(id: string, only?: ReadonlySet<string>): Promise<void> {
    const { runs, peers, node } = this.options;
    const run = runs.get(id);
    await runs.delete(id);
    const others = this.nodesOf(run).filter((n) => n !== node && (only === undefined || only.has(n)));
    const up = others.filter((n) => peers?.isUp(n));
    for (const other of others) if (!up.includes(other) && peers?.knows(other)) this.entomb(other, run);
    const results = await Promise.allSettled(up.map((other) => peers!.request(other, { op: 'delete', run: id, token: run.token }, PEER_REQUEST_TIMEOUT_MS)));
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') return;
      this.options.log.warn({ run: id, peer: up[i], err: r.reason as Error }, 'peer did not delete its part of the run: it is deleted there once the link to it is up again');
      this.entomb(up[i]!, run);
    });
    const owed = others.filter((n) => this.tombstones.get(n)?.has(id));
    if (owed.length > 0) {
      this.options.log.warn({ run: id, peers: owed }, 'run deleted while peers it involves are down: deleted there once their links are up');
      // on disk before the delete is answered: a daemon killed right after still owes it
      await this.saving;
    }
  }

  /** A control request from a peer: its part of a run created elsewhere. */
  readonly onRequest = async (from: string, request: Record<string, unknown>): Promise<unknown> => {
    const { runs } = this.options;
    switch (request.op) {
      case 'prepare': {
        const id = checkName('run', request.run);
        const known = runs.list().find((r) => r.id === id);
        // a repeated request (its first answer was lost with a link): the run is here already
        if (known && known.token === request.token) return { store: this.options.fallback.store.location };
        const run = await runs.create({
          workflow: validateWorkflow(request.workflow),
          id,
          token: request.token as string,
          placement: request.placement as Record<string, string[]>,
          ttlSeconds: request.ttlSeconds as number,
        });
        this.options.log.info({ run: run.id, origin: from }, 'run shared by a peer');
        const ours = this.options.fallback.store.location;
        if (typeof request.store === 'string') this.options.peer.learnStore(from, request.store);
        const crossing = [...run.channels.values()].find((c) => c.peer !== undefined && (c.via === 'store' || c.persist));
        if (crossing && request.store !== ours) {
          await runs.delete(run.id);
          throw new RequestError(
            ErrorCodes.INVALID,
            `channel ${crossing.name} goes through the object store between nodes "${from}" and "${this.options.node}", which use different stores (${String(request.store)} and ${ours}): give every node the same --store`,
            { details: { channel: crossing.name } },
          );
        }
        this.options.fallback.prepare(run);
        return { store: ours };
      }
      case 'stored':
      case 'failed':
        // what became of a stream from a peer to a consumer here: the peer leg's
        return this.options.peer.onNotice(from, request);
      case 'workflows': {
        if (!Array.isArray(request.workflows)) throw new RequestError(ErrorCodes.INVALID, 'workflows must be a list');
        const valid = request.workflows.map((w) => validateWorkflow(w));
        for (const w of valid) this.options.workflows.set(w.name, w);
        return null;
      }
      case 'open': {
        // the last step of sharing a run: every node involved has prepared its part
        const run = runs.get(checkName('run', request.run));
        await this.options.peer.openChannels(run);
        this.options.onRunReady?.(run);
        return null;
      }
      case 'delete': {
        const id = checkName('run', request.run);
        // with a token (sent by one that deleted the run while this node was down), only that very run
        const found = runs.list().find((r) => r.id === id && (request.token === undefined || r.token === request.token));
        if (found) await runs.delete(id);
        return null;
      }
      default:
        throw new RequestError(ErrorCodes.INVALID, `unknown peer request ${JSON.stringify(request.op)}`);
    }
  };

  private forget(run: Run): void {
    this.options.fallback.forget(run);
    this.options.peer.forget(run);
  }

  private nodesOf(run: Run): string[] {
    return [...new Set(Object.values(run.manifest.steps).flatMap((s) => s.nodes))];
  }
}
