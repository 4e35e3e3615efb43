/**
 * The control API: HTTP/JSON, served on `$SLUICE_DIR/daemon.sock` (and optionally on TCP).
 *
 * ```
 * GET    /healthz                 200 { ok: true } while the process runs
 * GET    /readyz                  200 once runs and relay are up, 503 while starting or draining
 * GET    /metrics                 Prometheus text
 * GET    /v1/status               node, version, uptime, runs, relays, peers (link state, channels, bytes),
 *                                  replicas of balance edges (streams in flight, saturated, ejected,
 *                                  ejections, routed, failed), balanced { local, remote, localShare }
 * POST   /v1/workflows            body: a workflow (JSON)        → 201 the validated workflow;
 *                                  shared with the peers, so runs of it can start at any daemon
 * GET    /v1/workflows            → [workflow]
 * GET    /v1/workflows/:name      → workflow
 * POST   /v1/runs                 body: { workflow, id?, placement?, ttlSeconds? }
 *                                  → 201 { run, token, workflow, channels, expiresAt }; a run
 *                                  placed on other nodes is shared with them, and its cross-node
 *                                  channels opened, before this answers
 * GET    /v1/runs                 → [{ run, workflow, createdAt, expiresAt, channels }]
 * GET    /v1/runs/:id             → { run, workflow, ..., channels: [{ name, from, to, path, state, relayedBytes }] }
 * DELETE /v1/runs/:id             → 204; endpoints and buffers removed
 * POST   /v1/runs/:id/bind        body: { token } → 200 { run } once the run is ready on this node
 *                                  (late binding, server/binding.ts): held up to --bind-timeout,
 *                                  then SLUICE_NOT_FOUND; SLUICE_UNAUTHORIZED for a wrong token
 * ```
 *
 * Every error answer — the routes' own and Fastify's (no such route, malformed JSON, a body over
 * the limit, a path parameter over 100 characters, a request that does not arrive in time) — is
 * `{ code: 'SLUICE_*', message, details? }` with the status of its code (`statusOf`):
 * SLUICE_INVALID and SLUICE_CONFIG 400 (a body over --max-body 413, a path parameter too long
 * 414, a content type other than JSON 415, headers too large 431), SLUICE_UNAUTHORIZED 401,
 * SLUICE_NOT_FOUND 404, SLUICE_CONFLICT 409 (a run id that is taken), SLUICE_TIMEOUT 504 (408
 * for a request that did not arrive within its time), SLUICE_UNAVAILABLE 503 with `Retry-After`
 * (the node is full, --max-runs, or stopping), anything else 500 (SLUICE_INTERNAL when not a
 * Sluice error). Request bodies are checked against the routes' JSON schemas first; a body that
 * does not match is SLUICE_INVALID naming the field.
 *
 * The HTTP servers bound what a connection may hold (`HTTP_LIMITS`): its request's headers must
 * arrive within 10 s of its first byte or of the connection (a connection that sends nothing is
 * closed as well), the whole request within 30 s; an idle keep-alive connection is closed after
 * 5 s; at most 2048 connections are open at once, newer ones are dropped. A request that has
 * arrived may be answered as late as its route needs (bind holds up to --bind-timeout), and
 * WebSocket peer links, upgraded off the --listen server, are not subject to these limits.
 * Whoever can open the control socket administers the node; it is created 0600. The optional
 * TCP listener requires the cluster secret as a bearer token (probes and metrics excepted), and
 * serves HTTPS when given a certificate and key.
 */
import { timingSafeEqual } from 'node:crypto';
import { STATUS_CODES, type Server as HttpServer } from 'node:http';
import type https from 'node:https';
import type { Socket } from 'node:net';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifySchemaValidationError, type RouteOptions } from 'fastify';
import { ConnectError, ErrorCodes, RequestError, checkName, codeOf, isErrorCode, type ErrorCode } from '../transports/index.js';
import type { Metrics } from './metrics.js';
import type { Binder } from './binding.js';
import type { Balancer } from './balance.js';
import type { Cluster } from './cluster.js';
import type { Ingress } from './paths/ingress.js';
import type { PeerLinks } from './peers.js';
import type { Run, RunRegistry } from './runs.js';
import { validateWorkflow, type Workflow } from './workflow.js';

