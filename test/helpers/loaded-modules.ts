/**
 * Which modules a fresh Node process loads when it imports one module: every ES module URL (a
 * module.register() load hook, which sees each one) and every CommonJS file (require.cache),
 * native add-ons included. Used to check that the function-side import stays lean.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

// The hooks run on their own thread: each URL is appended to a file, synchronously, so none is
// lost to a message still in flight when the import settles.
const HOOKS = `
import { appendFileSync } from 'node:fs';
let out;
export function initialize(data) { out = data.out; }
export async function load(url, context, next) { appendFileSync(out, url + '\\n'); return next(url, context); }
`;

const PROBE = `
import { register, createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
const [target, out] = process.argv.slice(1);
register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(HOOKS)}), { data: { out } });
const spec = target.startsWith('/') ? pathToFileURL(target).href : target;
const mod = await import(spec);
const cjs = Object.keys(createRequire(process.cwd() + '/').cache);
console.log(JSON.stringify({ exports: Object.keys(mod).sort(), cjs }));
`;

export interface Loaded {
  /** The target's export names. */
  exports: string[];
  /** Every module loaded: ES module URLs (node: built-ins left out) and CommonJS file paths. */
  modules: string[];
}

/** Import `target` (an absolute path or a bare specifier resolved from `cwd`) in a new process. */
export async function modulesLoadedBy(target: string, cwd = process.cwd()): Promise<Loaded> {
  const tmp = mkdtempSync(join(tmpdir(), 'sluice-loaded-'));
  const out = join(tmp, 'urls');
  try {
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', PROBE, target, out], { cwd });
    const { exports, cjs } = JSON.parse(stdout.trim().split('\n').pop()!) as { exports: string[]; cjs: string[] };
    const urls = readFileSync(out, 'utf8').split('\n').filter((u) => u !== '' && !u.startsWith('node:'));
    return { exports, modules: [...new Set([...urls, ...cjs])] };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** What a function's import must not load: the daemon's dependencies and the daemon-side media. */
export const NOT_FOR_FUNCTIONS: RegExp[] = [
  /\/node_modules\/(@aws-sdk|@smithy|@fastify|fastify|pino|pino-[^/]+|prom-client|yaml|ws|bufferutil)\//,
  /\/transports\/(ws|mux|shm|store-s3|store-file|budget|memory)\.[jt]s$/,
  /\/server\//,
];

export function forbiddenAmong(modules: string[]): string[] {
  return modules.filter((m) => NOT_FOR_FUNCTIONS.some((re) => re.test(m)));
}
