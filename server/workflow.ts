/**
 * The workflow model: a named DAG of steps (functions) and edges (producer step → consumer
 * step), registered once and shared between daemons. This module only parses and validates;
 * it does no I/O.
 *
 * ```yaml
 * name: wordcount
 * steps:
 *   split: {}
 *   count: { replicas: 4 }     # replicas: integer 1..64, default 1
 *   merge: {}                  # `merge:` with no value means the same as `merge: {}`
 * edges:
 *   - { from: split, to: count, fanout: partition }   # fanout: broadcast (default) | partition | balance
 *   - { from: split, to: count, fanout: balance, policy: affinity, key: producer }
 *                 # balance: each stream goes to ONE instance, chosen by the producer's daemon;
 *                 # policy: local-first (default) | always-local | least-loaded | affinity;
 *                 # key (affinity only): run (default) | producer — what is hashed when the
 *                 # producer names no key of its own
 *   - { from: count, to: merge }
 *   - { from: split, to: merge, via: s3, persist: true }  # via: direct (default) | s3
 * ```                                                      # persist: false (default) | true
 *
 * Refused with `SLUICE_INVALID` (message: what is wrong and how to fix it; `details.path`: where,
 * e.g. `edges[2].to`): text over `MAX_WORKFLOW_BYTES`, JSON / YAML syntax errors (with line and
 * column), a root that is not a mapping, a bad or missing name, no steps, unknown keys anywhere
 * (a typo is named, with the allowed keys), replicas outside 1..64, edges naming unknown steps,
 * self-edges, duplicate edges, bad option values, cycles, more than `MAX_STEPS` steps or
 * `MAX_EDGES` edges.
 *
 * The result is deeply frozen: a registered workflow is shared by every run made from it.
 */
import { parseDocument } from 'yaml';
import { ErrorCodes, RequestError, type ErrorCode } from '../transports/errors.js';
import { NAME_PATTERN, checkName } from '../transports/layout.js';

/** Largest workflow text accepted, in bytes (UTF-8). */
export const MAX_WORKFLOW_BYTES = 1024 * 1024;
/** Most steps one workflow may have. */
export const MAX_STEPS = 256;
/** Most edges one workflow may have. */
export const MAX_EDGES = 1024;
/** Most replicas of one step. */
export const MAX_REPLICAS = 64;

export type Fanout = 'broadcast' | 'partition' | 'balance';
export type Via = 'direct' | 's3';
/** How a `balance` edge picks the consumer instance of each stream (DESIGN.md, "Routing across replicas"). */
export type Policy = 'local-first' | 'always-local' | 'least-loaded' | 'affinity';
/** What `affinity` hashes when the producer gives no key: the run id, or the run id and the producer instance. */
export type AffinityKey = 'run' | 'producer';

export interface Step {
  /** How many instances of the step a run has (1..64). */
  readonly replicas: number;
}

export interface Edge {
  readonly from: string;
  readonly to: string;
  /**
   * With several instances of `to`: every instance gets every byte (`broadcast`), records are
   * routed by key (`partition`), or each stream goes to one instance the daemon picks (`balance`).
   */
  readonly fanout: Fanout;
  /** `balance` edges only: how the instance is picked. */
  readonly policy?: Policy;
  /** `balance` edges with `policy: affinity` only: what is hashed when the producer names no key. */
  readonly key?: AffinityKey;
  /** `direct` lets Sluice choose the fastest path; `s3` forces the object store. */
  readonly via: Via;
  /** Also keep a durable copy in the store. */
  readonly persist: boolean;
}

/**
 * A validated workflow. Deeply frozen at run time (the array and record types stay mutable in
 * TypeScript so they can be handed to code that only reads them; copy before changing).
 * `steps` has no prototype, so `name in workflow.steps` is true only for steps.
 */
export interface Workflow {
  readonly name: string;
  readonly steps: Record<string, Step>;
  readonly edges: Edge[];
}

