/**
 * `npm run docs:config`: writes docs/configuration.md and docs/sluice-config.schema.json from the
 * option rows in server/config.ts (run from the build: `node dist/scripts/gen-config-docs.js`).
 * With `--check`, writes nothing and exits 1 naming the stale files.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CONFIG_REFERENCE_PATH, CONFIG_SCHEMA_PATH, REGENERATE, configReference, configSchemaText } from '../server/config-docs.js';

// dist/scripts/ → the repository root
const root = fileURLToPath(new URL('../..', import.meta.url));
const check = process.argv.includes('--check');
const files: Array<[string, string]> = [
  [CONFIG_REFERENCE_PATH, configReference()],
  [CONFIG_SCHEMA_PATH, configSchemaText()],
];
const stale: string[] = [];
for (const [path, content] of files) {
  let current: string | undefined;
  try {
    current = readFileSync(join(root, path), 'utf8');
  } catch {
    current = undefined;
  }
  if (current === content) continue;
  stale.push(path);
  if (!check) writeFileSync(join(root, path), content);
}
if (check && stale.length > 0) {
  process.stderr.write(`stale: ${stale.join(', ')}; run ${REGENERATE}\n`);
  process.exit(1);
}
process.stdout.write(stale.length === 0 ? 'docs:config: up to date\n' : `docs:config: wrote ${stale.join(', ')}\n`);
