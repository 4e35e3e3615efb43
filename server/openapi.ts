/**
 * The control API's OpenAPI 3.1 description, made from the routes `buildApi` registers: their
 * methods and paths, and the JSON schemas Fastify checks their bodies and parameters against,
 * as Fastify reports them (`onRoute`). What each route answers on success is said in `ROUTES`
 * below, beside the route's key; every error answer is the one error body, `{ code, message,
 * details? }`, with the status of its code.
 *
 * `npm run docs:api` writes docs/control-api.openapi.json (`node dist/server/openapi.js FILE`);
 * test/unit/control-api-openapi.test.ts makes it again in memory and fails when the committed file
 * is stale, or when a route of the app is missing from it. A route with no entry in `ROUTES`, or
 * an entry with no route, stops the generation with the route named.
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { RouteOptions } from 'fastify';
import { ErrorCodes } from '../transports/errors.js';
import { NAME_PATTERN } from '../transports/layout.js';
import { HTTP_LIMITS, MAX_PARAM_LENGTH, buildApi, type ApiContext } from './api.js';

type Schema = Record<string, unknown>;

/** A route as Fastify registered it: the parts the description is made from. */
export interface RouteSeen {
  method: string;
  url: string;
  schema: { body?: Schema; params?: Schema; querystring?: Schema } | undefined;
}

/**
 * The routes of the control API, in the order they are registered (HEAD routes, which Fastify
 * adds for every GET, left out). The app is built with a context holding only what `buildApi`
 * reads while it registers routes; it serves no request and is closed before this returns.
 */
export async function collectRoutes(): Promise<RouteSeen[]> {
  const routes: RouteSeen[] = [];
  const onRoute = (route: RouteOptions): void => {
    for (const method of [route.method].flat()) {
      if (method === 'HEAD') continue;
      routes.push({ method, url: route.url, schema: route.schema as RouteSeen['schema'] });
    }
  };
  const ctx = { node: 'openapi', version: '', maxBodyBytes: 1024 * 1024, ready: () => false, onRoute } as Partial<ApiContext>;
  const app = buildApi(ctx as ApiContext);
  await app.close();
  return routes;
}

const json = (schema: Schema, description: string) => ({ description, content: { 'application/json': { schema } } });
const ref = (name: string): Schema => ({ $ref: `#/components/schemas/${name}` });

interface RouteDoc {
  summary: string;
  description?: string;
  /** success statuses and what they hold */
  answers: Record<string, unknown>;
  /** error statuses of this route besides those every route may answer */
  errors?: number[];
  /** the probes and /metrics: no bearer token over TCP */
  open?: true;
  /** the body may be left out */
  optionalBody?: true;
  /** a fuller description of the body than the Fastify schema, which the handler checks (allOf both) */
  bodyAlso?: Schema;
}

const ROUTES: Record<string, RouteDoc> = {
  'GET /healthz': { summary: 'Liveness: the process runs', open: true, answers: { 200: json({ type: 'object', properties: { ok: { const: true } } }, 'the process runs') } },
  'GET /readyz': {
    summary: 'Readiness',
    description: 'Ready once runs and relay are up; 503 while starting or draining (after SIGTERM).',
    open: true,
    answers: { 200: json({ type: 'object', properties: { ready: { const: true } } }, 'ready'), 503: json({ type: 'object', properties: { ready: { const: false } } }, 'starting or draining') },
  },
  'GET /metrics': {
    summary: 'Prometheus metrics',
    description: 'Prometheus text format; the metrics are listed in docs/operations.md (Metrics).',
    open: true,
    answers: { 200: { description: 'Prometheus text exposition format', content: { 'text/plain': { schema: { type: 'string' } } } } },
  },
  'GET /v1/status': {
    summary: 'The node: runs, relays, peers and replicas',
    description: 'What `sluice status` prints.',
    answers: { 200: json(ref('Status'), 'the node’s state') },
  },
  'POST /v1/workflows': {
    summary: 'Apply a workflow',
    description: 'Validates the workflow (a DAG; the message of a refusal names the reason and where) and shares it with the peers, so that runs of it can start at any daemon. Applying a workflow of the same name again replaces it for new runs.',
    bodyAlso: ref('Workflow'),
    answers: { 201: json(ref('Workflow'), 'the workflow as validated, defaults filled in') },
  },
  'GET /v1/workflows': { summary: 'The workflows applied', answers: { 200: json({ type: 'array', items: ref('Workflow') }, 'every workflow this node knows') } },
  'GET /v1/workflows/:name': { summary: 'One workflow', errors: [404], answers: { 200: json(ref('Workflow'), 'the workflow') } },
  'POST /v1/runs': {
    summary: 'Create a run',
    description:
      'Prepares the run on every node of its placement before it answers: run directory, manifest and FIFOs for the consumers each node hosts, and a parked peer-link connection, with its credit window, for every cross-node channel. `placement` maps a step to one node (every instance there) or to one node per instance; steps not named go to this node.',
    errors: [404, 409, 504],
    answers: { 201: json(ref('RunCreated'), 'the run, its token (keep it: it is not shown again) and its channels') },
  },
  'GET /v1/runs': { summary: 'The runs on this node', answers: { 200: json({ type: 'array', items: ref('RunSummary') }, 'every run this node holds') } },
  'GET /v1/runs/:id': { summary: 'One run, with its channels', errors: [404], answers: { 200: json(ref('Run'), 'the run, its steps and every channel with an end on this node') } },
  'POST /v1/runs/:id/bind': {
    summary: 'Late binding: wait until the run is ready on this node',
    description:
      'What `connect()` asks when its run’s manifest is not on disk yet. Answers once the run is ready on this node (created here and, for a run across nodes, shared and its channels opened), or after `--bind-timeout` with SLUICE_NOT_FOUND saying how long it waited. A wrong token is SLUICE_UNAUTHORIZED, at once when it can be checked. At most 1024 requests are held at once (256 whose token cannot be checked before the run exists); more are answered SLUICE_NOT_FOUND at once. A client that hangs up frees its place.',
    optionalBody: true,
    errors: [404],
    answers: { 200: json({ type: 'object', required: ['run'], properties: { run: { type: 'string' } } }, 'the run is ready on this node: its manifest is in its directory') },
  },
  'DELETE /v1/runs/:id': {
    summary: 'Delete a run',
    description: 'Removes the run’s endpoints, buffers and stored objects here and on every node it involves (a node without a link now removes its part at the run’s expiry).',
    errors: [404],
    answers: { 204: { description: 'deleted' } },
  },
};

