/**
 * The wire contract between Sluice endpoints.
 *
 * A **Transport** is one medium (a Unix socket, a pair of named pipes, an in-memory pipe, ...)
 * that knows how to do two things:
 *
 * - `listen(endpoint)`: the consumer's side. Prepares the endpoint (creates the socket file or
 *   the FIFOs, with restrictive permissions) and returns a `Listener` that accepts producers.
 *   A run's endpoints are prepared this way before any function starts ("proactive set-up").
 * - `dial(endpoint)`: the producer's side. Opens the endpoint, waiting up to `timeoutMs` for a
 *   listener to serve it, and returns a `Connection`.
 *
 * A **Connection** is a pair of byte streams: `output` carries bytes to the peer, `input` brings
 * the peer's bytes. A transport only moves bytes; it does not frame, checksum or interpret them.
 * That is the channel layer's job (`channel.ts`), written once and shared by every transport, so
 * every path keeps one contract. Both streams apply back-pressure: `output.write()` returns
 * false while the medium (kernel buffer, peer's window) is full, and `input` stops reading from
 * the medium while it is paused.
 *
 * Errors: `dial` and `accept` reject with a `SluiceError` — `SLUICE_UNAVAILABLE` when nothing
 * serves the endpoint within `timeoutMs`, `SLUICE_ABORTED` when the signal fires first (also
 * when it had fired before the call), `SLUICE_INVALID` for a bad endpoint. Errors on the streams
 * of an open Connection are the medium's own (EPIPE, ECONNRESET, ...); the channel layer
 * translates them, once.
 *
 * Every transport passes the compliance suite in `test/compliance/`.
 */
import type { Readable, Writable } from 'node:stream';

/** How a channel's bytes travel. `relay`, `ws`, `s3` and `file` arrive with the daemon. */
export type PathName = 'fifo' | 'shm' | 'unix' | 'memory' | 'ws' | 's3' | 'file' | 'relay';

export interface Connection {
  /** Bytes from the peer. Emits 'end' when the peer closed its output, 'error' on a medium failure. */
  readonly input: Readable;
  /** Bytes to the peer. `end()` closes this direction only; the peer's input then ends. */
  readonly output: Writable;
  /** Close both directions at once, without flushing. Idempotent. */
  destroy(error?: Error): void;
}

export interface DialOptions {
  /** Give up waiting for the endpoint when this fires (SLUICE_ABORTED). */
  signal?: AbortSignal;
  /**
   * How long to wait for a listener to serve the endpoint, in milliseconds. Default 10000.
   * 0 means one attempt. A proactively prepared endpoint is served before functions start, so
   * the wait only matters when a producer starts before its consumer.
   */
  timeoutMs?: number;
}

export interface AcceptOptions {
  /** Stop waiting when this fires (SLUICE_ABORTED). */
  signal?: AbortSignal;
}

export interface ListenOptions {
  /** File mode of the endpoint's files. Default 0o600: only the owner can open it. */
  mode?: number;
  /**
   * Nothing is read from an accepted connection until its input is resumed (or read): its bytes
   * wait in the kernel, not in this process. Unix sockets only; ignored elsewhere. Default false.
   */
  paused?: boolean;
}

export interface Listener {
  /** The endpoint this listener serves. */
  readonly endpoint: string;
  /** The next producer's connection. Waits until one arrives. */
  accept(options?: AcceptOptions): Promise<Connection>;
  /**
   * Stop accepting, reject pending `accept()` calls with SLUICE_ABORTED, drop connections
   * that were never accepted, and remove the endpoint's files if `listen` created them (files
   * prepared beforehand, by the daemon, stay). Accepted connections stay open.
   * Idempotent.
   */
  close(): Promise<void>;
}

export interface Transport {
  /** The path this transport implements, as reported in status and benchmarks. */
  readonly path: PathName;
  listen(endpoint: string, options?: ListenOptions): Promise<Listener>;
  dial(endpoint: string, options?: DialOptions): Promise<Connection>;
}

export const DEFAULT_DIAL_TIMEOUT_MS = 10_000;
