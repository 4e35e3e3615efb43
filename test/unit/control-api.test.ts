/** The control API through Fastify's inject(): status codes, typed errors, nothing touched on bad input. */
import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { InjectOptions, LightMyRequestResponse } from 'fastify';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../server/api.js';
import { Binder, MAX_UNVERIFIED } from '../../server/binding.js';
import { Cluster } from '../../server/cluster.js';
import { Fallback } from '../../server/paths/store.js';
import { createMetrics, type Metrics } from '../../server/metrics.js';
import { Ingress as Relay } from '../../server/paths/ingress.js';
import { RunRegistry } from '../../server/runs.js';
import { validateWorkflow, type Workflow } from '../../server/workflow.js';
import { MANIFEST_FILE, isErrorCode, runDirectory } from '../../transports/index.js';
import { wireOneNode, type OneNode } from '../helpers/one-node.js';

const log = pino({ level: 'silent' });
let dir: string;
let runs: RunRegistry;
let app: ReturnType<typeof buildApi>;
let cluster: Cluster;
let binder: Binder;

/** How long a bind request waits for its run here. */
const BIND_TIMEOUT_MS = 1500;

/** The cluster, relay and binder of one node with no peers, as the daemon puts them together. */
function wire(metrics: Metrics, workflows: Map<string, Workflow>): OneNode {
  return wireOneNode({ dir, runs, log, metrics, workflows, bindTimeoutMs: BIND_TIMEOUT_MS });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sluice-api-'));
  runs = new RunRegistry({ dir, node: 'node-a', runTtlSeconds: 3600, maxRuns: 5, log });
  await runs.start();
  const metrics = createMetrics({ runs });
  const workflows = new Map<string, Workflow>();
  let relay: Relay;
  ({ cluster, relay, binder } = wire(metrics, workflows));
  app = buildApi({ node: 'node-a', version: 'test', runs, cluster, peers: undefined, relay, metrics, workflows, binder, maxBodyBytes: 16 * 1024, ready: () => true });
});
afterAll(async () => {
  await app.close();
  await runs.stop();
  rmSync(dir, { recursive: true, force: true });
});

const chain = { name: 'chain', steps: { a: {}, b: { replicas: 2 } }, edges: [{ from: 'a', to: 'b' }] };
const runDirs = (): string[] => readdirSync(join(dir, 'runs'));

