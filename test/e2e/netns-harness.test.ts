/** The multi-node harness itself: namespaces joined by a bridge, links cut and restored, teardown. */
import { once } from 'node:events';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, namespacesAvailable, netnsList, type Cluster, type NetnsNode } from '../../harness/netns.js';

const availability = await namespacesAvailable();
const skipReason = availability.ok ? '' : ` (skipped: ${availability.why})`;

/** Echoes the sha256 (hex) of everything a connection sends, then closes it. Prints its port. */
const SERVER = `
const net = require('node:net');
const crypto = require('node:crypto');
const server = net.createServer((socket) => {
  const hash = crypto.createHash('sha256');
  let bytes = 0;
  socket.on('data', (c) => { hash.update(c); bytes += c.length; });
  socket.on('end', () => socket.end(JSON.stringify({ digest: hash.digest('hex'), bytes })));
  socket.on('error', () => socket.destroy());
});
server.listen(0, process.argv[1], () => process.stdout.write(JSON.stringify({ port: server.address().port }) + '\\n'));
`;

/**
 * Sends argv[3] random bytes to argv[1]:argv[2] and checks the digest the server returns. Fails
 * if not connected within argv[4] ms or not done within 20 s. Prints one JSON line.
 */
const CLIENT = `
const net = require('node:net');
const crypto = require('node:crypto');
const [host, port, size, connectMs] = process.argv.slice(1);
const data = crypto.randomBytes(Number(size));
const local = crypto.createHash('sha256').update(data).digest('hex');
const started = Date.now();
const finish = (result) => { process.stdout.write(JSON.stringify({ ...result, local, ms: Date.now() - started }) + '\\n'); process.exit(result.ok ? 0 : 1); };
const socket = net.connect({ host, port: Number(port) });
const connectTimer = setTimeout(() => { socket.destroy(); finish({ ok: false, error: 'connect timeout' }); }, Number(connectMs));
const overall = setTimeout(() => { socket.destroy(); finish({ ok: false, error: 'transfer timeout' }); }, 20000);
let reply = '';
socket.on('connect', () => { clearTimeout(connectTimer); socket.end(data); });
socket.on('data', (c) => { reply += c; });
socket.on('end', () => {
  clearTimeout(overall);
  let remote;
  try { remote = JSON.parse(reply); } catch { return finish({ ok: false, error: 'bad reply: ' + reply }); }
  finish({ ok: remote.digest === local && remote.bytes === data.length, remote: remote.digest, bytes: remote.bytes });
});
socket.on('error', (err) => { clearTimeout(connectTimer); clearTimeout(overall); finish({ ok: false, error: err.code || err.message }); });
`;

interface ClientResult {
  ok: boolean;
  local: string;
  remote?: string;
  bytes?: number;
  error?: string;
  ms: number;
}

function collect(child: ChildProcess): { out: () => string; err: () => string } {
  let out = '';
  let err = '';
  child.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (err += c.toString()));
  return { out: () => out, err: () => err };
}

async function send(from: NetnsNode, host: string, port: number, size: number, connectMs: number): Promise<ClientResult> {
  const child = from.spawn(process.execPath, ['-e', CLIENT, host, String(port), String(size), String(connectMs)], { stdio: ['ignore', 'pipe', 'pipe'] });
  const io = collect(child);
  await once(child, 'exit');
  const line = io.out().trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as ClientResult;
  } catch {
    throw new Error(`client in ${from.name} printed no result; stdout: ${io.out()} stderr: ${io.err()}`);
  }
}

