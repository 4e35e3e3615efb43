/**
 * The daemon's routing of balance edges (server/balance.ts), without I/O: which replica a stream
 * gets as replicas saturate, fail, and as peers report their load and ejections.
 */
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { Balancer, type ReplicaReport } from '../../server/balance.js';
import type { Run } from '../../server/runs.js';
import type { Edge, Policy } from '../../server/workflow.js';
import { ErrorCodes, StreamError, ConnectError } from '../../transports/index.js';

const log = pino({ level: 'silent' });
const from = { step: 'p', index: 0 };

/** A run of workflow `w` whose step c has instances on `nodes`; only what the balancer reads. */
function run(nodes: string[], id = 'r-1'): Run {
  return { id, workflow: { name: 'w', steps: {}, edges: [] }, manifest: { steps: { c: { replicas: nodes.length, nodes } } } } as unknown as Run;
}
const edge = (policy: Policy): Edge => ({ from: 'p', to: 'c', fanout: 'balance', via: 'direct', persist: false, policy });

function balancer(options: { maxStreams?: number; now?: () => number; waitMs?: number; reports?: ReplicaReport[] } = {}): Balancer {
  return new Balancer({
    node: 'n0',
    maxStreams: options.maxStreams ?? 1,
    outlier: { consecutiveFailures: 2, baseEjectionMs: 1_000, maxEjectionMs: 10_000, maxEjectedPercent: 50 },
    waitMs: options.waitMs ?? 5_000,
    log,
    share: (report) => options.reports?.push(report),
    ...(options.now ? { now: options.now } : {}),
  });
}

