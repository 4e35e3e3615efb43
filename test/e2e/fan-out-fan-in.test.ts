/** Fan-out and fan-in across steps and replicas, through a real daemon's channels. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { connect } from '../../client/index.js';
import { startDaemonProcess, type DaemonProcess } from '../helpers/daemon.js';
import { finished } from 'node:stream/promises';

let daemon: DaemonProcess;
let serial = 0;
beforeAll(async () => {
  daemon = await startDaemonProcess();
});
afterAll(async () => {
  await daemon?.stop();
});

async function runOf(steps: Record<string, { replicas?: number }>, edges: Array<{ from: string; to: string; fanout?: string }>): Promise<{ run: string; token: string }> {
  const name = `fan-${++serial}`;
  await control(daemon.dir, 'POST', '/v1/workflows', { name, steps, edges });
  return (await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: name })).body;
}

async function collect<T>(source: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const v of source) out.push(v);
  return out;
}

describe('fan-out', () => {
  it('partitions records by key: each key always to the same replica, nothing lost or repeated', async () => {
    const run = await runOf({ p: {}, q: { replicas: 3 } }, [{ from: 'p', to: 'q', fanout: 'partition' }]);
    const consumers = await Promise.all([0, 1, 2].map((instance) => connect({ dir: daemon.dir, ...run, step: 'q', instance })));
    const received = Promise.all(consumers.map((c) => collect(c.input('p').records()) as Promise<Array<{ key: string; seq: number }>>));
    const producer = await connect({ dir: daemon.dir, ...run, step: 'p' });
    const out = producer.output('q');
    const keys = Array.from({ length: 60 }, (_, i) => `key-${i}`);
    for (let seq = 0; seq < 3000; seq++) {
      const key = keys[seq % keys.length]!;
      await out.send({ key, seq }, key);
    }
    out.end();
    await finished(out);
    const perReplica = await received;
    expect(perReplica.flat().length).toBe(3000);
    expect(perReplica.every((recs) => recs.length > 0)).toBe(true); // 60 keys spread over 3 replicas
    const home = new Map<string, number>();
    perReplica.forEach((recs, replica) => {
      for (const r of recs) {
        expect(home.get(r.key) ?? replica, `key ${r.key} went to two replicas`).toBe(replica);
        home.set(r.key, replica);
      }
      // in order within each replica
      expect(recs.map((r) => r.seq)).toEqual([...recs.map((r) => r.seq)].sort((a, b) => a - b));
    });
    expect(new Set(perReplica.flat().map((r) => r.seq)).size).toBe(3000);
  });

  it('refuses raw bytes on a partition edge: records with a key only', async () => {
    const run = await runOf({ p: {}, q: { replicas: 2 } }, [{ from: 'p', to: 'q', fanout: 'partition' }]);
    const producer = await connect({ dir: daemon.dir, ...run, step: 'p' });
    const out = producer.output('q');
    out.on('error', () => undefined);
    out.write(Buffer.from('no key'));
    await expect(finished(out)).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
  });
});

describe('fan-in', () => {
  it("reads a replicated predecessor's streams one after another, in instance order", async () => {
    const run = await runOf({ a: { replicas: 2 }, b: {} }, [{ from: 'a', to: 'b' }]);
    const consumer = await connect({ dir: daemon.dir, ...run, step: 'b' });
    const input = consumer.input('a');
    expect(input.sources).toEqual([{ from: 'a', instance: 0 }, { from: 'a', instance: 1 }]);
    const reading = collect(input as AsyncIterable<Buffer>);
    // instance 1 finishes first; its bytes still come second
    const second = await connect({ dir: daemon.dir, ...run, step: 'a', instance: 1 });
    const out1 = second.output();
    out1.end(Buffer.from('from one;'));
    const first = await connect({ dir: daemon.dir, ...run, step: 'a', instance: 0 });
    const out0 = first.output();
    out0.end(Buffer.from('from zero;'));
    await Promise.all([finished(out0), finished(out1)]);
    expect(Buffer.concat(await reading).toString()).toBe('from zero;from one;');
  });

  it('merges records from every input as they arrive, each with its origin and in order per origin', async () => {
    const run = await runOf({ a: {}, b: {}, c: {}, d: {} }, [
      { from: 'a', to: 'd' },
      { from: 'b', to: 'd' },
      { from: 'c', to: 'd' },
    ]);
    const consumer = await connect({ dir: daemon.dir, ...run, step: 'd' });
    const merged = collect(consumer.merged());
    await Promise.all(
      ['a', 'b', 'c'].map(async (step) => {
        const out = (await connect({ dir: daemon.dir, ...run, step })).output();
        for (let i = 0; i < 1000; i++) await out.send({ step, i });
        out.end();
        await finished(out);
      }),
    );
    const got = await merged;
    expect(got.length).toBe(3000);
    for (const step of ['a', 'b', 'c']) {
      const mine = got.filter((g) => g.from === step);
      expect(mine.map((g) => (g.value as { i: number }).i)).toEqual(Array.from({ length: 1000 }, (_, i) => i));
      expect(mine.every((g) => (g.value as { step: string }).step === step && g.instance === 0)).toBe(true);
    }
  });

  it('needs the input named when a step has several', async () => {
    const run = await runOf({ a: {}, b: {}, d: {} }, [
      { from: 'a', to: 'd' },
      { from: 'b', to: 'd' },
    ]);
    const consumer = await connect({ dir: daemon.dir, ...run, step: 'd' });
    expect(() => consumer.input()).toThrow(expect.objectContaining({ code: 'SLUICE_INVALID', message: expect.stringMatching(/has 2 inputs \(a, b\)/) }));
    expect(() => consumer.input('zzz')).toThrow(expect.objectContaining({ code: 'SLUICE_NOT_FOUND' }));
  });
});
