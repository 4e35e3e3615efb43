/**
 * The ingress: the relay socket, where a producer's stream enters the daemon when its consumer has
 * not attached yet (or is on another node, or is reached through the store).
 *
 * A producer first tries its channel's FIFO without waiting; the kernel answers ENXIO while no
 * consumer has opened the other end. The producer then dials `$SLUICE_DIR/relay.sock` and sends
 * its stream there, its HELLO naming the run, the token and the channel. The ingress:
 *
 * 1. accepts the connection only with its share of the memory budget (nothing is read before);
 * 2. reads the HELLO and checks the token and the channel (SLUICE_UNAUTHORIZED / SLUICE_NOT_FOUND
 *    back to the producer otherwise); on a balance edge, picks the consumer instance and tells the
 *    others their input went elsewhere;
 * 3. asks the path choice (server/paths/plan.ts) for the stream's route, and hands the stream to
 *    the leg that carries it: the peer leg passes it on untouched (server/paths/peer.ts); otherwise
 *    the stream is verified here (the channel protocol terminated: server/paths/local.ts) and
 *    carried by local delivery — to a consumer on this node, into the store, or both.
 *
 * An error that escapes a connection's handling ends that connection only (the guard).
 */
import { join } from 'node:path';
import { Readable, type Writable } from 'node:stream';
import type { Logger } from 'pino';
import {
  ChannelReader,
  ConnectError,
  ErrorCodes,
  FrameDecoder,
  FrameType,
  ProtocolError,
  RELAY_SOCKET,
  frameTypeName,
  RequestError,
  acceptEach,
  channelName,
  checkName,
  encodeControl,
  refuseConnection,
  unixTransport,
  type Connection,
  type FrameSink,
  type InstanceRef,
  type Listener,
  type Grant,
  type MemoryBudget,
} from '../../transports/index.js';
import type { Balancer, Lease } from '../balance.js';
import type { Metrics } from '../metrics.js';
import type { ChannelInfo, Run, RunRegistry } from '../runs.js';
import type { Edge } from '../workflow.js';
import { MIN_RELAY_GRANT, errorCode, terminate, type LocalDelivery } from './local.js';
import type { PeerLeg } from './peer.js';
import type { Route } from './plan.js';

export interface IngressOptions {
  runs: RunRegistry;
  dir: string;
  relayBufferBytes: number;
  attachTimeoutMs: number;
  log: Logger;
  metrics: Metrics;
  /** connections beyond this many at once are refused. Default 4096. */
  maxRelays?: number;
  /**
   * The peer leg: the route of a stream entering here (`routeOf`, the path choice), and the
   * stream whose consumer is on another node, passed on untouched (`forward`).
   */
  peer: Pick<PeerLeg, 'routeOf' | 'forward'>;
  /** Local delivery: carries a stream verified here to its consumer, into the store, or both. */
  local: Pick<LocalDelivery, 'carry' | 'deliverAnywhere'>;
  /** Picks the consumer instance of a stream on a balance edge. */
  balancer: Pick<Balancer, 'pick'>;
  /**
   * The daemon-wide memory budget: each stream verified here buffers at most its grant (up to
   * `relayBufferBytes`, less when the budget is short; one that cannot get `MIN_RELAY_GRANT`
   * waits, its producer held back, up to `attachTimeoutMs`).
   */
  budget: MemoryBudget;
}


/**
 * What a producer's connection costs the daemon besides its buffer, bytes, charged to the memory
 * budget from the moment it is read: the medium's reads (64 KiB each), the HELLO's bytes kept
 * to be passed on, the socket's own queue.
 */
const CONNECTION_COST = 192 * 1024;

/** A producer's stream on a balance edge, before its consumer instance is picked. */
interface Balanced {
  run: Run;
  edge: Edge;
  from: InstanceRef;
  key: string | undefined;
}

/** Longest affinity key a producer may name, characters. */
const MAX_KEY_LENGTH = 256;


/**
 * Read a producer's first frame, which must be a HELLO, without consuming the stream: on success
 * the bytes read are returned to be passed on (or put back) whole, and `input` is left paused.
 * On failure (EOF, a medium error, bytes that are not a HELLO, the timeout) it rejects and leaves
 * the bytes alone: the stream may have ended, and nothing may be put back into an ended stream.
 * Its own listeners are removed either way; the caller owns `input`'s errors from then on.
 */
