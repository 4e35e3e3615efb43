/**
 * Routing policies across a consumer step's instances (DESIGN.md, "Routing across replicas"):
 * which instance gets a new stream. Pure functions and small state machines — no I/O — so they
 * are tested on their own (`test/unit/routing-policies.test.ts`); the daemon feeds them the
 * instances it knows, their node, their load and their health.
 *
 * - **local-first** (`pickLocalFirst`): Envoy's priority levels. The local instances are
 *   priority 0, the remote ones priority 1. Level 0 takes `min(1, overprovision × available
 *   share)` of new streams (overprovision 1.4 by default, as Envoy), the rest spills to level 1:
 *   with every local instance available all streams stay local; with 3 of 4 pushing back,
 *   0.25 × 1.4 = 35% stay local.
 * - **least-loaded** (`pickLeastLoaded`): the power of two choices — two distinct instances at
 *   random, the one with less outstanding load wins.
 * - **affinity** (`AffinityRing`): consistent hashing with bounded loads (Mirrokni et al.): a key
 *   goes to the first instance clockwise from its hash on a ring of virtual nodes whose load is
 *   below `ceil(c × (total + 1) / n)`; c = 1.25 by default. The same key keeps its instance
 *   until that instance is full, and adding or removing one of n instances moves about 1/n keys.
 * - **outlier ejection** (`OutlierDetector`): an instance that fails `consecutiveFailures` times in
 *   a row is ejected for `baseEjectionMs × (times ejected)`, at most `maxEjectionMs`; when more
 *   than `maxEjectedPercent` of the set would be out, ejection is ignored (the panic threshold:
 *   routing to a possibly bad instance beats routing nowhere).
 */
import { createHash } from 'node:crypto';

export interface Instance {
  /** a stable id, e.g. "step[2]" */
  id: string;
  node: string;
  /** outstanding work: bytes or streams in flight */
  load: number;
  /** false while the instance pushes back (its queue is full) or is ejected */
  available: boolean;
}

/** A source of uniform numbers in [0, 1); Math.random by default, a seeded one in tests. */
export type Random = () => number;

/** Envoy's default over-provisioning factor. */
export const DEFAULT_OVERPROVISION = 1.4;

/** The least loaded of `candidates` (the first on ties), or undefined when there are none. */
function leastLoaded(candidates: Instance[]): Instance | undefined {
  let best: Instance | undefined;
  for (const c of candidates) if (!best || c.load < best.load) best = c;
  return best;
}

/**
 * local-first with spill: see the file comment. Within a level, the least loaded available
 * instance. Undefined when no instance is available anywhere.
 */
export function pickLocalFirst(instances: Instance[], localNode: string, options: { overprovision?: number; random?: Random } = {}): Instance | undefined {
  const overprovision = options.overprovision ?? DEFAULT_OVERPROVISION;
  const random = options.random ?? Math.random;
  const local = instances.filter((i) => i.node === localNode);
  const remote = instances.filter((i) => i.node !== localNode);
  const localUp = local.filter((i) => i.available);
  const remoteUp = remote.filter((i) => i.available);
  const localShare = local.length === 0 ? 0 : Math.min(1, (overprovision * localUp.length) / local.length);
  const goLocal = localUp.length > 0 && (remoteUp.length === 0 || random() < localShare);
  return leastLoaded(goLocal ? localUp : remoteUp);
}

/** Always the local instance when there is one (the baseline local-first is compared against). */
export function pickAlwaysLocal(instances: Instance[], localNode: string): Instance | undefined {
  return leastLoaded(instances.filter((i) => i.node === localNode)) ?? leastLoaded(instances);
}

/** The power of two choices among the available instances. */
export function pickLeastLoaded(instances: Instance[], random: Random = Math.random): Instance | undefined {
  const up = instances.filter((i) => i.available);
  if (up.length <= 1) return up[0];
  const a = Math.floor(random() * up.length);
  let b = Math.floor(random() * (up.length - 1));
  if (b >= a) b++;
  return up[a]!.load <= up[b]!.load ? up[a] : up[b];
}

/** Default bound on an instance's load relative to the mean, for affinity. */
export const DEFAULT_BALANCE_FACTOR = 1.25;
const VIRTUAL_NODES = 100;

function hash64(text: string): bigint {
  return createHash('sha256').update(text).digest().readBigUInt64BE(0);
}

/**
 * Consistent hashing with bounded loads. `assign(key)` places a key (a stream) and counts it on
 * its instance until `release(key)`.
 */
export class AffinityRing {
  private ring: Array<{ point: bigint; id: string }> = [];
  private readonly loads = new Map<string, number>();
  private readonly placed = new Map<string, string>();
  private total = 0;

  constructor(
    ids: string[] = [],
    private readonly c = DEFAULT_BALANCE_FACTOR,
  ) {
    if (!(c >= 1)) throw new RangeError(`the balance factor c must be at least 1, got ${c}`);
    for (const id of ids) this.add(id);
  }

