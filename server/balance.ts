/**
 * The daemon's side of `fanout: balance` (DESIGN.md, "Routing across replicas"): which consumer
 * instance gets each stream a producer on this node opens on a balance edge, with the policies of
 * `routing.ts` fed with live load and health.
 *
 * **What is balanced.** A *replica* is one instance index of a step on one node —
 * `workflow/step[index]@node` — across the runs of its workflow, as a service mesh sees one pod
 * across requests: each run has its own instance processes, but the capacity behind replica
 * `count[0]@n0` (that node's CPU, that pod) is shared by every run placed there. Load, saturation
 * and ejection are therefore kept per replica, and outlive a run.
 *
 * **Load.** A replica's load is its streams in flight: those this daemon routed to it and has not
 * seen end, plus those each peer reported it routed there (`onReport`). A replica at
 * `maxStreams` is *saturated* — its queue is full, the 503 of a mesh — and gets no new stream
 * until one ends. When no replica can take a stream, it waits (its producer held back by the
 * relay, which reads nothing more) until one can, at most `waitMs`, then SLUICE_UNAVAILABLE.
 * `always-local` ignores saturation: it is the baseline local-first is compared against.
 *
 * **Health.** A stream that fails on the consumer's side (not the producer's) counts against its
 * replica; `OutlierDetector` ejects a replica after `consecutiveFailures` failures in a row, for
 * a back-off that grows with each ejection, unless that would eject more than half the replicas
 * (the panic threshold). A replica ejected by a peer is ejected here too, for what is left of it.
 *
 * **Sharing.** What this daemon routed (streams in flight per replica) and whom it ejected go to
 * every linked peer as one small control request, `{ op: 'replicas', loads, ejected }`, soon after
 * a change and every `REPORT_MS` besides (while there is anything to report); a peer's report
 * older than `STALE_MS` is ignored (its link is gone, or it is). Streams already flowing are never moved: routing happens once, when
 * the stream opens.
 */
import type { Logger } from 'pino';
import { ConnectError, ErrorCodes, codeOf, type InstanceRef } from '../transports/index.js';
import { AffinityRing, OutlierDetector, pickAlwaysLocal, pickLeastLoaded, pickLocalFirst, type Instance, type OutlierOptions } from './routing.js';
import type { Run } from './runs.js';
import type { Edge, Policy } from './workflow.js';

/** How often this daemon's routing state goes to its peers even without a change, ms. */
export const REPORT_MS = 1_000;
/** A peer's report older than this is ignored, ms. */
const STALE_MS = 5 * REPORT_MS;
/** Changes within this long go to the peers in one report, ms. */
const REPORT_DEBOUNCE_MS = 20;
/** How often a waiting stream looks again when nothing it waits for has said so, ms (ejections end silently). */
const WAIT_POLL_MS = 250;

/** Error codes that say the producer broke its stream, not the consumer: not held against the replica. */
const PRODUCER_FAULTS: ReadonlySet<string> = new Set([ErrorCodes.TRUNCATED, ErrorCodes.PRODUCER_ABORTED, ErrorCodes.PROTOCOL, ErrorCodes.CORRUPT]);

export interface BalancerOptions {
  node: string;
  /** streams in flight at which a replica is saturated */
  maxStreams: number;
  outlier: OutlierOptions;
  /** how long a stream waits for a replica that can take it, ms */
  waitMs: number;
  log: Logger;
  /** sends a report to every linked peer */
  share: (report: ReplicaReport) => void;
  now?: () => number;
}

/** What a daemon tells its peers: streams it routed and has in flight, replicas it ejected (ms left). */
export interface ReplicaReport {
  op: 'replicas';
  loads: Record<string, number>;
  ejected: Record<string, number>;
}

/** A stream routed to one replica; `end` once it ended, saying how. */
export interface Lease {
  replica: string;
  index: number;
  local: boolean;
  /** `error` undefined: delivered. An error the producer caused is not held against the replica. */
  end(error?: unknown): void;
}

/** One replica in `/v1/status` and `/metrics`. */
export interface ReplicaStatus {
  replica: string;
  workflow: string;
  step: string;
  index: number;
  node: string;
  /** streams in flight: routed by this node and, as reported, by its peers */
  streams: number;
  /** of which routed by this node */
  routedHere: number;
  saturated: boolean;
  ejected: boolean;
  /** ms left of its ejection, 0 when admitted */
  ejectedForMs: number;
  /** times this node ejected it */
  ejections: number;
  /** streams this node routed to it, ever */
  routed: number;
  /** of which failed on the consumer's side */
  failed: number;
}

interface Replica {
  workflow: string;
  step: string;
  index: number;
  node: string;
  inFlight: number;
  routed: number;
  failed: number;
}