describe('control API', () => {
  it('answers health, readiness and Prometheus metrics', async () => {
    expect((await app.inject('/healthz')).json()).toEqual({ ok: true });
    expect((await app.inject('/readyz')).statusCode).toBe(200);
    const metrics = await app.inject('/metrics');
    expect(metrics.headers['content-type']).toMatch(/text\/plain/);
    expect(metrics.body).toMatch(/^sluice_runs \d+$/m);
    expect(metrics.body).toMatch(/sluice_relay_bytes_total/);
  });

  it('registers a workflow with defaults filled in, and lists it', async () => {
    const res = await app.inject({ method: 'POST', url: '/v1/workflows', payload: chain });
    expect(res.statusCode).toBe(201);
    expect(res.json()).toMatchObject({ name: 'chain', steps: { a: { replicas: 1 }, b: { replicas: 2 } }, edges: [{ from: 'a', to: 'b', fanout: 'broadcast', via: 'direct', persist: false }] });
    expect((await app.inject('/v1/workflows')).json()).toHaveLength(1);
  });

  it.each([
    ['a cycle', { name: 'loop', steps: { a: {}, b: {} }, edges: [{ from: 'a', to: 'b' }, { from: 'b', to: 'a' }] }, /cycle/],
    ['an unknown step', { name: 'x', steps: { a: {} }, edges: [{ from: 'a', to: 'nope' }] }, /nope/],
    ['a duplicate edge', { name: 'x', steps: { a: {}, b: {} }, edges: [{ from: 'a', to: 'b' }, { from: 'a', to: 'b' }] }, /edges\[1\] repeats edges\[0\]/],
    ['a path trick in a step name', { name: 'x', steps: { '../etc': {} }, edges: [] }, /not a valid name/],
    ['a typo in a key', { name: 'x', steps: { a: {}, b: {} }, edges: [{ from: 'a', to: 'b', fanuot: 'partition' }] }, /fanuot/],
  ])('refuses a workflow with %s: 400 SLUICE_INVALID', async (_what, body, reason) => {
    const res = await app.inject({ method: 'POST', url: '/v1/workflows', payload: body });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toMatchObject({ code: 'SLUICE_INVALID', message: expect.stringMatching(reason) });
  });

  it('refuses an oversized body with 413 and SLUICE_INVALID', async () => {
    const res = await app.inject({ method: 'POST', url: '/v1/workflows', payload: { name: 'big', steps: { a: { note: 'x'.repeat(20_000) } }, edges: [] } });
    expect(res.statusCode).toBe(413);
    expect(res.json().code).toBe('SLUICE_INVALID');
  });

  it('creates a run (token, prepared channels), shows it without the token, deletes it', async () => {
    const created = await app.inject({ method: 'POST', url: '/v1/runs', payload: { workflow: 'chain', id: 'run-1' } });
    expect(created.statusCode).toBe(201);
    const { run, token, channels } = created.json() as { run: string; token: string; channels: number };
    expect(run).toBe('run-1');
    expect(channels).toBe(2);
    expect(existsSync(runDirectory(dir, run, token))).toBe(true);
    const shown = await app.inject('/v1/runs/run-1');
    expect(shown.json()).toMatchObject({ run: 'run-1', workflow: 'chain', channels: [{ name: 'a.0-b.0', state: 'prepared' }, { name: 'a.0-b.1', state: 'prepared' }] });
    expect(shown.body).not.toContain(token);
    expect((await app.inject({ method: 'DELETE', url: '/v1/runs/run-1' })).statusCode).toBe(204);
    expect(existsSync(runDirectory(dir, run, token))).toBe(false);
    expect((await app.inject('/v1/runs/run-1')).statusCode).toBe(404);
  });

  it.each([
    ['an unknown workflow', { workflow: 'nope' }, 404, 'SLUICE_NOT_FOUND'],
    ['a path trick as run id', { workflow: 'chain', id: '../../etc' }, 400, 'SLUICE_INVALID'],
    ['an unknown field', { workflow: 'chain', colour: 'blue' }, 400, 'SLUICE_INVALID'],
    ['placement of an unknown step', { workflow: 'chain', placement: { zz: 'node-a' } }, 400, 'SLUICE_INVALID'],
    ['placement with the wrong number of nodes', { workflow: 'chain', placement: { b: ['node-a'] } }, 400, 'SLUICE_INVALID'],
    ['a bad ttl', { workflow: 'chain', ttlSeconds: -1 }, 400, 'SLUICE_INVALID'],
    ['no workflow', {}, 400, 'SLUICE_INVALID'],
  ])('refuses a run with %s, touching nothing', async (_what, body, status, code) => {
    const before = runDirs();
    const res = await app.inject({ method: 'POST', url: '/v1/runs', payload: body });
    expect(res.statusCode).toBe(status);
    expect(res.json().code).toBe(code);
    expect(runDirs()).toEqual(before);
  });

  it('sends the producer of a via: s3 or persist: true edge to the daemon, and still prepares its consumer FIFO', async () => {
    const edges = [
      { from: 'a', to: 'b', persist: true },
      { from: 'a', to: 'c', via: 's3' },
      { from: 'b', to: 'c' },
    ];
    expect((await app.inject({ method: 'POST', url: '/v1/workflows', payload: { name: 'durable', steps: { a: {}, b: {}, c: {} }, edges } })).statusCode).toBe(201);
    const res = await app.inject({ method: 'POST', url: '/v1/runs', payload: { workflow: 'durable', id: 'durable-1' } });
    expect(res.statusCode).toBe(201);
    const { token } = res.json() as { token: string };
    const manifest = JSON.parse(readFileSync(join(runDirectory(dir, 'durable-1', token), MANIFEST_FILE), 'utf8')) as { channels: { name: string; path: string }[] };
    expect(Object.fromEntries(manifest.channels.map((c) => [c.name, c.path]))).toEqual({ 'a.0-b.0': 'relay', 'a.0-c.0': 'relay', 'b.0-c.0': 'fifo' });
    for (const c of manifest.channels) expect(statSync(join(runDirectory(dir, 'durable-1', token), c.name)).isFIFO()).toBe(true);
    expect((await app.inject({ method: 'DELETE', url: '/v1/runs/durable-1' })).statusCode).toBe(204);
  });

  it('refuses a second run with the same id: 409 SLUICE_CONFLICT', async () => {
    expect((await app.inject({ method: 'POST', url: '/v1/runs', payload: { workflow: 'chain', id: 'twice' } })).statusCode).toBe(201);
    const again = await app.inject({ method: 'POST', url: '/v1/runs', payload: { workflow: 'chain', id: 'twice' } });
    expect(again.statusCode).toBe(409);
    expect(again.json()).toMatchObject({ code: 'SLUICE_CONFLICT', message: expect.stringMatching(/exists already/) });
    await app.inject({ method: 'DELETE', url: '/v1/runs/twice' });
  });

  it('refuses runs beyond --max-runs: 503 SLUICE_UNAVAILABLE with Retry-After', async () => {
    const ids = ['m1', 'm2', 'm3', 'm4', 'm5'];
    for (const id of ids) expect((await app.inject({ method: 'POST', url: '/v1/runs', payload: { workflow: 'chain', id } })).statusCode).toBe(201);
    const over = await app.inject({ method: 'POST', url: '/v1/runs', payload: { workflow: 'chain', id: 'm6' } });
    expect(over.statusCode).toBe(503);
    expect(over.headers['retry-after']).toMatch(/^\d+$/);
    expect(over.json()).toMatchObject({ code: 'SLUICE_UNAVAILABLE', message: expect.stringMatching(/--max-runs/) });
    for (const id of ids) await app.inject({ method: 'DELETE', url: `/v1/runs/${id}` });
  });

  it('expires a run after its TTL, endpoints and all', async () => {
    const res = await app.inject({ method: 'POST', url: '/v1/runs', payload: { workflow: 'chain', id: 'short', ttlSeconds: 1 } });
    const { token } = res.json() as { token: string };
    expect(existsSync(runDirectory(dir, 'short', token))).toBe(true);
    await runs.sweep();
    expect(existsSync(runDirectory(dir, 'short', token))).toBe(true); // not yet
    await sleep(1100);
    await runs.sweep(); // what the periodic sweep does
    expect(existsSync(runDirectory(dir, 'short', token))).toBe(false);
    expect((await app.inject('/v1/runs/short')).statusCode).toBe(404);
  });
});

