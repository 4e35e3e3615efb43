/**
 * Sluice errors.
 *
 * Every error Sluice raises on purpose is a `SluiceError` with a stable `code` (`SLUICE_*`).
 * Match on `err.code`, not on `instanceof`: a bundled function may hold two copies of this
 * library, and codes survive being sent across a process boundary, `instanceof` does not.
 * The low-level error that caused it (an errno from a socket, an S3 response, ...) is kept as
 * `cause`. Low-level errors are translated once, where they arise (`fromSystemError`).
 *
 * The table of codes is documented in docs/errors.md; a test keeps the two in sync.
 */

export const ErrorCodes = {
  /** The stream ended before its trailer: the producer, its process or the link went away. */
  TRUNCATED: 'SLUICE_TRUNCATED',
  /** The producer aborted the stream on purpose (it called `destroy(err)` or `abort()`). */
  PRODUCER_ABORTED: 'SLUICE_PRODUCER_ABORTED',
  /** The consumer went away, or refused the stream, before it verified the bytes. */
  CONSUMER_GONE: 'SLUICE_CONSUMER_GONE',
  /** The bytes received do not match the trailer's length or checksum. */
  CORRUPT: 'SLUICE_CORRUPT',
  /** The peer sent something that is not Sluice's wire protocol, or breaks it. */
  PROTOCOL: 'SLUICE_PROTOCOL',
  /** An endpoint, daemon or peer could not be reached. */
  UNAVAILABLE: 'SLUICE_UNAVAILABLE',
  /** An operation did not finish within its time limit. */
  TIMEOUT: 'SLUICE_TIMEOUT',
  /** The caller aborted the operation (through an AbortSignal). */
  ABORTED: 'SLUICE_ABORTED',
  /** A request or argument is malformed: a bad name, an oversized body, a bad option value. */
  INVALID: 'SLUICE_INVALID',
  /** The named run, workflow, step or channel does not exist. */
  NOT_FOUND: 'SLUICE_NOT_FOUND',
  /** The request conflicts with what exists: a run id that is taken. */
  CONFLICT: 'SLUICE_CONFLICT',
  /** A token or secret is missing or wrong. */
  UNAUTHORIZED: 'SLUICE_UNAUTHORIZED',
  /** A configuration option is missing or invalid; the message names the option and the fix. */
  CONFIG: 'SLUICE_CONFIG',
  /** The object store failed after its retries. */
  STORE_UNAVAILABLE: 'SLUICE_STORE_UNAVAILABLE',
  /** An unexpected failure inside Sluice (a bug); the daemon logged it. */
  INTERNAL: 'SLUICE_INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

const allCodes: ReadonlySet<string> = new Set(Object.values(ErrorCodes));

/** Is `code` one of Sluice's stable codes? Useful when a code arrives over the wire. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && allCodes.has(code);
}

export interface SluiceErrorOptions {
  cause?: unknown;
  /** Structured context (channel, offset, option name, ...), also logged. */
  details?: Record<string, unknown>;
}

/** The base of every Sluice error. */
export class SluiceError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: SluiceErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details;
  }

  override get name(): string {
    return this.constructor.name;
  }

  toJSON(): { code: ErrorCode; message: string; details?: Record<string, unknown> } {
    return this.details ? { code: this.code, message: this.message, details: this.details } : { code: this.code, message: this.message };
  }
}

/** A byte stream did not complete intact: truncated, corrupt, aborted by either end. */
export class StreamError extends SluiceError {}

/** The peer broke the wire protocol: garbage, unknown version, oversized or malformed frames. */
export class ProtocolError extends SluiceError {
  constructor(message: string, options?: SluiceErrorOptions) {
    super(ErrorCodes.PROTOCOL, message, options);
  }
}

/** Something could not be reached, or did not answer in time, or the caller gave up. */
export class ConnectError extends SluiceError {}

/** A request was refused: invalid input, unknown names, wrong credentials, bad configuration. */
export class RequestError extends SluiceError {}

/**
 * The `code` an error carries — one of Sluice's (`SLUICE_*`), an errno (`ENOENT`), one of Node's
 * (`ERR_*`) — or undefined when it has none, or a `code` that is not a string. Takes anything
 * (a thrown value need not be an Error, nor an object) and never throws.
 */
export function codeOf(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * Does `err` carry this code? Matches by `code`, not `instanceof`, so it works across copies of
 * the library and for plain objects that crossed a process boundary; any string code may be
 * asked for (an errno such as `'ENOENT'` too). Without `code`: does `err` carry one of Sluice's
 * codes (see `isErrorCode`)? Takes anything and never throws.
 */
export function hasCode(err: unknown, code?: ErrorCode | string): boolean {
  const given = codeOf(err);
  return code === undefined ? isErrorCode(given) : given === code;
}

const unreachableErrnos = new Set(['ENOENT', 'ECONNREFUSED', 'ENXIO', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTDIR']);
const goneErrnos = new Set(['EPIPE', 'ECONNRESET', 'ERR_STREAM_PREMATURE_CLOSE', 'ERR_STREAM_DESTROYED']);

/**
 * Translate an error from the OS or Node's streams into a SluiceError, once, at the transport
 * boundary. `role` says which side saw it: a broken pipe seen by a producer means the consumer
 * is gone, seen by a consumer it means the stream was truncated. `relayed` is a producer whose
 * connection goes to a daemon that carries the stream on (this node's relay socket), named by
 * `context.via`: that connection breaking means the daemon failed — a daemon tells its producer
 * of a consumer's failure with an ABORT — so it is SLUICE_UNAVAILABLE naming the daemon.
 */
export function fromSystemError(err: unknown, role: 'producer' | 'relayed' | 'consumer' | 'dial', context: Record<string, unknown> = {}): SluiceError {
  if (err instanceof SluiceError) return err;
  if (hasCode(err)) return err as SluiceError;
  const errno = codeOf(err) ?? '';
  const text = err instanceof Error ? err.message : String(err);
  const details = { ...context, errno: errno || undefined };
  if (role === 'dial') {
    if (unreachableErrnos.has(errno)) {
      return new ConnectError(ErrorCodes.UNAVAILABLE, `endpoint not reachable (${errno}): ${text}`, { cause: err, details });
    }
    if (errno === 'ABORT_ERR') return new ConnectError(ErrorCodes.ABORTED, 'aborted before connecting', { cause: err, details });
    return new ConnectError(ErrorCodes.UNAVAILABLE, `cannot connect: ${text}`, { cause: err, details });
  }
  if (role === 'relayed') {
    return new ConnectError(ErrorCodes.UNAVAILABLE, `${brokenRelay(String(context.via ?? 'the daemon'), errno)}: ${text}`, { cause: err, details });
  }
  if (role === 'producer') {
    const why = goneErrnos.has(errno) ? `the consumer closed its end (${errno})` : text;
    return new StreamError(ErrorCodes.CONSUMER_GONE, `consumer gone before verifying the stream: ${why}`, { cause: err, details });
  }
  return new StreamError(ErrorCodes.TRUNCATED, `stream ended before its trailer: ${text}`, { cause: err, details });
}

/**
 * What a producer is told when its connection to the daemon relaying its stream breaks before
 * the consumer's verdict (the daemon stopped or was killed): the party that failed, by name.
 */
export function brokenRelay(via: string, errno?: string): string {
  return `the connection to ${via} broke mid-stream${errno ? ` (${errno})` : ''}, before the consumer verified the stream: that daemon stopped or was killed`;
}
