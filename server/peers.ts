/**
 * Peer links: one long-lived, authenticated WebSocket between this daemon and each other node's,
 * many connections multiplexed on it (`transports/mux.ts`), each with its own credit window.
 *
 * - **Where.** A daemon serves peer links on its TCP control port (`--listen`), at
 *   `PEER_LINK_PATH`; `--peers NAME=ws://HOST:PORT` names the others. A peer that is not listed
 *   may still dial in: knowing the secret is what admits it.
 * - **TLS.** A peer listed as `wss://HOST:PORT` is dialled over TLS, its certificate verified
 *   against `ca` (Node's default CAs when absent) and its name against HOST; one that fails is
 *   never linked, and its status and the log say "TLS verification ... failed" with the file to
 *   fix (SLUICE_UNAUTHORIZED). A link is as private as the URL of the node that dialled it: one
 *   dialled over `ws://` travels in the clear (still authenticated by the secret).
 * - **Who dials.** Both ends dial a listed peer that has no link; the node with the larger name
 *   waits a moment first, so that usually one link forms. If two form at once, both ends keep the
 *   one dialled by the node with the smaller name for new connections, so they agree without
 *   talking about it. The other link is retired, not cut: the streams already on it go on to
 *   their end, and it closes once it carries none.
 * - **Authentication.** The cluster secret, through the ws transport's mutual HMAC
 *   challenge-response: a dialler without the secret (or with a wrong one) is closed with 4401
 *   before a byte of Sluice's protocol passes, and the log says so. Then the dialler names
 *   itself and the node it meant to reach, `{ node, to }`, and the other end answers with its
 *   name; a link to the wrong node is refused.
 * - **Health.** The link is pinged every `heartbeatMs`; one silent for three intervals is cut.
 *   Its connections then fail (typed errors at both ends of each channel) and it is dialled
 *   again with back-off (100 ms doubling to 5 s).
 * - **Use.** `request(node, body)` sends one control request (run sharing) and awaits its
 *   answer; `open(node, endpoint)` opens a connection for a channel. What arrives from a peer
 *   goes to the handlers given to the constructor.
 */
import type http from 'node:http';
import type https from 'node:https';
import type { Logger } from 'pino';
import {
  ConnectError,
  ErrorCodes,
  Mux,
  ProtocolError,
  RequestError,
  WsTransport,
  acceptEach,
  checkName,
  codeOf,
  decodeRecords,
  encodeRecord,
  firstChunk,
  hasCode,
  isErrorCode,
  pause,
  type Connection,
  type Listener,
  type MemoryBudget,
  type SluiceError,
} from '../transports/index.js';
import type { PemFile } from './config.js';

/** The URL path peer links are served at, on the daemon's TCP control port. */
export const PEER_LINK_PATH = '/v1/peer-link';
/** The endpoint of control requests on a link. */
const CONTROL_ENDPOINT = 'sluice.control';
/** Channel endpoints on a link: `CHANNEL_PREFIX<run>/<channel>`. */
export const CHANNEL_PREFIX = 'ch/';
const HANDSHAKE_TIMEOUT_MS = 5_000;
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 5_000;
/** The node with the larger name waits this long before dialling, ms. */
const DEFER_MS = 1_000;
/** Largest control request or answer on a link, bytes. */
const MAX_CONTROL_BYTES = 16 * 1024 * 1024;

export interface PeerLinksOptions {
  node: string;
  /** listed peers: node name → ws://HOST:PORT or wss://HOST:PORT */
  peers: Readonly<Record<string, string>>;
  secret: string;
  /** CA certificates that wss:// peers' certificates must chain to (`--tls-ca`); Node's default CAs when absent */
  ca?: PemFile | undefined;
  /** credit window per connection, bytes */
  windowBytes: number;
  /** the daemon-wide memory budget the connections' receive windows are granted from */
  budget?: MemoryBudget;
  /** ping interval, ms */
  heartbeatMs: number;
  log: Logger;
  /** answers a peer's control request; throw a SluiceError to refuse */
  onRequest: (from: string, request: Record<string, unknown>) => Promise<unknown>;
  /** takes a channel connection a peer opened to `endpoint`; throw a SluiceError to refuse */
  onChannel: (from: string, endpoint: string) => (conn: Connection) => void;
  /** told each time a link to `node` comes up */
  onLinkUp?: (node: string) => void;
}

