/** The path choice as a table: every row of DESIGN's "Choosing the path", and facts that pull two ways. */
import { describe, expect, it } from 'vitest';
import { plan, type PathFacts, type Route } from '../../server/paths/plan.js';

const base: PathFacts = { end: 'producer', consumer: 'here', via: 'direct', persist: false, sharedStore: false };
const facts = (over: Partial<PathFacts>): PathFacts => ({ ...base, ...over });

describe('the path choice', () => {
  it.each<[string, Partial<PathFacts>, Route]>([
    // consumer on this node, not attached yet (attached: the producer's FIFO open succeeds, no daemon)
    ['consumer here: verified here, delivered when it attaches, spilled when late', {}, { deliver: 'local', verify: true, copy: false, late: 'spill' }],
    ['consumer on another node: bytes pass untouched over the peer link', { consumer: 'remote' }, { deliver: 'peer', verify: false, copy: false, unreachable: 'fail', linkLost: 'fail' }],
    [
      'consumer on another node, one store shared: unreachable → store, link lost → resumed through it',
      { consumer: 'remote', sharedStore: true },
      { deliver: 'peer', verify: false, copy: false, unreachable: 'store', linkLost: 'resume' },
    ],
    ['via: s3, consumer here: the store only', { via: 'store' }, { deliver: 'store', verify: true, copy: false }],
    ['via: s3, consumer elsewhere: the store only', { via: 'store', consumer: 'remote', sharedStore: true }, { deliver: 'store', verify: true, copy: false }],
    ['persist, consumer here: delivered and copied; a late consumer fed from the copy', { persist: true }, { deliver: 'local', verify: true, copy: true, late: 'copy' }],
    [
      'persist, consumer elsewhere: verified here, over the link and copied',
      { persist: true, consumer: 'remote', sharedStore: true },
      { deliver: 'peer', verify: true, copy: true, unreachable: 'fail', linkLost: 'fail' },
    ],
    [
      'arriving over a link for a consumer here: delivered as it comes, spilled when late, resumed through a shared store',
      { end: 'consumer', sharedStore: true },
      { deliver: 'local', verify: false, copy: false, late: 'spill', linkLost: 'resume' },
    ],
    ['arriving over a link, no shared store: a lost link fails', { end: 'consumer' }, { deliver: 'local', verify: false, copy: false, late: 'spill', linkLost: 'fail' }],
    [
      'arriving over a link, persisted: a late consumer fed from the copy its producer node writes',
      { end: 'consumer', persist: true, sharedStore: true },
      { deliver: 'local', verify: false, copy: false, late: 'copy', linkLost: 'resume' },
    ],
    // conflicting facts: the edge's via wins over a live consumer and over any link state
    ['via: s3 with a consumer here that is live: still the store only', { via: 'store', persist: true }, { deliver: 'store', verify: true, copy: false }],
    ['via: s3 arriving over a link: the store only', { via: 'store', end: 'consumer', sharedStore: true }, { deliver: 'store', verify: true, copy: false }],
  ])('%s', (_what, over, route) => {
    expect(plan(facts(over))).toEqual(route);
  });

  it.each<[string, Partial<PathFacts>]>([
    ['consumer not placed yet (hold, not built yet)', { consumer: 'unplaced' }],
    ['consumer not placed, persisted: still hold', { consumer: 'unplaced', persist: true, sharedStore: true }],
    ['the node holding the stream lost (not built yet)', { holderLost: true, consumer: 'remote', sharedStore: true }],
  ])('%s: SLUICE_UNAVAILABLE, the route named', (_what, over) => {
    expect(() => plan(facts(over))).toThrow(expect.objectContaining({ code: 'SLUICE_UNAVAILABLE', details: { route: 'hold' } }));
  });

  it('is pure: the same facts give the same route, and the facts are left alone', () => {
    const f = facts({ consumer: 'remote', sharedStore: true, persist: true });
    const copy = { ...f };
    expect(plan(f)).toEqual(plan(f));
    expect(f).toEqual(copy);
  });
});
