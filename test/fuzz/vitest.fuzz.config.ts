import { defineConfig } from 'vitest/config';

/** `npm run fuzz` (test/fuzz/run.mjs): the long fuzz runs, one file, no time limit per target. */
export default defineConfig({
  test: {
    root: new URL('../..', import.meta.url).pathname,
    include: ['test/fuzz/all-targets.fuzz.ts'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 0,
    hookTimeout: 60_000,
    fileParallelism: false,
    pool: 'forks',
    env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
  },
});