describe('late binding (POST /v1/runs/:id/bind)', () => {
  const token = 'Tok3n_for-a-shared-run-012345678';
  const bind = (id: string, t: string) => app.inject({ method: 'POST', url: `/v1/runs/${id}/bind`, payload: { token: t } });
  const held = async (n: number): Promise<void> => {
    while (binder.held !== n) await sleep(10);
  };

  it('holds a function whose run is still being shared by a peer, and binds it once its channels are open', async () => {
    const waiting = bind('shared-1', token);
    await held(1);
    const shared = { run: 'shared-1', token, workflow: validateWorkflow(chain), placement: { a: 'node-a', b: 'node-a' }, ttlSeconds: 60 };
    await cluster.onRequest('node-b', { op: 'prepare', ...shared });
    // prepared, not yet opened everywhere: still held
    expect(binder.held).toBe(1);
    // known now: a wrong token is refused at once
    const wrong = await bind('shared-1', 'x'.repeat(32));
    expect([wrong.statusCode, wrong.json().code]).toEqual([401, 'SLUICE_UNAUTHORIZED']);
    await cluster.onRequest('node-b', { op: 'open', run: 'shared-1' });
    const res = await waiting;
    expect([res.statusCode, res.json()]).toEqual([200, { run: 'shared-1' }]);
    expect(existsSync(join(runDirectory(dir, 'shared-1', token), MANIFEST_FILE))).toBe(true);
    // ready: bound at once
    expect((await bind('shared-1', token)).statusCode).toBe(200);
    await runs.delete('shared-1');
  });

  it('tells a held function SLUICE_UNAUTHORIZED when its run appears (created through the control API) with another token', async () => {
    const waiting = bind('api-1', token);
    await held(1);
    expect((await app.inject({ method: 'POST', url: '/v1/runs', payload: { workflow: 'chain', id: 'api-1' } })).statusCode).toBe(201);
    const res = await waiting;
    expect([res.statusCode, res.json().code]).toEqual([401, 'SLUICE_UNAUTHORIZED']);
    await runs.delete('api-1');
  });

  it('answers SLUICE_NOT_FOUND after --bind-timeout for a run that never comes, and frees its place', async () => {
    const res = await bind('never-1', token);
    expect(res.statusCode).toBe(404);
    expect(res.json()).toMatchObject({ code: 'SLUICE_NOT_FOUND', message: expect.stringContaining(`waited ${BIND_TIMEOUT_MS} ms`) });
    expect(binder.held).toBe(0);
  });

  it('refuses a bad run name', async () => {
    const res = await bind('Bad_Name', token);
    expect([res.statusCode, res.json().code]).toEqual([400, 'SLUICE_INVALID']);
  });
});

