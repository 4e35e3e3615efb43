/**
 * The object-store contract, one suite, every store: the embedded directory store and S3 (a real
 * S3 protocol server, s3rver, in this process). A store that passes it can hold spilled, forced
 * and persisted streams.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checksumOf,
  DirectoryStore,
  StoredStreamReader,
  StoredStreamWriter,
  segmentKey,
  streamPrefix,
  type ObjectStore,
} from '../../transports/index.js';
import { S3Store } from '../../transports/store-s3.js';
import { S3RVER_CREDENTIALS, startEmbeddedS3, type EmbeddedS3 } from '../../harness/s3-server.js';
import { drain, seededBytes, sha256 } from '../helpers/streams.js';

const credentials = { accessKeyId: S3RVER_CREDENTIALS.AWS_ACCESS_KEY_ID, secretAccessKey: S3RVER_CREDENTIALS.AWS_SECRET_ACCESS_KEY };

interface Medium {
  open(): ObjectStore;
  /** make the store fail every request from now on; returns how to undo it */
  breakIt(): Promise<() => Promise<void>>;
}

let s3: EmbeddedS3;
const scratch = mkdtempSync(join(tmpdir(), 'sluice-store-'));
let n = 0;

const media: Record<string, Medium> = {
  'directory store': {
    open: () => new DirectoryStore(join(scratch, `d${n++}`)),
    async breakIt() {
      return async () => undefined;
    },
  },
  's3 store (s3rver)': {
    open: () => new S3Store({ kind: 's3', bucket: s3.bucket, prefix: `p${n++}/`, endpoint: s3.endpoint, forcePathStyle: true }, { credentials, maxAttempts: 2, partBytes: 5 * 1024 * 1024 }),
    async breakIt() {
      await s3.pause();
      return () => s3.resume();
    },
  },
};

beforeAll(async () => {
  s3 = await startEmbeddedS3();
});

afterAll(async () => {
  await s3.stop();
  rmSync(scratch, { recursive: true, force: true });
});