export const replicaId = (workflow: string, step: string, index: number, node: string): string => `${workflow}/${step}[${index}]@${node}`;
const REPLICA_ID = /^([a-z0-9][a-z0-9_-]{0,62})\/([a-z0-9][a-z0-9_-]{0,62})\[(\d{1,2})\]@([a-z0-9][a-z0-9_-]{0,62})$/;

export class Balancer {
  private readonly replicas = new Map<string, Replica>();
  private readonly detector: OutlierDetector;
  private readonly rings = new Map<string, AffinityRing>();
  private readonly reports = new Map<string, { at: number; report: ReplicaReport }>();
  private readonly waiters = new Set<() => void>();
  private readonly now: () => number;
  private reportTimer: NodeJS.Timeout | undefined;
  private readonly ticker: NodeJS.Timeout;
  private tokens = 0;
  /** the last report sent was empty */
  private sentEmpty = true;
  /** streams routed to a replica on this node, and to one on another node */
  readonly shares = { local: 0, remote: 0 };

  constructor(private readonly options: BalancerOptions) {
    this.now = options.now ?? Date.now;
    this.detector = new OutlierDetector(options.outlier, this.now);
    this.ticker = setInterval(() => this.report(), REPORT_MS);
    this.ticker.unref();
  }

  stop(): void {
    clearInterval(this.ticker);
    clearTimeout(this.reportTimer);
  }

  /**
   * Route the stream `from` opens on `edge` (a balance edge of `run`): the lease of the replica
   * picked by the edge's policy. `key`: the producer's affinity key, if it named one. Waits while
   * no replica can take it; SLUICE_UNAVAILABLE after `waitMs`.
   */
  async pick(run: Run, edge: Edge, from: InstanceRef, key?: string): Promise<Lease> {
    const placement = run.manifest.steps[edge.to]!;
    const ids = placement.nodes.map((node, index) => {
      const id = replicaId(run.workflow.name, edge.to, index, node);
      if (!this.replicas.has(id)) this.replicas.set(id, { workflow: run.workflow.name, step: edge.to, index, node, inFlight: 0, routed: 0, failed: 0 });
      return id;
    });
    const policy: Policy = edge.policy ?? 'local-first';
    const token = `${++this.tokens}`;
    const hashed = key ?? (edge.key === 'producer' ? `${run.id}/${from.step}.${from.index}` : run.id);
    const deadline = this.now() + this.options.waitMs;
    for (;;) {
      const chosen = this.choose(policy, ids, `${run.workflow.name}/${edge.to}`, hashed, token);
      if (chosen !== undefined) return this.lease(chosen, policy === 'affinity' ? { ring: `${run.workflow.name}/${edge.to}`, token } : undefined);
      const left = deadline - this.now();
      if (left <= 0) {
        throw new ConnectError(ErrorCodes.UNAVAILABLE, `every instance of step "${edge.to}" is saturated (${this.options.maxStreams} streams each, --replica-max-streams) or ejected, and none freed up within ${this.options.waitMs} ms`, {
          details: { run: run.id, step: edge.to, replicas: ids },
        });
      }
      await this.changed(Math.min(left, WAIT_POLL_MS));
    }
  }

  private choose(policy: Policy, ids: string[], group: string, key: string, token: string): string | undefined {
    const ejected = new Set(ids.filter((id) => this.isEjected(id)));
    let admitted = ids.filter((id) => !ejected.has(id));
    if (admitted.length === 0) admitted = ids; // panic: a possibly bad replica beats none
    const instances: Instance[] = admitted.map((id) => {
      const load = this.load(id);
      return { id, node: this.replicas.get(id)!.node, load, available: load < this.options.maxStreams };
    });
    switch (policy) {
      case 'local-first':
        return pickLocalFirst(instances, this.options.node)?.id;
      case 'always-local':
        return pickAlwaysLocal(instances, this.options.node)?.id;
      case 'least-loaded':
        return pickLeastLoaded(instances)?.id;
      case 'affinity': {
        let ring = this.rings.get(group);
        if (!ring) this.rings.set(group, (ring = new AffinityRing()));
        for (const id of ids) ring.add(id);
        const ok = new Set(instances.filter((i) => i.available).map((i) => i.id));
        return ring.assign(key, (id) => ok.has(id), token);
      }
    }
  }

