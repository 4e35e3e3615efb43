/**
 * Several "nodes" on one machine for cross-node tests: each node is a Linux network namespace
 * with one veth link to a "switch" namespace holding a Linux bridge.
 *
 *   node ns <prefix>-n<i>:  lo (up), eth0 = 10.213.<subnet>.<i+1>/24
 *   switch ns <prefix>-sw:  br0 (bridge), v<i> = peer of node i's eth0, enslaved to br0
 *
 * Everything is created inside namespaces the harness creates (the veth pair is created in the
 * switch namespace with its peer moved straight into the node namespace), so nothing is
 * configured on the host's own interfaces and traffic can only reach loopback or those
 * namespaces. destroy() kills the processes left in the namespaces and deletes them (which
 * deletes their interfaces); a process 'exit' hook does the same synchronously, and clusters
 * left behind by a killed test process (its pid no longer alive) are removed by the next
 * createCluster().
 *
 * In harness/, beside the embedded S3 server, because the e2e tests and the benchmarks both use
 * it: bench/ does not import test/.
 */
import { execFile, execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { promisify } from 'node:util';
import { hasCode } from '../transports/errors.js';

const execFileAsync = promisify(execFile);

/** Namespace names made here start with this, then `<pid base 36>-<counter>-`. */
const NAME_PREFIX = 'sluice-';
const STALE_PATTERN = /^sluice-([0-9a-z]+)-[0-9a-z]+-(?:sw|n\d+)$/;

export interface NetnsNode {
  /** index in the cluster */
  index: number;
  /** the network namespace's name (`ip netns exec <name> ...`) */
  name: string;
  /** the node's IPv4 address on the cluster's /24, e.g. 10.213.0.1 */
  address: string;
  /** the node's interface inside its namespace (always eth0) */
  device: string;
  /** Start `cmd args` inside this node's namespace (`ip netns exec`); env defaults to process.env. */
  spawn(cmd: string, args: string[], opts?: SpawnOptions): ChildProcess;
  /** Run `cmd args` inside the namespace and wait for it; rejects on a non-zero exit. */
  exec(cmd: string, args: string[], opts?: { timeoutMs?: number }): Promise<{ stdout: string; stderr: string }>;
  /** Cut this node off the others: its port on the switch goes down (its own eth0 loses carrier). */
  linkDown(): Promise<void>;
  /** Reconnect it; resolves once both ends of the link are operationally up again. */
  linkUp(): Promise<void>;
  /** Limit the node's link to `rateMbit` in both directions (tc tbf; netem is not available). */
  shape(rateMbit: number): Promise<void>;
  /** Remove any shaping. */
  unshape(): Promise<void>;
}

export interface Cluster {
  /** the cluster's name prefix; every namespace it made starts with it */
  prefix: string;
  /** the switch namespace */
  switchName: string;
  nodes: NetnsNode[];
  /** every namespace name the cluster created (switch first) */
  namespaces(): string[];
  /** Kill processes left in the namespaces and delete them. Idempotent. */
  destroy(): Promise<void>;
}

export interface ClusterOptions {
  /** third octet of 10.213.X.0/24 used inside the cluster (default 0) */
  subnet?: number;
}

let counter = 0;
const live = new Set<{ namespaces: () => string[]; destroyed: boolean }>();
let exitHookInstalled = false;

async function ip(args: string[], timeoutMs = 10_000): Promise<string> {
  try {
    const { stdout } = await execFileAsync('ip', args, { timeout: timeoutMs, encoding: 'utf8' });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message?: string };
    throw new Error(`ip ${args.join(' ')}: ${(e.stderr ?? '').trim() || e.message}`);
  }
}

async function tc(ns: string, args: string[]): Promise<void> {
  try {
    await execFileAsync('ip', ['netns', 'exec', ns, 'tc', ...args], { timeout: 10_000, encoding: 'utf8' });
  } catch (err) {
    const e = err as { stderr?: string; message?: string };
    throw new Error(`tc ${args.join(' ')} (in ${ns}): ${(e.stderr ?? '').trim() || e.message}`);
  }
}