export function peekHello(input: Readable, timeoutMs: number): Promise<{ hello: Record<string, unknown>; bytes: Buffer }> {
  return new Promise((resolve, reject) => {
    const decoder = new FrameDecoder();
    const chunks: Buffer[] = [];
    let found: Record<string, unknown> | undefined;
    const stop = {};
    const sink: FrameSink = {
      data: () => {
        throw new ProtocolError('DATA before HELLO');
      },
      control: (type, _channel, fields) => {
        if (type !== FrameType.HELLO) throw new ProtocolError(`${frameTypeName(type)} before HELLO`);
        found = fields;
        throw stop;
      },
    };
    const timer = setTimeout(() => done(new ConnectError(ErrorCodes.TIMEOUT, `no HELLO from the producer within ${timeoutMs} ms`)), timeoutMs);
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      try {
        decoder.push(chunk, sink);
      } catch (err) {
        if (err !== stop) return done(err as Error);
        input.pause();
        return done(undefined);
      }
    };
    const onEnd = (): void => done(new ProtocolError('the producer closed before its HELLO'));
    const onError = (err: Error): void => done(err);
    let settled = false;
    function done(err: Error | undefined): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      input.off('data', onData);
      input.off('end', onEnd);
      input.off('error', onError);
      if (err) reject(err);
      else resolve({ hello: found!, bytes: Buffer.concat(chunks) });
    }
    input.on('data', onData);
    input.on('end', onEnd);
    input.on('error', onError);
    input.resume(); // it may have been accepted paused
  });
}

/** A producer that connects and says nothing is dropped after this long, ms. */
const HELLO_TIMEOUT_MS = 10_000;

function instance(what: string, value: unknown): InstanceRef {
  const v = value as { step?: unknown; index?: unknown } | undefined;
  if (typeof v !== 'object' || v === null || !Number.isInteger(v.index) || (v.index as number) < 0) {
    throw new RequestError(ErrorCodes.INVALID, `relay HELLO: "${what}" must be { step, index }`);
  }
  return { step: checkName(`${what} step`, v.step), index: v.index as number };
}

export class Ingress {
  private listener: Listener | undefined;
  private readonly active = new Set<Connection>();
  /** each admitted connection's share of the memory budget, given back when it closes */
  private readonly grants = new WeakMap<Connection, Grant>();
  /** per run, the producers that opened their stream on a balance edge (`from.i>to`): one each */
  private readonly claimed = new WeakMap<Run, Set<string>>();

  constructor(private readonly options: IngressOptions) {}

  get activeChannels(): number {
    return this.active.size;
  }

  async start(): Promise<void> {
    // any local process may connect: what it may do is decided by the token in its HELLO; its
    // bytes stay in the kernel until it has a grant of the memory budget
    this.listener = await unixTransport.listen(join(this.options.dir, RELAY_SOCKET), { mode: 0o666, paused: true });
    void acceptEach(this.listener, (conn) => this.admit(conn));
  }

  /** Stop accepting; streams in flight go on until they end or `abortInFlight()` is called. */
  async stop(): Promise<void> {
    await this.listener?.close();
  }

  /**
   * The grace period is over: cut every stream still here. A producer to which nothing was sent
   * back yet (no answer under way, so the next byte it reads starts a frame) is told why first:
   * an ABORT with SLUICE_UNAVAILABLE, rather than a reset it would blame on its consumer.
   * (The consumers being delivered into are local delivery's to cut: `LocalDelivery.abortInFlight`.)
   */
  abortInFlight(): void {
    const frame = encodeControl(FrameType.ABORT, 0, { code: ErrorCodes.UNAVAILABLE, message: 'the daemon is stopping (SIGTERM): its grace period ended with this stream in flight' });
    for (const conn of this.active) {
      const out = conn.output as Writable & { bytesWritten?: number };
      if (out.bytesWritten !== 0 || out.writableLength > 0 || !out.writable) {
        conn.destroy();
        continue;
      }
      out.on('error', () => undefined);
      out.end(frame, () => conn.destroy());
      setTimeout(() => conn.destroy(), 500).unref();
    }
  }

  private admit(conn: Connection): void {
    const { log, metrics, budget, relayBufferBytes, attachTimeoutMs } = this.options;
    if (this.active.size >= (this.options.maxRelays ?? 4096)) {
      log.warn({ active: this.active.size }, 'relay connection refused: too many at once');
      return conn.destroy();
    }
    this.active.add(conn);
    conn.input.once('close', () => this.active.delete(conn));
    // the producer may vanish at any moment: a medium error ends this connection, never the daemon
    conn.input.on('error', (err) => log.debug({ err }, 'relay connection: medium error'));
    conn.output.on('error', (err) => log.debug({ err }, 'relay connection: medium error'));
    // nothing is read before the connection has its share of the memory budget: a producer that
    // must wait for it is held back by its socket, and the daemon holds none of its bytes
    budget.take(relayBufferBytes + CONNECTION_COST, MIN_RELAY_GRANT + CONNECTION_COST, AbortSignal.timeout(attachTimeoutMs)).then(
      (grant) => {
        if (conn.input.destroyed) return grant.release();
        conn.input.once('close', grant.release);
        this.grants.set(conn, grant);
        try {
          this.serve(conn);
        } catch (err) {
          this.escaped(conn, err, {});
        }
      },
      (err: unknown) => {
        metrics.errors.inc({ code: errorCode(err) });
        log.warn({ err }, 'relay connection refused: the memory budget is held by other streams');
        refuseConnection(conn, err as Error, ErrorCodes.UNAVAILABLE);
      },
    );
  }

