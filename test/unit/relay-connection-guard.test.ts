/**
 * The relay's guard of last resort: an error that escapes a connection's handling — a defect, not
 * anything the producer sent — is logged with the connection's context and ends that connection
 * only; the relay (and the process) goes on serving others.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Lease } from '../../server/balance.js';
import { createMetrics } from '../../server/metrics.js';
import type { Ingress as Relay } from '../../server/paths/ingress.js';
import { RunRegistry } from '../../server/runs.js';
import { validateWorkflow, type Workflow } from '../../server/workflow.js';
import { ChannelWriter, RELAY_SOCKET, unixTransport } from '../../transports/index.js';
import { wireOneNode } from '../helpers/one-node.js';
import { outcome } from '../helpers/streams.js';

const lines: Array<Record<string, unknown>> = [];
const log = pino(
  { level: 'debug' },
  new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      callback();
    },
  }),
);

let dir: string;
let runs: RunRegistry;
let relay: Relay;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sluice-guard-'));
  runs = new RunRegistry({ dir, node: 'node-a', runTtlSeconds: 3600, maxRuns: 5, log });
  await runs.start();
  const workflows = new Map<string, Workflow>();
  // a balancer with a defect: its lease throws when it is read
  const broken = async (): Promise<Lease> =>
    ({
      index: 0,
      local: true,
      end: () => undefined,
      get replica(): string {
        throw new TypeError('a defect in the balancer');
      },
    }) as Lease;
  ({ relay } = wireOneNode({ dir, runs, log, metrics: createMetrics({ runs }), workflows, bindTimeoutMs: 1000, balance: broken }));
  await relay.start();
});

afterAll(async () => {
  await relay?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('the relay guard', () => {
  it('logs an error that escaped a connection with its run, closes that connection, and serves the next', async () => {
    const workflow = validateWorkflow({ name: 'bal', steps: { p: {}, c: { replicas: 2 } }, edges: [{ from: 'p', to: 'c', fanout: 'balance' }] });
    const run = await runs.create({ workflow });
    const open = async (): Promise<Error & { code?: string }> => {
      const conn = await unixTransport.dial(join(dir, RELAY_SOCKET));
      const writer = new ChannelWriter(conn, { hello: { run: run.id, from: { step: 'p', index: 0 }, to: { step: 'c' }, token: run.token } });
      writer.end(Buffer.from('payload'));
      return (await outcome(writer))!;
    };
    const first = await open();
    // the producer learns its stream failed (its connection cut), never that it was delivered
    expect(first).toBeDefined();
    const logged = lines.find((l) => l.msg === 'relay connection: unexpected failure; the connection is closed, the daemon goes on');
    expect(logged).toMatchObject({ level: 50, run: run.id, from: { step: 'p', index: 0 }, err: { message: 'a defect in the balancer' } });
    // and the relay goes on: a second producer is served (and refused, typed, as it opened its stream already)
    const second = await open();
    expect(second.code).toMatch(/^SLUICE_/);
  });
});
