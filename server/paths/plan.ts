/**
 * The path choice: the one place that decides how a channel's bytes travel through a daemon
 * (DESIGN.md, "Choosing the path"). Pure: the same facts always give the same route, and the
 * table test (test/unit/path-plan.test.ts) holds every row.
 *
 * The rows, and who carries them out:
 *
 * | facts                                            | route                                                     |
 * | ------------------------------------------------ | --------------------------------------------------------- |
 * | producer and consumer on one node, both live     | direct, function to function: the producer opens the FIFO the consumer listens on, no daemon (client/sluice.ts; the daemon never sees it) |
 * | consumer on this node, not attached yet          | `local`: the daemon verifies the stream and delivers it when the consumer attaches; late (attach timeout, or its buffer full): `spill` to the store, the consumer fed from there |
 * | consumer on another node                         | `peer`: bytes pass untouched over the peer link (its tail kept by the failover tap) to the consumer's daemon, which delivers locally |
 * | … and the consumer's node unreachable as it opens | the store, when both nodes share one (`unreachable`), else a typed error |
 * | … and the link lost mid-stream                    | resumed through the store when both share one (`resume`), else typed errors at both ends |
 * | edge `via: s3`                                   | `store` only, whatever else holds                          |
 * | edge `persist: true`                             | the delivery above, verified here, with a durable `copy` beside it; a late consumer is fed from the copy |
 * | consumer not placed yet (sequential engine)      | hold on the producer's node, forwarded ahead: not built yet (SLUICE_UNAVAILABLE) |
 * | the node holding a stream is lost                | the store copy, else SLUICE_LOST: not built yet (SLUICE_UNAVAILABLE) |
 *
 * The legs that carry a route out, beside this file: the relay socket's ingress (ingress.ts), local
 * delivery (local.ts), the peer leg (peer.ts) and its failover tap (tap.ts), the store (store.ts).
 * They ask `plan` and do what it says; none of them decides a path.
 */
import { ConnectError, ErrorCodes } from '../../transports/index.js';
import type { ChannelInfo } from '../runs.js';

/** What is known of one channel on this node when its stream arrives. */
export interface PathFacts {
  /**
   * Which end of the channel is on this node: the producer's (its stream comes in through the
   * relay socket) or only the consumer's (its stream comes over a peer link).
   */
  end: 'producer' | 'consumer';
  /** where the channel's consumer instance is placed: this node, another node, or nowhere yet */
  consumer: 'here' | 'remote' | 'unplaced';
  /** the edge's `via` */
  via: 'direct' | 'store';
  /** the edge's `persist` */
  persist: boolean;
  /** for a channel between two nodes: both use the same object store */
  sharedStore: boolean;
  /** the node that held the stream is gone (hold and forward ahead) */
  holderLost?: boolean;
}

/** How a stream travels, as `plan` decides it. */
export interface Route {
  /** where the bytes go: a consumer on this node, over the peer link, or into the store only */
  deliver: 'local' | 'peer' | 'store';
  /** the daemon verifies the stream (terminates the channel protocol) here; false: the bytes pass untouched */
  verify: boolean;
  /** a durable copy is written to the store beside the delivery */
  copy: boolean;
  /**
   * A consumer on this node that does not attach within the attach timeout (or whose buffer
   * fills): `spill` the stream into the store and feed the consumer from there, or — a copy is
   * being written anyway — feed the consumer from the `copy`. Only for `deliver: 'local'`.
   */
  late?: 'spill' | 'copy';
  /** the consumer's node cannot be reached as the stream opens: into the shared `store`, or `fail` typed */
  unreachable?: 'store' | 'fail';
  /** the peer link is lost mid-stream: `resume` the rest through the shared store, or `fail` typed at both ends */
  linkLost?: 'resume' | 'fail';
}

/** The route of a channel's stream on this node. Throws a typed error for a route that cannot be taken. */
export function plan(facts: PathFacts): Route {
  if (facts.holderLost) {
    throw new ConnectError(ErrorCodes.UNAVAILABLE, 'the node holding this stream is gone, and reading a held stream from the store is not built yet', { details: { route: 'hold' } });
  }
  if (facts.consumer === 'unplaced') {
    throw new ConnectError(ErrorCodes.UNAVAILABLE, 'the consumer is not placed yet: holding the stream on the producer\'s node until it is (hold and forward ahead) is not built yet', { details: { route: 'hold' } });
  }
  // (a channel through the store between nodes with different stores is refused when its run is created)
  if (facts.via === 'store') return { deliver: 'store', verify: true, copy: false };
  if (facts.end === 'consumer') {
    // over the link from the producer's node: delivered as it comes; a persisted stream's copy is that node's to write
    return { deliver: 'local', verify: false, copy: false, late: facts.persist ? 'copy' : 'spill', linkLost: facts.sharedStore ? 'resume' : 'fail' };
  }
  if (facts.consumer === 'here') return { deliver: 'local', verify: true, copy: facts.persist, late: facts.persist ? 'copy' : 'spill' };
  if (facts.persist) {
    // the stream is verified here to be written twice; the copy, not a resumption, is what survives a lost link
    return { deliver: 'peer', verify: true, copy: true, unreachable: 'fail', linkLost: 'fail' };
  }
  return { deliver: 'peer', verify: false, copy: false, unreachable: facts.sharedStore ? 'store' : 'fail', linkLost: facts.sharedStore ? 'resume' : 'fail' };
}

/** The facts of `channel` as this node knows them, for the stream that enters at its `end` here. */
export function factsOf(channel: ChannelInfo, end: PathFacts['end'], sharedStore: boolean): PathFacts {
  return { end, consumer: channel.path === 'remote' ? 'remote' : 'here', via: channel.via, persist: channel.persist, sharedStore };
}