  private serve(conn: Connection): void {
    const { log, metrics } = this.options;
    const failed = (err: unknown, run: unknown): void => {
      metrics.errors.inc({ code: errorCode(err) });
      log.warn({ err, run }, 'relay failed');
    };
    const refuse = (err: unknown, run: unknown): void => {
      failed(err, run);
      refuseConnection(conn, err as Error, ErrorCodes.PROTOCOL);
    };
    const context: { run?: unknown; from?: unknown; to?: unknown } = {};
    peekHello(conn.input, HELLO_TIMEOUT_MS)
      .then(
        async ({ hello, bytes }) => {
          Object.assign(context, { run: hello.run, from: hello.from, to: hello.to });
          let target: { run: Run; channel: ChannelInfo } | Balanced;
          try {
            target = this.target(hello);
          } catch (err) {
            return refuse(err, hello.run);
          }
          if ('edge' in target) return this.serveBalanced(conn, bytes, target, failed, refuse);
          this.pass(conn, bytes, target.run, target.channel, undefined, failed);
        },
        (err: unknown) => {
          if (errorCode(err) === ErrorCodes.TIMEOUT) {
            failed(err, undefined);
            return conn.destroy();
          }
          // EOF or garbage before a HELLO: answer if the producer can still hear it, then close
          refuse(err, undefined);
        },
      )
      .catch((err: unknown) => this.escaped(conn, err, context));
  }

  /**
   * The guard of last resort: an error that escaped a connection's handling (a defect, not a
   * fault of the producer's) is logged with what is known of the connection, and ends that
   * connection only.
   */
  private escaped(conn: Connection, err: unknown, context: Record<string, unknown>): void {
    this.options.metrics.errors.inc({ code: errorCode(err) });
    this.options.log.error({ err, ...context }, 'relay connection: unexpected failure; the connection is closed, the daemon goes on');
    conn.destroy();
  }

  /** Carry a producer's stream to its channel's consumer; `lease`, if balanced, learns how it ended. */
  private pass(conn: Connection, bytes: Buffer, run: Run, channel: ChannelInfo, lease: Lease | undefined, failed: (err: unknown, run: unknown) => void): void {
    let route: Route;
    try {
      route = this.options.peer.routeOf(channel, 'producer');
    } catch (err) {
      // a route that cannot be taken: the producer hears why, typed, once its stream is read
      conn.input.unshift(bytes);
      return this.relayHere(conn, () => Promise.reject(err as Error));
    }
    if (route.deliver === 'peer' && !route.verify) {
      // the consumer is on another node: pass the stream through, bytes untouched; its replay
      // tail (granted on its own) is its buffer, not the relay's
      this.grants.get(conn)?.shrink(CONNECTION_COST);
      this.options.peer.forward(run, channel, conn, bytes).then(
        () => lease?.end(),
        (err: unknown) => {
          lease?.end(err);
          failed(err, run.id);
        },
      );
      return;
    }
    conn.input.unshift(bytes);
    this.relayHere(conn, (reader) =>
      this.options.local.carry(reader, run, channel, route).then(
        () => lease?.end(),
        (err: unknown) => {
          lease?.end(err);
          throw err;
        },
      ),
    );
  }

  /**
   * A stream on a balance edge: pick its consumer instance (waiting, the producer held back, while
   * every instance is saturated), carry it there, and tell every other instance of the step, with
   * an empty stream whose HELLO says `elsewhere`, that this producer's stream went elsewhere — so
   * each consumer's input still ends after one verified stream per producer.
   */
  private async serveBalanced(
    conn: Connection,
    bytes: Buffer,
    balanced: Balanced,
    failed: (err: unknown, run: unknown) => void,
    refuse: (err: unknown, run: unknown) => void,
  ): Promise<void> {
    const { run, edge, from } = balanced;
    let lease: Lease;
    try {
      lease = await this.options.balancer.pick(run, edge, from, balanced.key);
    } catch (err) {
      return refuse(err, run.id);
    }
    let chosen: ChannelInfo | undefined;
    for (let j = 0; j < run.manifest.steps[edge.to]!.replicas; j++) {
      const channel = run.channels.get(channelName(from, { step: edge.to, index: j }))!;
      channel.routed = j === lease.index;
      if (channel.routed) chosen = channel;
      else this.sendElsewhere(run, channel, lease.replica);
    }
    this.options.log.debug({ run: run.id, from, replica: lease.replica, local: lease.local }, 'balanced stream routed');
    this.pass(conn, bytes, run, chosen!, lease, failed);
  }

