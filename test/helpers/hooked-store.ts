/** A real directory store whose operations a test can hold back, observe or fail at an exact step. */
import { DirectoryStore, type ObjectStore } from '../../transports/index.js';

/** What a test does around a store's operations. */
export interface StoreHooks {
  /** before an object is put: await to hold the put back, throw to fail it */
  beforePut?: (key: string, body: Buffer) => Promise<void>;
  /** after an object was put */
  afterPut?: (key: string) => void;
  /** after a get, told whether the object was found; await to hold the answer back */
  afterGet?: (key: string, found: boolean) => Promise<void>;
}

/** A DirectoryStore at `root` whose puts and gets go through `hooks()` (read at each call, so a test may swap them). */
export function hookedStore(root: string, hooks: () => StoreHooks): ObjectStore {
  const inner = new DirectoryStore(root);
  return {
    path: inner.path,
    location: inner.location,
    check: () => inner.check(),
    list: (prefix) => inner.list(prefix),
    folders: (prefix) => inner.folders(prefix),
    deletePrefix: (prefix) => inner.deletePrefix(prefix),
    close: () => inner.close(),
    async put(key, body) {
      await hooks().beforePut?.(key, body);
      await inner.put(key, body);
      hooks().afterPut?.(key);
    },
    async get(key) {
      const found = await inner.get(key);
      await hooks().afterGet?.(key, found !== undefined);
      return found;
    },
  };
}
