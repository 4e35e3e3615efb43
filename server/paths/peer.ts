/**
 * The peer leg: the cross-node half of a channel, carried over the peer links.
 *
 * **Parked connections.** When a run that spans nodes is created, every involved node opens a
 * connection on the peer link for each channel whose producer it hosts and whose consumer is
 * elsewhere — with its credit window — and parks it (`openChannels`): when the functions start,
 * no dial, no handshake and no OPEN is left on the path of the first byte.
 *
 * **A cross-node channel carries the channel protocol end to end.** The producer streams to its
 * daemon's relay socket; the ingress reads the HELLO (token, channel), then passes the bytes on,
 * untouched, into the parked connection (`forward`). The consumer's daemon, at the first byte,
 * connects to the consumer's socket (its FIFO if the socket path would be too long), waiting up to
 * the attach timeout, and passes the bytes on into it (`deliver`). Neither daemon decodes the
 * stream: the consumer verifies length and checksum, and its ACK travels back the same way, so the
 * producer's `end()` still means "the consumer verified every byte".
 *
 * **Faults.** A link that fails resets its connections: the consumer's daemon cuts the delivery
 * mid-stream (the consumer reports SLUICE_TRUNCATED), and the producer's daemon sends the
 * producer an ABORT with SLUICE_UNAVAILABLE naming the peer — or, when both nodes share a store,
 * resumes the stream there from what the failover tap kept (`failOver`). A consumer's node that
 * cannot be reached as the stream opens gets it through the shared store (`storeInstead`), and
 * a consumer here that does not attach in time has it spilled (`spill`). The other node is told
 * what became of its stream with notices (`stored`, `failed`), now or once its link is up again.
 * A producer that dies makes its daemon reset the connection, with the same effect on the
 * consumer. Nothing ends cleanly without the consumer's verification.
 */
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
} from '../../transports/index.js';
import type { Metrics } from '../metrics.js';
import { CHANNEL_PREFIX, type PeerLinks } from '../peers.js';
import type { ChannelInfo, Run, RunRegistry } from '../runs.js';
import { attachConsumer, terminate } from './local.js';
import { factsOf, plan, type PathFacts, type Route } from './plan.js';
import type { Fallback } from './store.js';
import { StreamTap } from './tap.js';

export interface PeerLegOptions {
  node: string;
  runs: RunRegistry;
  /** undefined when this daemon has no peers (no secret, no --peers) */
  peers: PeerLinks | undefined;
  attachTimeoutMs: number;
  log: Logger;
  metrics: Metrics;
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
}

/** How long a request may wait for a peer (its link, then its answer), ms. */
export const PEER_REQUEST_TIMEOUT_MS = 10_000;

const key = (run: string, channel: string): string => `${run}/${channel}`;

interface Notice {
  op: 'stored' | 'failed';
  run: string;
  channel: string;
  message?: string;
}

/** How often notices of stored streams that did not reach their peer are sent again, ms. */
const UNTOLD_RETRY_MS = 2_000;

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

export class PeerLeg {
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

  constructor(private readonly options: PeerLegOptions) {
    // a notice that could not be delivered when its link came up is tried again while the link is up
    setInterval(() => {
      for (const peer of this.untold.keys()) if (options.peers?.isUp(peer)) this.tellUntold(peer);
    }, UNTOLD_RETRY_MS).unref();
  }

  /** A link to `node` came up: tell it which of its channels went to the store (or failed). */
  onLinkUp(node: string): void {
    this.tellUntold(node);
  }

  /** `peer` uses the object store at `location` (as it said in a `prepare`, or answered one). */
  learnStore(peer: string, location: string): void {
    this.peerStores.set(peer, location);
  }

  private tellUntold(node: string): void {
    const untold = this.untold.get(node);
    this.untold.delete(node);
    for (const notice of untold?.values() ?? []) this.tell(node, notice);
  }

  /** A peer's notice about a stream for a consumer here: `stored` (feed it from the store) or `failed`. */
  onNotice(from: string, request: Record<string, unknown>): null {
    switch (request.op) {
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
      default:
        throw new RequestError(ErrorCodes.INVALID, `unknown peer request ${JSON.stringify(request.op)}`);
    }
  }

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
  async openChannels(run: Run): Promise<null> {
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

  /** `run` was deleted here: drop its parked connections, cut those it uses. */
  forget(run: Run): void {
    for (const name of run.channels.keys()) this.parked.delete(key(run.id, name));
    for (const conn of this.inUse.get(run.id) ?? []) conn.destroy();
    this.inUse.delete(run.id);
  }
}
