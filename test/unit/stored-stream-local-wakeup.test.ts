/**
 * A stored stream read in the process that writes it: the reader is told of every object the
 * writer stores and reads it at once, however long its poll back-off (here 60 s, longer than
 * each test may run: without the notices these tests time out). A stream written by another
 * process, or through another store object, is still found by polling.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { DirectoryStore, StoredStreamReader, StoredStreamWriter, storeListeners, streamPrefix, type ObjectStore } from '../../transports/index.js';
import { drain, seededBytes, sha256 } from '../helpers/streams.js';

const scratch = mkdtempSync(join(tmpdir(), 'sluice-wakeup-'));
let n = 0;
/** longer than any test here may take: a reader that relied on it would time out */
const NEVER = { minPollMs: 60_000, maxPollMs: 60_000 };
const TEST_MS = 20_000;

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/**
 * A directory store that reports each time a reader looks for the aborted marker, which it does
 * after every attempt that found nothing, just before it sleeps; `beforeAbortedLookup` may hold
 * that look back (to store objects while the reader is between its attempt and its sleep).
 */
function observedStore(beforeAbortedLookup?: (count: number) => Promise<void>): ObjectStore & { lookups(n: number): Promise<void> } {
  const inner = new DirectoryStore(join(scratch, `s${n++}`));
  let count = 0;
  const waiters: { n: number; resolve: () => void }[] = [];
  return {
    path: inner.path,
    location: inner.location,
    check: () => inner.check(),
    put: (key, body) => inner.put(key, body),
    list: (prefix) => inner.list(prefix),
    folders: (prefix) => inner.folders(prefix),
    deletePrefix: (prefix) => inner.deletePrefix(prefix),
    close: () => inner.close(),
    async get(key) {
      if (key.endsWith('/aborted.json')) {
        count++;
        for (const w of waiters.splice(0)) if (count >= w.n) w.resolve();
        else waiters.push(w);
        await beforeAbortedLookup?.(count);
      }
      return inner.get(key);
    },
    /** resolves once the reader has looked for the aborted marker `n` times */
    lookups(n: number) {
      return new Promise<void>((resolve) => (count >= n ? resolve() : waiters.push({ n, resolve })));
    },
  };
}

const chunks = (data: Buffer, size: number): Buffer[] => Array.from({ length: Math.ceil(data.length / size) }, (_, i) => data.subarray(i * size, (i + 1) * size));

