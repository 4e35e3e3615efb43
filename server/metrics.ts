/**
 * The daemon's Prometheus metrics (`GET /metrics`), on a registry of its own so that several
 * daemons in one process (tests) do not share counters.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

/** Per-peer figures, read at each scrape (`PeerLinks.status()`). */
export interface PeerFigures {
  node: string;
  state: string;
  channels: number;
  bytesSent: number;
  bytesReceived: number;
  reconnects: number;
}

/** Per-replica figures of balance edges, read at each scrape (`Balancer.status()`). */
export interface ReplicaFigures {
  replica: string;
  streams: number;
  ejected: boolean;
  ejections: number;
}

/** Where this node's balanced streams went, read at each scrape (`Balancer.shares`). */
export interface ShareFigures {
  local: number;
  remote: number;
}

/** `liveRuns`, `peers` and the replicas are read at each scrape, so expiry, links and routing need no bookkeeping here. */
export function createMetrics(
  liveRuns: () => number,
  peers: () => PeerFigures[] = () => [],
  replicas: () => { replicas: ReplicaFigures[]; shares: ShareFigures } = () => ({ replicas: [], shares: { local: 0, remote: 0 } }),
) {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'sluice_process_' });
  return {
    registry,
    runsCreated: new Counter({ name: 'sluice_runs_created_total', help: 'Runs created on this node', registers: [registry] }),
    runsDeleted: new Counter({ name: 'sluice_runs_deleted_total', help: 'Runs deleted or expired on this node', registers: [registry] }),
    runs: new Gauge({
      name: 'sluice_runs',
      help: 'Runs held by this node',
      registers: [registry],
      collect() {
        this.set(liveRuns());
      },
    }),
    preparedChannels: new Gauge({ name: 'sluice_prepared_channels', help: 'Channel endpoints prepared on this node, by path', labelNames: ['path'], registers: [registry] }),
    relayChannels: new Gauge({ name: 'sluice_relay_channels', help: 'Streams going through the relay now', registers: [registry] }),
    relayBytes: new Counter({ name: 'sluice_relay_bytes_total', help: 'Bytes carried by the relay', registers: [registry] }),
    storeBytes: new Counter({ name: 'sluice_store_bytes_total', help: 'Payload bytes written to or read from the object store, by direction', labelNames: ['direction'], registers: [registry] }),
    storeSegments: new Counter({ name: 'sluice_store_segments_total', help: 'Segments written to or read from the object store, by direction', labelNames: ['direction'], registers: [registry] }),
    storeStreams: new Counter({
      name: 'sluice_store_streams_total',
      help: 'Streams sent to the object store, by reason: spill (consumer not attached), forced (via: s3), unreachable (peer), persist (durable copy)',
      labelNames: ['reason'],
      registers: [registry],
    }),
    storeErrors: new Counter({ name: 'sluice_store_errors_total', help: 'Streams through the object store that failed, by Sluice error code', labelNames: ['code'], registers: [registry] }),
    errors: new Counter({ name: 'sluice_errors_total', help: 'Errors, by Sluice error code', labelNames: ['code'], registers: [registry] }),
    peerLinkUp: new Gauge({
      name: 'sluice_peer_link_up',
      help: 'Whether the link to a peer is up (1) or not (0)',
      labelNames: ['peer'],
      registers: [registry],
      collect() {
        this.reset();
        for (const p of peers()) this.set({ peer: p.node }, p.state === 'up' ? 1 : 0);
      },
    }),
    peerChannels: new Gauge({
      name: 'sluice_peer_channels',
      help: 'Connections open on the link to a peer (channels and control requests)',
      labelNames: ['peer'],
      registers: [registry],
      collect() {
        this.reset();
        for (const p of peers()) this.set({ peer: p.node }, p.channels);
      },
    }),
    peerBytesSent: new Counter({
      name: 'sluice_peer_bytes_sent_total',
      help: 'Channel bytes sent to a peer over its links',
      labelNames: ['peer'],
      registers: [registry],
      collect() {
        this.reset();
        for (const p of peers()) this.inc({ peer: p.node }, p.bytesSent);
      },
    }),
    peerBytesReceived: new Counter({
      name: 'sluice_peer_bytes_received_total',
      help: 'Channel bytes received from a peer over its links',
      labelNames: ['peer'],
      registers: [registry],
      collect() {
        this.reset();
        for (const p of peers()) this.inc({ peer: p.node }, p.bytesReceived);
      },
    }),
    peerReconnects: new Counter({
      name: 'sluice_peer_reconnects_total',
      help: 'Links to a peer that came up after the first one',
      labelNames: ['peer'],
      registers: [registry],
      collect() {
        this.reset();
        for (const p of peers()) this.inc({ peer: p.node }, p.reconnects);
      },
    }),
    replicaStreams: new Gauge({
      name: 'sluice_replica_streams',
      help: 'Streams in flight to a consumer replica of a balance edge (workflow/step[index]@node), routed by this node or, as reported, by its peers',
      labelNames: ['replica'],
      registers: [registry],
      collect() {
        this.reset();
        for (const r of replicas().replicas) this.set({ replica: r.replica }, r.streams);
      },
    }),
    replicaEjected: new Gauge({
      name: 'sluice_replica_ejected',
      help: 'Whether a consumer replica of a balance edge is ejected now (1) or admitted (0), by this node or a peer',
      labelNames: ['replica'],
      registers: [registry],
      collect() {
        this.reset();
        for (const r of replicas().replicas) this.set({ replica: r.replica }, r.ejected ? 1 : 0);
      },
    }),
    replicaEjections: new Counter({
      name: 'sluice_replica_ejections_total',
      help: 'Times this node ejected a consumer replica of a balance edge after repeated failures',
      labelNames: ['replica'],
      registers: [registry],
      collect() {
        this.reset();
        for (const r of replicas().replicas) this.inc({ replica: r.replica }, r.ejections);
      },
    }),
    balancedStreams: new Counter({
      name: 'sluice_balanced_streams_total',
      help: 'Streams on balance edges this node routed, by where their consumer replica was: local (this node) or remote',
      labelNames: ['to'],
      registers: [registry],
      collect() {
        this.reset();
        const { shares } = replicas();
        this.inc({ to: 'local' }, shares.local);
        this.inc({ to: 'remote' }, shares.remote);
      },
    }),
    requests: new Counter({ name: 'sluice_api_requests_total', help: 'Control API requests, by route and status', labelNames: ['route', 'status'], registers: [registry] }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