const name = { type: 'string', pattern: NAME_PATTERN.source, maxLength: 63 };
const instanceRef = { type: 'object', required: ['step', 'index'], properties: { step: name, index: { type: 'integer', minimum: 0 } } };
const channel = {
  type: 'object',
  properties: {
    name: { type: 'string', description: '`<from>.<i>-<to>.<j>`: the endpoint’s file name in the run directory' },
    from: instanceRef,
    to: instanceRef,
    path: { enum: ['fifo', 'unix', 'remote'], description: 'fifo: the consumer is here (FIFO pair); unix: the consumer is here, fed from another node; remote: the consumer is on `peer`' },
    peer: { type: 'string', description: 'the node at the other end, when not this one' },
    via: { enum: ['direct', 'store'] },
    persist: { type: 'boolean' },
    stored: { enum: ['spill', 'forced', 'unreachable', 'persist', 'failover'], description: 'why the stream went to the object store, once it did' },
    state: { enum: ['prepared', 'relaying', 'done', 'failed'] },
    relayedBytes: { type: 'integer' },
    balanced: { type: 'boolean' },
    routed: { type: 'boolean', description: 'balance edges, on the producer’s node: this consumer instance was picked' },
  },
};
const runSummary = {
  type: 'object',
  required: ['run', 'workflow', 'createdAt', 'expiresAt', 'channels'],
  properties: { run: name, workflow: name, createdAt: { type: 'string', format: 'date-time' }, expiresAt: { type: 'string', format: 'date-time' }, channels: { type: 'integer', description: 'channels with an end on this node' } },
};

