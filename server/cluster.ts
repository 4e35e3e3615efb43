/**
 * Runs that span nodes: sharing a run with the peers it involves, and carrying its cross-node
 * channels over the peer links.
 *
 * **Creating a run** (at any daemon): this node prepares its part, then every other node in the
 * placement prepares its part (endpoints for the consumers it hosts), then every involved node opens
 * a connection on the peer link for each channel whose producer it hosts and whose consumer is
 * elsewhere — with its credit window — and parks it. Only then does the request return: when the
 * functions start, no dial, no handshake and no OPEN is left on the path of the first byte. If
 * any node fails, the run is deleted everywhere and the error names the node; a node known to be
 * down (PeerLinks.whyDown) fails it before anything is sent, rather than after the request timeout.
 * A run deleted while a node it involves is down is deleted there once its link is up again
 * (tombstones, kept on disk under the daemon's state/).
 *
 * **A cross-node channel carries the channel protocol end to end.** The producer streams to its
 * daemon's relay socket; the relay reads the HELLO (token, channel), then passes the bytes on,
 * untouched, into the parked connection. The consumer's daemon, at the first byte, connects to the
 * consumer's socket (its FIFO if the socket path would be too long), waiting up to the attach
 * timeout, and passes the bytes on into it. Neither
 * daemon decodes the stream: the consumer verifies length and checksum, and its ACK travels back
 * the same way, so the producer's `end()` still means "the consumer verified every byte".
 *
 * **Faults.** A link that fails resets its connections: the consumer's daemon cuts the delivery
 * mid-stream (the consumer reports SLUICE_TRUNCATED), and the producer's daemon sends the
 * producer an ABORT with SLUICE_UNAVAILABLE naming the peer. A producer that dies makes its
 * daemon reset the connection, with the same effect on the consumer. Nothing ends cleanly
 * without the consumer's verification.
 */
import fs from 'node:fs/promises';
import { join } from 'node:path';
import { finished } from 'node:stream/promises';
import type { Logger } from 'pino';
import {
  ConnectError,
  ErrorCodes,
  FrameType,
  RequestError,
  StreamError,
  checkName,
  encodeControl,
  firstChunk,
  isLinkFailure,
  mediumError,
  type Connection,
  type ErrorCode,
  type Grant,
  type MemoryBudget,
} from '../transports/index.js';
import type { Fallback } from './paths/store.js';
import type { Metrics } from './metrics.js';
import { StreamTap } from './paths/tap.js';
import { factsOf, plan, type PathFacts, type Route } from './paths/plan.js';
import { CHANNEL_PREFIX, type PeerLinks } from './peers.js';
import { attachConsumer, terminate } from './paths/local.js';
import type { ChannelInfo, CreateRunRequest, Run, RunRegistry } from './runs.js';
import { validateWorkflow, type Workflow } from './workflow.js';

export interface ClusterOptions {
  node: string;
  /** the daemon's directory: the deletes owed to peers that were down are kept under its state/ */
  dir: string;
  runs: RunRegistry;
  /** undefined when this daemon has no peers (no secret, no --peers) */
  peers: PeerLinks | undefined;
  attachTimeoutMs: number;
  log: Logger;
  metrics: Metrics;
  /** the workflows applied at this node or shared by a peer, by name */
  workflows: Map<string, Workflow>;
  /** the object-store path */
  fallback: Fallback;
  /** the buffer of a stream this node verifies on its way to the store, bytes */
  relayBufferBytes: number;
  /** the daemon-wide memory budget: replay tails and the buffers of streams verified here come from it */
  budget: MemoryBudget;
  /**
   * Payload bytes of each outgoing cross-node stream kept to resume it from, should its link be
   * lost mid-stream: more than the link's window plus the socket buffers on the way.
   */
  replayBytes: number;
  /** told when a run is ready here: created, and, when it spans nodes, shared with them and its channels opened */
  onRunReady?: (run: Run) => void;
}

/** How long run sharing may wait for a peer (its link, then its answer), ms. */
const PEER_REQUEST_TIMEOUT_MS = 10_000;

const key = (run: string, channel: string): string => `${run}/${channel}`;

interface Notice {
  op: 'stored' | 'failed';
  run: string;
  channel: string;
  message?: string;
}

/** How often notices of stored streams that did not reach their peer are sent again, ms. */
const UNTOLD_RETRY_MS = 2_000;

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

