/**
 * Peer links over TLS (wss://), end to end on loopback: real `sluice daemon` processes with
 * certificates made at test time (test/helpers/certs.ts, pure Node: a test CA and a certificate
 * for 127.0.0.1 signed by it, and an unrelated CA), all with the same cluster secret, so TLS is
 * the only thing that differs.
 *
 *   a, b   --tls-cert/--tls-key (the 127.0.0.1 certificate), --tls-ca the test CA, each listing
 *          the other as wss://
 *   m      no TLS (a node not moved to TLS yet): a lists it as ws://, it lists a as ws://
 *   x      --tls-ca the unrelated CA, lists a as wss://; no --listen
 *   y      no --tls-ca (Node's default CAs), lists a as wss://; no --listen
 *
 * What is asserted: TLS daemons link over wss:// and carry runs both ways byte-exact; their
 * --listen port speaks only TLS (control API over HTTPS, the HMAC challenge inside TLS); a
 * daemon that cannot verify a peer's certificate never links, its status and log say TLS
 * verification failed and which file to fix, and a run placed over that link fails typed and
 * leaves nothing; a TLS node and a plain one still link over the plain one's ws:// URL.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { PEER_LINK_PATH } from '../../server/peers.js';
import { issue } from '../helpers/certs.js';
import { attemptRun, carryAcross, freePorts, logged, peer, peersOf, failureOf, runCount, startNodes, stopNodes, waitFor, waitForLink, type LinkedNode } from '../helpers/peers.js';

const MiB = 1024 * 1024;
const SECRET = 'peer-link-tls-test-secret-0123456789';

const files = mkdtempSync(join(tmpdir(), 'sluice-peer-tls-'));
const path = (name: string): string => join(files, name);
let nodes = new Map<string, LinkedNode>();
const node = (name: string): LinkedNode => nodes.get(name)!;
const ca = issue({ name: 'Sluice test CA', ca: true });

beforeAll(async () => {
  const server = issue({ name: 'sluice-node', issuer: ca, altNames: ['127.0.0.1'] });
  const unrelated = issue({ name: 'Unrelated CA', ca: true });
  writeFileSync(path('ca.pem'), ca.cert);
  writeFileSync(path('unrelated-ca.pem'), unrelated.cert);
  writeFileSync(path('node.pem'), server.cert);
  writeFileSync(path('node.key'), server.key, { mode: 0o600 });
  writeFileSync(path('cluster.secret'), `${SECRET}\n`, { mode: 0o600 });

  const [pa, pb, pm] = (await freePorts(3)) as [number, number, number];
  const common = ['--secret-file', path('cluster.secret'), '--peer-heartbeat', '200ms', '--attach-timeout', '10s'];
  const tls = ['--tls-cert', path('node.pem'), '--tls-key', path('node.key'), '--tls-ca', path('ca.pem')];
  const listen = (port: number): string[] => ['--listen', `127.0.0.1:${port}`];
  nodes = await startNodes([
    { name: 'a', port: pa, args: [...common, ...listen(pa), ...tls, '--peers', `b=wss://127.0.0.1:${pb},m=ws://127.0.0.1:${pm}`] },
    { name: 'b', port: pb, args: [...common, ...listen(pb), ...tls, '--peers', `a=wss://127.0.0.1:${pa}`] },
    { name: 'm', port: pm, args: [...common, ...listen(pm), '--peers', `a=ws://127.0.0.1:${pa}`] },
    { name: 'x', port: 0, args: [...common, '--tls-ca', path('unrelated-ca.pem'), '--peers', `a=wss://127.0.0.1:${pa}`] },
    { name: 'y', port: 0, args: [...common, '--peers', `a=wss://127.0.0.1:${pa}`] },
  ]);
}, 60_000);

afterAll(async () => {
  const deaths = await stopNodes(nodes);
  rmSync(files, { recursive: true, force: true });
  expect(deaths).toEqual([]);
});

/** GET `url` with Node's http or https module; the status, or the error's code. */
function get(url: string, options: https.RequestOptions = {}): Promise<{ status?: number; body?: string; error?: string }> {
  const client = url.startsWith('https:') ? https : http;
  return new Promise((resolve) => {
    const request = client.get(url, options, (response) => {
      let body = '';
      response.on('data', (c: Buffer) => (body += c.toString()));
      response.on('end', () => resolve({ status: response.statusCode!, body }));
    });
    request.on('error', (err: Error & { code?: string }) => resolve({ error: err.code ?? err.message }));
  });
}

/** The first message a WebSocket client at `url` hears, or the error that stopped it. */
function firstMessage(url: string, options: { ca?: string } = {}): Promise<{ bytes?: Buffer; error?: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, ...options });
    ws.once('message', (data: Buffer) => {
      resolve({ bytes: data });
      ws.terminate();
    });
    ws.once('error', (err: Error & { code?: string }) => resolve({ error: err.code ?? err.message }));
  });
}

