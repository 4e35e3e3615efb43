/**
 * Peer-link authentication, end to end on loopback: real `sluice daemon` processes linked over
 * their TCP control ports, and raw WebSocket clients knocking on the peer-link path.
 *
 *   a, b   the cluster: same secret, each listing the other
 *   x      a wrong secret, listing a and b (and listed by a, not by b)
 *   w      the right secret, but listing b's URL under the wrong node name "c"; nobody dials w,
 *          so the raw clients knock on its port
 *
 * What is asserted: only proof of the cluster secret opens a link; a client without it hears
 * nothing but the challenge before it is closed (4401, or dropped by the handshake timeout);
 * a refused link shows in status and logs, and a run placed over it fails with a typed error,
 * leaving no run behind; a link to the wrong node name is refused; other paths are not served.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, type RawData } from 'ws';
import { PEER_LINK_PATH } from '../../server/peers.js';
import { FrameType, WS_CLOSE_UNAUTHORIZED, encodeControl } from '../../transports/index.js';
import { attemptRun, carryAcross, createRun, freePorts, logged, peer, peersOf, failureOf, runCount, startNodes, stopNodes, waitFor, waitForLink, type LinkedNode } from '../helpers/peers.js';

const MiB = 1024 * 1024;
const SECRET = 'peer-link-auth-test-secret-0123456789';
const WRONG_SECRET = 'not-the-cluster-secret-9876543210';
/** the daemons' handshake timeout (peers.ts HANDSHAKE_TIMEOUT_MS) */
const HANDSHAKE_TIMEOUT_MS = 5_000;

const secrets = mkdtempSync(join(tmpdir(), 'sluice-peer-auth-'));
let nodes = new Map<string, LinkedNode>();
const node = (name: string): LinkedNode => nodes.get(name)!;

beforeAll(async () => {
  const good = join(secrets, 'cluster.secret');
  const wrong = join(secrets, 'wrong.secret');
  writeFileSync(good, `${SECRET}\n`, { mode: 0o600 });
  writeFileSync(wrong, `${WRONG_SECRET}\n`, { mode: 0o600 });
  const [pa, pb, px, pw] = (await freePorts(4)) as [number, number, number, number];
  const url = (port: number): string => `ws://127.0.0.1:${port}`;
  const specs: Array<{ name: string; port: number; secret: string; peers: string }> = [
    { name: 'a', port: pa, secret: good, peers: `b=${url(pb)},x=${url(px)}` },
    { name: 'b', port: pb, secret: good, peers: `a=${url(pa)}` },
    { name: 'x', port: px, secret: wrong, peers: `a=${url(pa)},b=${url(pb)}` },
    { name: 'w', port: pw, secret: good, peers: `c=${url(pb)}` },
  ];
  nodes = await startNodes(
    specs.map((s) => ({ ...s, args: ['--listen', `127.0.0.1:${s.port}`, '--peers', s.peers, '--secret-file', s.secret, '--peer-heartbeat', '200ms', '--attach-timeout', '10s'] })),
  );
}, 60_000);

afterAll(async () => {
  const deaths = await stopNodes(nodes);
  rmSync(secrets, { recursive: true, force: true });
  // whatever the clients sent, no daemon may crash
  expect(deaths).toEqual([]);
});

/** A raw WebSocket client on a daemon's port, recording everything it hears. */
interface Probe {
  ws: WebSocket;
  messages: Array<{ bytes: Buffer; binary: boolean }>;
  opened: Promise<void>;
  closed: Promise<{ code: number; reason: string; at: number }>;
  /** the next message not yet taken by `next`, waiting up to `timeoutMs` */
  next(timeoutMs?: number): Promise<Buffer>;
}