const FANOUTS: readonly Fanout[] = ['broadcast', 'partition', 'balance'];
export const POLICIES: readonly Policy[] = ['local-first', 'always-local', 'least-loaded', 'affinity'];
const AFFINITY_KEYS: readonly AffinityKey[] = ['run', 'producer'];
const VIAS: readonly Via[] = ['direct', 's3'];
const ROOT_KEYS = ['name', 'steps', 'edges'] as const;
const STEP_KEYS = ['replicas'] as const;
const EDGE_KEYS = ['from', 'to', 'fanout', 'via', 'persist', 'policy', 'key'] as const;

/**
 * Parses a workflow file's text (JSON when its first non-blank character is `{`, YAML
 * otherwise) and validates it. `sourceName` (a file name, "request body", ...) starts every error
 * message. Bytes are decoded as UTF-8; invalid UTF-8 is refused.
 */
export function parseWorkflowText(text: string | Uint8Array, sourceName = 'workflow'): Workflow {
  const size = typeof text === 'string' ? Buffer.byteLength(text, 'utf8') : text.byteLength;
  if (size > MAX_WORKFLOW_BYTES) {
    throw invalid(
      `${sourceName}: the workflow is ${size} bytes, over the limit of ${MAX_WORKFLOW_BYTES} (1 MiB); a workflow describes steps and edges, not data — move large values out of it`,
      { source: sourceName, bytes: size },
    );
  }
  return validateWorkflow(parseJsonOrYaml(text, sourceName, ErrorCodes.INVALID), sourceName);
}

/**
 * Validates an already-parsed workflow (a request body, the result of `JSON.parse`) and returns
 * it frozen, defaults filled in. `sourceName`, when given, starts every error message.
 */
