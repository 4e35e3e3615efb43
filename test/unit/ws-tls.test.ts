/**
 * The ws transport over TLS, in one process: `listenOn` an https.Server, `dial(..., { tls: true })`
 * with the transport's CA. Certificates are made here (test/helpers/certs.ts).
 *
 * What is asserted: with the CA that signed the server's certificate, bytes flow and the HMAC
 * handshake still runs inside TLS; every verification failure (another CA, no CA, the wrong
 * host, an expired certificate) rejects the dial with SLUICE_UNAUTHORIZED, "TLS verification",
 * and Node's code in `details.tls`, and accept() never sees the client; a TLS dial to a plain
 * server, or a plain one to a TLS server, fails as unavailable, not as unauthorized; and
 * PeerLinks turns a verification failure into a status that names the file to fix.
 */
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { PeerLinks, type PeerStatus } from '../../server/peers.js';
import { ChannelReader, ChannelWriter, WsTransport, type Connection, type Listener } from '../../transports/index.js';
import { issue, type Issued } from '../helpers/certs.js';
import { drain } from '../helpers/streams.js';

const SECRET = 'ws-tls-test-secret-0123456789';
const ca = issue({ name: 'Sluice test CA', ca: true });
const otherCa = issue({ name: 'Another CA', ca: true });
const server = issue({ name: 'node-a', issuer: ca, altNames: ['127.0.0.1'] });
const elsewhere = issue({ name: 'node-z', issuer: ca, altNames: ['10.9.9.9', 'node-z.example'] });
const expired = issue({ name: 'node-old', issuer: ca, altNames: ['127.0.0.1'], notBeforeDaysAgo: 60, notAfterDays: -1 });
const selfSigned = issue({ name: 'node-self', altNames: ['127.0.0.1'] });

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** An HTTP(S) server on a free loopback port, closed after the test. */
async function listening<S extends http.Server | https.Server>(s: S): Promise<{ server: S; endpoint: string }> {
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise<void>((resolve) => s.close(() => resolve())));
  s.on('connection', (socket) => cleanups.push(() => void socket.destroy()));
  return { server: s, endpoint: `127.0.0.1:${(s.address() as AddressInfo).port}` };
}

/** A wss:// peer-link server presenting `cert`: an https.Server with the ws transport on /link. */
async function wssServer(cert: Issued): Promise<{ listener: Listener; endpoint: string }> {
  const { server: s, endpoint } = await listening(https.createServer({ cert: cert.cert, key: cert.key }));
  const listener = new WsTransport({ secret: SECRET, path: '/link' }).listenOn(s, '/link');
  cleanups.push(() => listener.close());
  return { listener, endpoint };
}

/** Whether accept() handed out a connection within `ms`. */
async function acceptedWithin(listener: Listener, ms: number): Promise<Connection | undefined> {
  return listener.accept({ signal: AbortSignal.timeout(ms) }).catch(() => undefined);
}

const dialer = (caPem: string | undefined): WsTransport => new WsTransport({ secret: SECRET, path: '/link', ca: caPem });