export type LinkState = 'up' | 'connecting' | 'down';

export interface PeerStatus {
  node: string;
  /** the URL dialled, or null for a peer that is not listed (it dialled in) */
  url: string | null;
  state: LinkState;
  /** when the state last changed (ISO 8601) */
  since: string;
  /** connections open on the link now */
  channels: number;
  /** bytes of channel data sent and received over all of this peer's links */
  bytesSent: number;
  bytesReceived: number;
  /** links that came up after the first one */
  reconnects: number;
  lastError: string | null;
}

interface Peer {
  node: string;
  url: string | undefined;
  mux: Mux | undefined;
  /** the node that dialled the current link */
  dialedBy: string | undefined;
  state: LinkState;
  since: number;
  links: number;
  lastError: string | undefined;
  /** the error behind lastError */
  lastCause: Error | undefined;
  /** bytes of links that are gone */
  pastSent: number;
  pastReceived: number;
  waiters: Set<() => void>;
  /** a dial loop runs for it */
  dialing: boolean;
}

function hostPort(url: string): string {
  const parsed = new URL(url);
  const port = parsed.port || (parsed.protocol === 'wss:' ? '443' : '80');
  return `${parsed.hostname}:${port}`;
}

function parseHello(bytes: Buffer): Record<string, unknown> {
  let value: unknown;
  try {
    value = bytes.length <= 1024 ? JSON.parse(bytes.toString('utf8')) : undefined;
  } catch {
    value = undefined;
  }
  if (typeof value !== 'object' || value === null || (value as { sluice?: unknown }).sluice !== 'peer-link') {
    throw new ProtocolError('the peer did not start the peer-link handshake');
  }
  return value as Record<string, unknown>;
}

