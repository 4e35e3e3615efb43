/**
 * The routing policies across a step's instances: bounded-load hashing keeps every instance at
 * most c × the mean and moves about 1/N of the keys when one of N instances comes or goes; the
 * power of two choices beats random on the largest load; local-first keeps streams local while
 * local instances are available and spills by Envoy's over-provisioning rule; ejection backs off
 * and never empties the set.
 */
import { describe, expect, it } from 'vitest';
import { AffinityRing, OutlierDetector, pickAlwaysLocal, pickLeastLoaded, pickLocalFirst, type Instance } from '../../server/routing.js';

/** A seeded uniform source (mulberry32), so these tests are reproducible. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ids = (n: number): string[] => Array.from({ length: n }, (_, i) => `c[${i}]`);

describe('affinity: consistent hashing with bounded loads', () => {
  it('keeps every instance at or below c × the mean load', () => {
    for (const c of [1.1, 1.25, 2]) {
      const ring = new AffinityRing(ids(10), c);
      for (let k = 0; k < 2_000; k++) ring.assign(`run-${k}`);
      const loads = ring.instances.map((id) => ring.load(id));
      expect(loads.reduce((a, b) => a + b)).toBe(2_000);
      expect(Math.max(...loads)).toBeLessThanOrEqual(Math.ceil((c * 2_000) / 10));
    }
  });

  it('gives a key its own instance whenever that instance has room, and another only when it is full', () => {
    const ring = new AffinityRing(ids(4), 1.25);
    const first = ring.lookup('run-42')!;
    let stayed = 0;
    let moved = 0;
    for (let total = 0; total < 400; total++) {
      const room = ring.load(first) + 1 <= Math.ceil((1.25 * (total + 1)) / 4);
      if (room) stayed++;
      else moved++;
      expect(ring.lookup('run-42') === first).toBe(room);
      ring.assign(`other-${total}`);
    }
    expect(stayed).toBeGreaterThan(0);
    expect(stayed + moved).toBe(400);
  });

  it('moves about 1/N of the keys when one of N instances is added or removed', () => {
    const n = 10;
    const keys = Array.from({ length: 5_000 }, (_, k) => `key-${k}`);
    // placement without load (c large): the ring's own movement
    const before = new AffinityRing(ids(n), 1e9);
    const added = new AffinityRing([...ids(n), 'c[new]'], 1e9);
    const removed = new AffinityRing(ids(n).slice(1), 1e9);
    const moved = (other: AffinityRing): number => keys.filter((k) => before.lookup(k) !== other.lookup(k)).length / keys.length;
    expect(moved(added)).toBeGreaterThan(0.5 / (n + 1));
    expect(moved(added)).toBeLessThan(1.6 / (n + 1));
    expect(moved(removed)).toBeGreaterThan(0.5 / n);
    expect(moved(removed)).toBeLessThan(1.6 / n);
    // and only keys of the removed instance move
    expect(keys.filter((k) => before.lookup(k) !== removed.lookup(k)).every((k) => before.lookup(k) === 'c[0]')).toBe(true);
  });

  it('refuses a balance factor below 1', () => {
    expect(() => new AffinityRing(ids(2), 0.9)).toThrow(RangeError);
  });
});

describe('least-loaded: the power of two choices', () => {
  it('keeps the largest load well below what random placement gives', () => {
    const balls = 10_000;
    const bins = 100;
    const run = (pick: (instances: Instance[]) => Instance): number => {
      const instances: Instance[] = ids(bins).map((id) => ({ id, node: 'n0', load: 0, available: true }));
      for (let b = 0; b < balls; b++) pick(instances).load++;
      return Math.max(...instances.map((i) => i.load));
    };
    const random = seeded(1);
    const randomMax = run((instances) => instances[Math.floor(random() * instances.length)]!);
    const p2cRandom = seeded(2);
    const twoChoicesMax = run((instances) => pickLeastLoaded(instances, p2cRandom)!);
    expect(twoChoicesMax).toBeLessThan(randomMax);
    expect(twoChoicesMax).toBeLessThanOrEqual(balls / bins + 5);
  });

  it('skips instances that push back, and answers undefined when none is available', () => {
    const instances: Instance[] = [
      { id: 'a', node: 'n0', load: 0, available: false },
      { id: 'b', node: 'n0', load: 9, available: true },
    ];
    expect(pickLeastLoaded(instances)?.id).toBe('b');
    instances[1]!.available = false;
    expect(pickLeastLoaded(instances)).toBeUndefined();
  });
});

describe('local-first with spill', () => {
  const set = (localUp: number, localDown: number, remote: number): Instance[] => [
    ...Array.from({ length: localUp }, (_, i) => ({ id: `l${i}`, node: 'n0', load: 0, available: true })),
    ...Array.from({ length: localDown }, (_, i) => ({ id: `d${i}`, node: 'n0', load: 0, available: false })),
    ...Array.from({ length: remote }, (_, i) => ({ id: `r${i}`, node: 'n1', load: 0, available: true })),
  ];
  const localShare = (instances: Instance[]): number => {
    const random = seeded(3);
    let local = 0;
    for (let k = 0; k < 10_000; k++) if (pickLocalFirst(instances, 'n0', { random })!.node === 'n0') local++;
    return local / 10_000;
  };

  it('keeps every stream local while the local instances are available', () => {
    expect(localShare(set(2, 0, 2))).toBe(1);
  });

  it("spills by Envoy's over-provisioning factor (1.4) as local instances push back", () => {
    expect(localShare(set(3, 1, 2))).toBe(1); // 0.75 × 1.4 ≥ 1
    expect(localShare(set(1, 3, 2))).toBeCloseTo(0.35, 1); // 0.25 × 1.4
    expect(localShare(set(0, 2, 2))).toBe(0); // saturated: everything goes remote
  });

  it('stays local when no remote instance is available, and always-local never leaves', () => {
    expect(localShare(set(1, 3, 0))).toBe(1);
    expect(pickAlwaysLocal(set(0, 2, 2), 'n0')?.node).toBe('n0');
  });
});

describe('outlier ejection', () => {
  it('ejects after consecutive failures, for longer each time, and re-admits afterwards', () => {
    let now = 0;
    const detector = new OutlierDetector({ consecutiveFailures: 3, baseEjectionMs: 1_000, maxEjectionMs: 2_500 }, () => now);
    const all = ['a', 'b', 'c', 'd'];
    detector.failure('a', all);
    detector.success('a'); // a success resets the count
    detector.failure('a', all);
    detector.failure('a', all);
    expect(detector.isEjected('a')).toBe(false);
    expect(detector.failure('a', all)).toBe(true);
    expect(detector.admitted(all)).toEqual(['b', 'c', 'd']);
    now = 1_001;
    expect(detector.admitted(all)).toEqual(all);
    for (let i = 0; i < 3; i++) detector.failure('a', all);
    now += 1_999;
    expect(detector.isEjected('a')).toBe(true); // second ejection: 2 s
    now += 2;
    expect(detector.isEjected('a')).toBe(false);
    for (let i = 0; i < 3; i++) detector.failure('a', all);
    now += 2_499;
    expect(detector.isEjected('a')).toBe(true); // third: 3 s, capped at 2.5 s
    now += 2;
    expect(detector.isEjected('a')).toBe(false);
  });

  it('never ejects more than the allowed share, and routes to everyone if all are out (panic)', () => {
    const detector = new OutlierDetector({ consecutiveFailures: 1, maxEjectedPercent: 50 }, () => 0);
    const all = ['a', 'b', 'c', 'd'];
    expect(all.map((id) => detector.failure(id, all))).toEqual([true, true, false, false]);
    expect(detector.admitted(all)).toEqual(['c', 'd']);
    const strict = new OutlierDetector({ consecutiveFailures: 1, maxEjectedPercent: 100 }, () => 0);
    for (const id of all) strict.failure(id, all);
    expect(strict.admitted(all)).toEqual(all);
  });
});