export interface ApiContext {
  node: string;
  version: string;
  runs: RunRegistry;
  cluster: Cluster;
  peers: PeerLinks | undefined;
  /** the relay socket's ingress */
  relay: Ingress;
  /** routing of balance edges: replicas' load and health, where streams went */
  balancer?: Balancer | undefined;
  metrics: Metrics;
  workflows: Map<string, Workflow>;
  /** late binding of functions that connect before their run is known here */
  binder: Binder;
  maxBodyBytes: number;
  /** false while starting and while draining */
  ready: () => boolean;
  /**
   * When set, every request but /healthz, /readyz and /metrics must carry
   * `Authorization: Bearer <secret>` (SLUICE_UNAUTHORIZED otherwise). Set on the TCP listener,
   * which, unlike the 0600 Unix socket, anyone who can reach the port may open.
   */
  bearerSecret?: string | undefined;
  /** When set, serve HTTPS with this certificate (chain) and private key, both PEM; else HTTP. */
  https?: { cert: string; key: string } | undefined;
  /** Other limits than `HTTP_LIMITS` (tests). */
  httpLimits?: Partial<HttpLimits> | undefined;
  /** Told every route as it is registered, with its schemas (server/openapi.ts describes the API from them). */
  onRoute?: ((route: RouteOptions) => void) | undefined;
}

/** The control API's server: HTTP, or HTTPS when the context has a certificate. */
export type ApiServer = FastifyInstance<HttpServer | https.Server>;

const OPEN_ROUTES = new Set(['/healthz', '/readyz', '/metrics']);

/** The HTTP status of each code the API answers with; codes not listed are 500. */
const statusOf: Partial<Record<ErrorCode, number>> = {
  [ErrorCodes.INVALID]: 400,
  [ErrorCodes.CONFIG]: 400,
  [ErrorCodes.UNAUTHORIZED]: 401,
  [ErrorCodes.NOT_FOUND]: 404,
  [ErrorCodes.CONFLICT]: 409,
  [ErrorCodes.TIMEOUT]: 504,
  [ErrorCodes.UNAVAILABLE]: 503,
  [ErrorCodes.INTERNAL]: 500,
};

/** `Retry-After` of a 503: a full node frees runs as they end, a stopping one is replaced, s. */
const RETRY_AFTER_SECONDS = 5;

/** What a connection to the control API may hold; see the file comment. */
export interface HttpLimits {
  /** from a request's first byte (or the connection's opening) until its headers are in, ms */
  headersTimeoutMs: number;
  /** from a request's first byte until all of it is in (not until it is answered), ms */
  requestTimeoutMs: number;
  /** how long a connection may stay open, idle, after an answer, ms */
  keepAliveTimeoutMs: number;
  /** how often connections are checked against the two timeouts above, ms */
  checkIntervalMs: number;
  /** open connections at once, peer links included; newer ones are closed at once */
  maxConnections: number;
}

export const HTTP_LIMITS: HttpLimits = { headersTimeoutMs: 10_000, requestTimeoutMs: 30_000, keepAliveTimeoutMs: 5_000, checkIntervalMs: 1_000, maxConnections: 2048 };

/** Longest path parameter (a run or workflow name), characters; a longer one is answered 414. */
export const MAX_PARAM_LENGTH = 100;

/** `{ code, message, details? }` and its status. */
interface ErrorAnswer {
  status: number;
  body: { code: ErrorCode; message: string; details?: unknown };
}

function answer(code: ErrorCode, message: string, status = statusOf[code] ?? 500, details?: unknown): ErrorAnswer {
  return { status, body: details === undefined ? { code, message } : { code, message, details } };
}

/** A URL or value shown in a message, cut short: a 10 KB path must not come back whole. */
function shown(text: string): string {
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text);
}

