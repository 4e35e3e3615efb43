/**
 * The daemon: runs, peer links, the legs of server/paths/ and the control API put together,
 * started and stopped as one. The objects, each given the others it uses: the memory budget, the
 * run registry, the peer links, the balancer, the store leg (`Fallback`), the binder, the peer
 * leg, the cluster (workflows and runs across nodes), local delivery, the relay socket's ingress,
 * and the control API over them.
 */
import fs from 'node:fs/promises';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { ConnectError, DAEMON_SOCKET, ErrorCodes, MemoryBudget, RequestError, removeStaleSocket, type ObjectStore } from '../transports/index.js';
import { buildApi, type ApiServer } from './api.js';
import { Binder } from './binding.js';
import type { DaemonConfig } from './config.js';
import { createMetrics } from './metrics.js';
import { Balancer } from './balance.js';
import { Cluster } from './cluster.js';
import { Ingress } from './paths/ingress.js';
import { LocalDelivery } from './paths/local.js';
import { PeerLeg } from './paths/peer.js';
import { Fallback } from './paths/store.js';
import { KubeClient, type Informer, type KubeObject } from './k8s.js';
import { LABELS, discoverPeers, discoverPlacements, runTokenFor } from './k8s-discovery.js';
import { openStore } from '../transports/store-s3.js';
import { PeerLinks } from './peers.js';
import { RunRegistry } from './runs.js';
import { DAEMON_NODE_FLAGS, hasDaemonNodeFlags } from './node-flags.js';
import type { Workflow } from './workflow.js';

/** The end of the grace period kept for writing to the store the streams whose consumer has not come (at most half of it), ms. */
const SPILL_RESERVE_MS = 5_000;

export interface Daemon {
  readonly config: DaemonConfig;
  readonly socketPath: string;
  /** the TCP control address, when `listen` was configured (port resolved if it was 0; https:// with TLS) */
  readonly tcpAddress: string | undefined;
  readonly runs: RunRegistry;
  readonly log: Logger;
  /**
   * Stop: refuse new work at once (readyz turns 503; new runs, workflows, relay connections,
   * channels and runs shared by peers are refused; discovery stops), let relayed streams and
   * stored streams being fed to a consumer finish for up to `graceMs` (default: the config's
   * `graceMs`, `--grace`) — streams still waiting for their consumer go to the object store
   * when 5 s (at most half the period) are left — then cut what is left and remove the control
   * socket. A peer whose
   * channel to this node is refused stores the stream instead (when both share a store). Stored
   * streams whose consumer has not come yet stay in the store; the next daemon on this directory
   * takes their runs up again and feeds them.
   */
  close(graceMs?: number): Promise<void>;
}

export interface StartOptions {
  version: string;
  /** Default: pino at the config's log level and format. */
  log?: Logger;
  /**
   * Test-only: the object store to use instead of the one `config.store` names (tests that run
   * daemons in their own process wrap a real store to fault or observe it at an exact step).
   * The CLI never sets it. Default: `openStore(config.store)`.
   */
  store?: ObjectStore;
}

