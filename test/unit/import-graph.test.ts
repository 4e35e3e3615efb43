/**
 * The layout's rules, on the import graph (DESIGN.md, "Layout"): no module cycles, `transports/`
 * imports nothing from `server/` or `client/`, `client/` nothing from `server/` (functions load
 * the client alone), and `bench/` nothing from `test/` — nor does `harness/`, which bench/ and the
 * tests share. Built from the sources, not the build: every relative import, export-from, dynamic
 * `import()` and type-only import of every .ts file under the folders below.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));
const FOLDERS = ['transports', 'server', 'client', 'bench', 'harness'];

/**
 * Import edges that break a rule and are known, each with what removes it. The test fails when
 * one of them is gone, so that it is deleted here too.
 */
const KNOWN: readonly { from: string; to: string; why: string }[] = [];

function sourcesUnder(folder: string): string[] {
  return readdirSync(join(root, folder), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts') && !join(e.parentPath, e.name).includes(`${join(root, folder)}/results`))
    .map((e) => relative(root, join(e.parentPath, e.name)))
    .sort();
}

/** comments out, so that an example in a doc comment is not taken for an import */
function code(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
}

const IMPORT = /\b(?:import|export)\s+(?:type\s+)?(?:[^'"`;]*?\s+from\s+)?['"](\.{1,2}\/[^'"]+)['"]|\bimport\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g;

/** file (relative to the root) → the files it imports (relative to the root), `.js` specifiers as their `.ts` source */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of FOLDERS.flatMap(sourcesUnder)) {
    const targets = [...code(readFileSync(join(root, file), 'utf8')).matchAll(IMPORT)].map((m) => {
      const spec = (m[1] ?? m[2])!;
      return relative(root, resolve(root, dirname(file), spec.replace(/\.js$/, '.ts')));
    });
    graph.set(file, [...new Set(targets)]);
  }
  return graph;
}

const graph = importGraph();
const isKnown = (from: string, to: string): boolean => KNOWN.some((k) => k.from === from && k.to === to);
const edges = [...graph].flatMap(([from, tos]) => tos.map((to) => ({ from, to })));

/** One cycle through every strongly connected component of more than one file (or a file importing itself). */
function cycles(g: Map<string, string[]>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  let next = 0;
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of g.get(v) ?? []) {
      if (!g.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) !== index.get(v)) return;
    const component = new Set<string>();
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      component.add(w);
    } while (w !== v);
    if (component.size > 1 || (g.get(v) ?? []).includes(v)) found.push(cycleIn(g, component, v));
  };
  for (const v of g.keys()) if (!index.has(v)) visit(v);
  return found;
}

/** a path from `start` back to itself inside `component`, for the message */
function cycleIn(g: Map<string, string[]>, component: Set<string>, start: string): string[] {
  const previous = new Map<string, string>();
  const queue = [start];
  while (queue.length > 0) {
    const v = queue.shift()!;
    for (const w of g.get(v) ?? []) {
      if (!component.has(w)) continue;
      if (w === start) {
        const path = [start];
        for (let at = v; at !== start; at = previous.get(at)!) path.splice(1, 0, at);
        return [...path, start];
      }
      if (!previous.has(w)) {
        previous.set(w, v);
        queue.push(w);
      }
    }
  }
  return [start, start];
}

describe('the import graph', () => {
  it('is read from every source file, and every relative import names a file that exists', () => {
    expect(graph.size).toBeGreaterThan(50);
    expect(graph.get('server/cli.ts')).toContain('server/config.ts');
    const missing = edges.filter(({ to }) => !existsSync(join(root, to))).map(({ from, to }) => `${from} → ${to}`);
    expect(missing).toEqual([]);
  });

  it('has no cycles', () => {
    const pruned = new Map([...graph].map(([from, tos]) => [from, tos.filter((to) => !isKnown(from, to))]));
    const found = cycles(pruned).map((c) => c.join(' → '));
    expect(found, `import cycles:\n${found.join('\n')}`).toEqual([]);
  });

  it('transports/ imports nothing from server/ or client/, client/ nothing from server/', () => {
    const broken = edges
      .filter(({ from, to }) => (from.startsWith('transports/') && /^(server|client)\//.test(to)) || (from.startsWith('client/') && to.startsWith('server/')))
      .map(({ from, to }) => `${from} → ${to}`);
    expect(broken).toEqual([]);
  });

  it('bench/ and harness/ import nothing from test/', () => {
    const broken = edges.filter(({ from, to }) => /^(bench|harness)\//.test(from) && to.startsWith('test/')).map(({ from, to }) => `${from} → ${to}`);
    expect(broken).toEqual([]);
  });

  it('every known exception still exists (delete the ones that are gone from KNOWN)', () => {
    for (const k of KNOWN) expect(graph.get(k.from) ?? [], `${k.from} → ${k.to} is gone: remove it from KNOWN`).toContain(k.to);
  });
});
