/**
 * `ws`: a channel carried over one WebSocket connection between two daemons (the first step
 * towards multiplexed peer links). Endpoints are `HOST:PORT`; a listener runs a `ws`
 * WebSocketServer on an HTTP server of its own bound to that address (port 0 picks a free port,
 * reported in `listener.endpoint`).
 *
 * Wire: binary messages only. A non-empty message carries bytes; an empty message ends the
 * sender's direction (WebSocket has no half-close of its own, the channel protocol needs one).
 * Once both directions ended, the socket closes with 1000. A text message, a message over
 * `maxPayload` or bytes after the peer's end are protocol violations: the connection is cut and
 * the input fails with SLUICE_PROTOCOL. A socket that closes before the peer ended its direction
 * resets the input (ECONNRESET) and fails pending writes (EPIPE): the channel layer reports
 * SLUICE_TRUNCATED / SLUICE_CONSUMER_GONE, as for a socket.
 *
 * Back-pressure: a write completes when the socket took its bytes; the input pauses the socket
 * while its buffer is full.
 *
 * Authentication (when `secret` is set, on both ends): mutual HMAC-SHA256 challenge-response,
 * the secret never on the wire.
 *
 * ```
 *  server → client   serverNonce (32 bytes)
 *  client → server   clientNonce (32) | HMAC(secret, 'sluice-ws-client' | serverNonce | clientNonce)
 *  server → client   HMAC(secret, 'sluice-ws-server' | clientNonce | serverNonce)
 * ```
 *
 * Only then does `accept()` / `dial()` hand out the Connection. A wrong or missing proof: the
 * server closes with 4401 without passing a byte on; the client's dial rejects with
 * SLUICE_UNAUTHORIZED. A handshake not finished within `handshakeTimeoutMs` is dropped.
 *
 * TLS: `listenOn` an `https.Server` serves `wss://`; `dial(endpoint, { tls: true })` dials it,
 * verifying the server's certificate against the transport's `ca` (Node's default CAs when
 * absent) and its subjectAltName against the endpoint's host. The HMAC handshake then runs
 * inside TLS, unchanged. A certificate that fails verification rejects the dial with
 * SLUICE_UNAUTHORIZED whose message says "TLS verification ... failed" and whose `details.tls`
 * holds Node's code for why (e.g. DEPTH_ZERO_SELF_SIGNED_CERT, ERR_TLS_CERT_ALTNAME_INVALID); any
 * other TLS failure (e.g. the server does not speak TLS) rejects with SLUICE_UNAVAILABLE, also
 * with `details.tls`.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { Readable, Writable } from 'node:stream';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { ConnectError, ErrorCodes, ProtocolError, RequestError, codeOf, hasCode } from './errors.js';
import { DEFAULT_DIAL_TIMEOUT_MS, type AcceptOptions, type Connection, type DialOptions, type Listener, type Transport } from './transport.js';
import { destroyWith, mediumError } from './streams.js';
import { AcceptQueue, abortedError, retryUntil } from './waiting.js';

export const WS_DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024;
export const WS_DEFAULT_HANDSHAKE_TIMEOUT_MS = 5_000;
/** Close code for a failed authentication. */
export const WS_CLOSE_UNAUTHORIZED = 4401;

const NONCE_BYTES = 32;
const MAC_BYTES = 32;
/** Bytes buffered per direction before the writer waits / the socket is paused. */
const STREAM_HIGH_WATER_MARK = 256 * 1024;
/** Writes shorter than this are coalesced into one message. */
const COALESCE_BELOW_BYTES = 16 * 1024;

export interface WsTransportOptions {
  /** Shared secret for mutual authentication; both ends must have the same (or none). */
  secret?: string;
  /** Largest message, bytes. Default 16 MiB. Larger writes are split. */
  maxPayload?: number;
  /** How long the authentication handshake may take, ms. Default 5000. */
  handshakeTimeoutMs?: number;
  /** The URL path dialled (`ws://HOST:PORT<path>`). Default `/`. */
  path?: string;
  /**
   * Ping the peer this often, ms; a connection that hears nothing (no pong, no message) for three
   * intervals is cut, its streams failing as if the socket had died. Default 0: no heartbeat
   * (the kernel notices a dead peer only when TCP gives up, which takes minutes).
   */
  heartbeatMs?: number;
  /** Told about every connection refused for a wrong or missing secret: the remote address and why. */
  onUnauthorized?: (remote: string, why: string) => void;
  /**
   * CA certificates (PEM) a server's certificate must chain to when dialling with `tls`; they
   * replace Node's default CAs. Default: Node's default CAs.
   */
  ca?: string | undefined;
}