describe('stored stream read in the writer\'s process', () => {
  it('wakes a reader asleep for 60 s at every segment and at the manifest: byte-exact, verified', { timeout: TEST_MS }, async () => {
    const store = observedStore();
    await store.check();
    const prefix = streamPrefix('run-w', 'segments');
    const segmentBytes = 256 * 1024;
    const data = seededBytes(3 * segmentBytes + 333, 21);
    const reader = new StoredStreamReader(store, prefix, NEVER);
    let received = 0;
    const got = new Set<() => void>();
    reader.on('data', (c: Buffer) => {
      received += c.length;
      for (const f of got) f();
    });
    const read = drain(reader);
    const writer = new StoredStreamWriter(store, prefix, { segmentBytes });
    // each piece only once the reader has found nothing and gone to sleep waiting for it
    let looked = 0;
    for (const piece of chunks(data, segmentBytes)) {
      await store.lookups(++looked);
      const before = received;
      const arrived = piece.length < segmentBytes ? Promise.resolve() : new Promise<void>((resolve) => {
        const f = (): void => {
          if (received === before) return;
          got.delete(f);
          resolve();
        };
        got.add(f);
      });
      if (piece.length < segmentBytes) writer.end(piece);
      else writer.write(piece);
      await arrived;
    }
    const result = await read;
    expect(result.error).toBeUndefined();
    expect(result.ended).toBe(true);
    expect(sha256(result.bytes)).toBe(sha256(data));
    expect(reader.manifest).toMatchObject({ length: data.length, segments: 4 });
    expect(storeListeners(store)).toBe(0);
  });

  it('loses no notice: objects stored after a failed look but before the sleep still wake the reader', { timeout: TEST_MS }, async () => {
    const prefix = streamPrefix('run-w', 'race');
    const data = seededBytes(200_000, 22);
    let written: Promise<void> | undefined;
    // the reader's first look found nothing; the whole stream is stored before it can go to sleep
    const store: ObjectStore & { lookups(n: number): Promise<void> } = observedStore(async (count) => {
      if (count === 1) await (written = pipeline(Readable.from([data]), new StoredStreamWriter(store, prefix, { segmentBytes: 64 * 1024 })));
    });
    await store.check();
    const result = await drain(new StoredStreamReader(store, prefix, NEVER));
    await written;
    expect(result.error).toBeUndefined();
    expect(sha256(result.bytes)).toBe(sha256(data));
  });

  it("wakes a waiting reader with the writer's code when the writer is destroyed", { timeout: TEST_MS }, async () => {
    const store = observedStore();
    await store.check();
    const prefix = streamPrefix('run-w', 'aborted');
    const reader = new StoredStreamReader(store, prefix, NEVER);
    const read = drain(reader);
    await store.lookups(1);
    const writer = new StoredStreamWriter(store, prefix, { segmentBytes: 10_000 });
    writer.on('error', () => undefined);
    writer.write(seededBytes(25_000, 23));
    await store.lookups(2); // the reader found no further segment and is asleep again
    writer.destroy(Object.assign(new Error('producer went away'), { code: 'SLUICE_TRUNCATED' }));
    const result = await read;
    expect(result.ended).toBe(false);
    expect(result.error?.code).toBe('SLUICE_TRUNCATED');
    expect(storeListeners(store)).toBe(0);
  });

  it('wakes origin() of a resumed stream at its resume marker', { timeout: TEST_MS }, async () => {
    const store = observedStore();
    await store.check();
    const prefix = streamPrefix('run-w', 'resumed');
    const whole = seededBytes(150_000, 24);
    const reader = new StoredStreamReader(store, prefix, NEVER);
    const origin = reader.origin();
    await store.lookups(1);
    const writer = new StoredStreamWriter(store, prefix, { segmentBytes: 64 * 1024, resumed: { start: 50_000, trailer: () => ({ length: whole.length, checksum: 'unused' }) } });
    writer.write(whole.subarray(50_000, 60_000)); // not a whole segment yet: only the marker is stored
    expect(await origin).toBe(50_000);
    writer.end(whole.subarray(60_000));
    const result = await drain(reader);
    expect(result.error).toBeUndefined();
    expect(sha256(result.bytes)).toBe(sha256(whole.subarray(50_000)));
  });

  it('stops listening and polling when a waiting reader is destroyed', { timeout: TEST_MS }, async () => {
    const store = observedStore();
    await store.check();
    const reader = new StoredStreamReader(store, streamPrefix('run-w', 'never'), NEVER);
    const read = drain(reader);
    await store.lookups(1);
    expect(storeListeners(store)).toBe(1);
    reader.destroy();
    await read;
    while (storeListeners(store) > 0) await new Promise((r) => setImmediate(r));
    expect(storeListeners(store)).toBe(0);
  });
});

describe('stored stream written elsewhere', () => {
  it('is read by polling when another process writes it', async () => {
    const root = join(scratch, 'shared');
    const data = seededBytes(700_000, 25);
    const file = join(scratch, 'payload');
    writeFileSync(file, data);
    const prefix = streamPrefix('run-x', 'remote');
    const store = new DirectoryStore(root);
    await store.check();
    const reader = new StoredStreamReader(store, prefix, { minPollMs: 5, maxPollMs: 50 });
    const read = drain(reader);
    const transports = new URL('../../dist/transports/index.js', import.meta.url).href;
    const script = `
      import { createReadStream } from 'node:fs';
      import { pipeline } from 'node:stream/promises';
      const { DirectoryStore, StoredStreamWriter } = await import(${JSON.stringify(transports)});
      await pipeline(createReadStream(${JSON.stringify(file)}), new StoredStreamWriter(new DirectoryStore(${JSON.stringify(root)}), ${JSON.stringify(prefix)}, { segmentBytes: 100_000 }));
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'inherit', 'inherit'] });
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(code).toBe(0);
    const result = await read;
    expect(result.error).toBeUndefined();
    expect(sha256(result.bytes)).toBe(sha256(data));
    expect(reader.manifest).toMatchObject({ length: data.length, segments: 7 });
  });

  it('is read by polling when this process writes it through another store object', async () => {
    const root = join(scratch, 'two-objects');
    const data = seededBytes(300_000, 26);
    const prefix = streamPrefix('run-x', 'other-object');
    const readerStore = new DirectoryStore(root);
    const writerStore = new DirectoryStore(root);
    await writerStore.check();
    const read = drain(new StoredStreamReader(readerStore, prefix, { minPollMs: 5, maxPollMs: 50 }));
    await pipeline(Readable.from([data]), new StoredStreamWriter(writerStore, prefix, { segmentBytes: 100_000 }));
    const result = await read;
    expect(result.error).toBeUndefined();
    expect(sha256(result.bytes)).toBe(sha256(data));
  });
});
