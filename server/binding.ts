/**
 * Late binding: a function that connects before its run is known on its node is held until the
 * run is ready here, instead of being told SLUICE_NOT_FOUND at once.
 *
 * A function finds its run on disk (the manifest in the run's capability directory). When that is
 * not there yet — its pods' placement not seen yet by this node's watch, the run still being
 * shared by the daemon that created it, or created through the control API a moment later — the
 * client asks `POST /v1/runs/:id/bind { token }`, which answers once the run is ready on this node
 * (created here and, for a run that spans nodes, shared with every node it involves and its
 * channels opened), or after `--bind-timeout` with SLUICE_NOT_FOUND saying how long it waited.
 *
 * What is checked before the run exists, so that a wrong token is refused at once where it can be:
 * - a run known here (being created): its token, as always (SLUICE_UNAUTHORIZED);
 * - with Kubernetes discovery, a run whose pods are scheduled to this node will be placed by them,
 *   with the token derived from the cluster secret (`sluice run token RUN`): any other token is
 *   refused at once; a request that presents the derived token is *verified* even before the run
 *   exists.
 * Any other request cannot be checked until the run appears (its token is chosen where it is
 * created). Held requests are bounded: at most `MAX_HELD` at once, of which at most
 * `MAX_UNVERIFIED` unverified, so that requests no one can check never crowd out verified ones.
 * A request over the cap is answered at once as without late binding (SLUICE_NOT_FOUND, the
 * message naming the cap). A client that hangs up frees its place; a daemon that stops answers
 * every held request SLUICE_UNAVAILABLE at once.
 */
import { timingSafeEqual } from 'node:crypto';
import type { Logger } from 'pino';
import { ConnectError, ErrorCodes, RequestError } from '../transports/errors.js';
import type { Run, RunRegistry } from './runs.js';

/** Requests held at once, in all. */
export const MAX_HELD = 1024;
/** Of those, requests whose token cannot be checked before their run exists. */
export const MAX_UNVERIFIED = 256;

export interface BinderOptions {
  node: string;
  runs: RunRegistry;
  /** how long a request waits for its run, ms; 0: not at all (SLUICE_NOT_FOUND at once) */
  timeoutMs: number;
  log: Logger;
  /**
   * With Kubernetes discovery: the token a run placed by its pods gets, and whether pods of a
   * run are scheduled to this node (then that is the only token the run can have).
   */
  placement?: { tokenOf: (run: string) => string; placedHere: (run: string) => boolean };
}

interface Waiter {
  id: string;
  verified: boolean;
  wake: (run: Run) => void;
  fail: (err: Error) => void;
}

function sameToken(given: unknown, expected: string): boolean {
  const a = Buffer.from(typeof given === 'string' ? given : '');
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

export class Binder {
  /** runs that are ready on this node: their directory prepared and, when they span nodes, shared and their channels opened */
  private readonly readyRuns = new WeakSet<Run>();
  private readonly waiters = new Set<Waiter>();
  private closed: Error | undefined;

  constructor(private readonly options: BinderOptions) {}

  get held(): number {
    return this.waiters.size;
  }

  /** `run` is ready here: release the requests waiting for it. */
  ready(run: Run): void {
    this.readyRuns.add(run);
    for (const w of [...this.waiters]) if (w.id === run.id) w.wake(run);
  }

  /**
   * The run `id` once it is ready on this node and `token` is its token; see the file comment
   * for what is refused at once, and when. `signal`: the client went away.
   */
  async bind(id: string, token: unknown, signal?: AbortSignal): Promise<Run> {
    const { runs, node, timeoutMs, placement } = this.options;
    const known = runs.list().find((r) => r.id === id);
    if (known) {
      runs.authorize(id, token);
      if (this.readyRuns.has(known)) return known;
    } else if (placement?.placedHere(id) && !sameToken(token, placement.tokenOf(id))) {
      throw new RequestError(ErrorCodes.UNAUTHORIZED, `wrong token for run "${id}": its pods are scheduled to node ${node}, so its token is the one derived from the cluster secret (sluice run token ${id})`, {
        details: { run: id },
      });
    }
    if (this.closed) throw this.closed;
    const notFound = (why: string): RequestError => new RequestError(ErrorCodes.NOT_FOUND, `no run "${id}" on node ${node}${why}`, { details: { run: id } });
    if (timeoutMs === 0) throw notFound('');
    const verified = known !== undefined || (placement !== undefined && sameToken(token, placement.tokenOf(id)));
    const unverified = [...this.waiters].filter((w) => !w.verified).length;
    if (this.waiters.size >= MAX_HELD || (!verified && unverified >= MAX_UNVERIFIED)) {
      this.options.log.warn({ run: id, held: this.waiters.size, unverified }, 'late binding: too many connections wait for their run; answered at once');
      throw notFound(`, and ${verified ? this.waiters.size : unverified} ${verified ? '' : 'unverified '}connections wait for their run already (the most held at once): not held`);
    }
    if (signal?.aborted) throw new ConnectError(ErrorCodes.ABORTED, `the client waiting for run "${id}" went away`);
    const run = await new Promise<Run>((resolve, reject) => {
      const finish = (): void => {
        this.waiters.delete(waiter);
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const waiter: Waiter = {
        id,
        verified,
        wake: (r) => {
          finish();
          resolve(r);
        },
        fail: (err) => {
          finish();
          reject(err);
        },
      };
      const onAbort = (): void => waiter.fail(new ConnectError(ErrorCodes.ABORTED, `the client waiting for run "${id}" went away`));
      const timer = setTimeout(() => {
        // known but never declared ready (its creation stalled half-way): better bound than lost
        const late = runs.list().find((r) => r.id === id);
        if (late) waiter.wake(late);
        else waiter.fail(notFound(`: waited ${timeoutMs} ms for it to be placed here or shared by a peer (--bind-timeout)`));
      }, timeoutMs);
      this.waiters.add(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.options.log.info({ run: id, verified, held: this.waiters.size }, 'a function waits for its run to be ready here (late binding)');
    });
    return runs.authorize(run.id, token);
  }

  /** The daemon stops: every held request is answered SLUICE_UNAVAILABLE, and new ones are refused. */
  close(): void {
    this.closed = new ConnectError(ErrorCodes.UNAVAILABLE, `node ${this.options.node} is stopping: it binds no more functions to runs`);
    for (const w of [...this.waiters]) w.fail(this.closed);
  }
}