describe('Balancer', () => {
  it('keeps local-first streams local until the local replica is saturated, then spills, then waits until one ends', async () => {
    const b = balancer();
    const r = run(['n0', 'n1']);
    const first = await b.pick(r, edge('local-first'), from);
    expect(first).toMatchObject({ replica: 'w/c[0]@n0', local: true });
    const second = await b.pick(r, edge('local-first'), from);
    expect(second).toMatchObject({ replica: 'w/c[1]@n1', local: false });
    let third: string | undefined;
    const waiting = b.pick(r, edge('local-first'), from).then((l) => (third = l.replica));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(third).toBeUndefined(); // both saturated: the stream waits
    first.end();
    await waiting;
    expect(third).toBe('w/c[0]@n0');
    expect(b.shares).toEqual({ local: 2, remote: 1 });
    b.stop();
  });

  it('fails a stream with SLUICE_UNAVAILABLE when no replica frees up in time', async () => {
    const b = balancer({ waitMs: 30 });
    const r = run(['n0']);
    await b.pick(r, edge('least-loaded'), from);
    await expect(b.pick(r, edge('least-loaded'), from)).rejects.toMatchObject({ code: ErrorCodes.UNAVAILABLE, message: expect.stringMatching(/saturated/) });
    b.stop();
  });

  it('always-local ignores saturation: the baseline never spills', async () => {
    const b = balancer();
    const r = run(['n0', 'n1']);
    for (let i = 0; i < 3; i++) expect((await b.pick(r, edge('always-local'), from)).local).toBe(true);
    b.stop();
  });

  it('ejects a replica that fails on the consumer side, not for producer faults, and never all of them (panic threshold)', async () => {
    let now = 1_000_000;
    const b = balancer({ now: () => now, maxStreams: 100 });
    const r = run(['n0', 'n1']);
    // producer faults are not the replica's
    for (let i = 0; i < 3; i++) (await b.pick(r, edge('local-first'), from)).end(new StreamError(ErrorCodes.TRUNCATED, 'producer went away'));
    for (let i = 0; i < 3; i++) (await b.pick(r, edge('local-first'), from)).end(new ConnectError(ErrorCodes.UNAVAILABLE, 'producer gone', { details: { producerGone: true } }));
    expect(b.status().find((s) => s.replica === 'w/c[0]@n0')).toMatchObject({ ejected: false, failed: 0 });
    // two consumer-side failures in a row eject it
    for (let i = 0; i < 2; i++) (await b.pick(r, edge('local-first'), from)).end(new StreamError(ErrorCodes.CONSUMER_GONE, 'consumer crashed'));
    expect(b.status().find((s) => s.replica === 'w/c[0]@n0')).toMatchObject({ ejected: true, ejections: 1, failed: 2, ejectedForMs: 1_000 });
    expect((await b.pick(r, edge('local-first'), from)).local).toBe(false);
    // the remote one fails too: ejecting it would leave none, so it stays
    const remote = b.pick(r, edge('local-first'), from);
    (await remote).end(new StreamError(ErrorCodes.CONSUMER_GONE, 'x'));
    (await b.pick(r, edge('local-first'), from)).end(new StreamError(ErrorCodes.CONSUMER_GONE, 'x'));
    expect(b.status().find((s) => s.replica === 'w/c[1]@n1')!.ejected).toBe(false);
    // back-off over: admitted again, and local again
    now += 1_000;
    expect((await b.pick(r, edge('local-first'), from)).local).toBe(true);
    b.stop();
  });

  it('counts the load and ejections its peers report, until their report is stale', async () => {
    let now = 1_000_000;
    const b = balancer({ now: () => now });
    const r = run(['n0', 'n1']);
    // n1 routed a stream to our local replica: it is saturated, so local-first spills
    b.onReport('n1', { op: 'replicas', loads: { 'w/c[0]@n0': 1 }, ejected: {} });
    expect(b.status()).toEqual(expect.arrayContaining([expect.objectContaining({ replica: 'w/c[0]@n0', streams: 1, routedHere: 0, saturated: true })]));
    const spilled = await b.pick(r, edge('local-first'), from);
    expect(spilled.local).toBe(false);
    spilled.end();
    // a replica a peer ejected is ejected here too, for what is left of it
    b.onReport('n1', { op: 'replicas', loads: {}, ejected: { 'w/c[0]@n0': 2_000 } });
    expect(b.status().find((s) => s.replica === 'w/c[0]@n0')).toMatchObject({ streams: 0, ejected: true, ejectedForMs: 2_000 });
    expect((await b.pick(r, edge('local-first'), from)).local).toBe(false);
    // a report nobody refreshed is ignored after a while (its link, or its node, is gone)
    now += 10_000;
    expect(b.status().find((s) => s.replica === 'w/c[0]@n0')).toMatchObject({ ejected: false });
    // garbage in a report is dropped, not trusted
    b.onReport('n1', { op: 'replicas', loads: { 'w/c[0]@n0': -5, x: 'many' }, ejected: null });
    expect(b.status().find((s) => s.replica === 'w/c[0]@n0')!.streams).toBe(0);
    b.stop();
  });

  it('reports what it routed and whom it ejected to its peers', async () => {
    const reports: ReplicaReport[] = [];
    const b = balancer({ reports, maxStreams: 10 });
    const lease = await b.pick(run(['n0', 'n1']), edge('local-first'), from);
    b.report();
    expect(reports.at(-1)).toEqual({ op: 'replicas', loads: { 'w/c[0]@n0': 1 }, ejected: {} });
    lease.end();
    b.report();
    expect(reports.at(-1)).toEqual({ op: 'replicas', loads: {}, ejected: {} });
    b.stop();
  });

  it('affinity keeps a key on its replica while it has room, and moves on past a full one', async () => {
    const b = balancer({ maxStreams: 100 });
    const nodes = ['n0', 'n1', 'n0', 'n1'];
    const a1 = await b.pick(run(nodes, 'r-a'), edge('affinity'), from);
    a1.end();
    const a2 = await b.pick(run(nodes, 'r-a'), edge('affinity'), from);
    expect(a2.replica).toBe(a1.replica);
    // the same key again while a2 is in flight: the bound (ceil(1.25 × 2 / 4) = 1) sends it elsewhere
    const a3 = await b.pick(run(nodes, 'r-a'), edge('affinity'), from);
    expect(a3.replica).not.toBe(a1.replica);
    // an explicit key overrides the run id
    const k1 = await b.pick(run(nodes, 'r-b'), edge('affinity'), from, 'user-7');
    k1.end();
    expect((await b.pick(run(nodes, 'r-c'), edge('affinity'), from, 'user-7')).replica).toBe(k1.replica);
    b.stop();
  });
});
