/**
 * The daemon's Prometheus metrics (`GET /metrics`), on a registry of its own so that several
 * daemons in one process (tests) do not share counters.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

/** `liveRuns` is read at each scrape, so expiry needs no bookkeeping. */
export function createMetrics(liveRuns: () => number) {
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
    errors: new Counter({ name: 'sluice_errors_total', help: 'Errors, by Sluice error code', labelNames: ['code'], registers: [registry] }),
    requests: new Counter({ name: 'sluice_api_requests_total', help: 'Control API requests, by route and status', labelNames: ['route', 'status'], registers: [registry] }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