describe.each(Object.keys(media))('object store contract: %s', (name) => {
  const medium = media[name]!;
  let store: ObjectStore;

  beforeAll(async () => {
    store = medium.open();
    await store.check();
  });
  afterAll(() => store.close());

  it('returns exactly the bytes put, for empty, small and multi-part objects', async () => {
    const big = seededBytes(12 * 1024 * 1024 + 7, 1);
    await store.put('a/empty', Buffer.alloc(0));
    await store.put('a/small', Buffer.from('hello'));
    await store.put('a/big', big);
    expect((await store.get('a/empty'))?.length).toBe(0);
    expect((await store.get('a/small'))?.toString()).toBe('hello');
    expect(sha256((await store.get('a/big'))!)).toBe(sha256(big));
  });

  it('answers undefined for a missing object', async () => {
    expect(await store.get('nothing/here')).toBeUndefined();
  });

  it('lists by prefix, in key order, and deletes by prefix only what is under it', async () => {
    for (const key of ['r1/c/seg-000001', 'r1/c/seg-000000', 'r1/x', 'r10/c/seg-000000', 'r2/y']) await store.put(key, Buffer.from(key));
    expect((await store.list('r1/')).map((o) => o.key)).toEqual(['r1/c/seg-000000', 'r1/c/seg-000001', 'r1/x']);
    expect((await store.list('r1')).map((o) => o.key)).toEqual(['r1/c/seg-000000', 'r1/c/seg-000001', 'r1/x', 'r10/c/seg-000000']);
    const [first] = await store.list('r2/');
    expect(first!.modified).toBeGreaterThan(Date.now() - 10 * 60_000);
    expect(await store.deletePrefix('r1/')).toBe(3);
    expect(await store.list('r1/')).toEqual([]);
    expect((await store.get('r10/c/seg-000000'))?.toString()).toBe('r10/c/seg-000000');
    expect((await store.get('r2/y'))?.toString()).toBe('r2/y');
  });

  it('lists the folders one level under a prefix, without their objects', async () => {
    for (const key of ['fo/a/b/seg-000000', 'fo/a/x', 'fo/b/y', 'fo/z']) await store.put(key, Buffer.from(key));
    expect(await store.folders('fo/')).toEqual(['fo/a/', 'fo/b/']);
    expect(await store.folders('fo/a/')).toEqual(['fo/a/b/']);
    expect(await store.folders('')).toContain('fo/');
    expect(await store.folders('nothing-here/')).toEqual([]);
    await expect(store.folders('fo')).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
    await expect(store.folders('../')).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
  });

  it('refuses keys that try to leave the store, with SLUICE_INVALID, touching nothing', async () => {
    for (const key of ['../escape', '/absolute', 'a//b', '.hidden', 'a/../b', 'a/./b', 'sp ace', '']) {
      await expect(store.put(key, Buffer.from('x')), key).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
      await expect(store.get(key), key).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
    }
    await expect(store.deletePrefix('../')).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
    await expect(store.deletePrefix('no-slash')).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
  });

  it('stores a stream in segments and reads it back byte-exact, across segment boundaries', async () => {
    const data = seededBytes(1024 * 1024 + 333, 2);
    const prefix = streamPrefix('run-a', 'ch-1');
    const segments: number[] = [];
    const writer = new StoredStreamWriter(store, prefix, { segmentBytes: 100_000, onSegment: (b) => segments.push(b) });
    const pieces = [];
    for (let at = 0; at < data.length; ) {
      const size = Math.min(data.length - at, 1 + ((at * 7919) % 70_000));
      pieces.push(data.subarray(at, at + size));
      at += size;
    }
    await pipeline(Readable.from(pieces), writer);
    expect(segments.length).toBe(Math.ceil(data.length / 100_000));
    const read = await drain(new StoredStreamReader(store, prefix));
    expect(read.error).toBeUndefined();
    expect(sha256(read.bytes)).toBe(sha256(data));
  });

  it('stores a resumed stream: origin() answers its start, its manifest keeps the whole stream\'s trailer; an ordinary stream starts at 0', async () => {
    const whole = seededBytes(300_000, 12);
    const prefix = streamPrefix('run-r', 'resumed');
    const reader = new StoredStreamReader(store, prefix, { minPollMs: 5, maxPollMs: 20 });
    const origin = reader.origin(); // asked before anything is written: it waits
    const writer = new StoredStreamWriter(store, prefix, { segmentBytes: 100_000, resumed: { start: 120_000, trailer: () => ({ length: whole.length, checksum: checksumOf(whole) }) } });
    await pipeline(Readable.from([whole.subarray(120_000)]), writer);
    expect(await origin).toBe(120_000);
    const read = await drain(reader);
    expect(read.error).toBeUndefined();
    expect(sha256(read.bytes)).toBe(sha256(whole.subarray(120_000)));
    expect(reader.manifest).toMatchObject({ start: 120_000, trailer: { length: whole.length, checksum: checksumOf(whole) } });

    const plain = streamPrefix('run-r', 'plain');
    await pipeline(Readable.from([whole]), new StoredStreamWriter(store, plain));
    const ordinary = new StoredStreamReader(store, plain);
    expect(await ordinary.origin()).toBe(0);
    await drain(ordinary);
    expect(ordinary.manifest?.trailer).toBeUndefined();
  });

  it('stores an empty stream as a verified empty stream', async () => {
    const prefix = streamPrefix('run-a', 'empty');
    await pipeline(Readable.from([]), new StoredStreamWriter(store, prefix));
    const read = await drain(new StoredStreamReader(store, prefix));
    expect(read).toMatchObject({ ended: true, bytes: Buffer.alloc(0) });
  });

  it('streams: a reader gets the first segments while the writer has not written the last', async () => {
    const prefix = streamPrefix('run-b', 'live');
    const writer = new StoredStreamWriter(store, prefix, { segmentBytes: 64 * 1024 });
    const reader = new StoredStreamReader(store, prefix, { minPollMs: 5, maxPollMs: 20 });
    let received = 0;
    const gotTwo = new Promise<void>((resolve) =>
      reader.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received >= 128 * 1024) resolve();
      }),
    );
    const done = new Promise<void>((resolve, reject) => reader.on('end', resolve).on('error', reject));
    writer.write(seededBytes(3 * 64 * 1024, 3)); // three whole segments
    await gotTwo; // would wait forever if the reader needed the writer's end
    expect(writer.writableEnded).toBe(false);
    writer.end(seededBytes(1000, 4));
    await done;
    expect(received).toBe(3 * 64 * 1024 + 1000);
  });

  it("fails a reader with the writer's code when the writer is destroyed, never a clean end", async () => {
    const prefix = streamPrefix('run-c', 'aborted');
    const writer = new StoredStreamWriter(store, prefix, { segmentBytes: 10_000 });
    writer.on('error', () => undefined);
    writer.write(seededBytes(25_000, 5));
    await new Promise((r) => setTimeout(r, 200));
    writer.destroy(Object.assign(new Error('producer went away'), { code: 'SLUICE_TRUNCATED' }));
    await new Promise((r) => writer.once('close', r));
    const read = await drain(new StoredStreamReader(store, prefix));
    expect(read.ended).toBe(false);
    expect(read.error?.code).toBe('SLUICE_TRUNCATED');
  });

  it('reports a missing or altered segment as SLUICE_CORRUPT', async () => {
    const data = seededBytes(50_000, 6);
    const missing = streamPrefix('run-d', 'missing');
    const altered = streamPrefix('run-d', 'altered');
    await pipeline(Readable.from([data]), new StoredStreamWriter(store, missing, { segmentBytes: 10_000 }));
    await pipeline(Readable.from([data]), new StoredStreamWriter(store, altered, { segmentBytes: 10_000 }));
    // segment 2 gone from one stream, a bit of segment 3 flipped in the other
    await store.deletePrefix(missing);
    for (let i = 0; i < 5; i++) if (i !== 2) await store.put(segmentKey(missing, i), (await store.get(segmentKey(altered, i)))!);
    await store.put(`${missing}manifest.json`, (await store.get(`${altered}manifest.json`))!);
    const flipped = Buffer.from((await store.get(segmentKey(altered, 3)))!);
    flipped[flipped.length - 17]! ^= 1;
    await store.put(segmentKey(altered, 3), flipped);
    for (const prefix of [missing, altered]) {
      const read = await drain(new StoredStreamReader(store, prefix));
      expect(read.ended, prefix).toBe(false);
      expect(read.error?.code, prefix).toBe('SLUICE_CORRUPT');
    }
  });

  it('reads a segment again while it does not match its header (a store that shows objects being written)', async () => {
    const data = seededBytes(30_000, 8);
    const source = streamPrefix('run-d', 'whole');
    const target = streamPrefix('run-d', 'half-visible');
    await pipeline(Readable.from([data]), new StoredStreamWriter(store, source, { segmentBytes: 10_000 }));
    const middle = (await store.get(segmentKey(source, 1)))!;
    await store.put(segmentKey(target, 0), (await store.get(segmentKey(source, 0)))!);
    await store.put(segmentKey(target, 1), middle.subarray(0, 4_000)); // as if caught mid-write
    const read = drain(new StoredStreamReader(store, target, { minPollMs: 5 }));
    await new Promise((r) => setTimeout(r, 150));
    await store.put(segmentKey(target, 1), middle);
    await store.put(segmentKey(target, 2), (await store.get(segmentKey(source, 2)))!);
    await store.put(`${target}manifest.json`, (await store.get(`${source}manifest.json`))!);
    const got = await read;
    expect(got.error).toBeUndefined();
    expect(sha256(got.bytes)).toBe(sha256(data));
  });

  it('stops a waiting reader when its signal fires: SLUICE_ABORTED', async () => {
    const controller = new AbortController();
    const reader = new StoredStreamReader(store, streamPrefix('run-e', 'never'), { signal: controller.signal });
    setTimeout(() => controller.abort(), 100);
    const read = await drain(reader);
    expect(read.error?.code).toBe('SLUICE_ABORTED');
  });

  it('fails with SLUICE_STORE_UNAVAILABLE when the store is gone, after its retries', async () => {
    const broken = name.startsWith('directory') ? new DirectoryStore(join(scratch, 'a-file', 'below')) : store;
    writeFileSync(join(scratch, 'a-file'), '');
    const undo = await medium.breakIt();
    try {
      await expect(broken.put('k/v', Buffer.from('x'))).rejects.toMatchObject({ code: 'SLUICE_STORE_UNAVAILABLE' });
      const writer = new StoredStreamWriter(broken, streamPrefix('run-f', 'gone'), { segmentBytes: 1000 });
      await expect(pipeline(Readable.from([seededBytes(5000, 7)]), writer)).rejects.toMatchObject({ code: 'SLUICE_STORE_UNAVAILABLE' });
      if (!name.startsWith('directory')) await expect(broken.get('k/v')).rejects.toMatchObject({ code: 'SLUICE_STORE_UNAVAILABLE' });
    } finally {
      await undo();
    }
  });
});

