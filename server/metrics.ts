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

/** `liveRuns` and `peers` are read at each scrape, so expiry and links need no bookkeeping. */
export function createMetrics(liveRuns: () => number, peers: () => PeerFigures[] = () => []) {
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
    requests: new Counter({ name: 'sluice_api_requests_total', help: 'Control API requests, by route and status', labelNames: ['route', 'status'], registers: [registry] }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
