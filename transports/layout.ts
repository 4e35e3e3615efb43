/**
 * Where a node's runs live on disk, shared by the daemon (which prepares them) and the client
 * library (which finds them without asking the daemon: no round trip before the first write).
 *
 * ```
 * $SLUICE_DIR/                     0755  the node's runtime directory
 *   daemon.sock                    0600  control API (HTTP over a Unix socket)
 *   relay.sock                     0666  producers whose consumer is not attached yet
 *   runs/                          0711  traversable, not listable
 *     <capability>/                0700  one run: the name is derived from the run's token
 *       run.json                   0600  the run's manifest (RunManifest)
 *       <from>.<i>-<to>.<j>        0600  FIFO: bytes of one channel, producer → consumer
 *       <from>.<i>-<to>.<j>.ack    0600  FIFO: the consumer's answer
 *       <from>.<i>-<to>.<j>        0600  or, for a consumer fed from another node, a Unix socket
 *                                        the consumer listens on (no .ack: answers go back on it)
 * ```
 *
 * A run's directory is named by `capabilityOf(run, token)`, an HMAC of the run id keyed by its
 * token. `runs/` cannot be listed, so only a function that holds the token can find — and open —
 * its run's endpoints: "a function cannot open another run's channels" holds without the daemon
 * in the data path.
 *
 * Names (workflows, steps, runs) are checked by `checkName` before they touch the file system:
 * 1-63 characters of `a-z 0-9 _ -`, starting with a letter or digit. That alphabet has no path
 * separator, no dot (so no `..`, and `.` can join names unambiguously), no space.
 */
import { createHmac } from 'node:crypto';
import { join } from 'node:path';
import { ErrorCodes, RequestError } from './errors.js';

export const NAME_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** Throws SLUICE_INVALID unless `value` is a valid name; `what` says which name, for the message. */
export function checkName(what: string, value: unknown): string {
  if (typeof value !== 'string' || !NAME_PATTERN.test(value)) {
    const shown = typeof value === 'string' ? JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value) : typeof value;
    throw new RequestError(ErrorCodes.INVALID, `${what} ${shown} is not a valid name: use 1-63 characters of a-z, 0-9, _ and -, starting with a letter or digit`, {
      details: { what },
    });
  }
  return value;
}

/** The name of a run's directory under `runs/`. */
export function capabilityOf(run: string, token: string): string {
  return createHmac('sha256', token).update(run).digest('hex').slice(0, 40);
}

export const DAEMON_SOCKET = 'daemon.sock';
export const RELAY_SOCKET = 'relay.sock';
export const RUNS_DIR = 'runs';
export const MANIFEST_FILE = 'run.json';

export function runDirectory(dir: string, run: string, token: string): string {
  return join(dir, RUNS_DIR, capabilityOf(run, token));
}

/** One end of a channel: a step and which of its instances (0-based). */
export interface InstanceRef {
  step: string;
  index: number;
}

/** The file name of a channel's endpoint inside its run directory. */
export function channelName(from: InstanceRef, to: InstanceRef): string {
  return `${from.step}.${from.index}-${to.step}.${to.index}`;
}

/** What a run's directory holds in run.json, for the client library. */
export interface RunManifest {
  /** manifest format version */
  v: 1;
  run: string;
  workflow: string;
  /** the node that wrote this manifest */
  node: string;
  steps: Record<string, { replicas: number; nodes: string[] }>;
  edges: Array<{
    from: string;
    to: string;
    fanout: 'broadcast' | 'partition' | 'balance';
    via: 'direct' | 's3';
    persist: boolean;
    policy?: 'local-first' | 'always-local' | 'least-loaded' | 'affinity';
    key?: 'run' | 'producer';
  }>;
  /**
   * every channel with at least one end on this node: `fifo` when its consumer is here (the
   * daemon made its FIFOs), `unix` when its consumer is here and its producer on another node (the
   * consumer listens on a Unix socket, into which this daemon delivers what the peer link
   * carries; a FIFO pair instead when the socket's path would be too long), `relay` when its
   * consumer is on another node (the producer streams to this daemon's relay socket, which
   * forwards over the peer link)
   */
  channels: Array<{ from: InstanceRef; to: InstanceRef; name: string; path: 'fifo' | 'unix' | 'relay' }>;
}

/**
 * The runtime directory when none is configured, the same for the daemon and the client:
 * `$XDG_RUNTIME_DIR/sluice` when that is set to an absolute path (XDG says to ignore a relative
 * one), else `/tmp/sluice-<uid>`.
 */
export function defaultRuntimeDir(env: Record<string, string | undefined>, uid: number): string {
  const xdg = env.XDG_RUNTIME_DIR;
  return xdg && xdg.startsWith('/') ? join(xdg, 'sluice') : `/tmp/sluice-${uid}`;
}
