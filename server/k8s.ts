/**
 * A small Kubernetes API client: in-cluster credentials, GET, and list + watch kept in a cache
 * (an "informer"), over node:http(s). Only what the daemon's discovery needs.
 *
 * - **Credentials.** The API server's URL comes from the config (`--k8s-api`, by default from
 *   KUBERNETES_SERVICE_HOST/PORT); the bearer token from `DIR/token`, read again at every
 *   request and every (re)connection, since bound service-account tokens rotate; the API server's
 *   CA from `DIR/ca.crt` (Node's default CAs when the file is absent).
 * - **List, then watch.** `Informer` lists the collection, remembers its `resourceVersion`, and
 *   watches from there (`watch=1&allowWatchBookmarks=true&resourceVersion=RV`): newline-delimited
 *   JSON events ADDED, MODIFIED, DELETED, BOOKMARK (only a newer resourceVersion) and ERROR (a
 *   `Status`). A watch the server ends (its `timeoutSeconds`) or a dropped connection is resumed
 *   from the last resourceVersion seen, after a back-off (200 ms doubling to 10 s) when it failed;
 *   `410 Gone` — as the HTTP status or as an ERROR event with code 410 — means that version is
 *   too old: the informer lists again and tells the changes since its cache as events. Every
 *   `resyncMs` it lists again too (a safety net), and a list also replays every object as
 *   MODIFIED so that handlers retry what was waiting.
 *
 * Errors are SLUICE_UNAVAILABLE (the API server cannot be reached, or answered 5xx) and
 * SLUICE_UNAUTHORIZED (401/403: the token or the RBAC rules), with the HTTP status in `details`.
 */
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ConnectError, ErrorCodes, ProtocolError, pause, type ErrorCode } from '../transports/index.js';

/** The fields of an object's metadata the daemon reads. */
export interface ObjectMeta {
  name?: string;
  namespace?: string;
  resourceVersion?: string;
  labels?: Record<string, string>;
  deletionTimestamp?: string;
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: ObjectMeta;
}

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED';

export interface KubeClientOptions {
  /** the API server, e.g. https://10.96.0.1:443 */
  api: string;
  /** the directory holding `token` and, optionally, `ca.crt` */
  credentials: string;
}

/** How long the server may keep one watch open, seconds (it then ends it; we resume). */
const WATCH_TIMEOUT_SECONDS = 300;
/** A watch silent for longer than this is taken as dropped (bookmarks come about every minute). */
const WATCH_IDLE_MS = (WATCH_TIMEOUT_SECONDS + 60) * 1000;
const BACKOFF_MIN_MS = 200;
const BACKOFF_MAX_MS = 10_000;
const REQUEST_TIMEOUT_MS = 30_000;
/** Largest list or watch line accepted, bytes. */
const MAX_BODY_BYTES = 64 * 1024 * 1024;

export class KubeClient {
  private readonly url: URL;
  private ca: Promise<string | undefined> | undefined;

  constructor(private readonly options: KubeClientOptions) {
    this.url = new URL(options.api);
  }

