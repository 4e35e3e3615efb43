/**
 * The end of a stored stream, where the writer hands over to the reader: the last segment and the
 * manifest. A reader in another process (here: another store object on the same directory, so
 * it polls) that looked for the last segment just before the writer stored it and the manifest
 * reads the whole stream, verified — it does not report the segment missing. A writer whose last
 * segment upload fails writes no manifest and fails (its producer is not acknowledged), and the
 * reader fails with the store's code instead of reading a manifest that names a segment the store
 * does not hold. Each case is forced at the exact step, with no timing involved.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { DirectoryStore, StoredStreamReader, StoredStreamWriter, segmentKey, storeError, streamPrefix, type ObjectStore } from '../../transports/index.js';
import { drain, seededBytes, sha256 } from '../helpers/streams.js';
import { hookedStore, type StoreHooks } from '../helpers/hooked-store.js';

const scratch = mkdtempSync(join(tmpdir(), 'sluice-end-handover-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
let n = 0;

/** A hooked store whose hooks are fixed for its life. */
const hookedStoreOf = (root: string, hooks: StoreHooks): ObjectStore => hookedStore(root, () => hooks);

const SEGMENT = 64 * 1024;

describe('the end of a stored stream, between its writer and a reader in another process', () => {
  for (const [what, size] of [
    ['one segment (a short resumed stream)', 40_000],
    ['the last of four segments', 3 * SEGMENT + 1_234],
  ] as const) {
    it(`reads every byte, verified, when ${what} and the manifest are stored between the reader's look for that segment and its look for the manifest`, async () => {
      const root = join(scratch, `s${n++}`);
      const prefix = streamPrefix('run-h', `c${n}`);
      const data = seededBytes(size, n);
      const last = Math.ceil(size / SEGMENT) - 1;
      const writerStore = new DirectoryStore(root);
      await writerStore.check();
      const writer = new StoredStreamWriter(writerStore, prefix, { segmentBytes: SEGMENT, resumed: { start: 0, trailer: () => ({ length: data.length, checksum: 'unused-here' }) } });
      // everything but the last segment's bytes
      const head = data.subarray(0, last * SEGMENT);
      if (head.length > 0) await new Promise<void>((resolve, reject) => writer.write(head, (err) => (err ? reject(err) : resolve())));
      let finished: Promise<void> | undefined;
      const readerStore = hookedStoreOf(root, {
        afterGet: async (key, found) => {
          // the reader found no last segment: the writer now stores it, and then the manifest
          if (key === segmentKey(prefix, last) && !found && !finished) {
            finished = new Promise<void>((resolve, reject) => writer.end(data.subarray(last * SEGMENT), () => resolve()).once('error', reject));
            await finished;
          }
        },
      });
      const result = await drain(new StoredStreamReader(readerStore, prefix, { minPollMs: 1, maxPollMs: 5 }));
      expect(finished, 'the writer was held back until the reader looked for the last segment').toBeDefined();
      expect(result.error).toBeUndefined();
      expect(result.ended).toBe(true);
      expect(result.bytes.length).toBe(data.length);
      expect(sha256(result.bytes)).toBe(sha256(data));
    });
  }

  it('fails the writer and writes no manifest when the last segment upload fails; the reader fails with the store code', async () => {
    const root = join(scratch, `s${n++}`);
    const prefix = streamPrefix('run-h', `c${n}`);
    const data = seededBytes(2 * SEGMENT + 999, n);
    const failing = hookedStoreOf(root, {
      beforePut: async (key) => {
        // slow to fail: the writer has stopped waiting for uploads one by one and awaits them all
        if (key === segmentKey(prefix, 2)) {
          await sleep(50);
          throw storeError(`put ${key}`, new Error('EIO: the disk went away'));
        }
      },
    });
    await failing.check();
    const written = await pipeline(Readable.from([data]), new StoredStreamWriter(failing, prefix, { segmentBytes: SEGMENT })).then(
      () => undefined,
      (err: Error & { code?: string }) => err,
    );
    expect(written?.code, 'the writer must not report the stream stored').toBe('SLUICE_STORE_UNAVAILABLE');
    expect(existsSync(join(root, prefix, 'manifest.json'))).toBe(false);
    expect(existsSync(join(root, prefix, 'aborted.json'))).toBe(true);
    const read = await drain(new StoredStreamReader(new DirectoryStore(root), prefix, { minPollMs: 1, maxPollMs: 5 }));
    expect(read.ended).toBe(false);
    expect(read.error?.code).toBe('SLUICE_STORE_UNAVAILABLE');
  });
});
