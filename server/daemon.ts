/**
 * The daemon: runs, relay, peer links and control API put together, started and stopped as one.
 */
import fs from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import { DAEMON_SOCKET, ErrorCodes, RequestError, removeStaleSocket } from '../transports/index.js';
import { buildApi } from './api.js';
import type { DaemonConfig } from './config.js';
import { createMetrics } from './metrics.js';
import { Cluster } from './cluster.js';
import { Fallback } from './fallback.js';
import { openStore } from '../transports/store-s3.js';
import { PeerLinks } from './peers.js';
import { Relay } from './relay.js';
import { RunRegistry } from './runs.js';
import type { Workflow } from './workflow.js';

export interface Daemon {
  readonly config: DaemonConfig;
  readonly socketPath: string;
  /** the TCP control address, when `listen` was configured (port resolved if it was 0) */
  readonly tcpAddress: string | undefined;
  readonly runs: RunRegistry;
  readonly log: Logger;
  /**
   * Stop: refuse new work at once (readyz turns 503), let relayed streams finish for up to
   * `graceMs` (default 10000), then cut what is left and remove the control socket.
   */
  close(graceMs?: number): Promise<void>;
}

export async function startDaemon(config: DaemonConfig, options: { version: string; log?: Logger }): Promise<Daemon> {
  const log = options.log ?? pino({ level: config.logLevel, base: { node: config.node } });
  await fs.mkdir(config.dir, { recursive: true, mode: 0o755 });
  const runs = new RunRegistry({ dir: config.dir, node: config.node, runTtlSeconds: config.runTtlSeconds, maxRuns: config.maxRuns, log });
  if (Object.keys(config.peers).length > 0 && !config.secret) {
    throw new RequestError(ErrorCodes.CONFIG, '--peers needs the cluster secret (--secret-file or SLUICE_SECRET): peer links open only with proof of it', { details: { option: 'secret' } });
  }
  // peer links when there is a secret: dialled to the listed peers, served on the TCP port
  const peers = config.secret
    ? new PeerLinks({
        node: config.node,
        peers: config.peers,
        secret: config.secret,
        windowBytes: config.peerWindowBytes,
        heartbeatMs: config.peerHeartbeatMs,
        log,
        onRequest: (from, request) => cluster.onRequest(from, request),
        onChannel: (from, endpoint) => cluster.onChannel(from, endpoint),
        onLinkUp: (node) => cluster.onLinkUp(node),
      })
    : undefined;
  const metrics = createMetrics(
    () => runs.size,
    () => peers?.status() ?? [],
  );
  const fallback = new Fallback({ store: openStore(config.store), segmentBytes: config.segmentBytes, log, metrics });
  await fallback.start();
  await runs.start();
  const workflows = new Map<string, Workflow>();
  const cluster: Cluster = new Cluster({
    node: config.node,
    runs,
    peers,
    attachTimeoutMs: config.attachTimeoutMs,
    relayBufferBytes: config.relayBufferBytes,
    log,
    metrics,
    workflows,
    fallback,
  });
  const relay = new Relay(runs, {
    dir: config.dir,
    relayBufferBytes: config.relayBufferBytes,
    attachTimeoutMs: config.attachTimeoutMs,
    log,
    metrics,
    forward: (run, channel, conn, head) => cluster.forward(run, channel, conn, head),
    link: (run, channel) => cluster.link(run, channel),
    fallback,
  });
  await relay.start();

  let ready = false;
  const context = { node: config.node, version: options.version, runs, cluster, peers, relay, metrics, workflows, maxBodyBytes: config.maxBodyBytes, ready: () => ready };
  const servers: FastifyInstance[] = [];
  const socketPath = join(config.dir, DAEMON_SOCKET);
  await removeStaleSocket(socketPath);
  const local = buildApi(context);
  await local.listen({ path: socketPath });
  await fs.chmod(socketPath, 0o600);
  servers.push(local);
  let tcpAddress: string | undefined;
  if (config.listen) {
    const loopback = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/.test(config.listen.host);
    if (!config.secret && !loopback) {
      await local.close();
      await relay.stop();
      await runs.stop();
      throw new RequestError(ErrorCodes.CONFIG, `--listen ${config.listen.host}:${config.listen.port} would open the control API to the network: set a cluster secret (--secret-file or SLUICE_SECRET), which TCP clients then present as a bearer token, or listen on 127.0.0.1`);
    }
    if (!config.secret) log.warn('the TCP control API on loopback has no secret: any local user can administer this node through it');
    const tcp = buildApi({ ...context, bearerSecret: config.secret });
    tcpAddress = await tcp.listen({ host: config.listen.host, port: config.listen.port });
    servers.push(tcp);
    peers?.start(tcp.server);
  } else {
    if (peers && Object.keys(config.peers).length > 0) log.warn('no --listen: this node dials its peers, and they cannot dial it');
    peers?.start(undefined);
  }
  ready = true;
  log.info({ dir: config.dir, socket: socketPath, tcp: tcpAddress, config: config.toJSON() }, 'sluice daemon ready');

  let closing: Promise<void> | undefined;
  return {
    config,
    socketPath,
    tcpAddress,
    runs,
    log,
    close(graceMs = 10_000) {
      closing ??= (async () => {
        ready = false;
        log.info('sluice daemon stopping');
        await relay.stop();
        const deadline = Date.now() + graceMs;
        while (relay.activeChannels > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
        if (relay.activeChannels > 0) log.warn({ streams: relay.activeChannels }, 'grace period over: cutting relayed streams');
        relay.abortInFlight();
        await peers?.close();
        await Promise.all(servers.map((s) => s.close()));
        await runs.stop();
        fallback.stop();
        log.info('sluice daemon stopped');
      })();
      return closing;
    },
  };
}