async function startServer(on: NetnsNode): Promise<{ child: ChildProcess; port: number }> {
  const child = on.spawn(process.execPath, ['-e', SERVER, on.address], { stdio: ['ignore', 'pipe', 'pipe'] });
  const io = collect(child);
  const deadline = Date.now() + 10_000;
  while (!io.out().includes('\n')) {
    if (child.exitCode !== null) throw new Error(`server in ${on.name} exited ${child.exitCode}: ${io.err()}`);
    if (Date.now() > deadline) throw new Error(`server in ${on.name} not listening after 10 s: ${io.err()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  const { port } = JSON.parse(io.out().split('\n')[0] ?? '') as { port: number };
  return { child, port };
}

const MiB = 1024 * 1024;

describe.skipIf(!availability.ok)(`a 3-node namespace cluster${skipReason}`, () => {
  let cluster: Cluster;
  let names: string[] = [];
  let server: { child: ChildProcess; port: number };

  beforeAll(async () => {
    cluster = await createCluster(3);
    names = cluster.namespaces();
    server = await startServer(cluster.nodes[0]!);
  });
  afterAll(async () => {
    server?.child.kill('SIGKILL');
    await cluster?.destroy();
  });

  it('gives each node its own namespace and 10.213.0.x address, present in ip netns list', async () => {
    expect(cluster.nodes.map((n) => n.address)).toEqual(['10.213.0.1', '10.213.0.2', '10.213.0.3']);
    expect(new Set(cluster.nodes.map((n) => n.name)).size).toBe(3);
    const listed = await netnsList();
    for (const ns of names) expect(listed).toContain(ns);
    // the address exists inside the node's namespace, on its own interface
    const { stdout } = await cluster.nodes[1]!.exec('ip', ['-4', '-o', 'addr', 'show', 'dev', 'eth0']);
    expect(stdout).toContain('10.213.0.2/24');
  });

  it('carries 8 MiB intact from node 1 and node 2 to a server in node 0', async () => {
    const node0 = cluster.nodes[0]!;
    const [r1, r2] = await Promise.all([
      send(cluster.nodes[1]!, node0.address, server.port, 8 * MiB, 3_000),
      send(cluster.nodes[2]!, node0.address, server.port, 8 * MiB, 3_000),
    ]);
    for (const r of [r1, r2]) {
      expect(r.error).toBeUndefined();
      expect(r.bytes).toBe(8 * MiB);
      expect(r.remote).toBe(r.local);
      expect(r.ok).toBe(true);
    }
    expect(r1.local).not.toBe(r2.local);
  });

  it('cuts node 0 off with linkDown() and reconnects it with linkUp()', async () => {
    const node0 = cluster.nodes[0]!;
    const node1 = cluster.nodes[1]!;
    await node0.linkDown();
    try {
      const cut = await send(node1, node0.address, server.port, 64 * 1024, 1_000);
      expect(cut.ok).toBe(false);
      expect(cut.error).toMatch(/connect timeout|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT/);
    } finally {
      await node0.linkUp();
    }
    const back = await send(node1, node0.address, server.port, 1 * MiB, 5_000);
    expect(back.error).toBeUndefined();
    expect(back.ok).toBe(true);
    expect(back.remote).toBe(back.local);
  });

  it('limits a node to the shaped rate and lifts the limit with unshape()', async () => {
    const node0 = cluster.nodes[0]!;
    const node2 = cluster.nodes[2]!;
    await node2.shape(16);
    try {
      // 1 MiB = 8.4 Mbit: at least ~0.5 s at 16 Mbit/s, minus one burst
      const slow = await send(node2, node0.address, server.port, 1 * MiB, 3_000);
      expect(slow.ok).toBe(true);
      expect(slow.ms).toBeGreaterThanOrEqual(350);
    } finally {
      await node2.unshape();
    }
    const after = await send(node2, node0.address, server.port, 1 * MiB, 3_000);
    expect(after.ok).toBe(true);
  });

  it('leaves no namespace behind after destroy(), and destroy() is idempotent', async () => {
    server.child.kill('SIGKILL');
    await cluster.destroy();
    await cluster.destroy();
    const listed = await netnsList();
    for (const ns of names) expect(listed).not.toContain(ns);
    expect(listed.filter((n) => n.startsWith(`${cluster.prefix}-`))).toEqual([]);
  });
});