  /** GET `path` (with its query) and parse the JSON answer; `signal` abandons it. */
  async get<T>(path: string, signal?: AbortSignal): Promise<T> {
    const res = await this.request(path, REQUEST_TIMEOUT_MS, signal);
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of res as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        res.destroy();
        throw new ConnectError(ErrorCodes.UNAVAILABLE, `the Kubernetes API answered GET ${path} with over ${MAX_BODY_BYTES} bytes`);
      }
      chunks.push(chunk);
    }
    try {
      return JSON.parse(Buffer.concat(chunks).toString('utf8')) as T;
    } catch (err) {
      throw new ConnectError(ErrorCodes.UNAVAILABLE, `the Kubernetes API answered GET ${path} with something that is not JSON`, { cause: err });
    }
  }

  /**
   * GET `path` and return the response once its status is 200; any other status is thrown, as
   * a `KubeStatusError` carrying it. `idleMs` cuts a response that goes silent; `signal` cuts the
   * request, or the response being read.
   */
  async request(path: string, idleMs: number, signal?: AbortSignal): Promise<http.IncomingMessage> {
    const token = await this.token();
    const ca = await (this.ca ??= readFile(join(this.options.credentials, 'ca.crt'), 'utf8').catch(() => undefined));
    const secure = this.url.protocol === 'https:';
    const target = new URL(path, this.url);
    return new Promise((resolve, reject) => {
      const options: https.RequestOptions = {
        method: 'GET',
        headers: { accept: 'application/json', authorization: `Bearer ${token}`, 'user-agent': 'sluice' },
        ...(secure && ca ? { ca } : {}),
        ...(signal ? { signal } : {}),
      };
      const req = (secure ? https : http).request(target, options, (res) => {
        if (res.statusCode === 200) {
          res.setTimeout?.(idleMs);
          return resolve(res);
        }
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body.length < 4096 ? (body += c) : undefined));
        res.on('end', () => reject(statusError(res.statusCode ?? 0, body, path)));
        res.on('error', reject);
      });
      req.setTimeout(idleMs, () => req.destroy(new ConnectError(ErrorCodes.TIMEOUT, `the Kubernetes API did not answer GET ${path} within ${idleMs} ms`)));
      req.on('error', (err) => reject(err instanceof ConnectError ? err : new ConnectError(ErrorCodes.UNAVAILABLE, `cannot reach the Kubernetes API at ${this.url.origin}: ${err.message}`, { cause: err })));
      req.end();
    });
  }

  private async token(): Promise<string> {
    const file = join(this.options.credentials, 'token');
    try {
      return (await readFile(file, 'utf8')).trim();
    } catch (err) {
      throw new ConnectError(ErrorCodes.UNAUTHORIZED, `cannot read the service-account token ${file}: ${(err as Error).message}; mount the service account (automountServiceAccountToken) or give --k8s-credentials DIR`, { cause: err });
    }
  }
}

/** A status other than 200, with the API's `Status` message when it sent one. */
export class KubeStatusError extends ConnectError {
  constructor(
    readonly status: number,
    message: string,
    code: ErrorCode,
  ) {
    super(code, message, { details: { status } });
  }
}

function statusError(status: number, body: string, path: string): KubeStatusError {
  let message = body.slice(0, 200);
  try {
    message = String((JSON.parse(body) as { message?: unknown }).message ?? message);
  } catch {
    // not a Status object: keep the text
  }
  const hint = status === 401 ? ' (the service-account token was refused)' : status === 403 ? ' (the service account lacks this permission: check the RBAC rules in deploy/)' : '';
  return new KubeStatusError(status, `the Kubernetes API answered GET ${path} with ${status}${hint}: ${message}`, status === 401 || status === 403 ? ErrorCodes.UNAUTHORIZED : ErrorCodes.UNAVAILABLE);
}

export interface InformerOptions<T extends KubeObject> {
  client: KubeClient;
  /** the collection, e.g. /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices */
  path: string;
  /** selectors: labelSelector, fieldSelector */
  query?: Record<string, string>;
  resyncMs: number;
  log: Logger;
  /** told of every change; a (re)list tells what changed since the cache, and replays the rest as MODIFIED */
  onEvent: (type: WatchEventType, object: T) => void;
  /** told after each complete list (the cache holds the whole collection then) */
  onSynced?: () => void;
}

interface WatchEvent<T> {
  type: WatchEventType | 'BOOKMARK' | 'ERROR';
  object: T & { code?: number; message?: string };
}

/** Lists and watches one collection; see the file comment. */
export class Informer<T extends KubeObject> {
  /** the collection now, by namespace/name */
  readonly cache = new Map<string, T>();
  private resourceVersion: string | undefined;
  private readonly stopping = new AbortController();
  private current: http.IncomingMessage | undefined;
  private resyncDue = false;
  private timer: NodeJS.Timeout | undefined;
  /** lists done (for tests and the log) */
  lists = 0;

  constructor(private readonly options: InformerOptions<T>) {}

  start(): void {
    this.timer = setInterval(() => {
      this.resyncDue = true;
      this.current?.destroy();
    }, this.options.resyncMs);
    this.timer.unref();
    void this.loop();
  }

  stop(): void {
    this.stopping.abort();
    clearInterval(this.timer);
    this.current?.destroy();
  }

