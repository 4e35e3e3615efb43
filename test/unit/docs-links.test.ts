/**
 * The documentation of a clone is self-contained: every relative link in README.md, docs/*.md,
 * bench/README.md and test/README.md points to a file of the repository (and an anchor, where it
 * names one, to a heading of that file); no link leaves the repository; README.md stays the front
 * door, at most 300 lines.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));
const pages = ['README.md', 'bench/README.md', 'test/README.md', ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

/** Markdown without its fenced code blocks and inline code, where `[x](y)` is not a link. */
function prose(text: string): string {
  return text.replace(/^```[\s\S]*?^```/gm, '').replace(/`[^`\n]*`/g, '');
}

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens. */
function anchor(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/`/g, '')
    .replace(/[^\p{L}\p{N} _-]/gu, '')
    .replace(/ /g, '-');
}

function anchorsOf(file: string): Set<string> {
  // headings keep their inline code (`--config`): only fenced blocks are not headings
  const text = readFileSync(file, 'utf8').replace(/^```[\s\S]*?^```/gm, '');
  const headings = [...text.matchAll(/^#{1,6} (.+)$/gm)].map((m) => anchor(m[1]!));
  return new Set(headings);
}

function links(page: string): string[] {
  const text = prose(readFileSync(join(root, page), 'utf8'));
  return [...text.matchAll(/!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)].map((m) => m[1]!);
}

describe('the documentation', () => {
  it.each(pages)('%s: every link points to a file of the repository', (page) => {
    const found = links(page);
    for (const target of found) {
      expect(target, `${page}: ${target} leaves the repository`).not.toMatch(/^[a-z][a-z0-9+.-]*:/i);
      expect(target, `${page}: ${target} is an absolute path`).not.toMatch(/^\//);
      expect(target, `${page}: ${target}`).not.toContain('../shared');
      const [path, hash] = target.split('#') as [string, string | undefined];
      const file = path === '' ? join(root, page) : resolve(dirname(join(root, page)), decodeURI(path));
      const inRepo = relative(root, file);
      expect(inRepo.startsWith('..'), `${page}: ${target} leaves the repository`).toBe(false);
      expect(existsSync(file), `${page}: ${target} does not exist`).toBe(true);
      if (hash && file.endsWith('.md')) expect(anchorsOf(file), `${page}: ${target}: no heading #${hash}`).toContain(hash);
      if (hash) expect(statSync(file).isFile(), `${page}: ${target}`).toBe(true);
    }
  });

  it('names no place outside the repository, in links or in text', () => {
    for (const page of pages) expect(readFileSync(join(root, page), 'utf8'), page).not.toMatch(/\.\.\/shared|DESIGN\.md/);
  });

  it('README.md is the front door: at most 300 lines, linking the reference in docs/', () => {
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    expect(readme.split('\n').length).toBeLessThanOrEqual(300);
    for (const doc of ['docs/protocol.md', 'docs/control-api.md', 'docs/operations.md', 'docs/configuration.md', 'bench/README.md', 'test/README.md']) expect(links('README.md')).toContain(doc);
  });
});