export async function startDaemon(config: DaemonConfig, options: StartOptions): Promise<Daemon> {
  const log =
    options.log ??
    pino({ level: config.logLevel, base: { node: config.node }, ...(config.logFormat === 'json-levels' ? { formatters: { level: (label: string) => ({ level: label }) } } : {}) });
  await fs.mkdir(config.dir, { recursive: true, mode: 0o755 });
  const runs = new RunRegistry({ dir: config.dir, node: config.node, runTtlSeconds: config.runTtlSeconds, maxRuns: config.maxRuns, log });
  if (Object.keys(config.peers).length > 0 && !config.secret) {
    throw new RequestError(ErrorCodes.CONFIG, '--peers needs the cluster secret (--secret-file or SLUICE_SECRET): peer links open only with proof of it', { details: { option: 'secret' } });
  }
  /** set on close: from then on no new run, channel or relayed stream is admitted */
  let draining = false;
  const stopping = (): ConnectError => new ConnectError(ErrorCodes.UNAVAILABLE, `node ${config.node} is stopping: it admits no new runs or channels`);
  // what the buffers of every stream on this daemon hold together: relay, replay tails, peer windows
  const budget = new MemoryBudget(config.memoryBudgetBytes);
  // peer links when there is a secret: dialled to the listed peers, served on the TCP port
  const peers = config.secret
    ? new PeerLinks({
        node: config.node,
        peers: config.peers,
        secret: config.secret,
        ca: config.tlsCa,
        windowBytes: config.peerWindowBytes,
        budget,
        heartbeatMs: config.peerHeartbeatMs,
        log,
        onRequest: (from, request) => {
          if (request.op === 'replicas') return Promise.resolve(balancer.onReport(from, request) ?? null);
          return draining && request.op === 'prepare' ? Promise.reject(stopping()) : cluster.onRequest(from, request);
        },
        onChannel: (from, endpoint) => {
          if (draining) throw stopping();
          return peer.onChannel(from, endpoint);
        },
        onLinkUp: (node) => cluster.onLinkUp(node),
      })
    : undefined;
  const balancer = new Balancer({
    node: config.node,
    maxStreams: config.replicaMaxStreams,
    outlier: { consecutiveFailures: config.ejectAfterFailures, baseEjectionMs: config.ejectionMs, maxEjectionMs: 10 * config.ejectionMs, maxEjectedPercent: 50 },
    waitMs: config.attachTimeoutMs,
    log,
    share: (report) => {
      for (const p of peers?.status() ?? []) {
        if (!peers!.isUp(p.node)) continue;
        peers!.request(p.node, { ...report }, 5_000).catch((err: unknown) => log.debug({ err, peer: p.node }, 'replica report not delivered'));
      }
    },
  });
  const metrics = createMetrics({
    runs,
    peers: () => peers?.status() ?? [],
    replicas: () => ({ replicas: balancer.status(), shares: balancer.shares }),
    version: options.version,
    budget,
  });
  const fallback = new Fallback({ store: options.store ?? openStore(config.store), segmentBytes: config.segmentBytes, log, metrics });
  await fallback.start();
  await runs.start();
  // runs a previous daemon left here: streams it stored reach their consumers, without delaying readiness
  for (const run of runs.list()) {
    fallback.adopt(run).catch((err: unknown) => log.warn({ err, run: run.id }, 'cannot look for the stored streams of a run taken up again'));
  }
  /** the pods scheduled here that carry a run label, with Kubernetes discovery */
  let pods: Informer<KubeObject> | undefined;
  const binder = new Binder({
    node: config.node,
    runs,
    timeoutMs: config.bindTimeoutMs,
    log,
    ...(config.discovery === 'kubernetes' && config.secret
      ? {
          placement: {
            tokenOf: (run: string) => runTokenFor(config.secret!, run),
            placedHere: (run: string) => [...(pods?.cache.values() ?? [])].some((p) => p.metadata?.labels?.[LABELS.run] === run),
          },
        }
      : {}),
  });
  // runs taken up again are ready as they are
  for (const run of runs.list()) binder.ready(run);
  const workflows = new Map<string, Workflow>();
  const peer: PeerLeg = new PeerLeg({
    node: config.node,
    budget,
    runs,
    peers,
    attachTimeoutMs: config.attachTimeoutMs,
    relayBufferBytes: config.relayBufferBytes,
    // the link's window, plus what the queues on either side of it may hold (a few 256 KiB pieces)
    replayBytes: config.peerWindowBytes + 1024 * 1024,
    log,
    metrics,
    fallback,
  });
  const cluster: Cluster = new Cluster({ node: config.node, dir: config.dir, runs, peers, log, workflows, fallback, peer, onRunReady: (run) => binder.ready(run) });
  // deletes owed to peers that were down, taken up before the links (and their onLinkUp) start
  await cluster.restore();
  const delivery = new LocalDelivery({ relayBufferBytes: config.relayBufferBytes, attachTimeoutMs: config.attachTimeoutMs, log, metrics, fallback, peer });
  const ingress = new Ingress({ runs, dir: config.dir, budget, relayBufferBytes: config.relayBufferBytes, attachTimeoutMs: config.attachTimeoutMs, log, metrics, peer, local: delivery, balancer });
  await ingress.start();

  let ready = false;
  const context = { node: config.node, version: options.version, runs, cluster, peers, relay: ingress, balancer, metrics, workflows, binder, maxBodyBytes: config.maxBodyBytes, ready: () => ready };
  const servers: ApiServer[] = [];
  const socketPath = join(config.dir, DAEMON_SOCKET);
  await removeStaleSocket(socketPath);
  const local = refuseWhileDraining(buildApi(context));
  await local.listen({ path: socketPath });
  await fs.chmod(socketPath, 0o600);
  servers.push(local);
  let tcpAddress: string | undefined;
  if (config.listen) {
    const loopback = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/.test(config.listen.host);
    if (!config.secret && !loopback) {
      await local.close();
      await ingress.stop();
      await runs.stop();
      throw new RequestError(ErrorCodes.CONFIG, `--listen ${config.listen.host}:${config.listen.port} would open the control API to the network: set a cluster secret (--secret-file or SLUICE_SECRET), which TCP clients then present as a bearer token, or listen on 127.0.0.1`);
    }
    if (!config.secret) log.warn('the TCP control API on loopback has no secret: any local user can administer this node through it');
    const tls = config.tlsCert && config.tlsKey ? { cert: config.tlsCert.pem, key: config.tlsKey.pem } : undefined;
    const tcp = refuseWhileDraining(buildApi({ ...context, bearerSecret: config.secret, https: tls }));
    if (tls) {
      tcp.server.on('tlsClientError', (err: Error & { code?: string }, socket: { remoteAddress?: string }) => {
        const fields = { remote: socket.remoteAddress, code: err.code };
        if (err.code === 'ERR_SSL_HTTP_REQUEST') log.warn(fields, 'plain HTTP on the TLS port: a peer that lists this node with ws:// must use wss://');
        // a client that hangs up mid-handshake: a TCP probe, or a peer that rejected our
        // certificate (Node sends no alert, so its own log says why); too common to warn about
        else if (err.code === 'ECONNRESET') log.debug(fields, 'TLS handshake with a client failed');
        else log.warn(fields, 'TLS handshake with a client failed');
      });
      const plain = Object.entries(config.peers).filter(([, url]) => url.startsWith('ws://'));
      if (plain.length > 0) {
        log.warn({ peers: plain.map(([name]) => name) }, 'this node serves TLS but dials these peers over ws://: links it dials to them are not encrypted (fine while a cluster moves to TLS)');
      }
    }
    tcpAddress = await tcp.listen({ host: config.listen.host, port: config.listen.port });
    servers.push(tcp);
    peers?.start(tcp.server);
  } else {
    if (peers && Object.keys(config.peers).length > 0) log.warn('no --listen: this node dials its peers, and they cannot dial it');
    peers?.start(undefined);
  }
  const informers: Array<Pick<Informer<KubeObject>, 'stop'>> = [];
  if (config.discovery === 'kubernetes') {
    const client = new KubeClient({ api: config.k8sApi!, credentials: config.k8sCredentials });
    const common = { client, resyncMs: config.k8sResyncMs, log: log.child({ discovery: 'kubernetes' }) };
    if (peers) informers.push(discoverPeers({ ...common, namespace: config.k8sNamespace!, service: config.k8sService, tls: config.tlsCert !== undefined, peers }));
    informers.push(
      (pods = discoverPlacements({
        ...common,
        node: config.node,
        secret: config.secret!,
        runs,
        workflows,
        createRun: (request) => cluster.createRun(request),
      })),
    );
  }
  ready = true;
  log.info({ dir: config.dir, socket: socketPath, tcp: tcpAddress, config: config.toJSON() }, 'sluice daemon ready');
  if (!hasDaemonNodeFlags()) {
    log.warn({ want: DAEMON_NODE_FLAGS, have: process.execArgv }, `node runs without the daemon's options: start it as \`sluice daemon\`, or \`node ${DAEMON_NODE_FLAGS.join(' ')} .../cli.js daemon\` (without them, its GC can take half its CPU under load)`);
  }

  let closing: Promise<void> | undefined;
  return {
    config,
    socketPath,
    tcpAddress,
    runs,
    log,
    close(graceMs = config.graceMs) {
      closing ??= (async () => {
        ready = false;
        draining = true;
        log.info({ graceMs }, 'sluice daemon stopping');
        for (const informer of informers) informer.stop();
        binder.close();
        await ingress.stop();
        const deadline = Date.now() + graceMs;
        // streams still waiting for their consumer then go to the store, in time to be written
        const spillAt = deadline - Math.min(graceMs / 2, SPILL_RESERVE_MS);
        let spilled = false;
        // streams the relay carries, streams from peers being delivered here (both in the relay
        // gauge), and stored streams being fed to a consumer, may finish
        const inFlight = async (): Promise<number> => {
          const relaying = (await metrics.relayChannels.get()).values.reduce((n, v) => n + v.value, 0);
          return Math.max(ingress.activeChannels, relaying) + fallback.feeding;
        };
        while ((await inFlight()) > 0 && Date.now() < deadline) {
          if (!spilled && Date.now() >= spillAt) {
            spilled = true;
            log.info('grace period ending: streams still waiting for their consumer go to the object store');
            delivery.spillWaiting();
          }
          await new Promise((r) => setTimeout(r, 50));
        }
        const left = await inFlight();
        if (left > 0) log.warn({ streams: left }, 'grace period over: cutting streams in flight');
        ingress.abortInFlight();
        delivery.abortInFlight();
        await peers?.close();
        await Promise.all(servers.map((s) => s.close()));
        await runs.stop();
        balancer.stop();
        fallback.stop();
        log.info('sluice daemon stopped');
      })();
      return closing;
    },
  };

  /** While draining, the API refuses what would admit new work: new runs and workflows. */
  function refuseWhileDraining(api: ApiServer): ApiServer {
    api.addHook('onRequest', async (request) => {
      if (draining && request.method === 'POST') throw stopping();
    });
    return api;
  }
}