export function validateWorkflow(input: unknown, sourceName?: string): Workflow {
  const at = sourceName ? `${sourceName}: ` : '';
  const fail = (path: string, message: string, extra: Record<string, unknown> = {}): never => {
    throw invalid(`${at}${message}`, { path, ...(sourceName ? { source: sourceName } : {}), ...extra });
  };

  if (!isPlainObject(input)) {
    fail('', `a workflow must be a mapping with keys name, steps and edges, not ${describeType(input)}`);
  }
  const root = input as Record<string, unknown>;
  checkKeys(root, ROOT_KEYS, '', 'the workflow', fail);

  // name
  if (root['name'] === undefined || root['name'] === null) {
    fail('name', 'the workflow has no name: add `name: <name>` (1-63 characters of a-z, 0-9, _ and -, starting with a letter or digit)');
  }
  const name = checkedName(root['name'], 'workflow name', 'name', fail);
  const what = `workflow "${name}"`;

  // steps
  const rawSteps = root['steps'];
  if (rawSteps === undefined || rawSteps === null) {
    fail('steps', `${what} has no steps: add a \`steps:\` mapping with one entry per function, e.g. \`steps: { split: {}, count: { replicas: 4 } }\``);
  }
  if (!isPlainObject(rawSteps)) {
    fail('steps', `${what}: steps must be a mapping from step name to options (e.g. \`steps: { split: {}, count: { replicas: 4 } }\`), not ${describeType(rawSteps)}`);
  }
  const stepNames = Object.keys(rawSteps as object);
  if (stepNames.length === 0) {
    fail('steps', `${what} has no steps: add at least one entry under \`steps:\`, e.g. \`split: {}\``);
  }
  if (stepNames.length > MAX_STEPS) {
    fail('steps', `${what} has ${stepNames.length} steps, over the limit of ${MAX_STEPS}: split it into several workflows`, { count: stepNames.length });
  }
  const steps: Record<string, Step> = Object.create(null) as Record<string, Step>;
  for (const stepName of stepNames) {
    const path = `steps.${displayKey(stepName)}`;
    checkedName(stepName, 'step name', path, fail);
    const spec = (rawSteps as Record<string, unknown>)[stepName];
    let replicas = 1;
    if (spec !== null) {
      if (!isPlainObject(spec)) {
        fail(path, `${what}: step "${stepName}" must be a mapping of options (e.g. \`${stepName}: { replicas: 2 }\`, or \`${stepName}: {}\` for none), not ${describeType(spec)}`);
      }
      const options = spec as Record<string, unknown>;
      checkKeys(options, STEP_KEYS, path, `${what}: step "${stepName}"`, fail);
      if (options['replicas'] !== undefined) {
        const r = options['replicas'];
        if (typeof r !== 'number' || !Number.isInteger(r) || r < 1 || r > MAX_REPLICAS) {
          fail(`${path}.replicas`, `${what}: step "${stepName}" has replicas ${show(r)}; use a whole number from 1 to ${MAX_REPLICAS}`);
        }
        replicas = r as number;
      }
    }
    steps[stepName] = Object.freeze({ replicas });
  }

  // edges
  const rawEdges = root['edges'] ?? [];
  if (!Array.isArray(rawEdges)) {
    fail('edges', `${what}: edges must be a list (e.g. \`edges: [{ from: split, to: count }]\`), not ${describeType(rawEdges)}`);
  }
  const edgeList = rawEdges as unknown[];
  if (edgeList.length > MAX_EDGES) {
    fail('edges', `${what} has ${edgeList.length} edges, over the limit of ${MAX_EDGES}: split it into several workflows`, { count: edgeList.length });
  }
  const edges: Edge[] = [];
  const seen = new Map<string, number>();
  edgeList.forEach((raw, i) => {
    const path = `edges[${i}]`;
    if (!isPlainObject(raw)) {
      fail(path, `${what}: ${path} must be a mapping like \`{ from: split, to: count }\`, not ${describeType(raw)}`);
    }
    const e = raw as Record<string, unknown>;
    checkKeys(e, EDGE_KEYS, path, `${what}: ${path}`, fail);
    const endpoint = (key: 'from' | 'to'): string => {
      const value = e[key];
      if (value === undefined || value === null) {
        fail(`${path}.${key}`, `${what}: ${path} has no \`${key}\`: name the ${key === 'from' ? 'producing' : 'consuming'} step, one of ${listSteps(stepNames)}`);
      }
      if (typeof value !== 'string' || !Object.hasOwn(steps, value)) {
        const hint = typeof value === 'string' ? didYouMean(value, stepNames) : undefined;
        fail(
          `${path}.${key}`,
          `${what}: ${path}.${key} ${show(value)} is not a step of this workflow; ${hint ? `did you mean "${hint}"? ` : ''}steps are ${listSteps(stepNames)} (declare it under \`steps:\` or fix the name)`,
        );
      }
      return value as string;
    };
    const from = endpoint('from');
    const to = endpoint('to');
    if (from === to) {
      fail(path, `${what}: ${path} goes from step "${from}" to itself; an edge must join two different steps (a step that reads its own output would wait for itself)`);
    }
    const pair = `${from}\u0000${to}`;
    const first = seen.get(pair);
    if (first !== undefined) {
      fail(path, `${what}: ${path} repeats edges[${first}] (from "${from}" to "${to}"); keep one edge per pair of steps and put all its options on it`, { duplicateOf: `edges[${first}]` });
    }
    seen.set(pair, i);
    const choice = <T extends string>(key: string, allowed: readonly T[], fallback: T): T => {
      const value = e[key];
      if (value === undefined) return fallback;
      if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
        fail(`${path}.${key}`, `${what}: ${path}.${key} is ${show(value)}; use ${allowed.map((a) => `"${a}"`).join(' or ')} (default "${fallback}")`);
      }
      return value as T;
    };
    const fanout = choice<Fanout>('fanout', FANOUTS, 'broadcast');
    const via = choice<Via>('via', VIAS, 'direct');
    let persist = false;
    if (e['persist'] !== undefined) {
      if (typeof e['persist'] !== 'boolean') {
        fail(`${path}.persist`, `${what}: ${path}.persist is ${show(e['persist'])}; use true or false (without quotes; default false)`);
      }
      persist = e['persist'] as boolean;
    }
    if (e['policy'] !== undefined && fanout !== 'balance') {
      fail(`${path}.policy`, `${what}: ${path}.policy applies to \`fanout: balance\` only (this edge is ${fanout}); remove it or set \`fanout: balance\``);
    }
    const policy = fanout === 'balance' ? choice<Policy>('policy', POLICIES, 'local-first') : undefined;
    if (e['key'] !== undefined && policy !== 'affinity') {
      fail(`${path}.key`, `${what}: ${path}.key applies to \`fanout: balance\` with \`policy: affinity\` only; remove it or set the policy to affinity`);
    }
    if (fanout === 'balance' && (via === 's3' || persist)) {
      fail(`${path}.${via === 's3' ? 'via' : 'persist'}`, `${what}: ${path} balances streams across live instances, which \`${via === 's3' ? 'via: s3' : 'persist: true'}\` does not go with (the store is not an instance); use a broadcast or partition edge for stored data`);
    }
    const affinityKey = policy === 'affinity' ? choice<AffinityKey>('key', AFFINITY_KEYS, 'run') : undefined;
    edges.push(Object.freeze({ from, to, fanout, via, persist, ...(policy ? { policy } : {}), ...(affinityKey ? { key: affinityKey } : {}) }));
  });

  const workflow: Workflow = { name, steps: Object.freeze(steps), edges: Object.freeze(edges) as Edge[] };
  const cycle = findCycle(workflow);
  if (cycle) {
    fail('edges', `${what} has a cycle: ${cycle.join(' → ')}; a workflow must be a DAG — remove or reverse one of these edges`, { cycle });
  }
  return Object.freeze(workflow);
}