export interface WsDialOptions extends DialOptions {
  /** Dial `wss://` (TLS, the server's certificate verified) instead of `ws://`. Default false. */
  tls?: boolean;
}

/**
 * The codes Node gives a failed certificate verification (OpenSSL's X509 verification results,
 * and the host-name check's): the server is not who it claims to be, as far as we can tell.
 */
const TLS_VERIFICATION_CODES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_CRL',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'UNABLE_TO_DECRYPT_CRL_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'CERT_SIGNATURE_FAILURE',
  'CRL_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'CRL_NOT_YET_VALID',
  'CRL_HAS_EXPIRED',
  'ERROR_IN_CERT_NOT_BEFORE_FIELD',
  'ERROR_IN_CERT_NOT_AFTER_FIELD',
  'ERROR_IN_CRL_LAST_UPDATE_FIELD',
  'ERROR_IN_CRL_NEXT_UPDATE_FIELD',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'CERT_CHAIN_TOO_LONG',
  'CERT_REVOKED',
  'INVALID_CA',
  'PATH_LENGTH_EXCEEDED',
  'INVALID_PURPOSE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'HOSTNAME_MISMATCH',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** A dial's error as a typed TLS failure, or undefined when it is not about TLS. */
function tlsFailure(err: Error, endpoint: string): ConnectError | undefined {
  const code = codeOf(err) ?? '';
  if (TLS_VERIFICATION_CODES.has(code)) {
    return new ConnectError(ErrorCodes.UNAUTHORIZED, `TLS verification of ${endpoint} failed: ${err.message} (${code})`, { cause: err, details: { endpoint, tls: code } });
  }
  if (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_') || code === 'EPROTO') {
    // OpenSSL's text ("...:SSL routines:ssl3_get_record:wrong version number:file.c:350:") reduced to its reason
    const reason = (err as { reason?: string }).reason ?? /routines:[^:]*:([^:]+):/.exec(err.message)?.[1] ?? err.message;
    return new ConnectError(ErrorCodes.UNAVAILABLE, `TLS handshake with ${endpoint} failed: ${reason} (${code}); does it serve TLS?`, { cause: err, details: { endpoint, tls: code } });
  }
  return undefined;
}

/** Options a connection needs once it is open. */
interface ConnectionOptions {
  maxPayload: number;
  heartbeatMs: number;
}

interface Endpoint {
  host: string;
  port: number;
}

function parseEndpoint(endpoint: string): Endpoint {
  const colon = endpoint.lastIndexOf(':');
  let host = colon > 0 ? endpoint.slice(0, colon) : '';
  const portText = colon > 0 ? endpoint.slice(colon + 1) : '';
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  const port = Number(portText);
  if (!host || !/^\d+$/.test(portText) || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RequestError(ErrorCodes.INVALID, `ws endpoint must be HOST:PORT, got ${JSON.stringify(endpoint)}`, { details: { endpoint } });
  }
  return { host, port };
}