describe('store start-up checks', () => {
  it('refuses S3 credentials the server rejects, naming what to fix', async () => {
    const store = new S3Store({ kind: 's3', bucket: s3.bucket, prefix: '', endpoint: s3.endpoint, forcePathStyle: true }, { credentials: { accessKeyId: 'WRONG', secretAccessKey: 'WRONG' }, maxAttempts: 1 });
    await expect(store.check()).rejects.toMatchObject({ code: 'SLUICE_CONFIG', message: expect.stringMatching(/credentials were refused/) });
    store.close();
  });

  it('refuses a bucket that does not exist', async () => {
    const store = new S3Store({ kind: 's3', bucket: 'no-such-bucket', prefix: '', endpoint: s3.endpoint, forcePathStyle: true }, { credentials, maxAttempts: 1 });
    await expect(store.check()).rejects.toMatchObject({ code: 'SLUICE_CONFIG', message: expect.stringMatching(/bucket does not exist/) });
    store.close();
  });

  it('refuses an endpoint nothing answers', async () => {
    const store = new S3Store({ kind: 's3', bucket: s3.bucket, prefix: '', endpoint: 'http://127.0.0.1:1', forcePathStyle: true }, { credentials, maxAttempts: 1 });
    await expect(store.check()).rejects.toMatchObject({ code: 'SLUICE_CONFIG', message: expect.stringMatching(/did not answer/) });
    store.close();
  });

  it("signs for the region its location names, never the process's AWS_REGION (the daemon's config decides it)", async () => {
    const saved = { AWS_REGION: process.env.AWS_REGION, AWS_DEFAULT_REGION: process.env.AWS_DEFAULT_REGION };
    process.env.AWS_REGION = 'ap-south-1';
    process.env.AWS_DEFAULT_REGION = 'ap-south-1';
    try {
      const region = async (where: { region?: string }): Promise<string> => {
        const store = new S3Store({ kind: 's3', bucket: s3.bucket, prefix: '', endpoint: s3.endpoint, forcePathStyle: true, ...where }, { credentials });
        try {
          return await (store as unknown as { client: { config: { region: () => Promise<string> } } }).client.config.region();
        } finally {
          store.close();
        }
      };
      expect(await region({ region: 'eu-west-3' })).toBe('eu-west-3');
      expect(await region({})).toBe('us-east-1');
    } finally {
      for (const [name, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  });

  it('refuses a directory that cannot be written', async () => {
    writeFileSync(join(scratch, 'plain-file'), '');
    await expect(new DirectoryStore(join(scratch, 'plain-file', 'store')).check()).rejects.toMatchObject({ code: 'SLUICE_CONFIG' });
  });
});
