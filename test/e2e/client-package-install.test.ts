/**
 * The lean client package, as a function would get it: packages/client packed (`npm pack`, which
 * builds it) and installed into an empty folder. Its tree holds none of the daemon's dependencies,
 * `import('sluice-client')` loads none of them, and two functions using it from there stream
 * through a real daemon. The installed size is printed (docs/client.md "Install" quotes it).
 *
 * The install is `npm install --offline` when the npm cache can answer it (it holds the tarballs
 * after `npm ci`, but not the registry's metadata, which `npm ci` does not fetch), else
 * `--prefer-offline` (the registry is asked only for what the cache lacks).
 */
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { startDaemonProcess, type DaemonProcess } from '../helpers/daemon.js';
import { forbiddenAmong, modulesLoadedBy } from '../helpers/loaded-modules.js';

const run = promisify(execFile);
const packageDir = fileURLToPath(new URL('../../packages/client', import.meta.url));
/** Installed packages a function must not get. */
const FORBIDDEN = /^(@aws-sdk\/|@smithy\/|@fastify\/|fastify$|pino|prom-client$|yaml$|ws$|bufferutil$)/;

// npm's own variables (set when the suite runs under `npm test`) would point the child npm at
// this repository's configuration and prefix: the install must see an empty folder only.
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)));
const npm = (args: string[], cwd: string) => run('npm', args, { cwd, env, maxBuffer: 16 << 20 });

let tmp: string;
let fnDir: string;
let installedWith: string;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'sluice-client-pkg-'));
  const { stdout } = await npm(['pack', '--json', '--pack-destination', tmp], packageDir);
  const [packed] = JSON.parse(stdout.slice(stdout.indexOf('['))) as Array<{ filename: string; size: number; unpackedSize: number }>;
  console.log(`sluice-client tarball: ${packed!.size} B, unpacked ${packed!.unpackedSize} B`);
  fnDir = join(tmp, 'fn');
  await run('mkdir', [fnDir]);
  writeFileSync(join(fnDir, 'package.json'), JSON.stringify({ name: 'fn', private: true, type: 'module' }));
  const tarball = join(tmp, packed!.filename);
  const flags = ['--no-audit', '--no-fund', '--no-update-notifier'];
  try {
    await npm(['install', '--offline', ...flags, tarball], fnDir);
    installedWith = '--offline';
  } catch (err) {
    if (!/ENOTCACHED/.test(String((err as { stderr?: string }).stderr ?? err))) throw err;
    await npm(['install', '--prefer-offline', ...flags, tarball], fnDir);
    installedWith = '--prefer-offline';
  }
}, 120_000);

afterAll(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe('sluice-client installed into an empty folder', () => {
  it('pulls in none of the daemon’s dependencies', async () => {
    const lock = JSON.parse(readFileSync(join(fnDir, 'node_modules', '.package-lock.json'), 'utf8')) as { packages: Record<string, { version: string }> };
    const installed = Object.keys(lock.packages).map((p) => p.slice(p.lastIndexOf('node_modules/') + 'node_modules/'.length));
    expect(installed).toContain('sluice-client');
    expect(installed).toContain('msgpackr');
    expect(installed).toContain('xxhash-addon');
    expect(installed.filter((name) => FORBIDDEN.test(name))).toEqual([]);
    const { stdout } = await run('du', ['-sk', 'node_modules'], { cwd: fnDir });
    const kib = Number(stdout.split('\t')[0]);
    console.log(`sluice-client installed (${installedWith}): ${installed.length} packages, node_modules ${kib} KiB (du -sk): ${installed.sort().join(', ')}`);
    expect(kib).toBeLessThan(8 * 1024); // 4576 KiB when measured; the daemon's install is ~50 MiB
  });

  it('imports, and loads nothing daemon-side', async () => {
    const { exports, modules } = await modulesLoadedBy('sluice-client', fnDir);
    expect(exports).toEqual(expect.arrayContaining(['connect', 'control', 'ErrorCodes', 'SluiceError', 'hasCode']));
    expect(modules.some((m) => m.includes(`${fnDir}/node_modules/sluice-client/dist/client/index.js`))).toBe(true);
    expect(forbiddenAmong(modules)).toEqual([]);
  });

  describe('two functions using it, through a real daemon', () => {
    let daemon: DaemonProcess;
    beforeAll(async () => {
      daemon = await startDaemonProcess(['--attach-timeout', '5s']);
    });
    afterAll(async () => {
      await daemon?.stop();
    });

    it('stream 1000 records producer → consumer, in order, verified', async () => {
      writeFileSync(join(fnDir, 'up.mjs'), `
import { connect } from 'sluice-client';
const sl = await connect();
const out = sl.output('down');
for (let i = 0; i < 1000; i++) await out.send({ i, text: 'record ' + i });
await new Promise((resolve, reject) => out.end((err) => (err ? reject(err) : resolve())));
console.log(JSON.stringify({ sent: 1000 }));
`);
      writeFileSync(join(fnDir, 'down.mjs'), `
import { connect } from 'sluice-client';
const sl = await connect();
let n = 0;
for await (const rec of sl.input('up').records()) { if (rec.i !== n) throw new Error('out of order at ' + n); n++; }
console.log(JSON.stringify({ received: n }));
`);
      await control(daemon.dir, 'POST', '/v1/workflows', { name: 'lean', steps: { up: {}, down: {} }, edges: [{ from: 'up', to: 'down' }] });
      const { body } = await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: 'lean' });
      const start = (script: string, step: string) => {
        const child = spawn(process.execPath, [script], {
          cwd: fnDir,
          env: { ...process.env, SLUICE_DIR: daemon.dir, SLUICE_RUN: body.run, SLUICE_STEP: step, SLUICE_TOKEN: body.token },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let out = '';
        child.stdout.on('data', (c: Buffer) => (out += c));
        child.stderr.on('data', (c: Buffer) => (out += c));
        return once(child, 'exit').then(([code]) => ({ code: code as number, out }));
      };
      const [up, down] = await Promise.all([start('up.mjs', 'up'), start('down.mjs', 'down')]);
      expect(up, up.out).toMatchObject({ code: 0 });
      expect(down, down.out).toMatchObject({ code: 0 });
      expect(JSON.parse(down.out.trim())).toEqual({ received: 1000 });
    });
  });
});
