/**
 * Control API target: mutated JSON bodies (and path parameters, and content types) for every
 * route with a body or a parameter, through Fastify's inject() on the API as the daemon builds it
 * (one node, no peers). Every answer must be a 2xx, or a 4xx JSON `{ code: "SLUICE_...", message }`;
 * 503/504 are counted and allowed only with SLUICE_UNAVAILABLE / SLUICE_TIMEOUT; never a 500,
 * never an exception out of inject().
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { buildApi, type ApiServer } from '../../../server/api.js';
import { createMetrics } from '../../../server/metrics.js';
import { RunRegistry } from '../../../server/runs.js';
import type { Workflow } from '../../../server/workflow.js';
import { wireOneNode } from '../../helpers/one-node.js';
import { chance, interestingString, mutateBytes, mutateJson, pick, type Prng } from '../gen.js';
import type { Target } from '../harness.js';

const WORKFLOW = {
  name: 'chain',
  steps: { a: {}, b: { replicas: 2 } },
  edges: [{ from: 'a', to: 'b', fanout: 'broadcast', via: 'direct', persist: false }],
};

/** A valid body for each route (the workflow one varies its options). */
function validRequest(r: Prng): { method: 'GET' | 'POST' | 'DELETE'; url: string; body?: unknown } {
  const run = pick(r, ['run-1', 'run-2', 'nope']);
  switch (r.int(0, 7)) {
    case 0:
    case 1:
      return {
        method: 'POST',
        url: '/v1/workflows',
        body: {
          name: pick(r, ['chain', 'w2', 'w3']),
          steps: { a: {}, b: { replicas: r.int(1, 3) }, c: {} },
          edges: [
            { from: 'a', to: 'b', fanout: pick(r, ['broadcast', 'partition', 'balance']), via: pick(r, ['direct', 's3']), persist: chance(r, 0.5) },
            { from: 'b', to: 'c', ...(chance(r, 0.3) ? { keys: 'a/out/' } : {}) },
          ],
        },
      };
    case 2:
    case 3:
      return { method: 'POST', url: '/v1/runs', body: { workflow: 'chain', id: run, placement: { a: 'node-a', b: ['node-a', 'node-a'] }, ttlSeconds: r.int(1, 3600) } };
    case 4:
      return { method: 'POST', url: `/v1/runs/${run}/bind`, body: { token: 'x'.repeat(43) } };
    case 5:
      return { method: 'DELETE', url: `/v1/runs/${run}` };
    case 6:
      return { method: 'GET', url: `/v1/runs/${run}` };
    default:
      return { method: 'GET', url: `/v1/workflows/${pick(r, ['chain', 'nope'])}` };
  }
}

const CONTENT_TYPES = ['application/json', 'application/json', 'application/json; charset=utf-8', 'application/json; charset=latin1', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/octet-stream', undefined];

function apiInput(r: Prng): { method: 'GET' | 'POST' | 'DELETE'; url: string; payload: string | Buffer | undefined; contentType: string | undefined } {
  const req = validRequest(r);
  let url = req.url;
  if (chance(r, 0.15)) {
    const parts = url.split('/');
    // percent-encoded bytes, a stray %, or a raw oddity; sometimes the wrong segment (unknown routes)
    const segment = chance(r, 0.7) ? [...Buffer.from(interestingString(r))].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('') : pick(r, ['%', '%zz', '%c0%af', '..', '.', '', '%2e%2e', 'a?b=c', 'a#b']);
    parts[parts.length - (url.endsWith('/bind') ? 2 : 1) - (chance(r, 0.1) ? 1 : 0)] = segment;
    url = parts.join('/');
  }
  let payload: string | Buffer | undefined;
  const k = r.next();
  if (req.body === undefined && k < 0.8) payload = undefined;
  else {
    const body = k < 0.1 ? req.body : mutateJson(r, req.body);
    let text: string;
    try {
      text = body === undefined ? '' : JSON.stringify(body);
    } catch {
      text = '[]';
    }
    payload = chance(r, 0.3) ? mutateBytes(r, Buffer.from(text)) : text;
  }
  const contentType = req.method === 'POST' || payload !== undefined ? pick(r, CONTENT_TYPES) : undefined;
  return { method: req.method, url, payload, contentType };
}

export function controlApiTarget(): Target {
  let dir = '';
  let app: ApiServer;
  let runs: RunRegistry;
  let count = 0;
  const stats: Record<string, number> = {};
  return {
    name: 'control-api',
    stats,
    describe: (r) => {
      const i = apiInput(r);
      return `${i.method} ${i.url} content-type ${String(i.contentType)} body ${i.payload === undefined ? '(none)' : JSON.stringify(i.payload.toString().slice(0, 300))}`;
    },
    async setup() {
      dir = mkdtempSync(join(tmpdir(), 'sluice-fuzz-api-'));
      const log = pino({ level: 'silent' });
      runs = new RunRegistry({ dir, node: 'node-a', runTtlSeconds: 3600, maxRuns: 5, log });
      await runs.start();
      const metrics = createMetrics({ runs });
      const workflows = new Map<string, Workflow>();
      const { cluster, relay, binder } = wireOneNode({ dir, runs, log, metrics, workflows, bindTimeoutMs: 1 });
      app = buildApi({ node: 'node-a', version: 'fuzz', runs, cluster, peers: undefined, relay, metrics, workflows, binder, maxBodyBytes: 16 * 1024, ready: () => true });
      await app.inject({ method: 'POST', url: '/v1/workflows', payload: WORKFLOW });
    },
    async one(r) {
      const input = apiInput(r);
      // runs fill the registry (maxRuns 5): clear it now and then so run creation stays reachable
      if (++count % 64 === 0) for (const run of runs.list()) await runs.delete(run.id).catch(() => undefined);
      const res = await app.inject({
        method: input.method,
        url: input.url,
        ...(input.payload !== undefined ? { payload: input.payload } : {}),
        headers: input.contentType ? { 'content-type': input.contentType } : {},
      });
      const status = res.statusCode;
      stats[status] = (stats[status] ?? 0) + 1;
      if (status === 204) return;
      let body: { code?: unknown };
      try {
        body = res.json();
      } catch {
        throw new Error(`${status} with a body that is not JSON: ${res.body.slice(0, 200)}`);
      }
      if (status >= 200 && status < 300) return;
      if (status >= 500 && !((status === 503 && body.code === 'SLUICE_UNAVAILABLE') || (status === 504 && body.code === 'SLUICE_TIMEOUT'))) {
        throw new Error(`${status} ${res.body.slice(0, 300)}`);
      }
      if (typeof body.code !== 'string' || !body.code.startsWith('SLUICE_')) throw new Error(`${status} without a SLUICE_ code: ${res.body.slice(0, 300)}`);
    },
    async teardown() {
      await app?.close();
      await runs?.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