describe('ws transport over TLS', () => {
  it('carries a channel to a server whose certificate chains to the given CA, the HMAC handshake inside TLS', async () => {
    const { listener, endpoint } = await wssServer(server);
    const accepted = listener.accept();
    const writer = new ChannelWriter(await dialer(ca.cert).dial(endpoint, { tls: true, timeoutMs: 2_000 }));
    const received = drain(new ChannelReader(await accepted));
    writer.end(Buffer.from('bytes over wss'));
    expect(await received).toMatchObject({ ended: true, bytes: Buffer.from('bytes over wss') });

    // the secret still has to be proven: the right CA and a wrong secret get nowhere
    const accepting = acceptedWithin(listener, 500);
    await expect(new WsTransport({ secret: 'not-the-secret-at-all', path: '/link', ca: ca.cert }).dial(endpoint, { tls: true, timeoutMs: 2_000 })).rejects.toMatchObject({
      code: 'SLUICE_UNAUTHORIZED',
      message: expect.stringMatching(/wrong or missing secret/),
    });
    expect(await accepting).toBeUndefined();
  });

  it.each([
    ['a CA that did not sign it', server, otherCa.cert, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'],
    ["Node's default CAs", server, undefined, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'],
    ['a self-signed certificate', selfSigned, ca.cert, 'DEPTH_ZERO_SELF_SIGNED_CERT'],
    ['a certificate for another host', elsewhere, ca.cert, 'ERR_TLS_CERT_ALTNAME_INVALID'],
    ['an expired certificate', expired, ca.cert, 'CERT_HAS_EXPIRED'],
  ])('refuses to dial past %s: SLUICE_UNAUTHORIZED, "TLS verification", the code in details', async (_what, cert, caPem, code) => {
    const { listener, endpoint } = await wssServer(cert);
    const accepting = acceptedWithin(listener, 500);
    const err = await dialer(caPem).dial(endpoint, { tls: true, timeoutMs: 2_000 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'SLUICE_UNAUTHORIZED', message: expect.stringMatching(new RegExp(`^TLS verification of ${endpoint} failed: .*\\(${code}\\)$`)), details: { endpoint, tls: code } });
    expect((err as Error).cause).toMatchObject({ code });
    expect(await accepting).toBeUndefined();
  });

  it('fails a TLS dial to a plain server, and a plain dial to a TLS server, as unavailable, not unauthorized', async () => {
    const plain = await listening(http.createServer());
    new WsTransport({ secret: SECRET, path: '/link' }).listenOn(plain.server, '/link');
    await expect(dialer(ca.cert).dial(plain.endpoint, { tls: true, timeoutMs: 2_000 })).rejects.toMatchObject({
      code: 'SLUICE_UNAVAILABLE',
      message: expect.stringMatching(/^TLS handshake with 127\.0\.0\.1:\d+ failed: wrong version number \(\w+\); does it serve TLS\?$/),
      details: { tls: expect.any(String) },
    });

    const { listener, endpoint } = await wssServer(server);
    const accepting = acceptedWithin(listener, 500);
    await expect(dialer(ca.cert).dial(endpoint, { timeoutMs: 2_000 })).rejects.toMatchObject({ code: 'SLUICE_UNAVAILABLE' });
    expect(await accepting).toBeUndefined();
  });
});

describe('PeerLinks dialling wss:// peers', () => {
  /** The status of peer "b" at `endpoint` once its dial failed, as seen by node "a" with `caFile` ("a" < "b": it dials at once). */
  async function failedStatus(endpoint: string, caFile: { path: string; pem: string } | undefined): Promise<PeerStatus> {
    const links = new PeerLinks({
      node: 'a',
      peers: { b: `wss://${endpoint}` },
      secret: SECRET,
      ca: caFile,
      windowBytes: 256 * 1024,
      heartbeatMs: 1_000,
      log: pino({ level: 'silent' }),
      onRequest: () => Promise.resolve(null),
      onChannel: () => () => undefined,
    });
    cleanups.push(() => links.close());
    links.start(undefined);
    for (const deadline = Date.now() + 5_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 20))) {
      const status = links.status()[0]!;
      if (status.lastError) return status;
    }
    throw new Error('the dial never failed');
  }

  it.each([
    ['another CA', server, { path: '/etc/sluice/other-ca.pem', pem: otherCa.cert }, /does not chain to a CA in \/etc\/sluice\/other-ca\.pem \(--tls-ca\): fix that file, or the peer's --tls-cert$/],
    ["Node's default CAs", server, undefined, /does not chain to one of Node's default CAs: give the CA that signed it with --tls-ca FILE$/],
    ['a certificate for another host', elsewhere, { path: '/ca.pem', pem: ca.cert }, /is not for 127\.0\.0\.1: fix its --tls-cert \(its subjectAltName must list 127\.0\.0\.1\), or the host in its --peers URL$/],
    ['an expired certificate', expired, { path: '/ca.pem', pem: ca.cert }, /is outside its validity period: renew its --tls-cert$/],
  ])('past %s: not linked, and its status says TLS verification failed and what to fix', async (_what, cert, caFile, fix) => {
    const { endpoint } = await wssServer(cert);
    const status = await failedStatus(endpoint, caFile);
    expect(status.state).toBe('connecting');
    expect(status.lastError).toMatch(new RegExp(`^SLUICE_UNAUTHORIZED: TLS verification of peer "b" at wss://${endpoint.replace(/\./g, '\\.')} failed: [^;]+ \\(\\w+\\); the certificate of peer "b" `));
    expect(status.lastError).toMatch(fix);
  });
});