  private lease(id: string, affinity: { ring: string; token: string } | undefined): Lease {
    const replica = this.replicas.get(id)!;
    replica.inFlight++;
    replica.routed++;
    const local = replica.node === this.options.node;
    if (local) this.shares.local++;
    else this.shares.remote++;
    this.soon();
    let ended = false;
    return {
      replica: id,
      index: replica.index,
      local,
      end: (error?: unknown) => {
        if (ended) return;
        ended = true;
        replica.inFlight--;
        if (affinity) this.rings.get(affinity.ring)?.release(affinity.token);
        const code = codeOf(error);
        const producers = (error as { details?: { producerGone?: unknown } } | undefined)?.details?.producerGone === true;
        if (error === undefined) this.detector.success(id);
        else if (!producers && !(code !== undefined && PRODUCER_FAULTS.has(code))) {
          replica.failed++;
          const group = [...this.replicas.entries()].filter(([, r]) => r.workflow === replica.workflow && r.step === replica.step).map(([k]) => k);
          if (this.detector.failure(id, group)) {
            this.options.log.warn({ replica: id, ejections: this.detector.ejections(id), untilMs: this.detector.ejectedUntil(id) - this.now(), err: error }, 'replica ejected after failing repeatedly');
          }
        }
        this.soon();
        this.wake();
      },
    };
  }

  /** A peer's report (`{ op: 'replicas' }`): its streams in flight per replica, and its ejections. */
  onReport(from: string, request: Record<string, unknown>): void {
    const numbers = (value: unknown): Record<string, number> => {
      const out: Record<string, number> = Object.create(null) as Record<string, number>;
      if (typeof value !== 'object' || value === null) return out;
      for (const [k, v] of Object.entries(value).slice(0, 10_000)) if (typeof v === 'number' && Number.isFinite(v) && v > 0 && k.length <= 300) out[k] = v;
      return out;
    };
    const ejected = numbers(request.ejected);
    // a peer says how long is left: turned into a time here, so clocks need not agree
    for (const k of Object.keys(ejected)) ejected[k] = this.now() + Math.min(ejected[k]!, 3_600_000);
    this.reports.set(from, { at: this.now(), report: { op: 'replicas', loads: numbers(request.loads), ejected } });
    this.wake();
  }

  private fresh(): ReplicaReport[] {
    const cutoff = this.now() - STALE_MS;
    return [...this.reports.values()].filter((r) => r.at >= cutoff).map((r) => r.report);
  }

  private load(id: string): number {
    return (this.replicas.get(id)?.inFlight ?? 0) + this.fresh().reduce((n, r) => n + (r.loads[id] ?? 0), 0);
  }

  private isEjected(id: string): boolean {
    return this.detector.isEjected(id) || this.fresh().some((r) => (r.ejected[id] ?? 0) > this.now());
  }

  private ejectedForMs(id: string): number {
    const until = Math.max(this.detector.ejectedUntil(id), ...this.fresh().map((r) => r.ejected[id] ?? 0));
    return Math.max(0, until - this.now());
  }

  /** Every replica this node has routed to or heard of from a peer, for status and metrics. */
  status(): ReplicaStatus[] {
    for (const report of this.fresh()) {
      for (const id of [...Object.keys(report.loads), ...Object.keys(report.ejected)]) {
        const parsed = REPLICA_ID.exec(id);
        if (parsed && !this.replicas.has(id)) this.replicas.set(id, { workflow: parsed[1]!, step: parsed[2]!, index: Number(parsed[3]), node: parsed[4]!, inFlight: 0, routed: 0, failed: 0 });
      }
    }
    return [...this.replicas.entries()].map(([id, r]) => {
      const streams = this.load(id);
      const ejectedForMs = this.ejectedForMs(id);
      return {
        replica: id,
        workflow: r.workflow,
        step: r.step,
        index: r.index,
        node: r.node,
        streams,
        routedHere: r.inFlight,
        saturated: streams >= this.options.maxStreams,
        ejected: ejectedForMs > 0,
        ejectedForMs,
        ejections: this.detector.ejections(id),
        routed: r.routed,
        failed: r.failed,
      };
    });
  }

  /**
   * Send this node's report now, to every linked peer — unless it is empty and so was the last one
   * (a cluster with no balanced stream in flight sends nothing; an empty report a peer holds goes
   * stale harmlessly).
   */
  report(): void {
    clearTimeout(this.reportTimer);
    this.reportTimer = undefined;
    const loads: Record<string, number> = {};
    const ejected: Record<string, number> = {};
    for (const [id, r] of this.replicas) {
      if (r.inFlight > 0) loads[id] = r.inFlight;
      const left = this.detector.ejectedUntil(id) - this.now();
      if (left > 0) ejected[id] = left;
    }
    const empty = Object.keys(loads).length === 0 && Object.keys(ejected).length === 0;
    if (empty && this.sentEmpty) return;
    this.sentEmpty = empty;
    this.options.share({ op: 'replicas', loads, ejected });
  }

  private soon(): void {
    this.reportTimer ??= setTimeout(() => this.report(), REPORT_DEBOUNCE_MS);
  }

  private changed(timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.waiters.add(done);
    });
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }
}
