/**
 * The embedded store: objects as files under one directory, so a single machine needs no S3.
 * A key `a/b/c` is the file `<root>/a/b/c`. Objects are written to a temporary file and renamed
 * into place, so a reader sees a whole object or none. Keys are checked before they touch the
 * file system (`checkKey`: no "..", no absolute paths).
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ErrorCodes, RequestError, codeOf } from './errors.js';
import { checkKey, storeError, type ObjectStore, type StoredObject } from './store.js';

/** Files being written carry this suffix until renamed; `list` skips them. */
const PARTIAL = '.partial-';

export class DirectoryStore implements ObjectStore {
  readonly path = 'file' as const;
  readonly location: string;

  constructor(private readonly root: string) {
    this.location = `file://${root}`;
  }

  async check(): Promise<void> {
    try {
      await fs.mkdir(this.root, { recursive: true, mode: 0o700 });
      const probe = join(this.root, `${PARTIAL}check-${randomBytes(4).toString('hex')}`);
      await fs.writeFile(probe, '');
      await fs.rm(probe);
    } catch (err) {
      throw new RequestError(ErrorCodes.CONFIG, `--store: cannot write to ${this.root} (${(err as Error).message}); choose a writable directory`, { cause: err });
    }
  }

  async put(key: string, body: Buffer): Promise<void> {
    const file = join(this.root, checkKey(key));
    const partial = `${file}${PARTIAL}${randomBytes(6).toString('hex')}`;
    try {
      await fs.mkdir(dirname(file), { recursive: true, mode: 0o700 });
      await fs.writeFile(partial, body, { mode: 0o600 });
      await fs.rename(partial, file);
    } catch (err) {
      await fs.rm(partial, { force: true }).catch(() => undefined);
      throw storeError(`put ${key}`, err, { key });
    }
  }

  async get(key: string): Promise<Buffer | undefined> {
    try {
      return await fs.readFile(join(this.root, checkKey(key)));
    } catch (err) {
      const code = codeOf(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      throw storeError(`get ${key}`, err, { key });
    }
  }

  async folders(prefix: string): Promise<string[]> {
    if (prefix !== '' && !prefix.endsWith('/')) throw new RequestError(ErrorCodes.INVALID, `folders needs "" or a prefix ending in "/", got ${JSON.stringify(prefix)}`);
    checkKey(prefix, 'prefix');
    try {
      const entries = await fs.readdir(join(this.root, prefix), { withFileTypes: true });
      return entries
        .filter((e) => e.isDirectory() && !e.name.includes(PARTIAL) && !e.name.startsWith('.'))
        .map((e) => `${prefix}${e.name}/`)
        .sort();
    } catch (err) {
      const code = codeOf(err);
      if (code === 'ENOENT' || code === 'ENOTDIR') return [];
      throw storeError(`list folders of ${prefix}`, err, { prefix });
    }
  }

  async list(prefix: string): Promise<StoredObject[]> {
    checkKey(prefix, 'prefix');
    // walk only the directory the prefix lies in, then filter by the prefix's last part
    const cut = prefix.lastIndexOf('/') + 1;
    const base = prefix.slice(0, cut);
    const found: StoredObject[] = [];
    const walk = async (relative: string): Promise<void> => {
      let entries: import('node:fs').Dirent[];
      try {
        entries = await fs.readdir(join(this.root, relative), { withFileTypes: true });
      } catch (err) {
        const code = codeOf(err);
        if (code === 'ENOENT' || code === 'ENOTDIR') return;
        throw storeError(`list ${prefix}`, err, { prefix });
      }
      for (const entry of entries) {
        const key = relative + entry.name;
        if (entry.name.includes(PARTIAL) || !(key.startsWith(prefix) || prefix.startsWith(key + '/'))) continue;
        if (entry.isDirectory()) await walk(key + '/');
        else if (entry.isFile()) {
          const stat = await fs.stat(join(this.root, key)).catch(() => undefined);
          if (stat) found.push({ key, modified: stat.mtimeMs });
        }
      }
    };
    await walk(base);
    return found.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async deletePrefix(prefix: string): Promise<number> {
    if (!prefix.endsWith('/')) throw new RequestError(ErrorCodes.INVALID, `deletePrefix needs a prefix ending in "/", got ${JSON.stringify(prefix)}`);
    const objects = await this.list(prefix);
    try {
      await fs.rm(join(this.root, checkKey(prefix, 'prefix')), { recursive: true, force: true });
    } catch (err) {
      throw storeError(`delete ${prefix}`, err, { prefix });
    }
    return objects.length;
  }

  close(): void {}
}