const COMPONENT_SCHEMAS: Record<string, Schema> = {
  Error: {
    type: 'object',
    required: ['code', 'message'],
    additionalProperties: false,
    properties: {
      code: { enum: Object.values(ErrorCodes), description: 'stable: match on it (docs/errors.md)' },
      message: { type: 'string', description: 'what happened and, where there is one, the fix' },
      details: { description: 'machine-readable context, e.g. the field or the run' },
    },
  },
  Workflow: {
    type: 'object',
    required: ['name', 'steps'],
    additionalProperties: false,
    properties: {
      name,
      steps: {
        type: 'object',
        minProperties: 1,
        maxProperties: 256,
        propertyNames: name,
        additionalProperties: { type: ['object', 'null'], additionalProperties: false, properties: { replicas: { type: 'integer', minimum: 1, maximum: 64, default: 1 } } },
      },
      edges: {
        type: 'array',
        maxItems: 1024,
        items: {
          type: 'object',
          required: ['from', 'to'],
          additionalProperties: false,
          properties: {
            from: name,
            to: name,
            fanout: { enum: ['broadcast', 'partition', 'balance'], default: 'broadcast' },
            via: { enum: ['direct', 's3'], default: 'direct' },
            persist: { type: 'boolean', default: false },
            policy: { enum: ['local-first', 'always-local', 'least-loaded', 'affinity'], description: 'balance edges only; default local-first' },
            key: { enum: ['run', 'producer'], description: 'policy: affinity only; default run' },
          },
        },
      },
    },
    description: 'A DAG: no cycles, no self or duplicate edges, edges between steps that exist; at most 1 MiB of text. `policy` only on `fanout: balance`, `key` only with `policy: affinity`, and `balance` neither with `via: s3` nor `persist: true`.',
  },
  RunCreated: {
    type: 'object',
    required: ['run', 'token', 'workflow', 'channels', 'expiresAt'],
    properties: {
      run: name,
      token: { type: 'string', description: 'the run’s secret: functions present it (SLUICE_TOKEN); it names the run directory' },
      workflow: name,
      channels: { type: 'integer', description: 'channels prepared on this node' },
      expiresAt: { type: 'string', format: 'date-time' },
    },
  },
  RunSummary: runSummary,
  Run: {
    type: 'object',
    required: [...runSummary.required, 'steps'],
    properties: {
      ...runSummary.properties,
      channels: { type: 'array', items: channel },
      steps: { type: 'object', additionalProperties: { type: 'object', properties: { replicas: { type: 'integer' }, nodes: { type: 'array', items: { type: 'string' }, description: 'the node of each instance' } } } },
    },
  },
  Status: {
    type: 'object',
    properties: {
      node: { type: 'string' },
      version: { type: 'string' },
      uptimeSeconds: { type: 'integer' },
      ready: { type: 'boolean' },
      workflows: { type: 'integer' },
      runs: { type: 'array', items: ref('Run') },
      relays: { type: 'integer', description: 'streams going through the relay now' },
      peers: {
        type: 'array',
        items: {
          type: 'object',
          properties: {
            node: { type: 'string' },
            url: { type: ['string', 'null'], description: 'null for a peer that is not listed (it dialled in)' },
            state: { enum: ['up', 'connecting', 'down'] },
            since: { type: 'string', format: 'date-time' },
            channels: { type: 'integer' },
            bytesSent: { type: 'integer' },
            bytesReceived: { type: 'integer' },
            reconnects: { type: 'integer' },
            lastError: { type: ['string', 'null'] },
          },
        },
      },
      replicas: {
        type: 'array',
        description: 'consumer replicas of balance edges',
        items: {
          type: 'object',
          properties: {
            replica: { type: 'string', description: '`workflow/step[index]@node`' },
            workflow: { type: 'string' },
            step: { type: 'string' },
            index: { type: 'integer' },
            node: { type: 'string' },
            streams: { type: 'integer' },
            routedHere: { type: 'integer' },
            saturated: { type: 'boolean' },
            ejected: { type: 'boolean' },
            ejectedForMs: { type: 'integer' },
            ejections: { type: 'integer' },
            routed: { type: 'integer' },
            failed: { type: 'integer' },
          },
        },
      },
      balanced: { type: 'object', properties: { local: { type: 'integer' }, remote: { type: 'integer' }, localShare: { type: ['number', 'null'] } } },
    },
  },
};

/** Every error status the API answers, with the codes that carry it. */
const ERRORS: Record<number, string> = {
  400: 'SLUICE_INVALID: a body that does not match its route’s schema (the message names the field), malformed JSON, a bad name, a malformed URL; or SLUICE_CONFIG',
  401: 'SLUICE_UNAUTHORIZED: over TCP, no or a wrong `Authorization: Bearer <cluster secret>`; for bind, a wrong run token',
  404: 'SLUICE_NOT_FOUND: no such run, workflow or route; for bind, the run was not ready within --bind-timeout',
  408: `SLUICE_TIMEOUT: the request did not arrive in time (headers within ${HTTP_LIMITS.headersTimeoutMs} ms, all of it within ${HTTP_LIMITS.requestTimeoutMs} ms); the connection is closed`,
  409: 'SLUICE_CONFLICT: the run id is taken',
  413: 'SLUICE_INVALID: the body is over --max-body',
  414: `SLUICE_INVALID: a path parameter is over ${MAX_PARAM_LENGTH} characters`,
  415: 'SLUICE_INVALID: a content type other than application/json',
  431: 'SLUICE_INVALID: the request headers are too large',
  500: 'SLUICE_INTERNAL (a bug; the daemon logged it), or a code with no status of its own',
  503: 'SLUICE_UNAVAILABLE, with `Retry-After: 5`: the node holds --max-runs runs, is stopping, or a peer the request needs cannot be reached',
  504: 'SLUICE_TIMEOUT: an operation the request needs (a peer’s answer) did not finish in time',
};

/** What any route may answer: a malformed request, its time, a bug, a stopping node. */
const EVERY_ROUTE = [400, 408, 431, 500, 503];