/**
 * The steps in an order where every step comes after all its predecessors. Ties keep the order in
 * which the steps were declared, so the result is deterministic.
 */
export function topologicalOrder(workflow: Workflow): string[] {
  const names = Object.keys(workflow.steps);
  const indegree = new Map<string, number>(names.map((n) => [n, 0]));
  for (const e of workflow.edges) indegree.set(e.to, (indegree.get(e.to) ?? 0) + 1);
  const rank = new Map(names.map((n, i) => [n, i]));
  // A sorted ready list keeps declaration order among steps that are free at the same time.
  const ready = names.filter((n) => indegree.get(n) === 0);
  const order: string[] = [];
  const out = adjacency(workflow);
  while (ready.length > 0) {
    const step = ready.shift()!;
    order.push(step);
    for (const next of out.get(step) ?? []) {
      const d = (indegree.get(next) ?? 0) - 1;
      indegree.set(next, d);
      if (d === 0) {
        const r = rank.get(next) ?? 0;
        let at = ready.findIndex((s) => (rank.get(s) ?? 0) > r);
        if (at < 0) at = ready.length;
        ready.splice(at, 0, next);
      }
    }
  }
  if (order.length !== names.length) {
    const cycle = findCycle(workflow) ?? [];
    throw invalid(`workflow "${workflow.name}" has a cycle: ${cycle.join(' → ')}`, { path: 'edges', cycle });
  }
  return order;
}

/** The steps that read `step`'s output, in edge order. SLUICE_NOT_FOUND for an unknown step. */
export function successors(workflow: Workflow, step: string): string[] {
  knownStep(workflow, step);
  return workflow.edges.filter((e) => e.from === step).map((e) => e.to);
}

/** The steps whose output `step` reads, in edge order. SLUICE_NOT_FOUND for an unknown step. */
export function predecessors(workflow: Workflow, step: string): string[] {
  knownStep(workflow, step);
  return workflow.edges.filter((e) => e.to === step).map((e) => e.from);
}