function probe(port: number, path = PEER_LINK_PATH): Probe {
  const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`, { perMessageDeflate: false });
  const messages: Probe['messages'] = [];
  let taken = 0;
  let wake: (() => void) | undefined;
  ws.on('message', (data: RawData, binary: boolean) => {
    messages.push({ bytes: Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data), binary });
    wake?.();
  });
  ws.on('error', () => undefined);
  const opened = new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    // a refused upgrade: "Unexpected server response: 404"
    ws.once('error', reject);
  });
  opened.catch(() => undefined);
  const closed = new Promise<{ code: number; reason: string; at: number }>((resolve) => {
    ws.once('close', (code, reason) => {
      resolve({ code, reason: reason.toString(), at: Date.now() });
      wake?.();
    });
  });
  return {
    ws,
    messages,
    opened,
    closed,
    async next(timeoutMs = 3_000) {
      const deadline = Date.now() + timeoutMs;
      while (messages.length <= taken) {
        if (ws.readyState === WebSocket.CLOSED) throw new Error('closed before the next message');
        if (Date.now() > deadline) throw new Error(`no message within ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 50);
        });
        wake = undefined;
      }
      return messages[taken++]!.bytes;
    },
  };
}

const hmac = (secret: string, label: string, a: Buffer, b: Buffer): Buffer => createHmac('sha256', secret).update(label).update(a).update(b).digest();

/** Complete the ws transport's handshake with the cluster secret: the server then proves it knows it too. */
async function authenticate(p: Probe, secret: string): Promise<void> {
  const serverNonce = await p.next();
  expect(serverNonce.length).toBe(32);
  const clientNonce = randomBytes(32);
  p.ws.send(Buffer.concat([clientNonce, hmac(secret, 'sluice-ws-client', serverNonce, clientNonce)]));
  const serverProof = await p.next();
  expect(serverProof.equals(hmac(secret, 'sluice-ws-server', clientNonce, serverNonce))).toBe(true);
}

