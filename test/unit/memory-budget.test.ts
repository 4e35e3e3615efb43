/** The daemon-wide memory budget: grants never add up past the limit, shrink when short, queue in order. */
import { describe, expect, it } from 'vitest';
import { MemoryBudget, type Grant } from '../../transports/index.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('the memory budget', () => {
  it('grants full buffers while they fit, then smaller ones down to the floor, never past the limit', () => {
    const budget = new MemoryBudget(64 * MiB);
    const grants: Grant[] = [];
    for (;;) {
      const g = budget.tryTake(8 * MiB, 64 * KiB);
      if (!g) break;
      grants.push(g);
      expect(budget.used).toBeLessThanOrEqual(budget.limit);
    }
    expect(grants[0]!.bytes).toBe(8 * MiB);
    expect(grants.at(-1)!.bytes).toBe(64 * KiB);
    // sizes never grow: later streams get what is left, shared
    for (let i = 1; i < grants.length; i++) expect(grants[i]!.bytes).toBeLessThanOrEqual(grants[i - 1]!.bytes);
    expect(budget.used).toBe(grants.reduce((n, g) => n + g.bytes, 0));
    expect(budget.limit - budget.used).toBeLessThan(64 * KiB);
    for (const g of grants) g.release();
    expect(budget.used).toBe(0);
    expect(budget.peak).toBeGreaterThan(63 * MiB);
  });

  it('gives a grant back once, however often it is released', () => {
    const budget = new MemoryBudget(16 * MiB);
    const a = budget.tryTake(MiB)!;
    const b = budget.tryTake(MiB)!;
    a.release();
    a.release();
    expect(budget.used).toBe(b.bytes);
  });

  it('queues streams that cannot get the floor, first come first served, and wakes them as grants come back', async () => {
    const budget = new MemoryBudget(MiB);
    const held = budget.tryTake(MiB, MiB)!;
    const order: number[] = [];
    const waiting = [1, 2, 3].map((i) => budget.take(512 * KiB, 512 * KiB).then((g) => (order.push(i), g)));
    expect(budget.queued).toBe(3);
    // a newcomer does not jump the queue even when it would fit
    held.release();
    const first = await waiting[0]!;
    const second = await waiting[1]!;
    expect(budget.tryTake(64 * KiB, 64 * KiB)).toBeUndefined();
    expect(order).toEqual([1, 2]);
    first.release();
    const third = await waiting[2]!;
    expect(order).toEqual([1, 2, 3]);
    expect(budget.used).toBe(MiB);
    second.release();
    third.release();
    expect(budget.used).toBe(0);
  });

  it('fails a wait that outlasts its signal with SLUICE_UNAVAILABLE naming the budget, and leaves the queue', async () => {
    const budget = new MemoryBudget(MiB);
    const held = budget.tryTake(MiB, MiB)!;
    await expect(budget.take(64 * KiB, 64 * KiB, AbortSignal.timeout(20))).rejects.toMatchObject({ code: 'SLUICE_UNAVAILABLE', message: expect.stringMatching(/memory budget \(1048576 bytes\)/) });
    expect(budget.queued).toBe(0);
    held.release();
    expect(budget.tryTake(MiB, MiB)?.bytes).toBe(MiB);
  });
});