/** One schema mismatch, said with the field it is about (Ajv errors, with `verbose`). */
function describeMismatch(error: FastifySchemaValidationError, dataVar: string): string {
  const where = dataVar === 'body' ? 'the body' : dataVar;
  const field = error.instancePath.replace(/^\//, '').replaceAll('/', '.');
  const at = field === '' ? where : `field "${field}" of ${where}`;
  const params = error.params as Record<string, unknown>;
  switch (error.keyword) {
    case 'required':
      return `${at} needs the field "${String(params.missingProperty)}"`;
    case 'additionalProperties': {
      const allowed = Object.keys((error as { parentSchema?: { properties?: object } }).parentSchema?.properties ?? {});
      return `${at} has an unknown field "${String(params.additionalProperty)}"${allowed.length > 0 ? `; allowed: ${allowed.join(', ')}` : ''}`;
    }
    case 'type':
      return `${at} must be ${params.type === 'object' ? 'a JSON object' : `of type ${String(params.type)}`}`;
    default:
      return `${at} ${error.message ?? 'does not match the schema'}`;
  }
}

/** Fastify's own errors, said as the API says its errors. */
function frameworkAnswer(err: FastifyError, maxBodyBytes: number): ErrorAnswer | undefined {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return answer(ErrorCodes.INVALID, `request body over the limit of ${maxBodyBytes} bytes (--max-body)`, 413);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return answer(ErrorCodes.INVALID, `${err.message}: send a JSON body with content-type: application/json`, 415);
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return answer(ErrorCodes.INVALID, `the body is not valid JSON: ${err.message}`, 400);
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return answer(ErrorCodes.INVALID, `a path parameter is longer than ${MAX_PARAM_LENGTH} characters: names are at most 63`, 414);
    case 'FST_ERR_BAD_URL':
      return answer(ErrorCodes.INVALID, 'the URL has a malformed percent-encoded component', 400);
    default:
      return undefined;
  }
}

/** Sluice errors as they are; Fastify's translated; the rest is SLUICE_INTERNAL (and logged). */
function toAnswer(err: FastifyError, maxBodyBytes: number): ErrorAnswer {
  const code = codeOf(err);
  if (isErrorCode(code)) return answer(code, err.message, undefined, (err as { details?: unknown }).details || undefined);
  if (err.validation) return answer(ErrorCodes.INVALID, err.message, 400);
  const known = frameworkAnswer(err, maxBodyBytes);
  if (known) return known;
  if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) return answer(ErrorCodes.INVALID, err.message, err.statusCode);
  return answer(ErrorCodes.INTERNAL, 'internal error: the daemon logged it');
}

/** Reply with an error answer: the body, its status, and `Retry-After` where trying again later helps. */
function sendAnswer(reply: FastifyReply, { status, body }: ErrorAnswer, metrics: Metrics): void {
  metrics.errors.inc({ code: body.code });
  if (status === 503 || status === 429) void reply.header('retry-after', String(RETRY_AFTER_SECONDS));
  void reply.status(status).send(body);
}

/** Errors before a request exists for Fastify (a timeout, a malformed request), written raw. */
function clientErrorAnswer(err: NodeJS.ErrnoException, limits: HttpLimits): ErrorAnswer {
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    return answer(ErrorCodes.TIMEOUT, `the request did not arrive in time: its headers must arrive within ${limits.headersTimeoutMs} ms, all of it within ${limits.requestTimeoutMs} ms`, 408);
  }
  if (err.code === 'HPE_HEADER_OVERFLOW') return answer(ErrorCodes.INVALID, 'the request headers are too large', 431);
  return answer(ErrorCodes.INVALID, 'malformed HTTP request', 400);
}