  /** An empty stream to a consumer instance that was not picked: it ends that input, verified. */
  private sendElsewhere(run: Run, channel: ChannelInfo, replica: string): void {
    const empty = Readable.from([]);
    // a notice, not data: delivered as the channel's route says, with nothing to copy
    let route: Route;
    try {
      route = { ...this.options.peer.routeOf(channel, 'producer'), copy: false, late: 'spill' };
    } catch (err) {
      channel.state = 'failed';
      return void this.options.log.warn({ err, run: run.id, channel: channel.name }, 'could not tell a consumer instance that the stream went elsewhere');
    }
    this.options.local.deliverAnywhere(empty, empty, run, channel, route, { elsewhere: replica }).then(
      () => {
        channel.state = 'done';
      },
      (err: unknown) => {
        channel.state = 'failed';
        this.options.log.warn({ err, run: run.id, channel: channel.name }, 'could not tell a consumer instance that the stream went elsewhere');
      },
    );
  }

  /** Terminate the producer's stream here and hand it to `route`, acknowledging once `route` resolves. */
  private relayHere(conn: Connection, route: (reader: ChannelReader) => Promise<void>): void {
    const { budget, relayBufferBytes, attachTimeoutMs, log, metrics } = this.options;
    const granted = Math.max(MIN_RELAY_GRANT, (this.grants.get(conn)?.bytes ?? 0) - CONNECTION_COST);
    terminate(conn, route, { highWaterMark: relayBufferBytes, granted, budget, budgetWaitMs: attachTimeoutMs, log, metrics });
  }

  /**
   * The run and channel a HELLO names, after checking its token; or, for a stream on a balance
   * edge (its `to` names the step and no instance), the edge, to pick the instance.
   */
  private target(hello: Record<string, unknown>): { run: Run; channel: ChannelInfo } | Balanced {
    const runId = checkName('run', hello.run);
    const from = instance('from', hello.from);
    const to = hello.to as { index?: unknown } | undefined;
    if (typeof to === 'object' && to !== null && to.index === undefined) return this.balanced(runId, from, hello);
    const target = instance('to', to);
    const run = this.options.runs.authorize(runId, hello.token);
    const name = channelName(from, target);
    const channel = run.channels.get(name);
    if (!channel || (channel.path === 'remote' && channel.peer === undefined)) {
      throw new RequestError(ErrorCodes.NOT_FOUND, `run "${runId}" has no channel ${name} with an end on this node`, { details: { run: runId, channel: name } });
    }
    if (channel.balanced) {
      throw new RequestError(ErrorCodes.INVALID, `channel ${name} is on a balance edge: open it with output("${target.step}") and the daemon picks the instance`, { details: { run: runId, channel: name } });
    }
    return { run, channel };
  }

  private balanced(runId: string, from: InstanceRef, hello: Record<string, unknown>): Balanced {
    const step = checkName('to step', (hello.to as { step?: unknown }).step);
    const run = this.options.runs.authorize(runId, hello.token);
    const edge = run.workflow.edges.find((e) => e.from === from.step && e.to === step);
    if (!edge || edge.fanout !== 'balance') {
      throw new RequestError(ErrorCodes.INVALID, `run "${runId}" has no balance edge ${from.step} → ${step}: name the consumer instance`, { details: { run: runId } });
    }
    if (run.manifest.steps[from.step]!.nodes[from.index] !== run.manifest.node) {
      throw new RequestError(ErrorCodes.NOT_FOUND, `${from.step}[${from.index}] of run "${runId}" is not placed on this node`, { details: { run: runId } });
    }
    let claimed = this.claimed.get(run);
    if (!claimed) this.claimed.set(run, (claimed = new Set()));
    const producer = `${from.step}.${from.index}>${step}`;
    if (claimed.has(producer)) {
      throw new RequestError(ErrorCodes.INVALID, `${from.step}[${from.index}] has opened its stream to "${step}" in run "${runId}" already: one stream per producer instance and run`, { details: { run: runId } });
    }
    claimed.add(producer);
    const key = hello.key;
    if (key !== undefined && (typeof key !== 'string' || key.length === 0 || key.length > MAX_KEY_LENGTH)) {
      throw new RequestError(ErrorCodes.INVALID, `an affinity key must be a string of 1-${MAX_KEY_LENGTH} characters`, { details: { run: runId } });
    }
    return { run, edge, from, key };
  }
}
