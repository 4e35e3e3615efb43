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
 * Errors: `{ code, message, details? }` with the status of the code (SLUICE_INVALID 400,
 * SLUICE_UNAUTHORIZED 401, SLUICE_NOT_FOUND 404, bodies over the limit 413, others 500).
 * Whoever can open the control socket administers the node; it is created 0600. The optional
 * TCP listener requires the cluster secret as a bearer token (probes and metrics excepted), and
 * serves HTTPS when given a certificate and key.
 */
import { timingSafeEqual } from 'node:crypto';
import type http from 'node:http';
import type https from 'node:https';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { ErrorCodes, RequestError, checkName, isErrorCode } from '../transports/index.js';
import type { Metrics } from './metrics.js';
import type { Binder } from './binding.js';
import type { Balancer } from './balance.js';
import type { Cluster } from './cluster.js';
import type { PeerLinks } from './peers.js';
import type { Relay } from './relay.js';
import type { Run, RunRegistry } from './runs.js';
import { validateWorkflow, type Workflow } from './workflow.js';

export interface ApiContext {
  node: string;
  version: string;
  runs: RunRegistry;
  cluster: Cluster;
  peers: PeerLinks | undefined;
  relay: Relay;
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
}

/** The control API's server: HTTP, or HTTPS when the context has a certificate. */
export type ApiServer = FastifyInstance<http.Server | https.Server>;

const OPEN_ROUTES = new Set(['/healthz', '/readyz', '/metrics']);

const statusOf: Partial<Record<string, number>> = {
  [ErrorCodes.INVALID]: 400,
  [ErrorCodes.CONFIG]: 400,
  [ErrorCodes.UNAUTHORIZED]: 401,
  [ErrorCodes.NOT_FOUND]: 404,
  [ErrorCodes.TIMEOUT]: 504,
  [ErrorCodes.UNAVAILABLE]: 503,
};

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
  const options = {
    logger: false,
    bodyLimit: ctx.maxBodyBytes,
    return503OnClosing: true,
    // errors Fastify meets before routing (a malformed URL) answer with a stable code too
    frameworkErrors: (err: FastifyError, _request: FastifyRequest, reply: FastifyReply) => {
      ctx.metrics.errors.inc({ code: ErrorCodes.INVALID });
      void reply.status(400).send({ code: ErrorCodes.INVALID, message: err.message });
    },
  } as const;
  const app: ApiServer = ctx.https ? Fastify({ ...options, https: ctx.https }) : Fastify(options);
  const started = Date.now();

  app.setErrorHandler((err: FastifyError, request, reply) => {
    const code = (err as { code?: unknown }).code;
    let status: number;
    let body: { code: string; message: string; details?: unknown };
    if (isErrorCode(code)) {
      status = statusOf[code] ?? 500;
      body = { code, message: err.message, ...((err as { details?: unknown }).details ? { details: (err as { details?: unknown }).details } : {}) };
    } else if (code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      status = 413;
      body = { code: ErrorCodes.INVALID, message: `request body over the limit of ${ctx.maxBodyBytes} bytes (--max-body)` };
    } else if (typeof err.statusCode === 'number' && err.statusCode < 500) {
      status = err.statusCode;
      body = { code: ErrorCodes.INVALID, message: err.message };
    } else {
      status = 500;
      body = { code: 'SLUICE_INTERNAL', message: 'internal error' };
      request.log.error({ err }, 'unexpected error');
    }
    ctx.metrics.errors.inc({ code: body.code });
    void reply.status(status).send(body);
  });
  // an unknown route answers like every other error, with a stable code (Fastify's own 404 has none)
  app.setNotFoundHandler((request, reply) => {
    ctx.metrics.errors.inc({ code: ErrorCodes.NOT_FOUND });
    void reply.status(404).send({ code: ErrorCodes.NOT_FOUND, message: `no route ${request.method} ${request.url.split('?')[0]}` });
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

  app.post('/v1/workflows', async (request, reply) => {
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

  app.post<{ Body: { workflow?: unknown; id?: string; placement?: Record<string, string | string[]>; ttlSeconds?: number } }>('/v1/runs', async (request, reply) => {
    const body = request.body;
    if (typeof body !== 'object' || body === null || typeof body.workflow !== 'string') {
      throw new RequestError(ErrorCodes.INVALID, 'body must be a JSON object with "workflow": the name of an applied workflow');
    }
    const unknownKeys = Object.keys(body).filter((k) => !['workflow', 'id', 'placement', 'ttlSeconds'].includes(k));
    if (unknownKeys.length > 0) throw new RequestError(ErrorCodes.INVALID, `unknown field(s) ${unknownKeys.join(', ')}; allowed: workflow, id, placement, ttlSeconds`);
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
  app.post<{ Params: { id: string }; Body: { token?: unknown } }>('/v1/runs/:id/bind', async (request) => {
    const id = checkName('run', request.params.id);
    const token = typeof request.body === 'object' && request.body !== null ? request.body.token : undefined;
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