  private async loop(): Promise<void> {
    const { log } = this.options;
    let backoff = BACKOFF_MIN_MS;
    let lastError: string | undefined;
    while (!this.stopping.signal.aborted) {
      try {
        if (this.resourceVersion === undefined || this.resyncDue) {
          this.resyncDue = false;
          await this.list();
        }
        await this.watch();
        backoff = BACKOFF_MIN_MS;
        lastError = undefined;
      } catch (err) {
        if (this.stopping.signal.aborted) return;
        if (err instanceof KubeStatusError && err.status === 410) {
          log.info({ path: this.options.path }, 'watch expired (410 Gone): listing again');
          this.resourceVersion = undefined;
          continue;
        }
        if (this.resyncDue) continue; // cut on purpose to resync
        const message = (err as Error).message;
        if (message !== lastError) log.warn({ path: this.options.path, err }, 'Kubernetes watch failed; resuming');
        lastError = message;
        await pause(backoff * (0.75 + Math.random() / 2), this.stopping.signal);
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      }
    }
  }

  private query(extra: Record<string, string>): string {
    return `${this.options.path}?${new URLSearchParams({ ...this.options.query, ...extra }).toString()}`;
  }

  private async list(): Promise<void> {
    // stop() cuts a list in flight too: a request left running would keep a stopped daemon's process alive
    const answer = await this.options.client.get<{ metadata?: { resourceVersion?: string }; items?: T[] }>(this.query({}), this.stopping.signal);
    if (!Array.isArray(answer.items) || typeof answer.metadata?.resourceVersion !== 'string') {
      throw new ConnectError(ErrorCodes.UNAVAILABLE, `the Kubernetes API answered the list ${this.options.path} without items or resourceVersion`);
    }
    this.lists++;
    const seen = new Set<string>();
    for (const item of answer.items) {
      const k = keyOf(item);
      seen.add(k);
      const known = this.cache.has(k);
      this.cache.set(k, item);
      this.emit(known ? 'MODIFIED' : 'ADDED', item);
    }
    for (const [k, item] of [...this.cache]) {
      if (seen.has(k)) continue;
      this.cache.delete(k);
      this.emit('DELETED', item);
    }
    this.resourceVersion = answer.metadata.resourceVersion;
    this.options.onSynced?.();
  }

  private async watch(): Promise<void> {
    const res = await this.options.client.request(
      this.query({ watch: '1', allowWatchBookmarks: 'true', resourceVersion: this.resourceVersion!, timeoutSeconds: String(WATCH_TIMEOUT_SECONDS) }),
      WATCH_IDLE_MS,
      this.stopping.signal,
    );
    this.current = res;
    try {
      let pending = '';
      for await (const chunk of res as AsyncIterable<Buffer>) {
        pending += chunk.toString('utf8');
        if (pending.length > MAX_BODY_BYTES) throw new ConnectError(ErrorCodes.UNAVAILABLE, `a watch event of ${this.options.path} is over ${MAX_BODY_BYTES} bytes`);
        let nl: number;
        while ((nl = pending.indexOf('\n')) >= 0) {
          const line = pending.slice(0, nl).trim();
          pending = pending.slice(nl + 1);
          if (line) this.handle(JSON.parse(line) as WatchEvent<T>);
        }
      }
      // the server ended the watch (its timeout): resume from the last resourceVersion seen
      if (!res.complete) throw new ConnectError(ErrorCodes.UNAVAILABLE, `the watch of ${this.options.path} was cut`);
    } finally {
      this.current = undefined;
    }
  }

  private handle(event: WatchEvent<T>): void {
    const { type, object } = event;
    if (type === 'ERROR') {
      const status = object.code ?? 500;
      throw new KubeStatusError(status, `the watch of ${this.options.path} failed: ${object.message ?? 'ERROR event'}`, ErrorCodes.UNAVAILABLE);
    }
    const rv = object.metadata?.resourceVersion;
    if (type === 'BOOKMARK') {
      if (rv) this.resourceVersion = rv;
      return;
    }
    if (type !== 'ADDED' && type !== 'MODIFIED' && type !== 'DELETED') {
      throw new ProtocolError(`unknown watch event type ${JSON.stringify(type)}`);
    }
    const k = keyOf(object);
    if (type === 'DELETED') this.cache.delete(k);
    else this.cache.set(k, object);
    if (rv) this.resourceVersion = rv;
    this.emit(type, object);
  }

  private emit(type: WatchEventType, object: T): void {
    try {
      this.options.onEvent(type, object);
    } catch (err) {
      this.options.log.warn({ err, path: this.options.path, object: keyOf(object) }, 'a Kubernetes event handler failed');
    }
  }
}

function keyOf(o: KubeObject): string {
  return `${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`;
}