describe('peer links on loopback', () => {
  it('links two daemons with the same secret (up at both ends) and carries a run across them, verified', async () => {
    await waitForLink(node('a'), node('b'));
    expect(await peer(node('a'), 'b')).toMatchObject({ state: 'up', lastError: null });
    expect(await peer(node('b'), 'a')).toMatchObject({ state: 'up', lastError: null });
    // producer on a, consumer on b, created at a; and back, created at b
    await carryAcross(node('a'), node('b'), 8 * MiB, 11);
    await carryAcross(node('b'), node('a'), 4 * MiB, 12);
  }, 30_000);

  it('never links a daemon with a wrong secret: both ends refuse, status and logs say why, a run placed on it fails typed and leaves nothing', async () => {
    const a = node('a');
    const x = node('x');
    const runsBefore = { a: await runCount(a), b: await runCount(node('b')) };
    // started now, it waits out the dead link while the rest is checked
    const placed = attemptRun(a, { p: 'a', c: 'x' });

    // x dialled a with a wrong proof: a logged the refusal, naming the reason
    await waitFor('a to log the refused link from x', async () => (logged(a, 'peer link refused', (l) => l.why === 'wrong secret').length > 0 ? true : undefined));
    // and a dialled x: x refused a's proof (x cannot verify it with its own secret)
    await waitFor('x to log the refused link from a', async () => (logged(x, 'peer link refused', (l) => l.why === 'wrong secret').length > 0 ? true : undefined));
    expect(a.daemon.logs()).toContain('peer link refused');
    // x's dialler was told SLUICE_UNAUTHORIZED, and logged it as an error
    await waitFor('x to log its unauthorized dial', async () =>
      logged(x, 'cannot link to peer', (l) => (l.err as { code?: string } | undefined)?.code === 'SLUICE_UNAUTHORIZED' && l.peer === 'a').length > 0 ? true : undefined,
    );

    // over more than a second of retries, neither end's link ever comes up
    const seen = new Set<string>();
    for (const until = Date.now() + 1_500; Date.now() < until; ) {
      const fromX = (await peer(x, 'a'))!;
      const fromA = (await peer(a, 'x'))!;
      seen.add(`x→a ${fromX.state}`).add(`a→x ${fromA.state}`);
      await sleep(50);
    }
    expect([...seen].sort()).toEqual(['a→x connecting', 'x→a connecting']);
    for (const [at, to] of [[x, 'a'], [a, 'x']] as const) {
      const status = (await peer(at, to))!;
      expect(status.state).toBe('connecting');
      expect(status.lastError).toMatch(/refused the connection: wrong or missing secret/);
    }
    // x dialled b too, which does not list x: refused, and not admitted as a peer
    await waitFor('b to log the refused link from x', async () => (logged(node('b'), 'peer link refused', (l) => l.why === 'wrong secret').length > 0 ? true : undefined));
    expect((await peersOf(node('b'))).map((p) => p.node)).not.toContain('x');
    expect(await peer(x, 'b')).toMatchObject({ state: 'connecting', lastError: expect.stringMatching(/wrong or missing secret/) });

    // the run placed on x fails with a typed error naming the peer and why, rather than hanging
    const outcome = await placed;
    // at once if a's dial to x had failed already (x known down), else after waiting 10 s for the link
    expect(failureOf(outcome)).toMatchObject({
      code: 'SLUICE_UNAVAILABLE',
      message: expect.stringMatching(/(no link to peer "x" \(connecting: |node "x" is down \(never linked, dialling since \S+: ).*wrong or missing secret/),
    });
    // and x, never sent the run, is not waited for again to delete it
    expect(outcome.after).toBeLessThan(11_000);
    // leaving no run behind, anywhere
    expect(await runCount(a)).toBe(runsBefore.a);
    expect(await runCount(node('b'))).toBe(runsBefore.b);
    expect(await runCount(x)).toBe(0);
    // and a daemon that does not list x refuses the placement at once
    await expect(createRun(node('b'), { p: 'b', c: 'x' })).rejects.toMatchObject({ code: 'SLUICE_INVALID', message: expect.stringMatching(/"x".*not a peer/) });
    expect(await runCount(node('b'))).toBe(runsBefore.b);
    // the good link was never disturbed
    expect(await peer(a, 'b')).toMatchObject({ state: 'up' });
  }, 60_000);

  it('refuses a dialler that knows the secret but names the wrong node, and says which node it reached', async () => {
    const w = node('w');
    const b = node('b');
    const status = await waitFor('w to record why c is not linked', async () => {
      const s = await peer(w, 'c');
      return s?.lastError ? s : undefined;
    });
    expect(status.state).toBe('connecting');
    expect(status.lastError).toMatch(/refused the link: this is node "b", not "c"/);
    await waitFor('b to log the refusal', async () =>
      logged(b, 'peer link refused', (l) => /peer "w" dialled this node as "c"/.test((l.err as { message?: string } | undefined)?.message ?? '')).length > 0 ? true : undefined,
    );
    for (const until = Date.now() + 1_000; Date.now() < until; ) {
      expect((await peer(w, 'c'))!.state).not.toBe('up');
      await sleep(50);
    }
    // b admitted w under neither name
    expect((await peersOf(b)).map((p) => p.node)).not.toContain('w');
    expect((await peersOf(b)).map((p) => p.node)).not.toContain('c');

    // the same with a raw client: the secret's proof passes, the hello naming "c" is answered with an error, then the link is cut
    const raw = probe(b.port);
    await raw.opened;
    await authenticate(raw, SECRET);
    raw.ws.send(Buffer.from(JSON.stringify({ sluice: 'peer-link', node: 'probe', to: 'c' })));
    const answer = JSON.parse((await raw.next()).toString('utf8')) as unknown;
    expect(answer).toEqual({ sluice: 'peer-link', error: 'this is node "b", not "c"' });
    await raw.closed;
    // nothing but the handshake, the refusal and at most the end-of-direction marker
    expect(raw.messages.slice(3).every((m) => m.bytes.length === 0)).toBe(true);
    expect((await peersOf(b)).map((p) => p.node)).not.toContain('probe');
  }, 30_000);

  it('closes a raw client that knows the secret but speaks mux frames instead of naming itself, serving nothing', async () => {
    const w = node('w');
    const peersBefore = await peersOf(w);
    const raw = probe(w.port);
    await raw.opened;
    await authenticate(raw, SECRET);
    raw.ws.send(encodeControl(FrameType.OPEN, 1, { endpoint: 'sluice.control', window: 65536 }));
    await raw.closed;
    // only the nonce and the server's proof: no CREDIT, no RESET, no hello
    expect(raw.messages.map((m) => m.bytes.length)).toEqual([32, 32]);
    expect((await peersOf(w)).map((p) => p.node)).toEqual(peersBefore.map((p) => p.node));
    await waitFor('w to log the refusal', async () => (logged(w, 'peer link refused', (l) => /did not start the peer-link handshake/.test((l.err as { message?: string } | undefined)?.message ?? '')).length > 0 ? true : undefined), 3_000);
  });
});

describe('a raw WebSocket client without the secret', () => {
  /** Refusals w logged for clients without a proof so far. */
  const noProofRefusals = (): number => logged(node('w'), 'peer link refused', (l) => l.why === 'no proof of the secret (not a Sluice peer?)').length;

  it('hears the 32-byte challenge, then nothing, and is dropped by the handshake timeout when it stays silent', async () => {
    const p = probe(node('w').port);
    await p.opened;
    const openedAt = Date.now();
    expect((await p.next()).length).toBe(32);
    const { code, at } = await p.closed;
    const after = at - openedAt;
    expect(after).toBeGreaterThanOrEqual(HANDSHAKE_TIMEOUT_MS - 250);
    expect(after).toBeLessThan(HANDSHAKE_TIMEOUT_MS + 2_000);
    expect(code).not.toBe(1000);
    expect(p.messages).toHaveLength(1);
    expect(p.messages[0]!.binary).toBe(true);
  }, 15_000);

  it('is closed with 4401 after a 64-byte garbage proof, hearing nothing but the challenge', async () => {
    const before = noProofRefusals();
    const wrongProofsBefore = logged(node('w'), 'peer link refused', (l) => l.why === 'wrong secret').length;
    const p = probe(node('w').port);
    await p.opened;
    expect((await p.next()).length).toBe(32);
    p.ws.send(randomBytes(64));
    const { code, reason } = await p.closed;
    expect(code).toBe(WS_CLOSE_UNAUTHORIZED);
    expect(reason).toBe('unauthorized');
    expect(p.messages.map((m) => m.bytes.length)).toEqual([32]);
    // logged as a wrong proof
    await waitFor('w to log the refusal', async () => (logged(node('w'), 'peer link refused', (l) => l.why === 'wrong secret').length > wrongProofsBefore ? true : undefined), 3_000);
    expect(noProofRefusals()).toBe(before);
  });

  it('is closed with 4401 after a well-formed Sluice OPEN frame as its first message, and gets no data back', async () => {
    const before = noProofRefusals();
    const p = probe(node('w').port);
    await p.opened;
    expect((await p.next()).length).toBe(32);
    p.ws.send(encodeControl(FrameType.OPEN, 1, { endpoint: 'sluice.control', window: 65536 }));
    const { code } = await p.closed;
    expect(code).toBe(WS_CLOSE_UNAUTHORIZED);
    expect(p.messages.map((m) => m.bytes.length)).toEqual([32]);
    await waitFor('w to log the refusal', async () => (noProofRefusals() > before ? true : undefined), 3_000);
  });

  it('is closed with 4401 after a proof made with a wrong secret, and after a text message', async () => {
    const wrong = probe(node('w').port);
    await wrong.opened;
    const serverNonce = await wrong.next();
    const clientNonce = randomBytes(32);
    wrong.ws.send(Buffer.concat([clientNonce, hmac(WRONG_SECRET, 'sluice-ws-client', serverNonce, clientNonce)]));
    expect((await wrong.closed).code).toBe(WS_CLOSE_UNAUTHORIZED);
    expect(wrong.messages.map((m) => m.bytes.length)).toEqual([32]);

    const text = probe(node('w').port);
    await text.opened;
    expect((await text.next()).length).toBe(32);
    text.ws.send(JSON.stringify({ sluice: 'peer-link', node: 'probe', to: 'b' }));
    expect((await text.closed).code).toBe(WS_CLOSE_UNAUTHORIZED);
    expect(text.messages.map((m) => m.bytes.length)).toEqual([32]);
  });

  it('cannot open a WebSocket on another path of the control port', async () => {
    for (const path of ['/v1/other', '/', `${PEER_LINK_PATH}/x`]) {
      const p = probe(node('w').port, path);
      await expect(p.opened, path).rejects.toThrow(/404/);
      await p.closed;
      expect(p.messages).toHaveLength(0);
    }
    // while the peer-link path itself still opens
    const p = probe(node('w').port);
    await p.opened;
    expect((await p.next()).length).toBe(32);
    p.ws.terminate();
  });

  it('leaves the authenticated link between a and b up through all of it', async () => {
    expect(await peer(node('a'), 'b')).toMatchObject({ state: 'up' });
    expect(await peer(node('b'), 'a')).toMatchObject({ state: 'up' });
  });
});
