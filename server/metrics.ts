/**
 * The daemon's Prometheus metrics (`GET /metrics`), on a registry of its own so that several
 * daemons in one process (tests) do not share counters.
 *
 * What can be read from the daemon's own state (runs and their channels, peer links, replicas)
 * is read at each scrape (`collect()`), so deletion, expiry and restarts need no bookkeeping
 * here and cannot make a figure drift. The streams' histograms are observed where a stream
 * ends on this node (`streamStarted`).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

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
  workflow: string;
  step: string;
  index: number;
  node: string;
  streams: number;
  ejected: boolean;
  ejections: number;
}

/** Where this node's balanced streams went, read at each scrape (`Balancer.shares`). */
export interface ShareFigures {
  local: number;
  remote: number;
}

/** The run registry as the metrics read it at each scrape (`RunRegistry`). */
export interface RunFigures {
  list(): Array<{ channels: Map<string, { path: string; state: string }> }>;
  /** runs created on this node since it started (not those taken up again after a restart) */
  readonly created: number;
  /** runs removed since it started: deleted by a request (here or at a peer), or expired (TTL) */
  readonly removed: { readonly deleted: number; readonly expired: number };
}

/**
 * The path a stream took on this node, as the histograms label it: `fifo` or `unix` (delivered
 * to its consumer here, from this node's relay or from a peer), `remote` (passed to the
 * consumer's node over a peer link), `store` (written to the object store).
 */
export type StreamPath = 'fifo' | 'unix' | 'remote' | 'store';

/** One stream being carried: tell it of each chunk passed on, and that it ended well. */
export interface StreamObservation {
  /** `n` bytes were passed on toward the consumer (or the store) */
  bytes(n: number): void;
  /** the stream was delivered whole: observe its duration, time to first byte and size */
  done(): void;
}

/** Seconds: 1 ms to 10 min. */
const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
/** Seconds: 0.5 ms to 30 s (a consumer that comes late waits up to --attach-timeout). */
const TTFB_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Bytes: 1 KiB to 16 GiB, ×4. */
const BYTES_BUCKETS = Array.from({ length: 13 }, (_, k) => 1024 * 4 ** k);

export interface MetricsSources {
  runs: RunFigures;
  peers?: () => PeerFigures[];
  replicas?: () => { replicas: ReplicaFigures[]; shares: ShareFigures };
  /** the daemon's version, for `sluice_build_info` */
  version?: string;
}