/** JSON schemas of the request bodies; the handlers check the rest (names, references, ranges). */
const SCHEMAS = {
  workflow: { type: 'object' },
  run: {
    type: 'object',
    required: ['workflow'],
    additionalProperties: false,
    properties: {
      workflow: { type: 'string' },
      id: { type: 'string' },
      placement: { type: 'object', additionalProperties: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' } }] } },
      ttlSeconds: { type: 'integer' },
    },
  },
  bind: { type: 'object', additionalProperties: false, properties: { token: { type: 'string' } } },
} as const;

function describeRun(run: Run, detailed: boolean): Record<string, unknown> {
  const summary = {
    run: run.id,
    workflow: run.workflow.name,
    createdAt: new Date(run.createdAt).toISOString(),
    expiresAt: new Date(run.expiresAt).toISOString(),
    channels: detailed ? [...run.channels.values()] : run.channels.size,
  };
  return detailed ? { ...summary, steps: run.manifest.steps } : summary;
}

/** Where this node's balanced streams went: counts and the local share (null before the first). */
function balanced(balancer: Balancer | undefined): { local: number; remote: number; localShare: number | null } {
  const { local, remote } = balancer?.shares ?? { local: 0, remote: 0 };
  return { local, remote, localShare: local + remote === 0 ? null : local / (local + remote) };
}

export function buildApi(ctx: ApiContext): ApiServer {
  const limits = { ...HTTP_LIMITS, ...ctx.httpLimits };
  // Node's own: connectionsCheckingInterval and headersTimeout are read when the server is created
  const http = { headersTimeout: limits.headersTimeoutMs, requestTimeout: limits.requestTimeoutMs, connectionsCheckingInterval: limits.checkIntervalMs };
  let closing = false;
  const options = {
    logger: false,
    bodyLimit: ctx.maxBodyBytes,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    // our own 503 below, said as every other error
    return503OnClosing: false,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    // bodies are what the client sent: no field dropped, no type changed; `verbose` gives the
    // schema to the messages (the fields allowed)
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, verbose: true } },
    schemaErrorFormatter: (errors: FastifySchemaValidationError[], dataVar: string) => new RequestError(ErrorCodes.INVALID, describeMismatch(errors[0]!, dataVar)),
    frameworkErrors: (err: FastifyError, _request: FastifyRequest, reply: FastifyReply) => sendAnswer(reply, toAnswer(err, ctx.maxBodyBytes), ctx.metrics),
    clientErrorHandler: (err: NodeJS.ErrnoException, socket: Socket) => {
      // reset by the client: nobody to tell
      if (err.code === 'ECONNRESET' || socket.destroyed) return;
      const { status, body } = clientErrorAnswer(err, limits);
      ctx.metrics.errors.inc({ code: body.code });
      const text = JSON.stringify(body);
      if (socket.writable) socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Length: ${Buffer.byteLength(text)}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${text}`);
      socket.destroy();
    },
  };
  const app: ApiServer = ctx.https ? Fastify({ ...options, https: { ...ctx.https, ...http } }) : Fastify({ ...options, http });
  app.server.maxConnections = limits.maxConnections;
  const started = Date.now();

  app.setErrorHandler((err: FastifyError, request, reply) => {
    const result = toAnswer(err, ctx.maxBodyBytes);
    if (result.body.code === ErrorCodes.INTERNAL) request.log.error({ err }, 'unexpected error');
    sendAnswer(reply, result, ctx.metrics);
  });
  app.setNotFoundHandler((request, reply) => {
    sendAnswer(reply, answer(ErrorCodes.NOT_FOUND, `no route ${request.method} ${shown(request.url.split('?')[0]!)}: the control API is described in docs/control-api.md`), ctx.metrics);
  });
  app.addHook('preClose', async () => {
    closing = true;
  });
  app.addHook('onRequest', async (_request, reply) => {
    if (!closing) return;
    void reply.header('connection', 'close');
    throw new ConnectError(ErrorCodes.UNAVAILABLE, `node ${ctx.node} is closing its control API`);
  });
  if (ctx.bearerSecret !== undefined) {
    const expected = Buffer.from(`Bearer ${ctx.bearerSecret}`);
    app.addHook('onRequest', async (request) => {
      if (OPEN_ROUTES.has(request.url.split('?')[0]!)) return;
      const given = Buffer.from(request.headers.authorization ?? '');
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
        throw new RequestError(ErrorCodes.UNAUTHORIZED, 'the TCP control API needs "Authorization: Bearer <cluster secret>"');
      }
    });
  }
  if (ctx.onRoute) app.addHook('onRoute', ctx.onRoute);
  app.addHook('onResponse', async (request, reply) => {
    ctx.metrics.requests.inc({ route: request.routeOptions.url ?? 'unknown', status: String(reply.statusCode) });
  });

  app.get('/healthz', async () => ({ ok: true }));
  app.get('/readyz', async (_request, reply) => (ctx.ready() ? { ready: true } : reply.status(503).send({ ready: false })));
  app.get('/metrics', async (_request, reply) => {
    void reply.header('content-type', ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
  app.get('/v1/status', async () => ({
    node: ctx.node,
    version: ctx.version,
    uptimeSeconds: Math.round((Date.now() - started) / 1000),
    ready: ctx.ready(),
    workflows: ctx.workflows.size,
    runs: ctx.runs.list().map((r) => describeRun(r, true)),
    relays: ctx.relay.activeChannels,
    peers: ctx.peers?.status() ?? [],
    replicas: ctx.balancer?.status() ?? [],
    balanced: balanced(ctx.balancer),
  }));

  app.post('/v1/workflows', { schema: { body: SCHEMAS.workflow } }, async (request, reply) => {
    const workflow = validateWorkflow(request.body);
    await ctx.cluster.applyWorkflow(workflow);
    return reply.status(201).send(workflow);
  });
  app.get('/v1/workflows', async () => [...ctx.workflows.values()]);
  app.get<{ Params: { name: string } }>('/v1/workflows/:name', async (request) => {
    const found = ctx.workflows.get(request.params.name);
    if (!found) throw new RequestError(ErrorCodes.NOT_FOUND, `no workflow "${request.params.name}": apply it first (sluice workflow apply FILE)`);
    return found;
  });

  app.post<{ Body: { workflow: string; id?: string; placement?: Record<string, string | string[]>; ttlSeconds?: number } }>('/v1/runs', { schema: { body: SCHEMAS.run } }, async (request, reply) => {
    const body = request.body;
    const workflow = ctx.workflows.get(body.workflow);
    if (!workflow) throw new RequestError(ErrorCodes.NOT_FOUND, `no workflow "${body.workflow}": apply it first (sluice workflow apply FILE)`);
    const run = await ctx.cluster.createRun({
      workflow,
      ...(body.id !== undefined ? { id: body.id } : {}),
      ...(body.placement !== undefined ? { placement: body.placement } : {}),
      ...(body.ttlSeconds !== undefined ? { ttlSeconds: body.ttlSeconds } : {}),
    });
    return reply.status(201).send({ run: run.id, token: run.token, workflow: workflow.name, channels: run.manifest.channels.length, expiresAt: new Date(run.expiresAt).toISOString() });
  });
  app.get('/v1/runs', async () => ctx.runs.list().map((r) => describeRun(r, false)));
  app.get<{ Params: { id: string } }>('/v1/runs/:id', async (request) => describeRun(ctx.runs.get(request.params.id), true));
  app.post<{ Params: { id: string }; Body: { token?: string } | undefined }>('/v1/runs/:id/bind', { schema: { body: SCHEMAS.bind } }, async (request) => {
    const id = checkName('run', request.params.id);
    const token = request.body?.token;
    // a client that hangs up while held frees its place
    const gone = new AbortController();
    const onClose = (): void => gone.abort();
    request.raw.socket.once('close', onClose);
    try {
      const run = await ctx.binder.bind(id, token, gone.signal);
      return { run: run.id };
    } finally {
      request.raw.socket.off('close', onClose);
    }
  });
  app.delete<{ Params: { id: string } }>('/v1/runs/:id', async (request, reply) => {
    await ctx.cluster.deleteRun(request.params.id);
    return reply.status(204).send();
  });
  return app;
}