describe('Binder', () => {
  const derived = 'D3rived-from-the-cluster-secret0';
  const placement = { tokenOf: () => derived, placedHere: (id: string) => id === 'placed' };
  const errorOf = (p: Promise<unknown>): Promise<{ code?: string; message?: string }> => p.then(() => ({}), (err: { code?: string; message?: string }) => err);

  it('refuses at once a token other than the derived one for a run whose pods are here; without a timeout, answers at once', async () => {
    const b = new Binder({ node: 'node-a', runs, timeoutMs: 3_600_000, log, placement });
    expect(await errorOf(b.bind('placed', 'x'.repeat(32)))).toMatchObject({ code: 'SLUICE_UNAUTHORIZED', message: expect.stringContaining('sluice run token placed') });
    const none = new Binder({ node: 'node-a', runs, timeoutMs: 0, log });
    expect(await errorOf(none.bind('nowhere', derived))).toMatchObject({ code: 'SLUICE_NOT_FOUND', message: 'no run "nowhere" on node node-a' });
  });

  it(`holds at most ${MAX_UNVERIFIED} unverifiable requests, leaving room for verified ones; a stopping daemon answers the rest SLUICE_UNAVAILABLE`, async () => {
    const b = new Binder({ node: 'node-a', runs, timeoutMs: 3_600_000, log, placement });
    const gone = new AbortController();
    const unverified = Array.from({ length: MAX_UNVERIFIED }, (_, i) => errorOf(b.bind(`u-${i}`, 'x'.repeat(32), gone.signal)));
    expect(b.held).toBe(MAX_UNVERIFIED);
    expect(await errorOf(b.bind('u-over', 'x'.repeat(32)))).toMatchObject({ code: 'SLUICE_NOT_FOUND', message: expect.stringContaining('not held') });
    const verified = errorOf(b.bind('v-1', derived));
    expect(b.held).toBe(MAX_UNVERIFIED + 1);
    // clients that hang up free their places
    gone.abort();
    expect(new Set((await Promise.all(unverified)).map((e) => e.code))).toEqual(new Set(['SLUICE_ABORTED']));
    expect(b.held).toBe(1);
    b.close();
    expect(await verified).toMatchObject({ code: 'SLUICE_UNAVAILABLE' });
    expect(await errorOf(b.bind('v-2', derived))).toMatchObject({ code: 'SLUICE_UNAVAILABLE' });
    expect(b.held).toBe(0);
  });
});

