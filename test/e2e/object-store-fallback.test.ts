/**
 * The object-store path on one node, for real: a `sluice daemon` process with the embedded
 * directory store, another with S3 (s3rver in this process). Spills, `via: s3`, `persist: true`,
 * streaming through segments, the store failing mid-stream, run deletion, bad store settings.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { connect } from '../../client/index.js';
import { S3Store } from '../../transports/store-s3.js';
import { S3RVER_CREDENTIALS, startEmbeddedS3, type EmbeddedS3 } from '../../harness/s3-server.js';
import { runFunction, startDaemonProcess, type DaemonProcess, ok } from '../helpers/daemon.js';
import { drain, outcome, seededBytes, sha256 } from '../helpers/streams.js';

const MiB = 1024 * 1024;
const s3env = { ...process.env, ...S3RVER_CREDENTIALS };
let s3: EmbeddedS3;
let onFiles: DaemonProcess;
let onS3: DaemonProcess;
let serial = 0;

beforeAll(async () => {
  s3 = await startEmbeddedS3();
  // --segment-size 256KiB: many segments from a few MiB, so streaming through them shows
  onFiles = await startDaemonProcess(['--attach-timeout', '1s', '--relay-buffer', '1MiB', '--segment-size', '256KiB']);
  onS3 = await startDaemonProcess(['--attach-timeout', '1s', '--relay-buffer', '1MiB', '--segment-size', '256KiB', '--store', s3.storeUrl('sluice/')], { env: s3env });
});
afterAll(async () => {
  await onFiles?.stop();
  await onS3?.stop();
  await s3?.stop();
});

async function runOf(daemon: DaemonProcess, edges: Array<Record<string, unknown>>, steps: string[] = ['p', 'c']): Promise<{ run: string; token: string }> {
  const name = `wf-${++serial}`;
  await control(daemon.dir, 'POST', '/v1/workflows', { name, steps: Object.fromEntries(steps.map((s) => [s, {}])), edges });
  return (await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: name })).body;
}

const bucketKeys = async (prefix: string): Promise<string[]> => {
  const store = new S3Store({ kind: 's3', bucket: s3.bucket, prefix: 'sluice/', endpoint: s3.endpoint, forcePathStyle: true }, { credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
  try {
    return (await store.list(prefix)).map((o) => o.key);
  } finally {
    store.close();
  }
};

async function metric(daemon: DaemonProcess, line: RegExp): Promise<number> {
  const text = (await control<string>(daemon.dir, 'GET', '/metrics')).body;
  const found = String(text).split('\n').find((l) => line.test(l));
  return found ? Number(found.split(' ').pop()) : 0;
}

describe('spill: a consumer that is not there yet', () => {
  it('lets the producer finish into the store; a consumer started afterwards reads every byte (directory store)', async () => {
    const run = await runOf(onFiles, [{ from: 'p', to: 'c' }]);
    const producer = ok(await runFunction(onFiles.dir, run, 'p', ['source', String(12 * MiB), '3']).done);
    const stored = readdirSync(join(onFiles.dir, 'store', run.run, 'p.0-c.0'));
    expect(stored).toContain('manifest.json');
    expect(stored.filter((f) => f.startsWith('seg-'))).toHaveLength(48);
    const consumer = ok(await runFunction(onFiles.dir, run, 'c', ['sink']).done);
    expect(consumer).toMatchObject({ bytes: 12 * MiB, sha256: producer.sha256 });
    expect(await metric(onFiles, /^sluice_store_streams_total\{reason="spill"\}/)).toBeGreaterThanOrEqual(1);
    await control(onFiles.dir, 'DELETE', `/v1/runs/${run.run}`);
    await sleep(200);
    expect(existsSync(join(onFiles.dir, 'store', run.run))).toBe(false);
  });

  it('spills to S3 the same way, and deleting the run removes its objects from the bucket', async () => {
    const run = await runOf(onS3, [{ from: 'p', to: 'c' }]);
    const producer = ok(await runFunction(onS3.dir, run, 'p', ['source', String(3 * MiB), '4']).done);
    expect(await bucketKeys(`${run.run}/`)).toContain(`${run.run}/p.0-c.0/manifest.json`);
    const consumer = ok(await runFunction(onS3.dir, run, 'c', ['sink']).done);
    expect(consumer).toMatchObject({ bytes: 3 * MiB, sha256: producer.sha256 });
    await control(onS3.dir, 'DELETE', `/v1/runs/${run.run}`);
    await sleep(500);
    expect(await bucketKeys(`${run.run}/`)).toEqual([]);
  });
});

describe('via: s3', () => {
  it('puts the stream in the bucket even with the consumer reading, and the consumer verifies it', async () => {
    const run = await runOf(onS3, [{ from: 'p', to: 'c', via: 's3' }]);
    const consumer = runFunction(onS3.dir, run, 'c', ['sink']);
    const producer = ok(await runFunction(onS3.dir, run, 'p', ['source', String(5 * MiB), '5']).done);
    expect(ok(await consumer.done)).toMatchObject({ bytes: 5 * MiB, sha256: producer.sha256 });
    const keys = await bucketKeys(`${run.run}/p.0-c.0/`);
    expect(keys.filter((k) => k.includes('/seg-'))).toHaveLength(20);
    expect(keys).toContain(`${run.run}/p.0-c.0/manifest.json`);
    expect(await metric(onS3, /^sluice_store_streams_total\{reason="forced"\}/)).toBeGreaterThanOrEqual(1);
  });

  it('streams: the consumer reads the first segments before the producer has written the last', async () => {
    const run = await runOf(onS3, [{ from: 'p', to: 'c', via: 's3' }]);
    const producerSide = await connect({ dir: onS3.dir, run: run.run, step: 'p', token: run.token });
    const consumerSide = await connect({ dir: onS3.dir, run: run.run, step: 'c', token: run.token });
    const input = consumerSide.input();
    let received = 0;
    const hash = createHash('sha256');
    const firstSegments = new Promise<void>((resolve) =>
      input.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        received += chunk.length;
        if (received >= MiB) resolve();
      }),
    );
    const consumed = new Promise<void>((resolve, reject) => input.once('end', resolve).once('error', reject));
    const output = producerSide.output();
    const data = seededBytes(3 * MiB, 6);
    output.write(data.subarray(0, 2 * MiB));
    // nothing more is written until the consumer holds a whole MiB: with a store that only
    // delivered complete streams, this would wait forever
    await firstSegments;
    expect(output.writableEnded).toBe(false);
    output.end(data.subarray(2 * MiB));
    await Promise.all([consumed, outcome(output).then((err) => expect(err).toBeUndefined())]);
    expect(hash.digest('hex')).toBe(sha256(data));
  });
});

describe('persist: true', () => {
  it('delivers directly and keeps a durable copy in the store', async () => {
    const run = await runOf(onFiles, [{ from: 'p', to: 'c', persist: true }]);
    const consumer = runFunction(onFiles.dir, run, 'c', ['sink']);
    const producer = ok(await runFunction(onFiles.dir, run, 'p', ['source', String(4 * MiB), '7']).done);
    expect(ok(await consumer.done)).toMatchObject({ bytes: 4 * MiB, sha256: producer.sha256 });
    expect(readdirSync(join(onFiles.dir, 'store', run.run, 'p.0-c.0'))).toContain('manifest.json');
    expect(await metric(onFiles, /^sluice_store_streams_total\{reason="persist"\}/)).toBeGreaterThanOrEqual(1);
  });
});

describe('faults', () => {
  it('the S3 server stopped during a stream: typed errors at both ends, never a clean end', async () => {
    const run = await runOf(onS3, [{ from: 'p', to: 'c', via: 's3' }]);
    const producerSide = await connect({ dir: onS3.dir, run: run.run, step: 'p', token: run.token });
    const consumerSide = await connect({ dir: onS3.dir, run: run.run, step: 'c', token: run.token });
    const read = drain(consumerSide.input());
    const output = producerSide.output();
    output.on('error', () => undefined);
    output.write(seededBytes(MiB, 8));
    await sleep(500);
    await s3.pause();
    try {
      const written = pipeline(Readable.from((function* () {
        for (let i = 0; i < 16; i++) yield seededBytes(256 * 1024, 9 + i);
      })()), output);
      await expect(written).rejects.toMatchObject({ code: 'SLUICE_STORE_UNAVAILABLE' });
      const got = await read;
      expect(got.ended).toBe(false);
      expect(got.error?.code).toBe('SLUICE_STORE_UNAVAILABLE');
    } finally {
      await s3.resume();
    }
    // and the daemon carries on
    const again = await runOf(onS3, [{ from: 'p', to: 'c', via: 's3' }]);
    const consumer = runFunction(onS3.dir, again, 'c', ['sink']);
    const producer = ok(await runFunction(onS3.dir, again, 'p', ['source', String(MiB), '10']).done);
    expect(ok(await consumer.done)).toMatchObject({ bytes: MiB, sha256: producer.sha256 });
  }, 60_000);

  it('refuses to start with S3 credentials the store rejects, or a bucket that does not exist, saying what to fix', async () => {
    const wrong = { ...process.env, AWS_ACCESS_KEY_ID: 'WRONG', AWS_SECRET_ACCESS_KEY: 'WRONG' };
    await expect(startDaemonProcess(['--store', s3.storeUrl()], { env: wrong })).rejects.toThrow(/SLUICE_CONFIG.*credentials were refused/s);
    await expect(startDaemonProcess(['--store', `s3://no-such-bucket/?endpoint=${encodeURIComponent(s3.endpoint)}`], { env: s3env })).rejects.toThrow(/bucket does not exist/);
    await expect(startDaemonProcess(['--store', 'ftp://example/x'])).rejects.toThrow(/--store.*is not a store kind/s);
  });
});