/**
 * Parses JSON (when the first non-blank character is `{`) or YAML text into plain values.
 * Syntax errors become a RequestError with `code`, a message starting with `sourceName` and
 * giving the line and column, and `details` { source, line, column }. YAML duplicate keys,
 * several documents and unknown tags are errors too. Shared with the daemon's config loader.
 */
export function parseJsonOrYaml(text: string | Uint8Array, sourceName: string, code: ErrorCode): unknown {
  let source: string;
  if (typeof text === 'string') {
    source = text;
  } else {
    try {
      source = new TextDecoder('utf-8', { fatal: true }).decode(text);
    } catch (err) {
      throw new RequestError(code, `${sourceName}: not valid UTF-8 text; save the file as UTF-8`, { cause: err, details: { source: sourceName } });
    }
  }
  if (source.charCodeAt(0) === 0xfeff) source = source.slice(1);
  const syntax = (what: string, line: number, column: number, problem: string, cause?: unknown): never => {
    throw new RequestError(code, `${sourceName}: ${what} syntax error at line ${line}, column ${column}: ${problem}`, {
      ...(cause === undefined ? {} : { cause }),
      details: { source: sourceName, line, column },
    });
  };
  if (source.trimStart().startsWith('{')) {
    try {
      return JSON.parse(source) as unknown;
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      const explicit = /\(line (\d+) column (\d+)\)/.exec(message);
      const position = /at position (\d+)/.exec(message);
      let line = 1;
      let column = 1;
      if (explicit) {
        line = Number(explicit[1]);
        column = Number(explicit[2]);
      } else {
        const offset = position ? Number(position[1]) : source.length;
        const before = source.slice(0, offset);
        line = before.split('\n').length;
        column = offset - (before.lastIndexOf('\n') + 1) + 1;
      }
      const problem = message.replace(/\s*\(line \d+ column \d+\)/, '').replace(/\s*at position \d+/, '');
      return syntax('JSON', line, column, problem, err);
    }
  }
  const doc = parseDocument(source, { schema: 'core', uniqueKeys: true, strict: true, prettyErrors: true });
  const problem = doc.errors[0] ?? doc.warnings[0];
  if (problem) {
    const pos = problem.linePos?.[0] ?? { line: 1, col: 1 };
    const first = (problem.message.split('\n')[0] ?? '').replace(/\s*at line \d+, column \d+:?$/, '');
    return syntax('YAML', pos.line, pos.col, first, problem);
  }
  try {
    return doc.toJS({ maxAliasCount: 100 }) as unknown;
  } catch (err) {
    throw new RequestError(code, `${sourceName}: ${err instanceof Error ? err.message : String(err)}`, { cause: err, details: { source: sourceName } });
  }
}

/** The candidate closest to `value` (edit distance, case and separators ignored), if close enough. */
export function didYouMean(value: string, candidates: readonly string[]): string | undefined {
  const norm = (s: string): string => s.toLowerCase().replace(/[^a-z0-9]/g, '');
  const v = norm(value);
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const n = norm(c);
    if (n === v) return c;
    const d = editDistance(v, n);
    if (d < bestDistance) {
      bestDistance = d;
      best = c;
    }
  }
  if (best === undefined) return undefined;
  const limit = Math.max(1, Math.floor(Math.max(v.length, norm(best).length) / 3));
  if (bestDistance <= limit) return best;
  // a prefix of a longer option ("relay-buffer" for "relayBufferBytes")
  const prefixed = candidates.find((c) => v.length >= 4 && (norm(c).startsWith(v) || v.startsWith(norm(c))));
  return prefixed;
}

function editDistance(a: string, b: string): number {
  // Damerau (adjacent transposition) so "fanuot" is one edit from "fanout".
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[] = new Array<number>(rows * cols).fill(0);
  const at = (i: number, j: number): number => d[i * cols + j] ?? 0;
  for (let i = 0; i < rows; i++) d[i * cols] = i;
  for (let j = 0; j < cols; j++) d[j] = j;
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, at(i - 2, j - 2) + 1);
      d[i * cols + j] = v;
    }
  }
  return at(a.length, b.length);
}