describe('peer links over TLS', () => {
  it('links two daemons over wss:// (up at both ends) and carries a run both ways, byte-exact', async () => {
    await waitForLink(node('a'), node('b'));
    expect(await peer(node('a'), 'b')).toMatchObject({ url: expect.stringMatching(/^wss:/), state: 'up', lastError: null });
    expect(await peer(node('b'), 'a')).toMatchObject({ url: expect.stringMatching(/^wss:/), state: 'up', lastError: null });
    await carryAcross(node('a'), node('b'), 8 * MiB, 21);
    await carryAcross(node('b'), node('a'), 4 * MiB, 22);
  }, 30_000);

  it('serves the --listen port over TLS only: HTTPS for the control API, the secret challenge inside TLS, nothing in the clear', async () => {
    const a = node('a');
    expect(await get(`https://127.0.0.1:${a.port}/healthz`, { ca: ca.cert })).toEqual({ status: 200, body: '{"ok":true}' });
    // the certificate is checked: without the CA, Node refuses it
    expect(await get(`https://127.0.0.1:${a.port}/healthz`)).toEqual({ error: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' });
    // plain HTTP gets no answer, and a says what is wrong
    expect((await get(`http://127.0.0.1:${a.port}/healthz`)).status).toBeUndefined();
    await waitFor('a to log plain HTTP on its TLS port', async () => (logged(a, 'plain HTTP on the TLS port').length > 0 ? true : undefined), 3_000);

    // the peer-link path over wss:// with the CA: the ws transport's 32-byte challenge, as without TLS
    const challenge = await firstMessage(`wss://127.0.0.1:${a.port}${PEER_LINK_PATH}`, { ca: ca.cert });
    expect(challenge.bytes?.length).toBe(32);
    expect((await firstMessage(`ws://127.0.0.1:${a.port}${PEER_LINK_PATH}`)).bytes).toBeUndefined();
  });

  it('never links a daemon whose --tls-ca does not hold the CA: status and log say TLS verification failed and name the file; a run placed there fails typed and leaves nothing', async () => {
    const a = node('a');
    const x = node('x');
    const runsBefore = { a: await runCount(a), b: await runCount(node('b')) };
    // created at x, its consumer on a: started now, it waits out the dead link while the rest is checked
    const placed = attemptRun(x, { p: 'x', c: 'a' });

    const fix = `the certificate of peer "a" does not chain to a CA in ${path('unrelated-ca.pem')} (--tls-ca): fix that file, or the peer's --tls-cert`;
    const status = await waitFor('x to record why a is not linked', async () => {
      const s = await peer(x, 'a');
      return s?.lastError ? s : undefined;
    });
    expect(status.lastError).toBe(`SLUICE_UNAUTHORIZED: TLS verification of peer "a" at ${status.url} failed: unable to verify the first certificate (UNABLE_TO_VERIFY_LEAF_SIGNATURE); ${fix}`);
    // logged as an error, with the typed error, once however often x retries
    const lines = logged(x, 'cannot link to peer', (l) => l.peer === 'a' && (l.err as { code?: string } | undefined)?.code === 'SLUICE_UNAUTHORIZED');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 50, err: { code: 'SLUICE_UNAUTHORIZED', message: expect.stringContaining(fix) } });

    // over more than a second of retries, the link never comes up, and a never admits x
    for (const until = Date.now() + 1_500; Date.now() < until; await sleep(50)) {
      expect((await peer(x, 'a'))!.state).toBe('connecting');
    }
    expect((await peersOf(a)).map((p) => p.node)).not.toContain('x');

    const outcome = await placed;
    // at once if x's dial to a had failed already (a known down), else after waiting 10 s for the link
    expect(failureOf(outcome)).toMatchObject({
      code: 'SLUICE_UNAVAILABLE',
      message: expect.stringMatching(/(no link to peer "a" \(connecting: |node "a" is down \(never linked, dialling since \S+: )SLUICE_UNAUTHORIZED: TLS verification of peer "a"/),
    });
    // as with a wrong secret (peer-link-auth.test.ts): a, never sent the run, is not waited for again to delete it
    expect(outcome.after).toBeLessThan(11_000);
    expect(await runCount(x)).toBe(0);
    expect(await runCount(a)).toBe(runsBefore.a);
    expect(await runCount(node('b'))).toBe(runsBefore.b);
    expect(await peer(a, 'b')).toMatchObject({ state: 'up' });
  }, 60_000);

  it("never links a daemon without --tls-ca to a peer whose CA is not one of Node's, and says to give --tls-ca", async () => {
    const y = node('y');
    const status = await waitFor('y to record why a is not linked', async () => {
      const s = await peer(y, 'a');
      return s?.lastError ? s : undefined;
    });
    expect(status.lastError).toMatch(/^SLUICE_UNAUTHORIZED: TLS verification of peer "a" at wss:\/\/127\.0\.0\.1:\d+ failed: .*; the certificate of peer "a" does not chain to one of Node's default CAs: give the CA that signed it with --tls-ca FILE$/);
    for (const until = Date.now() + 1_000; Date.now() < until; await sleep(50)) {
      expect((await peer(y, 'a'))!.state).toBe('connecting');
    }
    expect((await peersOf(node('a'))).map((p) => p.node)).not.toContain('y');
  });

  it('links a TLS node with one not on TLS yet over the plain ws:// URL (a cluster moving to TLS), and carries a run', async () => {
    await waitForLink(node('a'), node('m'));
    expect(logged(node('a'), 'this node serves TLS but dials these peers over ws://', (l) => JSON.stringify(l.peers) === '["m"]')).toHaveLength(1);
    await carryAcross(node('m'), node('a'), 2 * MiB, 23);
  }, 30_000);
});