function formatEndpoint(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

function mac(secret: string, label: string, a: Buffer, b: Buffer): Buffer {
  return createHmac('sha256', secret).update(label).update(a).update(b).digest();
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

const resetError = (): Error => mediumError('ECONNRESET', 'websocket peer vanished');
const pipeError = (): Error => mediumError('EPIPE', 'websocket closed');

/** One WebSocket as a Connection: bytes with back-pressure, and a half-close per direction. */
class WsConnection implements Connection {
  readonly input: Readable;
  readonly output: Writable;
  private sentEnd = false;
  private gotEnd = false;
  private closed = false;
  private failure: Error | undefined;

  private readonly maxPayload: number;
  private heartbeat: NodeJS.Timeout | undefined;
  private lastHeard = Date.now();

  constructor(
    private readonly ws: WebSocket,
    options: ConnectionOptions,
  ) {
    this.maxPayload = options.maxPayload;
    if (options.heartbeatMs > 0) this.startHeartbeat(options.heartbeatMs);
    this.input = new Readable({
      highWaterMark: STREAM_HIGH_WATER_MARK,
      read: () => {
        if (this.ws.isPaused) this.ws.resume();
      },
      destroy: (error, callback) => {
        // nobody reads any more: keep the socket flowing, what arrives is dropped
        if (this.ws.isPaused) this.ws.resume();
        callback(error);
      },
    });
    this.output = new Writable({
      highWaterMark: STREAM_HIGH_WATER_MARK,
      writev: (chunks, callback) => this.send(chunks.map((c) => c.chunk as Buffer), callback),
      final: (callback) => {
        this.sendMessages([Buffer.alloc(0)], (err) => {
          if (err) return callback(err);
          this.sentEnd = true;
          callback();
          this.maybeClose();
        });
      },
      destroy: (error, callback) => {
        // cut before the end: the peer must not mistake it for a clean end
        if (!this.sentEnd && !this.closed) this.ws.terminate();
        callback(error);
      },
    });
  }

  private startHeartbeat(intervalMs: number): void {
    this.ws.on('pong', () => (this.lastHeard = Date.now()));
    this.heartbeat = setInterval(() => {
      // a paused socket reads nothing, pongs included: our reader is slow, not the peer dead
      if (this.ws.isPaused) this.lastHeard = Date.now();
      if (Date.now() - this.lastHeard > 3 * intervalMs) {
        this.failure ??= new ConnectError(ErrorCodes.UNAVAILABLE, `websocket peer silent for ${Date.now() - this.lastHeard} ms (heartbeat every ${intervalMs} ms)`);
        this.ws.terminate();
        return;
      }
      if (this.ws.readyState === WebSocket.OPEN) this.ws.ping();
    }, intervalMs);
    this.heartbeat.unref();
  }

  destroy(error?: Error): void {
    if (!(this.sentEnd && this.gotEnd)) this.ws.terminate(); // else the clean close is already under way
    this.input.destroy(error);
    this.output.destroy(error);
  }

  onMessage(data: RawData, isBinary: boolean): void {
    if (this.closed) return;
    this.lastHeard = Date.now();
    if (!isBinary) return this.violate('text message on a binary channel');
    const bytes = toBuffer(data);
    if (this.gotEnd) return this.violate('message after the peer ended its direction');
    if (this.input.destroyed) return;
    if (bytes.length === 0) {
      this.gotEnd = true;
      this.input.push(null);
      this.maybeClose();
      return;
    }
    if (!this.input.push(bytes) && !this.ws.isPaused) this.ws.pause();
  }

  onError(err: Error): void {
    const code = codeOf(err) ?? '';
    this.failure ??= code.startsWith('WS_ERR_') ? new ProtocolError(`websocket protocol violation: ${err.message}`, { cause: err }) : err;
  }

  onClose(): void {
    this.closed = true;
    clearInterval(this.heartbeat);
    if (!this.gotEnd) destroyWith(this.input, this.failure ?? resetError());
    if (!this.sentEnd && !this.output.writableFinished) {
      if (this.output.writableLength > 0 || this.output.writableEnded) destroyWith(this.output, this.failure ?? pipeError());
      // idle: the next write fails (see send)
    }
  }

  private violate(why: string): void {
    this.failure ??= new ProtocolError(`websocket peer broke the protocol: ${why}`);
    this.ws.terminate();
  }

  private maybeClose(): void {
    if (this.sentEnd && this.gotEnd && this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
  }

  /** Coalesce small chunks, split large ones at maxPayload; call back when the socket took the last. */
  private send(chunks: Buffer[], callback: (err?: Error | null) => void): void {
    const messages: Buffer[] = [];
    let small: Buffer[] = [];
    let smallBytes = 0;
    const flushSmall = (): void => {
      if (small.length === 0) return;
      messages.push(small.length === 1 ? small[0]! : Buffer.concat(small, smallBytes));
      small = [];
      smallBytes = 0;
    };
    for (const chunk of chunks) {
      if (chunk.length === 0) continue;
      if (chunk.length < COALESCE_BELOW_BYTES && smallBytes + chunk.length <= this.maxPayload) {
        small.push(chunk);
        smallBytes += chunk.length;
        if (smallBytes >= COALESCE_BELOW_BYTES) flushSmall();
        continue;
      }
      flushSmall();
      for (let off = 0; off < chunk.length; off += this.maxPayload) messages.push(chunk.subarray(off, off + this.maxPayload));
    }
    flushSmall();
    if (messages.length === 0) return callback();
    this.sendMessages(messages, callback);
  }

  private sendMessages(messages: Buffer[], callback: (err?: Error | null) => void): void {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) return callback(this.failure ?? pipeError());
    const last = messages.length - 1;
    // one syscall for the batch (e.g. a frame header and its payload) instead of one per message
    const socket = (this.ws as unknown as { _socket?: { cork(): void; uncork(): void } })._socket;
    socket?.cork();
    messages.forEach((m, i) => {
      if (i < last) this.ws.send(m, { binary: true });
      else this.ws.send(m, { binary: true }, (err) => callback(err ? (this.failure ?? pipeError()) : null));
    });
    socket?.uncork();
  }
}

interface ListenerOptions extends ConnectionOptions {
  handshakeTimeoutMs: number;
  secret: string | undefined;
  onUnauthorized: ((remote: string, why: string) => void) | undefined;
}

/** Route a socket's events to the handshake first, then to its Connection. */
function wire(ws: WebSocket): {
  setHandlers(h: { message: (d: RawData, b: boolean) => void; close: (code: number) => void; error: (e: Error) => void }): void;
  attach(conn: WsConnection): void;
} {
  let message: (d: RawData, b: boolean) => void = () => undefined;
  let close: (code: number) => void = () => undefined;
  let error: (e: Error) => void = () => undefined;
  ws.on('message', (d, b) => message(d, b));
  ws.on('close', (code) => close(code));
  ws.on('error', (e) => error(e));
  return {
    setHandlers(h) {
      ({ message, close, error } = h);
    },
    attach(conn) {
      message = (d, b) => conn.onMessage(d, b);
      close = () => conn.onClose();
      error = (e) => conn.onError(e);
    },
  };
}

class WsListener implements Listener {
  private readonly queue: AcceptQueue;
  private readonly handshaking = new Set<WebSocket>();
  private closed = false;

  constructor(
    readonly endpoint: string,
    /** stops whatever serves the upgrades (the listener's own HTTP server, or the hook on a shared one) */
    private readonly stopServing: () => void,
    private readonly wss: WebSocketServer,
    private readonly options: ListenerOptions,
  ) {
    this.queue = new AcceptQueue(endpoint);
    wss.on('connection', (ws, request: http.IncomingMessage) => this.admit(ws, `${request.socket.remoteAddress ?? '?'}:${request.socket.remotePort ?? '?'}`));
    wss.on('error', () => undefined);
  }

  private admit(ws: WebSocket, remote: string): void {
    const { secret, handshakeTimeoutMs } = this.options;
    const routes = wire(ws);
    if (this.closed) return void ws.terminate();
    if (secret === undefined) {
      const conn = new WsConnection(ws, this.options);
      routes.attach(conn);
      this.queue.offer(conn);
      return;
    }
    this.handshaking.add(ws);
    const serverNonce = randomBytes(NONCE_BYTES);
    const done = (): void => {
      clearTimeout(timer);
      this.handshaking.delete(ws);
    };
    const timer = setTimeout(() => {
      done();
      ws.terminate();
    }, handshakeTimeoutMs);
    timer.unref();
    const refuse = (why: string): void => {
      this.options.onUnauthorized?.(remote, why);
      done();
      routes.setHandlers({ message: () => undefined, close: () => undefined, error: () => undefined });
      ws.close(WS_CLOSE_UNAUTHORIZED, 'unauthorized');
      // do not wait for the peer's close frame forever
      setTimeout(() => ws.terminate(), 1_000).unref();
    };
    routes.setHandlers({
      message: (data, isBinary) => {
        const bytes = toBuffer(data);
        if (!isBinary || bytes.length !== NONCE_BYTES + MAC_BYTES) return refuse('no proof of the secret (not a Sluice peer?)');
        const clientNonce = bytes.subarray(0, NONCE_BYTES);
        const expected = mac(secret, 'sluice-ws-client', serverNonce, clientNonce);
        if (!timingSafeEqual(bytes.subarray(NONCE_BYTES), expected)) return refuse('wrong secret');
        done();
        if (this.closed) return void ws.terminate();
        const conn = new WsConnection(ws, this.options);
        routes.attach(conn);
        ws.send(mac(secret, 'sluice-ws-server', clientNonce, serverNonce), { binary: true });
        this.queue.offer(conn);
      },
      close: () => done(),
      error: () => undefined,
    });
    ws.send(serverNonce, { binary: true });
  }

  accept(options?: AcceptOptions): Promise<Connection> {
    return this.queue.take(options);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.queue.close();
    for (const ws of this.handshaking) ws.terminate();
    this.handshaking.clear();
    // Stop listening only: accepted connections belong to their channels.
    this.wss.close();
    this.stopServing();
  }
}

export class WsTransport implements Transport {
  readonly path = 'ws' as const;
  private readonly secret: string | undefined;
  private readonly maxPayload: number;
  private readonly handshakeTimeoutMs: number;
  private readonly urlPath: string;
  private readonly heartbeatMs: number;
  private readonly onUnauthorized: ((remote: string, why: string) => void) | undefined;
  private readonly ca: string | undefined;

  constructor(options: WsTransportOptions = {}) {
    this.urlPath = options.path ?? '/';
    this.ca = options.ca;
    this.onUnauthorized = options.onUnauthorized;
    this.heartbeatMs = options.heartbeatMs ?? 0;
    if (!this.urlPath.startsWith('/')) throw new RequestError(ErrorCodes.INVALID, `ws path must start with /, got ${JSON.stringify(this.urlPath)}`);
    if (!Number.isInteger(this.heartbeatMs) || this.heartbeatMs < 0) throw new RequestError(ErrorCodes.INVALID, `ws heartbeatMs must be a whole number of ms, got ${String(options.heartbeatMs)}`);
    this.secret = options.secret;
    this.maxPayload = options.maxPayload ?? WS_DEFAULT_MAX_PAYLOAD;
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? WS_DEFAULT_HANDSHAKE_TIMEOUT_MS;
    if (!Number.isInteger(this.maxPayload) || this.maxPayload < 1) {
      throw new RequestError(ErrorCodes.INVALID, `ws maxPayload must be a positive integer, got ${String(options.maxPayload)}`);
    }
    if (this.secret !== undefined && this.secret.length === 0) throw new RequestError(ErrorCodes.INVALID, 'ws secret must not be empty');
  }

  async listen(endpoint: string): Promise<Listener> {
    const { host, port } = parseEndpoint(endpoint);
    const server = http.createServer((_req, res) => {
      res.writeHead(426, { connection: 'close', upgrade: 'websocket' }).end();
    });
    const wss = new WebSocketServer({ server, maxPayload: this.maxPayload, perMessageDeflate: false, clientTracking: false });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => {
        server.off('error', reject);
        resolve();
      });
    }).catch((err: unknown) => {
      wss.close();
      throw new ConnectError(ErrorCodes.UNAVAILABLE, `cannot listen on ${endpoint}: ${(err as Error).message}`, { cause: err, details: { endpoint } });
    });
    server.on('error', () => undefined);
    const address = server.address() as AddressInfo;
    return new WsListener(formatEndpoint(address.address, address.port), () => server.close(), wss, this.listenerOptions());
  }

  /**
   * Serve WebSocket upgrades to `path` on an HTTP server that exists already (the daemon's
   * control API port), with this transport's authentication. Upgrades to other paths are
   * refused with 404. The listener's `endpoint` is the path.
   */
  listenOn(server: http.Server | https.Server, path: string): Listener {
    const wss = new WebSocketServer({ noServer: true, maxPayload: this.maxPayload, perMessageDeflate: false, clientTracking: false });
    const onUpgrade = (request: http.IncomingMessage, socket: Duplex, head: Buffer): void => {
      if ((request.url ?? '').split('?')[0] !== path) {
        socket.end('HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
        return;
      }
      wss.handleUpgrade(request, socket, head, (ws) => wss.emit('connection', ws, request));
    };
    server.on('upgrade', onUpgrade);
    return new WsListener(path, () => server.off('upgrade', onUpgrade), wss, this.listenerOptions());
  }

  private listenerOptions(): ListenerOptions {
    return { secret: this.secret, maxPayload: this.maxPayload, heartbeatMs: this.heartbeatMs, handshakeTimeoutMs: this.handshakeTimeoutMs, onUnauthorized: this.onUnauthorized };
  }

  dial(endpoint: string, options: WsDialOptions = {}): Promise<Connection> {
    let target: Endpoint;
    try {
      target = parseEndpoint(endpoint);
      if (target.port === 0) throw new RequestError(ErrorCodes.INVALID, `cannot dial port 0 (${endpoint})`, { details: { endpoint } });
    } catch (err) {
      return Promise.reject(err as Error);
    }
    const tls = options.tls === true;
    const url = `${tls ? 'wss' : 'ws'}://${formatEndpoint(target.host, target.port)}${this.urlPath}`;
    const { signal } = options;
    const attempt = (): Promise<Connection> => this.attempt(url, endpoint, signal, tls);
    return retryUntil('dial ws', attempt, (err) => hasCode(err, 'ECONNREFUSED'), {
      signal,
      timeoutMs: options.timeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS,
      endpoint,
    });
  }

  private attempt(url: string, endpoint: string, signal: AbortSignal | undefined, tls: boolean): Promise<Connection> {
    return new Promise<Connection>((resolve, reject) => {
      const ws = new WebSocket(url, {
        ...(tls && this.ca !== undefined ? { ca: this.ca } : {}),
        maxPayload: this.maxPayload,
        perMessageDeflate: false,
        // Masking guards HTTP caches against script-made frames; between Sluice daemons there is
        // no such script, and an all-zero mask lets ws skip a copy and an XOR pass per message.
        generateMask: (mask: Buffer) => void mask.fill(0),
        handshakeTimeout: this.handshakeTimeoutMs,
        followRedirects: false,
      });
      const routes = wire(ws);
      let settled = false;
      let timer: NodeJS.Timeout | undefined;
      const onAbort = (): void => fail(abortedError('dial ws', signal));
      signal?.addEventListener('abort', onAbort, { once: true });
      const cleanup = (): void => {
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      function fail(err: Error): void {
        if (settled) return;
        cleanup();
        routes.setHandlers({ message: () => undefined, close: () => undefined, error: () => undefined });
        ws.terminate();
        reject(err);
      }
      const succeed = (): void => {
        if (settled) return;
        cleanup();
        const conn = new WsConnection(ws, { maxPayload: this.maxPayload, heartbeatMs: this.heartbeatMs });
        routes.attach(conn);
        resolve(conn);
      };
      const unauthorized = (why: string): ConnectError =>
        new ConnectError(ErrorCodes.UNAUTHORIZED, `ws peer ${endpoint} refused the connection: ${why}`, { details: { endpoint } });
      let lastError: Error | undefined;
      const secret = this.secret;
      let clientNonce: Buffer | undefined;
      let serverNonce: Buffer | undefined;
      routes.setHandlers({
        error: (err) => {
          lastError = (tls && tlsFailure(err, endpoint)) || err;
          // before 'open' the error is the connection's (ECONNREFUSED, ...): retryUntil decides
          if (ws.readyState !== WebSocket.OPEN && ws.readyState !== WebSocket.CLOSING) fail(lastError);
        },
        close: (code) => {
          if (code === WS_CLOSE_UNAUTHORIZED) return fail(unauthorized('wrong or missing secret'));
          fail(lastError ?? resetError());
        },
        message: (data, isBinary) => {
          const bytes = toBuffer(data);
          if (secret === undefined) return; // unreachable: no handshake without a secret
          if (!isBinary) return fail(unauthorized('text message during the handshake'));
          if (!serverNonce) {
            if (bytes.length !== NONCE_BYTES) return fail(unauthorized('malformed challenge'));
            serverNonce = Buffer.from(bytes);
            clientNonce = randomBytes(NONCE_BYTES);
            ws.send(Buffer.concat([clientNonce, mac(secret, 'sluice-ws-client', serverNonce, clientNonce)]), { binary: true });
            return;
          }
          const expected = mac(secret, 'sluice-ws-server', clientNonce!, serverNonce);
          if (bytes.length !== MAC_BYTES || !timingSafeEqual(bytes, expected)) {
            if (!settled) {
              cleanup();
              routes.setHandlers({ message: () => undefined, close: () => undefined, error: () => undefined });
              ws.close(WS_CLOSE_UNAUTHORIZED, 'unauthorized');
              setTimeout(() => ws.terminate(), 1_000).unref();
              reject(unauthorized('the server could not prove it knows the secret'));
            }
            return;
          }
          succeed();
        },
      });
      ws.once('open', () => {
        if (settled) return;
        if (secret === undefined) return succeed();
        timer = setTimeout(() => fail(new ConnectError(ErrorCodes.UNAVAILABLE, `ws handshake with ${endpoint} did not finish within ${this.handshakeTimeoutMs} ms`, { details: { endpoint } })), this.handshakeTimeoutMs);
        timer.unref();
      });
      if (signal?.aborted) onAbort();
    });
  }
}