export function createMetrics(sources: MetricsSources) {
  const { runs } = sources;
  const peers = sources.peers ?? (() => []);
  const replicas = sources.replicas ?? (() => ({ replicas: [], shares: { local: 0, remote: 0 } }));
  const registry = new Registry();
  // the conventional process_* and nodejs_* names, unprefixed, as every Node exporter has them
  collectDefaultMetrics({ register: registry });
  // gauges named *_total, which Prometheus reads as counters (promtool's lint refuses them); each
  // is the sum of the same gauge by type (nodejs_active_handles{type}, ...), which stays
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name);
  const replicaLabels = (r: ReplicaFigures) => ({ workflow: r.workflow, step: r.step, instance: String(r.index), node: r.node });
  const streamDuration = new Histogram({
    name: 'sluice_stream_duration_seconds',
    help: 'Streams carried whole by this node, by path: seconds from taking the stream to its end',
    labelNames: ['path'],
    buckets: DURATION_BUCKETS,
    registers: [registry],
  });
  const streamTtfb = new Histogram({
    name: 'sluice_stream_ttfb_seconds',
    help: 'Streams carried whole by this node, by path: seconds from taking the stream to passing its first byte on',
    labelNames: ['path'],
    buckets: TTFB_BUCKETS,
    registers: [registry],
  });
  const streamBytes = new Histogram({
    name: 'sluice_stream_bytes',
    help: 'Streams carried whole by this node, by path: bytes passed on (payload on fifo and store; framed bytes on unix and remote)',
    labelNames: ['path'],
    buckets: BYTES_BUCKETS,
    registers: [registry],
  });
  return {
    registry,
    /** Start observing a stream this node carries on `path`; call `done()` once it was delivered whole. */
    streamStarted(path: StreamPath): StreamObservation {
      const start = process.hrtime.bigint();
      const seconds = (): number => Number(process.hrtime.bigint() - start) / 1e9;
      let ttfb: number | undefined;
      let total = 0;
      return {
        bytes(n) {
          if (n > 0 && ttfb === undefined) ttfb = seconds();
          total += n;
        },
        done() {
          const duration = seconds();
          streamDuration.observe({ path }, duration);
          // an empty stream has no first byte: its end is when it had all it would have
          streamTtfb.observe({ path }, ttfb ?? duration);
          streamBytes.observe({ path }, total);
        },
      };
    },
    buildInfo: new Gauge({
      name: 'sluice_build_info',
      help: 'Always 1: the version of this daemon and of the Node.js it runs on',
      labelNames: ['version', 'node_version'],
      registers: [registry],
      collect() {
        this.set({ version: sources.version ?? 'unknown', node_version: process.version }, 1);
      },
    }),
    runsCreated: new Counter({
      name: 'sluice_runs_created_total',
      help: 'Runs created on this node (here, by a peer or by discovery), since it started',
      registers: [registry],
      collect() {
        this.reset();
        this.inc(runs.created);
      },
    }),
    runsDeleted: new Counter({
      name: 'sluice_runs_deleted_total',
      help: 'Runs removed from this node since it started, by reason: deleted (by a request, here or at a peer) or expired (TTL)',
      labelNames: ['reason'],
      registers: [registry],
      collect() {
        this.reset();
        this.inc({ reason: 'deleted' }, runs.removed.deleted);
        this.inc({ reason: 'expired' }, runs.removed.expired);
      },
    }),
    runs: new Gauge({
      name: 'sluice_runs',
      help: 'Runs held by this node',
      registers: [registry],
      collect() {
        this.set(runs.list().length);
      },
    }),
    preparedChannels: new Gauge({
      name: 'sluice_prepared_channels',
      help: 'Channels of the runs held by this node with an end here, by path: fifo or unix (consumer here), remote (consumer on a peer)',
      labelNames: ['path'],
      registers: [registry],
      collect() {
        this.reset();
        // every path, so that a series goes back to 0 rather than vanishing
        const by = new Map<string, number>([['fifo', 0], ['unix', 0], ['remote', 0]]);
        for (const run of runs.list()) for (const c of run.channels.values()) by.set(c.path, (by.get(c.path) ?? 0) + 1);
        for (const [path, n] of by) this.set({ path }, n);
      },
    }),
    channels: new Gauge({
      name: 'sluice_channels',
      help: 'Channels of the runs held by this node with an end here, by state: prepared, relaying, done, failed',
      labelNames: ['state'],
      registers: [registry],
      collect() {
        this.reset();
        const by = new Map<string, number>([['prepared', 0], ['relaying', 0], ['done', 0], ['failed', 0]]);
        for (const run of runs.list()) for (const c of run.channels.values()) by.set(c.state, (by.get(c.state) ?? 0) + 1);
        for (const [state, n] of by) this.set({ state }, n);
      },
    }),
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
      help: 'Streams in flight to a consumer replica of a balance edge (labelled by workflow, step, instance and node), routed by this node or, as reported, by its peers',
      labelNames: ['workflow', 'step', 'instance', 'node'],
      registers: [registry],
      collect() {
        this.reset();
        for (const r of replicas().replicas) this.set(replicaLabels(r), r.streams);
      },
    }),
    replicaEjected: new Gauge({
      name: 'sluice_replica_ejected',
      help: 'Whether a consumer replica of a balance edge is ejected now (1) or admitted (0), by this node or a peer',
      labelNames: ['workflow', 'step', 'instance', 'node'],
      registers: [registry],
      collect() {
        this.reset();
        for (const r of replicas().replicas) this.set(replicaLabels(r), r.ejected ? 1 : 0);
      },
    }),
    replicaEjections: new Counter({
      name: 'sluice_replica_ejections_total',
      help: 'Times this node ejected a consumer replica of a balance edge after repeated failures',
      labelNames: ['workflow', 'step', 'instance', 'node'],
      registers: [registry],
      collect() {
        this.reset();
        for (const r of replicas().replicas) this.inc(replicaLabels(r), r.ejections);
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