describe('endpoints a run prepares', () => {
  it('gives a consumer fed from another node a Unix socket, or its FIFO pair when the socket path would be too long', async () => {
    const long = 'x'.repeat(60);
    const workflow = validateWorkflow({ name: 'across', steps: { p: {}, c: {}, [long]: {} }, edges: [{ from: 'p', to: 'c' }, { from: 'p', to: long }, { from: 'c', to: long }] });
    const created = await runs.create({ workflow, id: 'across', placement: { p: 'node-b' } });
    const byName = Object.fromEntries(created.manifest.channels.map((c) => [c.name, c.path]));
    // p is on node-b: the daemon delivers what the peer link carries; c → long is local, a FIFO pair
    expect(byName).toEqual({ 'p.0-c.0': 'unix', [`p.0-${long}.0`]: 'fifo', [`c.0-${long}.0`]: 'fifo' });
    const entries = readdirSync(created.directory).sort();
    expect(entries).toEqual([`c.0-${long}.0`, `c.0-${long}.0.ack`, `p.0-${long}.0`, `p.0-${long}.0.ack`, 'run.json']);
    expect(lstatSync(join(created.directory, `p.0-${long}.0`)).isFIFO()).toBe(true);
    await runs.delete('across');
  });
});

describe('control API over TCP (bearer secret)', () => {
  it('refuses requests without the cluster secret, but not probes or metrics', async () => {
    const metrics = createMetrics({ runs });
    const workflows = new Map<string, Workflow>();
    const { cluster, relay, binder } = wire(metrics, workflows);
    const tcp = buildApi({ node: 'node-a', version: 'test', runs, cluster, peers: undefined, relay, metrics, workflows, binder, maxBodyBytes: 16 * 1024, ready: () => true, bearerSecret: 'a-cluster-secret-of-some-length' });
    try {
      expect((await tcp.inject('/healthz')).statusCode).toBe(200);
      expect((await tcp.inject('/metrics')).statusCode).toBe(200);
      const anonymous = await tcp.inject('/v1/runs');
      expect(anonymous.statusCode).toBe(401);
      expect(anonymous.json().code).toBe('SLUICE_UNAUTHORIZED');
      expect((await tcp.inject({ url: '/v1/runs', headers: { authorization: 'Bearer wrong-secret-of-the-same-size!' } })).statusCode).toBe(401);
      expect((await tcp.inject({ url: '/v1/runs', headers: { authorization: 'Bearer a-cluster-secret-of-some-length' } })).statusCode).toBe(200);
    } finally {
      await tcp.close();
    }
  });
});