function pidsIn(ns: string): number[] {
  try {
    return execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split(/\s+/)
      .filter((s) => /^\d+$/.test(s))
      .map(Number)
      .filter((p) => p !== process.pid);
  } catch {
    return [];
  }
}

/** Synchronous removal: SIGKILL the processes inside each namespace, then delete it. */
function removeNamespacesSync(names: string[]): void {
  for (const ns of names) {
    for (const pid of pidsIn(ns)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  for (const ns of names) {
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 10_000 });
    } catch {
      // already gone
    }
  }
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of live) {
      if (!c.destroyed) removeNamespacesSync(c.namespaces());
      c.destroyed = true;
    }
    live.clear();
  });
}

function listNamespaces(): string[] {
  try {
    return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split('\n')
      .map((l) => l.trim().split(/\s+/)[0] ?? '')
      .filter((n) => n.length > 0);
  } catch {
    return [];
  }
}

/** Names of namespaces currently present (`ip netns list`). */
export async function netnsList(): Promise<string[]> {
  const out = await ip(['netns', 'list']);
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n.length > 0);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return hasCode(err, 'EPERM');
  }
}

/** Remove namespaces left by harness processes that no longer exist (e.g. a SIGKILLed test worker). */
export function sweepStale(): void {
  const stale = listNamespaces().filter((n) => {
    const m = STALE_PATTERN.exec(n);
    if (!m?.[1]) return false;
    const pid = parseInt(m[1], 36);
    return pid !== process.pid && !alive(pid);
  });
  if (stale.length > 0) removeNamespacesSync(stale);
}

let availability: Promise<{ ok: true } | { ok: false; why: string }> | undefined;

/**
 * Whether this machine lets the tests make namespaces, veth pairs and bridges: actually creates a
 * probe namespace with a veth pair and a bridge in it, then deletes it. Cached per process.
 */
export function namespacesAvailable(): Promise<{ ok: true } | { ok: false; why: string }> {
  availability ??= (async () => {
    if (process.platform !== 'linux') return { ok: false as const, why: `network namespaces need Linux (this is ${process.platform})` };
    const probe = `${NAME_PREFIX}${process.pid.toString(36)}-probe-n0`;
    try {
      await ip(['netns', 'add', probe]);
    } catch (err) {
      return { ok: false as const, why: `cannot create a network namespace: ${(err as Error).message}` };
    }
    try {
      await ip(['-n', probe, 'link', 'add', 'pa', 'type', 'veth', 'peer', 'name', 'pb']);
      await ip(['-n', probe, 'link', 'add', 'pbr', 'type', 'bridge']);
      await ip(['-n', probe, 'link', 'set', 'pa', 'master', 'pbr']);
      return { ok: true as const };
    } catch (err) {
      return { ok: false as const, why: `namespace made, but no veth/bridge in it: ${(err as Error).message}` };
    } finally {
      try {
        await ip(['netns', 'del', probe]);
      } catch {
        removeNamespacesSync([probe]);
      }
    }
  })();
  return availability;
}