/** Pass bytes both ways between two connections until both directions ended; reject on the first fault. */
function splice(a: Connection, b: Connection, onForward: (chunk: Buffer) => void, onBack: () => void): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let open = 2;
    let failed = false;
    const fail = (err: Error): void => {
      if (failed) return;
      failed = true;
      a.input.unpipe(b.output);
      b.input.unpipe(a.output);
      reject(err);
    };
    const direction = (from: Connection['input'], to: Connection['output'], what: string): void => {
      from.on('error', fail);
      to.on('error', fail);
      from.on('close', () => {
        if (!from.readableEnded) fail(mediumError('ECONNRESET', `${what} closed mid-stream`));
      });
      to.on('finish', () => {
        if (--open === 0 && !failed) resolve();
      });
      from.pipe(to);
    };
    a.input.on('data', onForward);
    b.input.once('data', onBack);
    direction(a.input, b.output, 'the sending side');
    direction(b.input, a.output, 'the receiving side');
  });
}

export class Cluster {
  /** connections opened at run creation, waiting for their producer */
  private readonly parked = new Map<string, Connection>();
  /** consumer side: channels a peer has opened a connection for */
  private readonly linked = new Set<string>();
  /** every peer-link connection a run uses, to cut when it is deleted */
  private readonly inUse = new Map<string, Set<Connection>>();
  /**
   * per peer, by `run/channel`: what to tell it about its consumers' streams once its link is up —
   * `stored` (the stream is in the store, feed it from there) or `failed` (it broke mid-way and
   * cannot be resumed: tell the consumer, which may be waiting for a resumption)
   */
  private readonly untold = new Map<string, Map<string, Notice>>();
  /** per peer: the location of its object store, as it answered a `prepare` */
  private readonly peerStores = new Map<string, string>();
  /** per peer, by run id: runs deleted here that the peer could not be told of (down); see TOMBSTONES_FILE */
  private readonly tombstones = new Map<string, Map<string, Tombstone>>();
  /** per peer: tombstones being sent now */
  private readonly burying = new Set<string>();
  /** the last write of the tombstones file; writes follow one another */
  private saving: Promise<void> = Promise.resolve();

  constructor(private readonly options: ClusterOptions) {
    options.runs.onDeleted = (run) => this.forget(run);
    // a notice that could not be delivered when its link came up is tried again while the link is up
    setInterval(() => {
      for (const peer of this.untold.keys()) if (options.peers?.isUp(peer)) this.tellUntold(peer);
      for (const peer of this.tombstones.keys()) if (options.peers?.isUp(peer)) void this.bury(peer);
    }, UNTOLD_RETRY_MS).unref();
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
    this.tellUntold(node);
    void this.bury(node);
  };

