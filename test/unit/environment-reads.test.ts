/**
 * Only the configuration reads the environment (DESIGN.md, "Layout"): in server/, client/ and
 * transports/, `process.env` appears in server/config.ts, server/cli.ts (the composition root)
 * and files named *config*.ts under server/ or client/, nowhere else. Handing this process's
 * environment on whole to a child (`{ ...process.env, SLUICE_RUN: ... }`) is not a read and is
 * allowed anywhere. bench/, harness/ and test/ are not checked: they are not the product.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));

/** Files that may read the environment for a reason of their own, with it. */
const EXEMPT: Record<string, string> = {};

function mayRead(file: string): boolean {
  if (file === 'server/config.ts' || file === 'server/cli.ts') return true;
  if (/^(server|client)\//.test(file) && basename(file).includes('config') && file.endsWith('.ts')) return true;
  return file in EXEMPT;
}

/** comments out: prose may name `process.env` */
function code(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
}

/** `process.env`, `process?.env`, `process['env']`, `const { env } = process`; the spread `...process.env` is not a read */
const READ = /(?<!\.\.\.)\bprocess\s*(?:\?\.|\.)\s*env\b|\bprocess\s*\[\s*['"`]env['"`]\s*\]|\{[^}]*\benv\b[^}]*\}\s*=\s*process\b/g;

function readsIn(file: string): string[] {
  return code(readFileSync(join(root, file), 'utf8'))
    .split('\n')
    .flatMap((line, i) => (line.match(READ) ? [`${file}:${i + 1}: ${line.trim()}`] : []));
}

const sources = ['server', 'client', 'transports'].flatMap((folder) =>
  readdirSync(join(root, folder), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => relative(root, join(e.parentPath, e.name))),
);

describe('reads of the environment', () => {
  it('the check sees reads, and lets a whole environment handed to a child through', () => {
    expect('const region = process.env.AWS_REGION;'.match(READ)).not.toBeNull();
    expect("process['env']".match(READ)).not.toBeNull();
    expect('const { env } = process;'.match(READ)).not.toBeNull();
    expect('spawn(cmd, { env: { ...process.env, SLUICE_RUN: run } });'.match(READ)).toBeNull();
    expect(readsIn('server/cli.ts').length).toBeGreaterThan(0);
  });

  it('happen only in the config files and cli.ts', () => {
    expect(sources.length).toBeGreaterThan(30);
    const reads = sources.filter((f) => !mayRead(f)).flatMap(readsIn);
    expect(reads, `read the environment in a config file (or cli.ts) and pass the values on:\n${reads.join('\n')}`).toEqual([]);
  });

  it('every exempt file exists and still reads it (delete the ones that stopped from EXEMPT)', () => {
    for (const file of Object.keys(EXEMPT)) expect(readsIn(file), `${file} no longer reads the environment: remove it from EXEMPT`).not.toEqual([]);
  });
});
