/**
 * The control API's HTTP servers bound what connections hold (issue 16, defect 7): slow or silent
 * connections are closed within the header timeout and their file descriptors come back, while
 * normal requests, a bind held past the request timeout, and a WebSocket upgraded off the server
 * (how peer links arrive on --listen) keep working. Real sockets, short limits.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { control } from '../../client/control.js';
import { buildApi, type ApiServer, type HttpLimits } from '../../server/api.js';
import { createMetrics } from '../../server/metrics.js';
import { RunRegistry } from '../../server/runs.js';
import type { Workflow } from '../../server/workflow.js';
import { DAEMON_SOCKET } from '../../transports/index.js';
import { wireOneNode } from '../helpers/one-node.js';

const log = pino({ level: 'silent' });
const limits: HttpLimits = { headersTimeoutMs: 600, requestTimeoutMs: 1_000, keepAliveTimeoutMs: 400, checkIntervalMs: 100, maxConnections: 700 };
/** longer than the request timeout: a held bind must outlive it */
const BIND_TIMEOUT_MS = 2_000;

let dir: string;
let runs: RunRegistry;
let app: ApiServer;
const socketPath = (): string => join(dir, DAEMON_SOCKET);
const openFds = (): number => readdirSync('/proc/self/fd').length;
const connections = (): Promise<number> => new Promise((resolve, reject) => app.server.getConnections((err, n) => (err ? reject(err) : resolve(n))));

function api(): ApiServer {
  const metrics = createMetrics({ runs });
  const workflows = new Map<string, Workflow>();
  const { cluster, relay, binder } = wireOneNode({ dir, runs, log, metrics, workflows, bindTimeoutMs: BIND_TIMEOUT_MS });
  return buildApi({ node: 'node-a', version: 'test', runs, cluster, peers: undefined, relay, metrics, workflows, binder, maxBodyBytes: 16 * 1024, ready: () => true, httpLimits: limits });
}

