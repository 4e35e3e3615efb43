import { defineConfig } from 'vitest/config';

// On Node 20 the AWS SDK warns once per process that its releases from 2027 need Node 22; the tests
// read daemons' and functions' stderr, so it is silenced there only. On Node 22 and later there is
// nothing to silence, and the daemon itself never silences it.
const nodeMajor = Number(process.versions.node.split('.')[0]);

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Compliance and e2e tests start processes and move tens of MiB; two cores, so keep files
    // from fighting for them.
    fileParallelism: false,
    pool: 'forks',
    env: nodeMajor < 22 ? { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' } : {},
  },
});