  get instances(): string[] {
    return [...this.loads.keys()];
  }

  add(id: string): void {
    if (this.loads.has(id)) return;
    this.loads.set(id, 0);
    for (let v = 0; v < VIRTUAL_NODES; v++) this.ring.push({ point: hash64(`${id}#${v}`), id });
    this.ring.sort((x, y) => (x.point < y.point ? -1 : x.point > y.point ? 1 : 0));
  }

  /** Remove an instance; its keys are forgotten (their streams are not moved: the caller decides). */
  remove(id: string): void {
    if (!this.loads.delete(id)) return;
    this.ring = this.ring.filter((p) => p.id !== id);
    for (const [key, at] of this.placed) {
      if (at === id) {
        this.placed.delete(key);
        this.total--;
      }
    }
  }

  /**
   * Where `key` would go now, without counting it. `accept` skips instances that cannot take it
   * now (saturated, ejected): the key goes on clockwise, as it does past a full instance.
   */
  lookup(key: string, accept: (id: string) => boolean = () => true): string | undefined {
    if (this.ring.length === 0) return undefined;
    const bound = Math.ceil((this.c * (this.total + 1)) / this.loads.size);
    const h = hash64(key);
    let lo = 0;
    let hi = this.ring.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ring[mid]!.point < h) lo = mid + 1;
      else hi = mid;
    }
    for (let step = 0; step < this.ring.length; step++) {
      const { id } = this.ring[(lo + step) % this.ring.length]!;
      if (this.loads.get(id)! + 1 <= bound && accept(id)) return id;
    }
    return undefined; // with every instance accepted, unreachable: some instance is always at or below the mean
  }

  /**
   * Place `key` and count it on its instance (`accept`: see `lookup`) until `release(token)`;
   * `token` (default: the key) tells apart several streams with one key in flight at once.
   */
  assign(key: string, accept?: (id: string) => boolean, token = key): string | undefined {
    if (this.placed.has(token)) this.release(token);
    const id = this.lookup(key, accept);
    if (id === undefined) return undefined;
    this.placed.set(token, id);
    this.loads.set(id, this.loads.get(id)! + 1);
    this.total++;
    return id;
  }

  release(key: string): void {
    const id = this.placed.get(key);
    if (id === undefined) return;
    this.placed.delete(key);
    this.loads.set(id, this.loads.get(id)! - 1);
    this.total--;
  }

  load(id: string): number {
    return this.loads.get(id) ?? 0;
  }
}

export interface OutlierOptions {
  /** failures in a row that eject an instance. Default 5. */
  consecutiveFailures?: number;
  /** first ejection's length, ms; the k-th lasts k times as long. Default 30000. */
  baseEjectionMs?: number;
  /** longest ejection, ms. Default 300000. */
  maxEjectionMs?: number;
  /** most of the set that may be ejected at once, percent. Default 50. */
  maxEjectedPercent?: number;
}

/** Outlier ejection with growing back-off and a panic threshold; see the file comment. */
export class OutlierDetector {
  private readonly state = new Map<string, { failures: number; ejections: number; until: number }>();
  private readonly options: Required<OutlierOptions>;

  constructor(options: OutlierOptions = {}, private readonly now: () => number = Date.now) {
    this.options = { consecutiveFailures: 5, baseEjectionMs: 30_000, maxEjectionMs: 300_000, maxEjectedPercent: 50, ...options };
  }

  private of(id: string): { failures: number; ejections: number; until: number } {
    let s = this.state.get(id);
    if (!s) this.state.set(id, (s = { failures: 0, ejections: 0, until: 0 }));
    return s;
  }

  success(id: string): void {
    this.of(id).failures = 0;
  }

  /** A failure of `id`, among `all` instances; answers whether it was ejected by it. */
  failure(id: string, all: string[]): boolean {
    const s = this.of(id);
    if (++s.failures < this.options.consecutiveFailures || this.isEjected(id)) return false;
    const ejected = all.filter((x) => x !== id && this.isEjected(x)).length + 1;
    if ((ejected * 100) / all.length > this.options.maxEjectedPercent) return false;
    s.ejections++;
    s.failures = 0;
    s.until = this.now() + Math.min(this.options.baseEjectionMs * s.ejections, this.options.maxEjectionMs);
    return true;
  }

  isEjected(id: string): boolean {
    return this.ejectedUntil(id) > this.now();
  }

  /** When its latest ejection ends (in the past when it is admitted), ms since the epoch; 0 if never ejected. */
  ejectedUntil(id: string): number {
    return this.state.get(id)?.until ?? 0;
  }

  /** How many times it was ejected. */
  ejections(id: string): number {
    return this.state.get(id)?.ejections ?? 0;
  }

  /** The instances to route to: those not ejected — or all of them, if ejection left none (panic). */
  admitted(all: string[]): string[] {
    const ok = all.filter((id) => !this.isEjected(id));
    return ok.length > 0 ? ok : all;
  }
}