async function waitOperUp(ns: string, dev: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = JSON.parse(await ip(['-n', ns, '-j', 'link', 'show', 'dev', dev])) as Array<{ operstate?: string }>;
    if (info[0]?.operstate === 'UP') return;
    if (Date.now() > deadline) throw new Error(`${dev} in ${ns} not up after ${timeoutMs} ms (operstate ${info[0]?.operstate})`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Create `size` nodes joined by a bridge. Call destroy() when done (after-hooks). */
export async function createCluster(size: number, options: ClusterOptions = {}): Promise<Cluster> {
  const subnet = options.subnet ?? 0;
  if (!Number.isInteger(size) || size < 1 || size > 250) throw new Error(`cluster size must be 1..250, got ${size}`);
  if (!Number.isInteger(subnet) || subnet < 0 || subnet > 255) throw new Error(`subnet must be 0..255, got ${subnet}`);
  installExitHook();
  sweepStale();

  const prefix = `${NAME_PREFIX}${process.pid.toString(36)}-${(counter++).toString(36)}`;
  const switchName = `${prefix}-sw`;
  const created: string[] = [];
  const record = { namespaces: () => [...created], destroyed: false };
  live.add(record);

  const destroy = async (): Promise<void> => {
    if (record.destroyed) return;
    record.destroyed = true;
    live.delete(record);
    // Kill what was started inside first: a namespace with processes in it outlives `ip netns del`.
    for (const ns of created) {
      for (const pid of pidsIn(ns)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    }
    const failures: string[] = [];
    for (const ns of [...created].reverse()) {
      try {
        await ip(['netns', 'del', ns]);
      } catch (err) {
        if (listNamespaces().includes(ns)) failures.push((err as Error).message);
      }
    }
    if (failures.length > 0) throw new Error(`cluster ${prefix} not fully removed: ${failures.join('; ')}`);
  };

  try {
    await ip(['netns', 'add', switchName]);
    created.push(switchName);
    await ip(['-n', switchName, 'link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0']);
    await ip(['-n', switchName, 'link', 'set', 'br0', 'up']);

    const nodes: NetnsNode[] = [];
    for (let i = 0; i < size; i++) {
      const name = `${prefix}-n${i}`;
      const port = `v${i}`;
      const device = 'eth0';
      const address = `10.213.${subnet}.${i + 1}`;
      await ip(['netns', 'add', name]);
      created.push(name);
      await ip(['-n', switchName, 'link', 'add', port, 'type', 'veth', 'peer', 'name', device, 'netns', name]);
      await ip(['-n', switchName, 'link', 'set', port, 'master', 'br0']);
      await ip(['-n', switchName, 'link', 'set', port, 'up']);
      await ip(['-n', name, 'link', 'set', 'lo', 'up']);
      await ip(['-n', name, 'addr', 'add', `${address}/24`, 'dev', device]);
      await ip(['-n', name, 'link', 'set', device, 'up']);

      nodes.push({
        index: i,
        name,
        address,
        device,
        spawn(cmd, args, opts = {}) {
          return spawn('ip', ['netns', 'exec', name, cmd, ...args], { env: process.env, ...opts });
        },
        async exec(cmd, args, opts = {}) {
          const { stdout, stderr } = await execFileAsync('ip', ['netns', 'exec', name, cmd, ...args], {
            timeout: opts.timeoutMs ?? 30_000,
            encoding: 'utf8',
            maxBuffer: 64 * 1024 * 1024,
          });
          return { stdout, stderr };
        },
        async linkDown() {
          await ip(['-n', switchName, 'link', 'set', port, 'down']);
        },
        async linkUp() {
          await ip(['-n', switchName, 'link', 'set', port, 'up']);
          await waitOperUp(switchName, port);
          await waitOperUp(name, device);
        },
        async shape(rateMbit) {
          if (!(rateMbit > 0)) throw new Error(`rate must be > 0 Mbit/s, got ${rateMbit}`);
          // burst: at least 32 KiB and 4 ms worth of the rate, so GSO-sized packets still pass
          const burst = Math.max(32 * 1024, Math.ceil((rateMbit * 1e6) / 8 / 250));
          const tbf = ['root', 'tbf', 'rate', `${rateMbit}mbit`, 'burst', String(burst), 'latency', '100ms'];
          await tc(name, ['qdisc', 'replace', 'dev', device, ...tbf]); // node → others
          await tc(switchName, ['qdisc', 'replace', 'dev', port, ...tbf]); // others → node
        },
        async unshape() {
          for (const [ns, dev] of [[name, device], [switchName, port]] as const) {
            try {
              await tc(ns, ['qdisc', 'del', 'dev', dev, 'root']);
            } catch (err) {
              // no root qdisc to delete is fine
              if (!/No such file|Cannot delete qdisc with handle of zero|Invalid handle/i.test((err as Error).message)) throw err;
            }
          }
        },
      });
    }
    for (const n of nodes) await waitOperUp(n.name, n.device);
    return { prefix, switchName, nodes, namespaces: () => [...created], destroy };
  } catch (err) {
    await destroy().catch(() => undefined);
    throw err;
  }
}