function invalid(message: string, details: Record<string, unknown>): RequestError {
  return new RequestError(ErrorCodes.INVALID, message, { details });
}

type Fail = (path: string, message: string, extra?: Record<string, unknown>) => never;

function checkKeys(obj: Record<string, unknown>, allowed: readonly string[], path: string, where: string, fail: Fail): void {
  for (const key of Object.keys(obj)) {
    if (allowed.includes(key)) continue;
    const hint = didYouMean(key, allowed);
    const keyPath = path ? `${path}.${displayKey(key)}` : displayKey(key);
    fail(keyPath, `${where} has an unknown key ${JSON.stringify(key)}${hint ? ` (did you mean "${hint}"?)` : ''}; allowed keys: ${allowed.join(', ')}`, { key });
  }
}

function checkedName(value: unknown, what: string, path: string, fail: Fail): string {
  try {
    return checkName(what, value);
  } catch (err) {
    const suggestion = typeof value === 'string' ? suggestName(value) : undefined;
    const message = err instanceof Error ? err.message : String(err);
    return fail(path, `${message}${suggestion ? ` (e.g. "${suggestion}")` : ''}`);
  }
}

/** A valid name close to `value`, for error messages ("Word Count" → "word-count"). */
function suggestName(value: string): string | undefined {
  const s = value
    .toLowerCase()
    .replace(/[^a-z0-9_-]+/g, '-')
    .replace(/^[-_]+/, '')
    .slice(0, 63);
  return NAME_PATTERN.test(s) && s !== value ? s : undefined;
}

function knownStep(workflow: Workflow, step: string): void {
  if (!Object.hasOwn(workflow.steps, step)) {
    throw new RequestError(ErrorCodes.NOT_FOUND, `workflow "${workflow.name}" has no step ${JSON.stringify(step)}; its steps are ${listSteps(Object.keys(workflow.steps))}`, {
      details: { workflow: workflow.name, step },
    });
  }
}

function adjacency(workflow: Workflow): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const e of workflow.edges) {
    const list = out.get(e.from);
    if (list) list.push(e.to);
    else out.set(e.from, [e.to]);
  }
  return out;
}

/** One cycle as [a, b, c, a], or undefined for a DAG. Iterative DFS: no recursion limit. */
function findCycle(workflow: Workflow): string[] | undefined {
  const out = adjacency(workflow);
  const state = new Map<string, 1 | 2>(); // 1: on the current path, 2: done
  for (const start of Object.keys(workflow.steps)) {
    if (state.has(start)) continue;
    const path: string[] = [start];
    const iterators: number[] = [0];
    state.set(start, 1);
    while (path.length > 0) {
      const top = path[path.length - 1]!;
      const next = out.get(top) ?? [];
      const i = iterators[iterators.length - 1]!;
      if (i < next.length) {
        iterators[iterators.length - 1] = i + 1;
        const n = next[i]!;
        const s = state.get(n);
        if (s === 1) return [...path.slice(path.indexOf(n)), n];
        if (s === undefined) {
          state.set(n, 1);
          path.push(n);
          iterators.push(0);
        }
      } else {
        state.set(top, 2);
        path.pop();
        iterators.pop();
      }
    }
  }
  return undefined;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

function describeType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return isPlainObject(value) ? 'a mapping' : `a ${(value as object).constructor?.name ?? 'object'}`;
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value)}`;
  return `the ${typeof value} ${String(value)}`;
}

function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value);
  if (typeof value === 'number' || typeof value === 'boolean' || value === null) return String(value);
  return describeType(value);
}

function displayKey(key: string): string {
  return key.length > 80 ? `${key.slice(0, 80)}…` : key;
}

function listSteps(names: readonly string[]): string {
  const shown = names.slice(0, 20).join(', ');
  return names.length > 20 ? `${shown}, … (${names.length} in all)` : shown;
}