  private tellUntold(node: string): void {
    const untold = this.untold.get(node);
    this.untold.delete(node);
    for (const notice of untold?.values() ?? []) this.tell(node, notice);
  }

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
          if (typeof answer?.store === 'string') this.peerStores.set(other, answer.store);
        }),
      );
      await Promise.all([this.openChannels(run), ...others.map((other) => peers!.request(other, { op: 'open', run: run.id }, PEER_REQUEST_TIMEOUT_MS))]);
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
        if (typeof request.store === 'string') this.peerStores.set(from, request.store);
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
      case 'stored': {
        // a peer stored a stream for a consumer here (its link to us was down when it opened, or failed mid-stream)
        const { run, channel } = this.channelFrom(from, request);
        this.options.fallback.feed(run, channel);
        return null;
      }
      case 'failed': {
        // a stream from a peer broke mid-way and cannot be resumed: its consumer here may be waiting
        const { run, channel } = this.channelFrom(from, request);
        if (channel.path === 'unix' && channel.state !== 'done' && !this.linked.has(key(run.id, channel.name))) {
          channel.state = 'failed';
          void this.tellConsumer(run, channel, ErrorCodes.TRUNCATED, String(request.message ?? 'the stream broke mid-way and cannot be resumed'));
        }
        return null;
      }
      case 'workflows': {
        if (!Array.isArray(request.workflows)) throw new RequestError(ErrorCodes.INVALID, 'workflows must be a list');
        const valid = request.workflows.map((w) => validateWorkflow(w));
        for (const w of valid) this.options.workflows.set(w.name, w);
        return null;
      }
      case 'open': {
        // the last step of sharing a run: every node involved has prepared its part
        const run = runs.get(checkName('run', request.run));
        await this.openChannels(run);
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

  /** The run and channel a peer's notice names: one whose producer is on `from` and consumer here. */
  private channelFrom(from: string, request: Record<string, unknown>): { run: Run; channel: ChannelInfo } {
    const run = this.options.runs.get(checkName('run', request.run));
    // looked up, never used as a path: a name that is not a channel of the run is simply not found
    const channel = typeof request.channel === 'string' ? run.channels.get(request.channel) : undefined;
    if (!channel || channel.path === 'remote' || channel.peer !== from) throw new RequestError(ErrorCodes.NOT_FOUND, `run "${run.id}" has no channel ${String(request.channel)} from node "${from}" to this node`);
    return { run, channel };
  }

  /** A peer opened a channel to a consumer on this node: check it, then deliver it. */
  readonly onChannel = (from: string, endpoint: string): ((conn: Connection) => void) => {
    const [runId, name, extra] = endpoint.startsWith(CHANNEL_PREFIX) ? endpoint.slice(CHANNEL_PREFIX.length).split('/') : [];
    if (runId === undefined || name === undefined || extra !== undefined) throw new RequestError(ErrorCodes.INVALID, `unknown endpoint ${JSON.stringify(endpoint)}`);
    const run = this.options.runs.get(checkName('run', runId));
    const channel = run.channels.get(name);
    if (!channel || channel.path === 'remote' || channel.peer !== from) {
      throw new RequestError(ErrorCodes.NOT_FOUND, `run "${runId}" has no channel ${name} from node "${from}" to this node`, { details: { run: runId, channel: name } });
    }
    const k = key(runId, name);
    if (this.linked.has(k) || channel.state !== 'prepared') throw new RequestError(ErrorCodes.INVALID, `channel ${name} of run "${runId}" is open already`);
    this.linked.add(k);
    return (conn) => void this.deliver(run, channel, conn).finally(() => this.linked.delete(k));
  };

  /** The producer side: pass the producer's stream into the channel's connection on the link. */
  async forward(run: Run, channel: ChannelInfo, producer: Connection, head: Buffer): Promise<void> {
    const { log, metrics, peers } = this.options;
    const log2 = log.child({ run: run.id, channel: channel.name, peer: channel.peer });
    let link: Connection;
    try {
      link = this.parked.get(key(run.id, channel.name)) ?? (await this.openChannel(run, channel));
      this.parked.delete(key(run.id, channel.name));
    } catch (err) {
      if (this.routeOf(channel, 'producer').unreachable === 'store') return this.storeInstead(run, channel, producer, head, err as Error);
      channel.state = 'failed';
      this.sendAbort(producer, err as Error);
      throw err;
    }
    let grant: Grant;
    try {
      // the replay tail is memory: the producer waits for it like any buffer
      grant = await this.options.budget.take(this.options.replayBytes, this.options.replayBytes, AbortSignal.timeout(this.options.attachTimeoutMs));
    } catch (err) {
      channel.state = 'failed';
      link.destroy();
      this.sendAbort(producer, err as Error);
      throw err;
    }
    channel.state = 'relaying';
    metrics.relayChannels.inc();
    const observed = metrics.streamStarted('remote');
    let answered = false;
    const tap = new StreamTap(this.options.replayBytes);
    // A producer that vanishes closes its socket cleanly; passed on as a clean close, its
    // consumer (which may wait for a resumption) could not tell it from its own daemon's death.
    // Registered before splice's pipe, so the link is cut before the pipe would close it.
    let producerGone = false;
    producer.input.once('end', () => {
      if (tap.ended) return;
      producerGone = true;
      link.destroy(new StreamError(ErrorCodes.TRUNCATED, `the producer went away after ${tap.offset} bytes, without its trailer`));
    });
    try {
      tap.push(head);
      link.output.write(head);
      channel.relayedBytes += head.length;
      observed.bytes(head.length);
      await splice(
        producer,
        link,
        (chunk) => {
          tap.push(chunk);
          channel.relayedBytes += chunk.length;
          metrics.relayBytes.inc(chunk.length);
          observed.bytes(chunk.length);
        },
        () => (answered = true),
      );
      channel.state = 'done';
      observed.done();
      producer.destroy();
      link.destroy();
      log2.info({ bytes: channel.relayedBytes }, 'cross-node stream delivered');
    } catch (err) {
      channel.state = 'failed';
      const linkError = link.input.errored ?? link.output.errored;
      link.destroy();
      const lost = linkError !== null && (isLinkFailure(linkError) || peers?.isUp(channel.peer!) === false);
      if (lost && !answered && tap.resumable && this.routeOf(channel, 'producer').linkLost === 'resume') {
        log2.warn({ err, at: tap.offset }, 'peer link lost mid-stream: the rest of the stream goes through the object store');
        return await this.failOver(run, channel, producer, tap);
      }
      const down = channel.peer !== undefined && peers?.isUp(channel.peer) === false;
      const reason = new ConnectError(ErrorCodes.UNAVAILABLE, down ? `the peer link to node "${channel.peer}" failed mid-stream` : `the stream to node "${channel.peer}" broke: ${(err as Error).message}`, {
        cause: err,
        // producerGone: the producer broke the stream, not the consumer (a balanced replica is not blamed)
        details: { run: run.id, channel: channel.name, peer: channel.peer, ...(producerGone ? { producerGone } : {}) },
      });
      // the consumer's answer may be half through already: then only cutting is safe
      if (answered) producer.destroy();
      else this.sendAbort(producer, reason);
      // a consumer whose daemon died waits for a resumption that will not come: its node, once
      // back, tells it why (if its daemon lived, it has told it already; telling twice is harmless)
      if (lost && !answered) {
        this.tell(channel.peer!, { op: 'failed', run: run.id, channel: channel.name, message: `the peer link from node "${this.options.node}" failed mid-stream, and the two nodes share no object store to resume through` });
      }
      throw reason;
    } finally {
      metrics.relayChannels.dec();
      grant.release();
    }
  }

  /**
   * The link of a cross-node stream was lost mid-way: resume it through the store, from the first
   * byte the tap kept; the producer goes on sending, into the store now, and is acknowledged once
   * the store holds all of it. The consumer's node is told (now, or once its link is back).
   */
  private async failOver(run: Run, channel: ChannelInfo, producer: Connection, tap: StreamTap): Promise<void> {
    const { fallback, metrics, relayBufferBytes } = this.options;
    const input = producer.input;
    // the producer's chunks still reach the tap through the listener forward() gave splice
    const { start, payload, trailer } = tap.takeOver(relayBufferBytes, () => {
      input.pause();
      payload.once('drain', () => input.resume());
    });
    input.once('end', () => tap.producerGone());
    input.once('close', () => tap.producerGone());
    input.on('error', (err) => tap.producerGone(err));
    input.resume();
    this.tellStored(channel.peer!, run.id, channel.name);
    metrics.relayChannels.inc();
    try {
      await fallback.write(run, channel, payload, 'failover', { start, trailer });
      channel.state = 'done';
      const ack = encodeControl(FrameType.ACK, 0, { length: trailer().length });
      producer.output.on('error', () => undefined);
      producer.output.end(ack, () => setTimeout(() => producer.destroy(), 1_000).unref());
      input.resume();
    } catch (err) {
      channel.state = 'failed';
      this.sendAbort(producer, err as Error);
      throw err;
    } finally {
      metrics.relayChannels.dec();
    }
  }

  /** The consumer side: at the first byte, connect to the consumer and pass the stream into it. */
  private async deliver(run: Run, channel: ChannelInfo, link: Connection): Promise<void> {
    const { log, metrics, attachTimeoutMs } = this.options;
    const log2 = log.child({ run: run.id, channel: channel.name, peer: channel.peer });
    this.track(run.id, link);
    try {
      link.input.unshift(await firstChunk(link.input));
    } catch {
      link.destroy(); // closed before use (run deleted, producer's daemon gone): may be opened again
      return;
    }
    channel.state = 'relaying';
    metrics.relayChannels.inc();
    const observed = metrics.streamStarted(channel.path === 'unix' ? 'unix' : 'fifo');
    let consumer: Connection | undefined;
    let answered = false;
    try {
      try {
        consumer = await attachConsumer(run, channel, attachTimeoutMs);
      } catch (err) {
        if ((err as { code?: string }).code !== ErrorCodes.TIMEOUT) throw err;
        return this.spill(run, channel, link);
      }
      await splice(link, consumer, (chunk) => {
        channel.relayedBytes += chunk.length;
        metrics.relayBytes.inc(chunk.length);
        observed.bytes(chunk.length);
      }, () => (answered = true));
      channel.state = 'done';
      observed.done();
      log2.info({ bytes: channel.relayedBytes }, 'cross-node stream delivered');
    } catch (err) {
      channel.state = 'failed';
      metrics.errors.inc({ code: (err as { code?: string }).code ?? 'unknown' });
      log2.warn({ err }, 'cross-node delivery failed');
      const linkError = link.input.errored ?? link.output.errored;
      if (!consumer) this.sendAbort(link, err as Error);
      else link.destroy();
      // the stream broke on the producer's side of this node (not at the consumer, which has not answered)
      if (consumer && !answered && linkError !== null) this.afterBrokenDelivery(run, channel, consumer, linkError);
    } finally {
      metrics.relayChannels.dec();
      consumer?.destroy();
      this.untrack(run.id, link);
    }
  }

  /**
   * A stream being delivered here broke on the link's side. A consumer listening on a Unix socket
   * waits for its stream to be resumed on a new connection: if the link itself was lost and both
   * nodes share a store, the producer's node resumes it there and this node feeds it on; otherwise
   * the consumer is told why it cannot be resumed (over a new connection: the broken one may have
   * stopped mid-frame). A FIFO consumer just sees its stream cut (SLUICE_TRUNCATED).
   */
  private afterBrokenDelivery(run: Run, channel: ChannelInfo, consumer: Connection, why: Error): void {
    consumer.destroy();
    if (channel.path !== 'unix') return;
    const lost = isLinkFailure(why) || this.options.peers?.isUp(channel.peer!) === false;
    if (lost && this.routeOf(channel, 'consumer').linkLost === 'resume') {
      this.options.log.warn({ run: run.id, channel: channel.name, peer: channel.peer }, 'peer link lost mid-stream: the consumer gets the rest from the object store');
      return this.options.fallback.feed(run, channel);
    }
    const message = lost
      ? `the peer link to node "${channel.peer}" failed mid-stream, and the two nodes share no object store to resume through (${why.message})`
      : `the producer's node ended the stream mid-way: ${why.message}`;
    void this.tellConsumer(run, channel, ErrorCodes.TRUNCATED, message);
  }

  /** Give a consumer waiting for its stream to resume the reason it will not be: an ABORT on a new connection. */
  private async tellConsumer(run: Run, channel: ChannelInfo, code: ErrorCode, message: string): Promise<void> {
    try {
      this.sendAbort(await attachConsumer(run, channel, 5_000), new StreamError(code as ErrorCode, message));
    } catch (err) {
      this.options.log.debug({ err, run: run.id, channel: channel.name }, 'the consumer was not there to be told its stream failed');
    }
  }

  /** A connection on the link for a channel whose consumer is on `channel.peer`: the parked one, or a new one. */
  async link(run: Run, channel: ChannelInfo): Promise<Connection> {
    const parked = this.parked.get(key(run.id, channel.name));
    this.parked.delete(key(run.id, channel.name));
    return parked ?? this.openChannel(run, channel);
  }

  /**
   * The consumer's node cannot be reached: verify the stream here and put it in the store, which
   * both nodes share; the consumer's node is told (now, or when its link comes back) and feeds
   * its consumer from there.
   */
  private async storeInstead(run: Run, channel: ChannelInfo, producer: Connection, head: Buffer, why: Error): Promise<void> {
    const { fallback, log, metrics, relayBufferBytes } = this.options;
    log.warn({ run: run.id, channel: channel.name, peer: channel.peer, err: why }, 'peer unreachable: the stream goes to the object store');
    producer.input.unshift(head);
    terminate(
      producer,
      (reader) => {
        this.tellStored(channel.peer!, run.id, channel.name);
        return fallback.write(run, channel, reader, 'unreachable');
      },
      { highWaterMark: relayBufferBytes, budget: this.options.budget, budgetWaitMs: this.options.attachTimeoutMs, log, metrics },
    );
  }

  /** The consumer here did not attach in time: verify the stream and spill it, or, if persisted, feed from the copy. */
  private spill(run: Run, channel: ChannelInfo, link: Connection): void {
    const { fallback, log, metrics, relayBufferBytes } = this.options;
    log.info({ run: run.id, channel: channel.name, peer: channel.peer }, 'consumer not attached: the stream goes to the object store');
    terminate(
      link,
      async (reader) => {
        fallback.feed(run, channel);
        if (this.routeOf(channel, 'consumer').late === 'spill') return fallback.write(run, channel, reader, 'spill');
        reader.resume(); // the producer's node writes the copy this consumer will read
        await finished(reader);
      },
      { highWaterMark: relayBufferBytes, budget: this.options.budget, budgetWaitMs: this.options.attachTimeoutMs, log, metrics },
    );
  }

  /** The route of `channel`'s stream where it enters at its `end` on this node (server/paths/plan.ts). */
  routeOf(channel: ChannelInfo, end: PathFacts['end']): Route {
    return plan(factsOf(channel, end, channel.peer !== undefined && this.sharesStore(channel.peer)));
  }

  /** Does `peer` use this node's store (so that what one writes, the other can read)? */
  private sharesStore(peer: string): boolean {
    return this.peerStores.get(peer) === this.options.fallback.store.location;
  }

  private tellStored(peer: string, run: string, channel: string): void {
    this.tell(peer, { op: 'stored', run, channel });
  }

  /** Tell `peer` now, or once its link is up again (the later notice for a channel replaces an earlier one). */
  private tell(peer: string, notice: Notice): void {
    const remember = (): void => {
      let notices = this.untold.get(peer);
      if (!notices) this.untold.set(peer, (notices = new Map()));
      notices.set(key(notice.run, notice.channel), notice);
    };
    if (!this.options.peers?.isUp(peer)) return remember();
    this.options.peers.request(peer, { ...notice }, PEER_REQUEST_TIMEOUT_MS).catch(remember);
  }

  /** Tell the other end why (an ABORT frame), then close; the channel layer reports its code. */
  private sendAbort(conn: Connection, err: Error): void {
    const code = (err as { code?: unknown }).code;
    const frame = encodeControl(FrameType.ABORT, 0, { code: typeof code === 'string' && code.startsWith('SLUICE_') ? code : ErrorCodes.UNAVAILABLE, message: err.message });
    conn.output.on('error', () => undefined);
    conn.input.on('error', () => undefined);
    if (conn.output.destroyed || conn.output.writableEnded) return conn.destroy();
    conn.output.end(frame, () => setTimeout(() => conn.destroy(), 1_000).unref());
    conn.input.resume(); // drop what it still sends until it closes
  }

  /** Open and park a connection for every channel whose producer is here and consumer on a peer. */
  private async openChannels(run: Run): Promise<null> {
    const remote = [...run.channels.values()].filter((c) => c.path === 'remote' && c.peer !== undefined);
    await Promise.all(
      remote.map(async (channel) => {
        const conn = await this.openChannel(run, channel);
        if (!this.options.runs.list().includes(run)) return conn.destroy(); // deleted meanwhile
        const k = key(run.id, channel.name);
        this.parked.get(k)?.destroy();
        this.parked.set(k, conn);
        // a parked connection that breaks (link down) is dropped; the producer then opens anew
        conn.input.once('close', () => {
          if (this.parked.get(k) === conn) this.parked.delete(k);
        });
        conn.input.on('error', () => undefined);
      }),
    );
    return null;
  }

  private async openChannel(run: Run, channel: ChannelInfo): Promise<Connection> {
    const { peers } = this.options;
    if (!peers || channel.peer === undefined) throw new ConnectError(ErrorCodes.UNAVAILABLE, `channel ${channel.name} needs a peer link, and this node has none`);
    const conn = await peers.open(channel.peer, `${CHANNEL_PREFIX}${run.id}/${channel.name}`, PEER_REQUEST_TIMEOUT_MS);
    this.track(run.id, conn);
    conn.input.once('close', () => this.untrack(run.id, conn));
    return conn;
  }

  private track(run: string, conn: Connection): void {
    let set = this.inUse.get(run);
    if (!set) this.inUse.set(run, (set = new Set()));
    set.add(conn);
  }

  private untrack(run: string, conn: Connection): void {
    const set = this.inUse.get(run);
    set?.delete(conn);
    if (set?.size === 0) this.inUse.delete(run);
  }

  private forget(run: Run): void {
    this.options.fallback.forget(run);
    for (const name of run.channels.keys()) this.parked.delete(key(run.id, name));
    for (const conn of this.inUse.get(run.id) ?? []) conn.destroy();
    this.inUse.delete(run.id);
  }

  private nodesOf(run: Run): string[] {
    return [...new Set(Object.values(run.manifest.steps).flatMap((s) => s.nodes))];
  }
}