/** Wait for `promise`, or for `signal` to fire, whichever comes first; no listener is left behind. */
async function untilAborted(promise: Promise<unknown>, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return;
  let onAbort!: () => void;
  const aborted = new Promise<void>((resolve) => (onAbort = resolve));
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    await Promise.race([promise, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

export class PeerLinks {
  private readonly peers = new Map<string, Peer>();
  private readonly transport: WsTransport;
  private readonly stopping = new AbortController();
  private listener: Listener | undefined;
  private started = false;
  /** links replaced by newer ones, still carrying the streams that were on them */
  private readonly retired = new Set<Mux>();

  constructor(private readonly options: PeerLinksOptions) {
    this.transport = new WsTransport({
      secret: options.secret,
      path: PEER_LINK_PATH,
      heartbeatMs: options.heartbeatMs,
      handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
      onUnauthorized: (remote, why) => options.log.warn({ remote, why }, 'peer link refused: no valid proof of the cluster secret'),
      ca: options.ca?.pem,
    });
    for (const [node, url] of Object.entries(options.peers)) this.peers.set(node, this.newPeer(node, url));
  }

  private newPeer(node: string, url: string | undefined): Peer {
    return { node, url, mux: undefined, dialedBy: undefined, state: 'connecting', since: Date.now(), links: 0, lastError: undefined, lastCause: undefined, pastSent: 0, pastReceived: 0, waiters: new Set(), dialing: false };
  }

  /** Serve peer links on `server` (the TCP control API's) when given, and dial the listed peers. */
  start(server: http.Server | https.Server | undefined): void {
    if (server) {
      this.listener = this.transport.listenOn(server, PEER_LINK_PATH);
      void acceptEach(this.listener, (conn) =>
        this.admit(conn).catch((err: unknown) => {
          this.options.log.warn({ err }, 'peer link refused');
          conn.destroy();
        }),
      );
    }
    this.started = true;
    for (const peer of this.peers.values()) this.dial(peer);
  }

  /**
   * Set the peers found by discovery (node name → URL), replacing those it found before: a new
   * one is dialled; a changed URL is dialled from the next attempt on; one no longer found is no
   * longer dialled (a link up now stays until it drops, like one a peer dialled in). Peers given
   * to the constructor (--peers) are left as they are, and so is this node's own name.
   */
  setDiscovered(found: Readonly<Record<string, string>>): void {
    const listed = this.options.peers;
    for (const [node, url] of Object.entries(found)) {
      if (node === this.options.node || Object.hasOwn(listed, node)) continue;
      let peer = this.peers.get(node);
      if (!peer) this.peers.set(node, (peer = this.newPeer(node, undefined)));
      if (peer.url !== url) this.options.log.info({ peer: node, url }, peer.url ? 'peer moved' : 'peer discovered');
      peer.url = url;
      this.dial(peer);
    }
    for (const peer of [...this.peers.values()]) {
      if (peer.url === undefined || Object.hasOwn(listed, peer.node) || Object.hasOwn(found, peer.node)) continue;
      this.options.log.info({ peer: peer.node }, 'peer gone from discovery');
      peer.url = undefined;
      if (!peer.mux?.up) this.peers.delete(peer.node);
    }
  }

  private dial(peer: Peer): void {
    if (!this.started || peer.dialing || !peer.url) return;
    peer.dialing = true;
    void this.dialLoop(peer).finally(() => (peer.dialing = false));
  }

  async close(): Promise<void> {
    this.stopping.abort();
    await this.listener?.close();
    for (const mux of [...this.retired, ...[...this.peers.values()].map((p) => p.mux)]) mux?.close(new ConnectError(ErrorCodes.UNAVAILABLE, 'this daemon is stopping'));
  }

  /** Is the link to `node` up now? */
  isUp(node: string): boolean {
    return this.peers.get(node)?.mux?.up === true;
  }

  /**
   * Is `node` known to be down — its link was up and is lost, or dials to it have failed — and
   * if so, why: an error (SLUICE_UNAVAILABLE) naming it, saying since when and its last error.
   * undefined while the link is up, for a peer not tried yet (starting up), and for one this
   * node does not know.
   */
  whyDown(node: string): ConnectError | undefined {
    const peer = this.peers.get(node);
    if (!peer || peer.mux?.up) return undefined;
    if (peer.state !== 'down' && !(peer.state === 'connecting' && peer.lastError !== undefined)) return undefined;
    const since = new Date(peer.since).toISOString();
    const what = peer.links > 0 ? `no link since ${since}` : `never linked, dialling since ${since}`;
    return new ConnectError(
      ErrorCodes.UNAVAILABLE,
      `node "${node}" is down (${what}: ${peer.lastError ?? 'link lost'}); start its daemon or mend the network to it${peer.url ? ` (${peer.url})` : ''}, or place the run's steps on other nodes`,
      { ...(peer.lastCause ? { cause: peer.lastCause } : {}), details: { node, link: 'down', since } },
    );
  }

  /** Is `node` a peer (listed, or linked to us now)? */
  knows(node: string): boolean {
    return this.peers.has(node);
  }

  status(): PeerStatus[] {
    return [...this.peers.values()].map((p) => ({
      node: p.node,
      url: p.url ?? null,
      state: p.state,
      since: new Date(p.since).toISOString(),
      channels: p.mux?.up ? p.mux.size : 0,
      bytesSent: p.pastSent + (p.mux?.bytesSent ?? 0),
      bytesReceived: p.pastReceived + (p.mux?.bytesReceived ?? 0),
      reconnects: Math.max(0, p.links - 1),
      lastError: p.lastError ?? null,
    }));
  }

  /** The link to `node`, waiting up to `timeoutMs` for it to come up; SLUICE_UNAVAILABLE otherwise. */
  async link(node: string, timeoutMs: number): Promise<Mux> {
    const peer = this.peers.get(node);
    if (!peer) throw new RequestError(ErrorCodes.INVALID, `node "${node}" is not a peer of this node: list it in --peers (NAME=ws://HOST:PORT)`, { details: { node } });
    const deadline = Date.now() + timeoutMs;
    while (!peer.mux?.up) {
      const left = deadline - Date.now();
      if (left <= 0 || this.stopping.signal.aborted) {
        throw new ConnectError(ErrorCodes.UNAVAILABLE, `no link to peer "${node}" (${peer.state}${peer.lastError ? `: ${peer.lastError}` : ''})`, { details: { node, link: 'down' } });
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(wake, left);
        function wake(): void {
          clearTimeout(timer);
          peer!.waiters.delete(wake);
          resolve();
        }
        peer.waiters.add(wake);
      });
    }
    return peer.mux;
  }

  /** Open a channel connection on the link to `node`. */
  async open(node: string, endpoint: string, timeoutMs: number): Promise<Connection> {
    const mux = await this.link(node, timeoutMs);
    return mux.open(endpoint);
  }

  /**
   * Send one control record to `node` and return its answer. A request whose link broke before
   * the answer came is sent once more on the next link (when two links form at once, one is
   * replaced): the requests peers serve are idempotent, so a repeat is harmless.
   */
  async request(node: string, body: Record<string, unknown>, timeoutMs: number): Promise<unknown> {
    const started = Date.now();
    try {
      return await this.requestOnce(node, body, timeoutMs);
    } catch (err) {
      if (!(err as { linkBroke?: boolean }).linkBroke) throw err;
      const left = timeoutMs - (Date.now() - started);
      if (left <= 0) throw err;
      return this.requestOnce(node, body, left);
    }
  }

  private async requestOnce(node: string, body: Record<string, unknown>, timeoutMs: number): Promise<unknown> {
    const conn = await this.open(node, CONTROL_ENDPOINT, timeoutMs);
    const timer = setTimeout(() => conn.destroy(new ConnectError(ErrorCodes.TIMEOUT, `peer "${node}" did not answer within ${timeoutMs} ms`)), timeoutMs);
    let answered = false;
    try {
      conn.output.end(encodeRecord(body, MAX_CONTROL_BYTES));
      for await (const answer of decodeRecords(conn.input, MAX_CONTROL_BYTES)) {
        answered = true;
        const a = answer as { ok?: unknown; result?: unknown; error?: { code?: unknown; message?: unknown } };
        if (a.ok === true) return a.result;
        const code = isErrorCode(a.error?.code) ? a.error.code : ErrorCodes.UNAVAILABLE;
        const message = `peer "${node}": ${String(a.error?.message ?? 'request failed')}`;
        throw code === ErrorCodes.INVALID || code === ErrorCodes.NOT_FOUND || code === ErrorCodes.UNAUTHORIZED
          ? new RequestError(code, message, { details: { node } })
          : new ConnectError(code, message, { details: { node } });
      }
      throw new ConnectError(ErrorCodes.UNAVAILABLE, `peer "${node}" closed the request without an answer`, { details: { node } });
    } catch (err) {
      if (answered) throw err;
      const code = codeOf(err);
      if (isErrorCode(code)) throw Object.assign(err as Error, { linkBroke: code === ErrorCodes.UNAVAILABLE });
      throw Object.assign(new ConnectError(ErrorCodes.UNAVAILABLE, `request to peer "${node}" failed: ${(err as Error).message}`, { cause: err, details: { node } }), { linkBroke: true });
    } finally {
      clearTimeout(timer);
      conn.destroy();
    }
  }

  private async serveRequest(from: string, conn: Connection): Promise<void> {
    let answer: unknown;
    try {
      // read to the end (the requester ends after one record): leaving early would reset the connection
      let request: unknown;
      let count = 0;
      for await (const r of decodeRecords(conn.input, MAX_CONTROL_BYTES)) if (count++ === 0) request = r;
      if (count !== 1) throw new RequestError(ErrorCodes.INVALID, `a control request is one record, got ${count}`);
      if (typeof request !== 'object' || request === null) throw new RequestError(ErrorCodes.INVALID, 'a control request must be a map');
      answer = { ok: true, result: (await this.options.onRequest(from, request as Record<string, unknown>)) ?? null };
    } catch (err) {
      const code = codeOf(err);
      answer = { ok: false, error: { code: isErrorCode(code) ? code : ErrorCodes.UNAVAILABLE, message: (err as Error).message } };
      this.options.log.warn({ err, peer: from }, 'control request from a peer failed');
    }
    conn.output.on('error', () => undefined);
    conn.output.end(encodeRecord(answer, MAX_CONTROL_BYTES));
  }

  /** A link dialled by a peer: it names itself, we answer with our name. */
  private async admit(conn: Connection): Promise<void> {
    this.guard(conn, undefined);
    const hello = parseHello(await firstChunk(conn.input, HANDSHAKE_TIMEOUT_MS));
    const node = checkName('peer node', hello.node);
    if (hello.to !== this.options.node) {
      conn.output.end(JSON.stringify({ sluice: 'peer-link', error: `this is node "${this.options.node}", not "${String(hello.to)}"` }));
      throw new ProtocolError(`peer "${node}" dialled this node as "${String(hello.to)}"; fix its --peers entry`);
    }
    if (node === this.options.node) throw new ProtocolError(`a peer claims this node's own name "${node}"`);
    conn.output.write(JSON.stringify({ sluice: 'peer-link', node: this.options.node }));
    this.register(node, conn, 'listener');
  }

  private async dialLoop(peer: Peer): Promise<void> {
    const { signal } = this.stopping;
    let backoff = BACKOFF_MIN_MS;
    const defer = this.options.node > peer.node;
    if (defer) await pause(DEFER_MS, signal);
    while (!signal.aborted && peer.url !== undefined && this.peers.get(peer.node) === peer) {
      const url = peer.url;
      if (peer.mux?.up) {
        await untilAborted(peer.mux.closed, signal);
        backoff = BACKOFF_MIN_MS;
        if (defer) await pause(DEFER_MS, signal);
        continue;
      }
      try {
        const conn = await this.transport.dial(hostPort(url), { timeoutMs: 0, signal, tls: new URL(url).protocol === 'wss:' }).catch((err: unknown) => {
          throw this.explainTls(peer, url, err);
        });
        this.guard(conn, peer.node);
        try {
          conn.output.write(JSON.stringify({ sluice: 'peer-link', node: this.options.node, to: peer.node }));
          const answer = parseHello(await firstChunk(conn.input, HANDSHAKE_TIMEOUT_MS));
          if (typeof answer.error === 'string') throw new ProtocolError(`peer at ${url} refused the link: ${answer.error}`);
          if (answer.node !== peer.node) throw new ProtocolError(`${url} is node "${String(answer.node)}", not "${peer.node}"; fix --peers`);
        } catch (err) {
          conn.destroy();
          throw err;
        }
        if (!signal.aborted) this.register(peer.node, conn, 'dialer');
        else conn.destroy();
        backoff = BACKOFF_MIN_MS;
      } catch (err) {
        if (signal.aborted) return;
        const code = codeOf(err);
        const message = isErrorCode(code) ? `${code}: ${(err as Error).message}` : (err as Error).message;
        if (peer.lastError !== message) {
          const level = code === ErrorCodes.UNAUTHORIZED ? 'error' : 'warn';
          this.options.log[level]({ peer: peer.node, url, err }, 'cannot link to peer; retrying');
        }
        // the peer's own dial may have linked while ours failed: that link's state stands
        if (!peer.mux?.up) {
          peer.lastError = message;
          peer.lastCause = err as Error;
          peer.state = peer.links > 0 ? 'down' : 'connecting';
        }
        await pause(backoff * (0.75 + Math.random() / 2), signal);
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      }
    }
  }

  /**
   * A link's medium errors before the Mux takes it over (the handshake): the link may close at
   * any moment, and a write to a closed one fails with EPIPE. Such a failure ends the handshake
   * (its read rejects or times out), never the daemon.
   */
  private guard(conn: Connection, node: string | undefined): void {
    const log = (err: Error): void => this.options.log.debug({ err, peer: node }, 'peer link: medium error during the handshake');
    conn.input.on('error', log);
    conn.output.on('error', log);
  }

  /** A failed TLS verification of `peer`, reworded to say which file to fix; other errors as they are. */
  private explainTls(peer: Peer, url: string, err: unknown): unknown {
    const tls = (err as SluiceError).details?.['tls'];
    if (!hasCode(err, ErrorCodes.UNAUTHORIZED) || typeof tls !== 'string') return err;
    const host = new URL(url).hostname;
    const ca = this.options.ca;
    let fix: string;
    if (tls === 'ERR_TLS_CERT_ALTNAME_INVALID' || tls === 'HOSTNAME_MISMATCH') {
      fix = `the certificate of peer "${peer.node}" is not for ${host}: fix its --tls-cert (its subjectAltName must list ${host}), or the host in its --peers URL`;
    } else if (tls === 'CERT_HAS_EXPIRED' || tls === 'CERT_NOT_YET_VALID') {
      fix = `the certificate of peer "${peer.node}" is outside its validity period: renew its --tls-cert`;
    } else if (ca) {
      fix = `the certificate of peer "${peer.node}" does not chain to a CA in ${ca.path} (--tls-ca): fix that file, or the peer's --tls-cert`;
    } else {
      fix = `the certificate of peer "${peer.node}" does not chain to one of Node's default CAs: give the CA that signed it with --tls-ca FILE`;
    }
    // Node 24 appends advice about --use-system-ca to the reason: the fix that applies is ours, below
    const reason = (((err as Error).cause as Error | undefined)?.message ?? (err as Error).message).replace(/; if the root CA is installed locally, try running Node\.js with --use-system-ca$/, '');
    return new ConnectError(ErrorCodes.UNAUTHORIZED, `TLS verification of peer "${peer.node}" at ${url} failed: ${reason} (${tls}); ${fix}`, {
      cause: err,
      details: { node: peer.node, url, tls },
    });
  }

  private register(node: string, conn: Connection, role: 'dialer' | 'listener'): void {
    let peer = this.peers.get(node);
    if (!peer) {
      peer = this.newPeer(node, undefined);
      this.peers.set(node, peer);
    }
    const dialedBy = role === 'dialer' ? this.options.node : node;
    if (peer.mux?.up) {
      const preferred = this.options.node < node ? this.options.node : node;
      if (dialedBy !== preferred) {
        conn.destroy();
        return;
      }
      // the streams on it go on to their end; new ones take the new link
      const replaced = peer.mux;
      this.retired.add(replaced);
      void replaced.closed.then(() => this.retired.delete(replaced));
      replaced.retire(new ConnectError(ErrorCodes.UNAVAILABLE, 'replaced by the link the other node dialled'));
    }
    const mux = new Mux(conn, role, { windowBytes: this.options.windowBytes, ...(this.options.budget ? { budget: this.options.budget } : {}) });
    mux.serve((endpoint) => {
      if (endpoint === CONTROL_ENDPOINT) return (c) => void this.serveRequest(node, c);
      return this.options.onChannel(node, endpoint);
    });
    peer.mux = mux;
    peer.dialedBy = dialedBy;
    peer.state = 'up';
    peer.since = Date.now();
    peer.links++;
    peer.lastError = undefined;
    peer.lastCause = undefined;
    this.options.log.info({ peer: node, dialedBy, links: peer.links }, 'peer link up');
    for (const wake of [...peer.waiters]) wake();
    this.options.onLinkUp?.(node);
    const linked = peer;
    void mux.closed.then((why) => {
      linked.pastSent += mux.bytesSent;
      linked.pastReceived += mux.bytesReceived;
      if (linked.mux !== mux) return;
      linked.mux = undefined;
      linked.state = 'down';
      linked.since = Date.now();
      linked.lastError = why.message;
      linked.lastCause = why;
      if (!this.stopping.signal.aborted) this.options.log.warn({ peer: node, reason: why.message }, 'peer link down');
    });
  }
}
