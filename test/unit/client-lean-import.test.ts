/**
 * The function-side import is lean: `import { connect } from 'sluice'` (or 'sluice-client', the
 * same dist/client/index.js) loads the client, the channel protocol, the FIFO and Unix media,
 * msgpackr and xxhash-addon — and none of ws, the mux, shm, the stores, fastify, pino,
 * prom-client, yaml or the AWS SDK. Checked in a fresh process with a module-load hook on the
 * built JavaScript (test/global-setup.ts builds dist/).
 */
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { forbiddenAmong, modulesLoadedBy } from '../helpers/loaded-modules.js';

const clientEntry = fileURLToPath(new URL('../../dist/client/index.js', import.meta.url));
const fullIndex = fileURLToPath(new URL('../../dist/transports/index.js', import.meta.url));

describe('the client import', () => {
  it('loads none of the daemon-side modules or dependencies', async () => {
    const { exports, modules } = await modulesLoadedBy(clientEntry);
    expect(exports).toContain('connect');
    // the hook does see what is loaded: the client's own modules and its two dependencies
    expect(modules.some((m) => m.endsWith('/dist/transports/channel.js'))).toBe(true);
    expect(modules.some((m) => m.includes('/node_modules/msgpackr/'))).toBe(true);
    expect(modules.some((m) => m.includes('/node_modules/xxhash-addon/'))).toBe(true);
    expect(forbiddenAmong(modules)).toEqual([]);
  });

  it('would catch them: the full transports index loads ws and the mux', async () => {
    const { modules } = await modulesLoadedBy(fullIndex);
    const caught = forbiddenAmong(modules);
    expect(caught.some((m) => m.includes('/node_modules/ws/'))).toBe(true);
    expect(caught.some((m) => m.endsWith('/dist/transports/mux.js'))).toBe(true);
  });
});