function paramNames(url: string): string[] {
  return [...url.matchAll(/:(\w+)/g)].map((m) => m[1]!);
}

/** The OpenAPI 3.1 document of `routes`; throws when a route and `ROUTES` disagree. */
export function openApiDocument(routes: RouteSeen[]): Schema {
  const paths: Record<string, Record<string, unknown>> = {};
  const seen = new Set<string>();
  for (const route of routes) {
    const key = `${route.method} ${route.url}`;
    const doc = ROUTES[key];
    if (!doc) throw new Error(`route ${key} is not described: add it to ROUTES in server/openapi.ts (what it answers), then run npm run docs:api`);
    seen.add(key);
    const schema = route.schema ?? {};
    const params = paramNames(route.url);
    const parameters = [
      ...params.map((p) => ({
        name: p,
        in: 'path',
        required: true,
        schema: (schema.params?.properties as Record<string, Schema> | undefined)?.[p] ?? { type: 'string', maxLength: MAX_PARAM_LENGTH },
      })),
      ...Object.entries((schema.querystring?.properties as Record<string, Schema> | undefined) ?? {}).map(([q, s]) => ({
        name: q,
        in: 'query',
        required: ((schema.querystring?.required as string[] | undefined) ?? []).includes(q),
        schema: s,
      })),
    ];
    const errors = new Set([...EVERY_ROUTE, ...(doc.errors ?? [])]);
    if (!doc.open) errors.add(401);
    if (schema.body) [413, 415].forEach((s) => errors.add(s));
    if (params.length > 0) errors.add(414);
    const responses: Record<string, unknown> = { ...doc.answers };
    for (const status of [...errors].sort((a, b) => a - b)) responses[String(status)] ??= { $ref: `#/components/responses/E${status}` };
    const operation: Schema = {
      operationId: `${route.method.toLowerCase()}${route.url.replace(/\/:(\w+)/g, (_, p: string) => `By${p[0]!.toUpperCase()}${p.slice(1)}`).replace(/(?:^|[/_-])(\w)/g, (_, c: string) => c.toUpperCase())}`,
      summary: doc.summary,
      ...(doc.description ? { description: doc.description } : {}),
      security: doc.open ? [] : [{}, { clusterSecret: [] }],
      ...(parameters.length > 0 ? { parameters } : {}),
      ...(schema.body
        ? { requestBody: { required: !doc.optionalBody, content: { 'application/json': { schema: doc.bodyAlso ? { allOf: [schema.body, doc.bodyAlso] } : schema.body } } } }
        : {}),
      responses,
    };
    const path = route.url.replace(/:(\w+)/g, '{$1}');
    (paths[path] ??= {})[route.method.toLowerCase()] = operation;
  }
  const unused = Object.keys(ROUTES).filter((k) => !seen.has(k));
  if (unused.length > 0) throw new Error(`ROUTES in server/openapi.ts describes routes the API does not have: ${unused.join(', ')}`);
  return {
    openapi: '3.1.0',
    info: {
      title: 'Sluice control API',
      version: '1',
      description:
        'HTTP/JSON on the node’s Unix socket `$SLUICE_DIR/daemon.sock` (0600: whoever can open it administers the node) and, with `--listen`, on TCP, where every route but the probes and /metrics needs `Authorization: Bearer <cluster secret>` (HTTPS with `--tls-cert`). Every error answer is the Error body with the status of its code. Generated from the route schemas by `npm run docs:api`; the prose is docs/control-api.md.',
    },
    servers: [
      { url: 'http://localhost', description: 'the Unix socket: curl --unix-socket "$SLUICE_DIR/daemon.sock" http://localhost/v1/status' },
      { url: '{scheme}://{listen}', description: 'the TCP listener (--listen)', variables: { scheme: { enum: ['http', 'https'], default: 'http' }, listen: { default: '127.0.0.1:7700', description: '--listen HOST:PORT' } } },
    ],
    paths,
    components: {
      schemas: COMPONENT_SCHEMAS,
      responses: Object.fromEntries(Object.entries(ERRORS).map(([status, description]) => [`E${status}`, json(ref('Error'), description)])),
      securitySchemes: { clusterSecret: { type: 'http', scheme: 'bearer', description: 'the cluster secret (--secret-file, SLUICE_SECRET); needed over TCP only' } },
    },
  };
}

/** The document as the committed file holds it. */
export async function openApiText(): Promise<string> {
  return `${JSON.stringify(openApiDocument(await collectRoutes()), null, 2)}\n`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const target = process.argv[2];
  if (!target) {
    process.stderr.write('usage: node dist/server/openapi.js FILE   (npm run docs:api writes docs/control-api.openapi.json)\n');
    process.exit(2);
  }
  writeFileSync(target, await openApiText());
  process.stderr.write(`wrote ${target}\n`);
}
