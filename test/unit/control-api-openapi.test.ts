/**
 * docs/control-api.openapi.json is made from the control API's route schemas (server/openapi.ts):
 * made again here, it must equal the committed file, and every route of the app — as the daemon
 * wires it, collected through `onRoute` — must be in it with the body schema Fastify checks.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RouteOptions } from 'fastify';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApi } from '../../server/api.js';
import { createMetrics } from '../../server/metrics.js';
import { openApiText } from '../../server/openapi.js';
import { RunRegistry } from '../../server/runs.js';
import type { Workflow } from '../../server/workflow.js';
import { ErrorCodes } from '../../transports/index.js';
import { wireOneNode } from '../helpers/one-node.js';

const file = new URL('../../docs/control-api.openapi.json', import.meta.url);
const committed = readFileSync(file, 'utf8');
const doc = JSON.parse(committed) as {
  paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: unknown }> }; responses: Record<string, unknown> }>>;
  components: { schemas: { Error: { properties: { code: { enum: string[] } } } } };
};

const log = pino({ level: 'silent' });
let dir: string;
let runs: RunRegistry;
const routes: RouteOptions[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sluice-openapi-'));
  runs = new RunRegistry({ dir, node: 'node-a', runTtlSeconds: 3600, maxRuns: 5, log });
  await runs.start();
  const metrics = createMetrics({ runs });
  const workflows = new Map<string, Workflow>();
  const { cluster, relay, binder } = wireOneNode({ dir, runs, log, metrics, workflows, bindTimeoutMs: 1000 });
  const app = buildApi({ node: 'node-a', version: 'test', runs, cluster, peers: undefined, relay, metrics, workflows, binder, maxBodyBytes: 16 * 1024, ready: () => true, onRoute: (r) => void routes.push(r) });
  await app.ready();
  await app.close();
});
afterAll(async () => {
  await runs.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('docs/control-api.openapi.json', () => {
  it('is what the route schemas make now (else: run npm run docs:api)', async () => {
    const fresh = await openApiText();
    expect(committed === fresh, 'docs/control-api.openapi.json is stale: run npm run docs:api and commit it').toBe(true);
  });

  it('has every route of the app, with the body schema Fastify checks, and only those', () => {
    const seen = new Set<string>();
    for (const route of routes) {
      for (const method of [route.method].flat()) {
        if (method === 'HEAD') continue;
        const path = route.url.replace(/:(\w+)/g, '{$1}');
        const operation = doc.paths[path]?.[method.toLowerCase()];
        expect(operation, `${method} ${route.url} is not in docs/control-api.openapi.json: run npm run docs:api`).toBeDefined();
        seen.add(`${method.toLowerCase()} ${path}`);
        const body = (route.schema as { body?: unknown } | undefined)?.body;
        if (body) expect(JSON.stringify(operation!.requestBody?.content['application/json']?.schema)).toContain(JSON.stringify(body));
        else expect(operation!.requestBody).toBeUndefined();
      }
    }
    expect(seen.size).toBeGreaterThanOrEqual(12);
    const documented = Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m} ${path}`));
    expect(documented.sort()).toEqual([...seen].sort());
  });

  it('describes every error answer as { code, message, details? } with the codes the library has', () => {
    expect([...doc.components.schemas.Error.properties.code.enum].sort()).toEqual(Object.values(ErrorCodes).sort());
    for (const ops of Object.values(doc.paths)) for (const op of Object.values(ops)) expect(Object.keys(op.responses)).toContain('500');
  });
});