describe('every error answer is { code: SLUICE_*, message, details? }, Fastify\'s own too', () => {
  const expectSluiceError = (res: { statusCode: number; headers: Record<string, unknown>; json: () => unknown }, status: number, code: string, message: RegExp): void => {
    expect(res.statusCode).toBe(status);
    expect(res.headers['content-type']).toMatch(/application\/json/);
    const body = res.json() as Record<string, unknown>;
    expect(body).toMatchObject({ code, message: expect.stringMatching(message) });
    expect(Object.keys(body).every((k) => ['code', 'message', 'details'].includes(k))).toBe(true);
    expect(isErrorCode(body.code)).toBe(true);
  };

  it.each([
    ['a 10 KB path parameter', { url: `/v1/runs/${'r'.repeat(10_000)}` }, 414, 'SLUICE_INVALID', /longer than 100 characters/],
    ['a route that does not exist', { url: '/v2/nothing' }, 404, 'SLUICE_NOT_FOUND', /no route GET "\/v2\/nothing"/],
    ['a method a route does not have', { method: 'PUT', url: '/v1/runs' }, 404, 'SLUICE_NOT_FOUND', /no route PUT/],
    ['a malformed percent-encoding in a path parameter', { url: '/v1/runs/%E0%A4%A' }, 400, 'SLUICE_INVALID', /percent-encoded/],
    ['a body that is not JSON', { method: 'POST', url: '/v1/workflows', headers: { 'content-type': 'application/json' }, payload: '{"name": ' }, 400, 'SLUICE_INVALID', /not valid JSON/],
    ['a body of a content type the API does not read', { method: 'POST', url: '/v1/workflows', headers: { 'content-type': 'application/xml' }, payload: '<name/>' }, 415, 'SLUICE_INVALID', /application\/json/],
    ['a body of plain text', { method: 'POST', url: '/v1/workflows', headers: { 'content-type': 'text/plain' }, payload: 'name: x' }, 400, 'SLUICE_INVALID', /the body must be a JSON object/],
    ['a workflow that is not an object', { method: 'POST', url: '/v1/workflows', payload: [1, 2] }, 400, 'SLUICE_INVALID', /the body must be a JSON object/],
    ['a run body that is a list', { method: 'POST', url: '/v1/runs', payload: ['chain'] }, 400, 'SLUICE_INVALID', /the body must be a JSON object/],
    ['a run without a workflow', { method: 'POST', url: '/v1/runs', payload: { id: 'r1' } }, 400, 'SLUICE_INVALID', /needs the field "workflow"/],
    ['a run with an unknown field', { method: 'POST', url: '/v1/runs', payload: { workflow: 'chain', colour: 'blue' } }, 400, 'SLUICE_INVALID', /unknown field "colour"; allowed: workflow, id, placement, ttlSeconds/],
    ['a run with a ttl given as text', { method: 'POST', url: '/v1/runs', payload: { workflow: 'chain', ttlSeconds: '60' } }, 400, 'SLUICE_INVALID', /field "ttlSeconds" of the body must be of type integer/],
    ['a run placed with a number', { method: 'POST', url: '/v1/runs', payload: { workflow: 'chain', placement: { a: 7 } } }, 400, 'SLUICE_INVALID', /field "placement.a" of the body/],
    ['a bind with a token that is not text', { method: 'POST', url: '/v1/runs/r1/bind', payload: { token: 42 } }, 400, 'SLUICE_INVALID', /field "token" of the body must be of type string/],
  ] as const)('%s', async (_what, request, status, code, message) => {
    const before = runDirs();
    expectSluiceError(await app.inject(request as InjectOptions), status, code, message);
    expect(runDirs()).toEqual(before);
  });

  it('answers a request that reaches a closing API 503 SLUICE_UNAVAILABLE with Retry-After', async () => {
    const metrics = createMetrics({ runs });
    const workflows = new Map<string, Workflow>();
    const { cluster, relay, binder } = wire(metrics, workflows);
    const closing = buildApi({ node: 'node-a', version: 'test', runs, cluster, peers: undefined, relay, metrics, workflows, binder, maxBodyBytes: 16 * 1024, ready: () => true });
    await closing.ready();
    // a request already under way when close() begins, as a pipelined one would be
    let answered: Promise<LightMyRequestResponse> | undefined;
    closing.addHook('preClose', async () => {
      answered = closing.inject({ url: '/v1/runs' });
    });
    await closing.close();
    const res = await answered!;
    expectSluiceError(res, 503, 'SLUICE_UNAVAILABLE', /closing/);
    expect(res.headers['retry-after']).toMatch(/^\d+$/);
  });
});
