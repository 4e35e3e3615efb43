/** docs/errors.md's error-code table is the users' reference: it must list exactly the codes the code has. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../transports/index.js';

describe('the error-code table of docs/errors.md', () => {
  const readme = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  const section = readme.split(/^## Error codes$/m)[1]?.split(/^## /m)[0] ?? '';
  const documented = [...section.matchAll(/^\| `(SLUICE_[A-Z_]+)` \|/gm)].map((m) => m[1]);

  it('lists every code the library raises, once', () => {
    expect([...documented].sort()).toEqual(Object.values(ErrorCodes).sort());
  });
});