/** Open `n` connections to the control socket, each sending `first` (or nothing), and record when each closes. */
async function openMany(n: number, first: string | undefined): Promise<{ sockets: net.Socket[]; closed: Promise<number[]>; answers: string[] }> {
  const sockets: net.Socket[] = [];
  const answers: string[] = [];
  const closings: Promise<number>[] = [];
  const started = Date.now();
  for (let i = 0; i < n; i++) {
    const socket = net.connect(socketPath());
    let answer = '';
    socket.on('data', (c: Buffer) => (answer += c.toString()));
    socket.on('error', () => undefined);
    closings.push(new Promise((resolve) => socket.once('close', () => {
      answers.push(answer);
      resolve(Date.now() - started);
    })));
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    if (first !== undefined) socket.write(first);
    sockets.push(socket);
  }
  return { sockets, closed: Promise.all(closings), answers };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sluice-limits-'));
  runs = new RunRegistry({ dir, node: 'node-a', runTtlSeconds: 3600, maxRuns: 5, log });
  await runs.start();
  app = api();
  await app.listen({ path: socketPath() });
});
afterAll(async () => {
  await app.close();
  await runs.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('control API connection limits', () => {
  it('closes slow-header and silent connections within the header timeout, gives their descriptors back, and answers a normal request meanwhile', async () => {
    const baseline = openFds();
    // a partial request line and headers, never finished; and connections that send nothing
    const slow = await openMany(250, 'POST /v1/runs HTTP/1.1\r\nHost: sluice\r\nContent-Type: appl');
    const silent = await openMany(250, undefined);
    expect(await connections()).toBe(500);
    const { status, body } = await control<{ ok: boolean }>(dir, 'GET', '/healthz');
    expect([status, body]).toEqual([200, { ok: true }]);
    const [slowClosed, silentClosed] = await Promise.all([slow.closed, silent.closed]);
    // the header timeout, one check interval, and room for a loaded machine
    const bound = limits.headersTimeoutMs + limits.checkIntervalMs + 1_500;
    expect(Math.max(...slowClosed, ...silentClosed)).toBeLessThan(bound);
    expect(await connections()).toBe(0);
    const timedOut = JSON.parse(slow.answers[0]!.split('\r\n\r\n')[1]!) as { code: string; message: string };
    expect(slow.answers[0]).toMatch(/^HTTP\/1\.1 408 /);
    expect(timedOut).toMatchObject({ code: 'SLUICE_TIMEOUT', message: expect.stringMatching(/did not arrive in time/) });
    for (const s of [...slow.sockets, ...silent.sockets]) s.destroy();
    await sleep(50);
    expect(openFds()).toBeLessThanOrEqual(baseline + 5);
  });

  it('closes a connection whose body stops coming within the request timeout', async () => {
    const { closed, answers } = await openMany(1, 'POST /v1/workflows HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"name":');
    const [after] = await closed;
    expect(after).toBeLessThan(limits.requestTimeoutMs + limits.checkIntervalMs + 1_500);
    expect(answers[0]).toMatch(/^HTTP\/1\.1 408 [^]*"code":"SLUICE_TIMEOUT"/);
  });

  it('closes an idle keep-alive connection after the keep-alive timeout', async () => {
    const { closed, answers } = await openMany(1, 'GET /healthz HTTP/1.1\r\nHost: sluice\r\n\r\n');
    const [after] = await closed;
    expect(answers[0]).toMatch(/^HTTP\/1\.1 200 /);
    expect(after).toBeGreaterThanOrEqual(limits.keepAliveTimeoutMs - 50);
    // Node adds a second to the keep-alive timeout before it closes
    expect(after).toBeLessThan(limits.keepAliveTimeoutMs + 1_000 + 1_500);
  });

  it('answers a bind held past the request timeout (the request had arrived whole)', async () => {
    const started = Date.now();
    const held = await control(dir, 'POST', '/v1/runs/late-run/bind', { token: 'Tok3n_for-a-shared-run-012345678' }).catch((err: { code: string; message: string }) => err);
    expect(Date.now() - started).toBeGreaterThanOrEqual(BIND_TIMEOUT_MS - 50);
    expect(held).toMatchObject({ code: 'SLUICE_NOT_FOUND', message: expect.stringContaining(`waited ${BIND_TIMEOUT_MS} ms`) });
  });

  it('drops connections beyond its bound, and serves again once they are gone', async () => {
    const many = await openMany(limits.maxConnections + 20, undefined);
    // the ones over the bound are closed at once, long before the header timeout
    const early = await Promise.race([many.closed, sleep(300).then(() => undefined)]);
    expect(early).toBeUndefined();
    expect(await connections()).toBe(limits.maxConnections);
    for (const s of many.sockets) s.destroy();
    await many.closed;
    expect((await control(dir, 'GET', '/healthz')).status).toBe(200);
  });
});

describe('WebSocket upgrades on the control API server (how peer links arrive on --listen)', () => {
  let tcp: ApiServer;
  let wss: WebSocketServer;
  beforeAll(async () => {
    tcp = api();
    wss = new WebSocketServer({ noServer: true });
    tcp.server.on('upgrade', (request, socket, head) => wss.handleUpgrade(request, socket, head, (ws) => ws.on('message', (m) => ws.send(m))));
    await tcp.listen({ host: '127.0.0.1', port: 0 });
  });
  afterAll(async () => {
    wss.close();
    await tcp.close();
  });

  it('are not cut by the header, request or keep-alive timeouts', async () => {
    const { port } = tcp.server.address() as net.AddressInfo;
    const ws = new WebSocket(`ws://127.0.0.1:${port}/peer`);
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    let closed = false;
    ws.once('close', () => (closed = true));
    await sleep(limits.requestTimeoutMs + limits.headersTimeoutMs + 4 * limits.checkIntervalMs);
    expect(closed).toBe(false);
    const echoed = new Promise<string>((resolve) => ws.once('message', (m: Buffer) => resolve(m.toString())));
    ws.send('still here');
    expect(await echoed).toBe('still here');
    ws.close();
  });
});
