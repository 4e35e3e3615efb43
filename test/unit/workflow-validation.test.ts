/**
 * Workflow files (server/workflow.ts): the DESIGN.md example parses from YAML and JSON with its
 * defaults filled in; every malformed workflow is refused with SLUICE_INVALID, a message that
 * says what is wrong and how to fix it, and the path of the offending value; the result is a
 * deeply frozen DAG whose order and neighbours can be asked for.
 */
import { describe, expect, it } from 'vitest';
import { ErrorCodes, RequestError } from '../../transports/index.js';
import {
  MAX_EDGES,
  MAX_STEPS,
  MAX_WORKFLOW_BYTES,
  parseWorkflowText,
  predecessors,
  successors,
  topologicalOrder,
  validateWorkflow,
  type Workflow,
} from '../../server/workflow.js';

const designYaml = `name: wordcount
steps:
  split: {}
  count: { replicas: 4 }
  merge: {}
edges:
  - { from: split, to: count, fanout: partition }
  - { from: count, to: merge }
  - { from: split, to: merge, via: s3, persist: true }
`;

const designJson = JSON.stringify(
  {
    name: 'wordcount',
    steps: { split: {}, count: { replicas: 4 }, merge: {} },
    edges: [
      { from: 'split', to: 'count', fanout: 'partition' },
      { from: 'count', to: 'merge' },
      { from: 'split', to: 'merge', via: 's3', persist: true },
    ],
  },
  null,
  2,
);

const designParsed = {
  name: 'wordcount',
  steps: { split: { replicas: 1 }, count: { replicas: 4 }, merge: { replicas: 1 } },
  edges: [
    { from: 'split', to: 'count', fanout: 'partition', via: 'direct', persist: false },
    { from: 'count', to: 'merge', fanout: 'broadcast', via: 'direct', persist: false },
    { from: 'split', to: 'merge', fanout: 'broadcast', via: 's3', persist: true },
  ],
};

/** The error `fn` throws; fails the test when it throws nothing. */
function refusal(fn: () => unknown): RequestError {
  try {
    fn();
  } catch (err) {
    return err as RequestError;
  }
  throw new Error('expected the workflow to be refused');
}

/** A workflow object with steps a, b, c (and more if given) and the given edges. */
function wf(edges: unknown[], steps: Record<string, unknown> = { a: {}, b: {}, c: {} }): Record<string, unknown> {
  return { name: 'w', steps, edges };
}

function chain(n: number): Workflow {
  const steps: Record<string, unknown> = {};
  for (let i = 0; i < n; i++) steps[`s${i}`] = {};
  // declared out of order on purpose: the order must come from the edges
  const edges = Array.from({ length: n - 1 }, (_, i) => ({ from: `s${i}`, to: `s${i + 1}` })).reverse();
  return validateWorkflow({ name: 'chain', steps, edges });
}

describe('the DESIGN.md example workflow', () => {
  it('parses from YAML with defaults filled in', () => {
    expect(parseWorkflowText(designYaml, 'wordcount.yaml')).toEqual(designParsed);
  });

  it('parses from JSON to the same workflow', () => {
    expect(parseWorkflowText(designJson, 'wordcount.json')).toEqual(designParsed);
    expect(parseWorkflowText(`\n   ${designJson}`)).toEqual(designParsed);
  });

  it('parses from bytes, with or without a byte-order mark', () => {
    expect(parseWorkflowText(Buffer.from(designYaml))).toEqual(designParsed);
    expect(parseWorkflowText(`\uFEFF${designYaml}`)).toEqual(designParsed);
  });

  it('validates an already-parsed object the same way', () => {
    expect(validateWorkflow(JSON.parse(designJson))).toEqual(designParsed);
  });

  it('orders, and lists the neighbours of, its steps', () => {
    const w = parseWorkflowText(designYaml);
    expect(topologicalOrder(w)).toEqual(['split', 'count', 'merge']);
    expect(successors(w, 'split')).toEqual(['count', 'merge']);
    expect(predecessors(w, 'merge')).toEqual(['count', 'split']);
    expect(predecessors(w, 'split')).toEqual([]);
    expect(successors(w, 'merge')).toEqual([]);
  });
});

describe('workflows that are accepted', () => {
  it('takes a step with no value (`merge:`) as a step with default options', () => {
    const w = parseWorkflowText('name: w\nsteps:\n  split:\n  merge:\nedges:\n  - { from: split, to: merge }\n');
    expect(w.steps).toEqual({ split: { replicas: 1 }, merge: { replicas: 1 } });
  });

  it('takes a single step with no edges', () => {
    expect(parseWorkflowText('name: solo\nsteps: { only: {} }\n')).toEqual({ name: 'solo', steps: { only: { replicas: 1 } }, edges: [] });
  });

  it('takes the limits themselves: 64 replicas, 256 steps, 1024 edges', () => {
    expect(validateWorkflow(wf([], { a: { replicas: 64 } })).steps['a']!.replicas).toBe(64);
    const steps: Record<string, unknown> = {};
    for (let i = 0; i < MAX_STEPS; i++) steps[`s${i}`] = {};
    const edges: unknown[] = [];
    for (let i = 0; edges.length < MAX_EDGES; i++) for (let j = i + 1; j < MAX_STEPS && edges.length < MAX_EDGES; j++) edges.push({ from: `s${i}`, to: `s${j}` });
    const w = validateWorkflow({ name: 'big', steps, edges });
    expect(Object.keys(w.steps)).toHaveLength(MAX_STEPS);
    expect(w.edges).toHaveLength(MAX_EDGES);
  });

  it('orders a 200-step chain from first to last, whatever order its edges are listed in', () => {
    const w = chain(200);
    expect(topologicalOrder(w)).toEqual(Array.from({ length: 200 }, (_, i) => `s${i}`));
    expect(successors(w, 's0')).toEqual(['s1']);
    expect(predecessors(w, 's199')).toEqual(['s198']);
  });

  it('keeps declaration order between steps that are ready at the same time', () => {
    const w = validateWorkflow({
      name: 'diamond',
      steps: { sink: {}, right: {}, left: {}, source: {} },
      edges: [
        { from: 'source', to: 'left' },
        { from: 'source', to: 'right' },
        { from: 'left', to: 'sink' },
        { from: 'right', to: 'sink' },
      ],
    });
    expect(topologicalOrder(w)).toEqual(['source', 'right', 'left', 'sink']);
  });

  it('does not mistake Object.prototype members for steps', () => {
    const w = validateWorkflow(wf([{ from: 'constructor', to: 'b' }], { constructor: {}, b: {} }));
    expect('constructor' in w.steps).toBe(true);
    expect('toString' in w.steps).toBe(false);
    const err = refusal(() => validateWorkflow(wf([{ from: 'tostring', to: 'b' }], { b: {}, c: {} })));
    expect(err.details).toMatchObject({ path: 'edges[0].from' });
    expect(refusal(() => successors(w, 'toString')).code).toBe(ErrorCodes.NOT_FOUND);
  });
});

describe('the validated workflow is deeply frozen', () => {
  it('throws on any mutation (strict mode)', () => {
    const w = parseWorkflowText(designYaml);
    expect(Object.isFrozen(w)).toBe(true);
    expect(() => {
      (w as { name: string }).name = 'other';
    }).toThrow(TypeError);
    expect(() => {
      w.steps['extra'] = { replicas: 1 };
    }).toThrow(TypeError);
    expect(() => {
      (w.steps['count'] as { replicas: number }).replicas = 9;
    }).toThrow(TypeError);
    expect(() => w.edges.push(w.edges[0]!)).toThrow(TypeError);
    expect(() => {
      (w.edges[0] as { via: string }).via = 's3';
    }).toThrow(TypeError);
    expect(w).toEqual(designParsed);
  });

  it('does not share structure with the input', () => {
    const input = JSON.parse(designJson) as { steps: { count: { replicas: number } } };
    const w = validateWorkflow(input);
    input.steps.count.replicas = 2;
    expect(w.steps['count']!.replicas).toBe(4);
  });
});

describe('workflows that are refused', () => {
  // [behaviour, input (text is parsed, anything else validated), details.path, message fragments]
  const cases: Array<[string, unknown, string | undefined, Array<string | RegExp>]> = [
    ['a list is not a workflow', [1, 2], '', ['must be a mapping with keys name, steps and edges', 'not a list']],
    ['a string is not a workflow', 'wordcount', '', ['must be a mapping', 'not the string "wordcount"']],
    ['null is not a workflow', null, '', ['must be a mapping', 'not null']],
    ['a workflow needs a name', { steps: { a: {} } }, 'name', ['has no name', 'add `name: <name>`']],
    ['a name follows the name rules', { name: 'Word Count', steps: { a: {} } }, 'name', ['workflow name "Word Count" is not a valid name', 'a-z, 0-9, _ and -', '(e.g. "word-count")']],
    ['a name is a string', { name: 42, steps: { a: {} } }, 'name', ['workflow name number is not a valid name']],
    ['a workflow needs steps', { name: 'w' }, 'steps', ['workflow "w" has no steps', 'add a `steps:` mapping']],
    ['an empty steps mapping is no steps', { name: 'w', steps: {} }, 'steps', ['workflow "w" has no steps', 'add at least one entry']],
    ['steps are a mapping, not a list', { name: 'w', steps: ['a', 'b'] }, 'steps', ['steps must be a mapping from step name to options', 'not a list']],
    ['a step name follows the name rules', { name: 'w', steps: { Split: {} } }, 'steps.Split', ['step name "Split" is not a valid name', '(e.g. "split")']],
    ['a step name has no dots', { name: 'w', steps: { 'a.b': {} } }, 'steps.a.b', ['step name "a.b" is not a valid name']],
    ['step options are a mapping', { name: 'w', steps: { a: 3 } }, 'steps.a', ['step "a" must be a mapping of options', '`a: {}`']],
    ['an unknown top-level key is named', { name: 'w', steps: { a: {} }, step: {} }, 'step', ['unknown key "step"', 'did you mean "steps"?', 'allowed keys: name, steps, edges']],
    ['an unknown step option is named', { name: 'w', steps: { a: { replica: 2 } } }, 'steps.a.replica', ['step "a" has an unknown key "replica"', 'did you mean "replicas"?', 'allowed keys: replicas']],
    [
      'an unknown edge option (a typo) is named',
      wf([{ from: 'a', to: 'b', fanuot: 'partition' }]),
      'edges[0].fanuot',
      ['edges[0] has an unknown key "fanuot"', 'did you mean "fanout"?', 'allowed keys: from, to, fanout, via, persist, policy, key'],
    ],
    ['an unrelated unknown key gets no suggestion', wf([{ from: 'a', to: 'b', colour: 'red' }]), 'edges[0].colour', [/unknown key "colour"; allowed keys/]],
    ['replicas of 0', { name: 'w', steps: { a: { replicas: 0 } } }, 'steps.a.replicas', ['step "a" has replicas 0', 'use a whole number from 1 to 64']],
    ['replicas over 64', { name: 'w', steps: { a: { replicas: 65 } } }, 'steps.a.replicas', ['replicas 65', 'from 1 to 64']],
    ['fractional replicas', { name: 'w', steps: { a: { replicas: 2.5 } } }, 'steps.a.replicas', ['replicas 2.5', 'whole number']],
    ['replicas as a string', { name: 'w', steps: { a: { replicas: '4' } } }, 'steps.a.replicas', ['replicas "4"', 'whole number']],
    ['edges are a list', { name: 'w', steps: { a: {} }, edges: { from: 'a' } }, 'edges', ['edges must be a list', 'not a mapping']],
    ['an edge is a mapping', wf(['a->b']), 'edges[0]', ['edges[0] must be a mapping like `{ from: split, to: count }`', 'not the string "a->b"']],
    ['an edge needs a from', wf([{ to: 'b' }]), 'edges[0].from', ['edges[0] has no `from`', 'one of a, b, c']],
    [
      'an edge naming an unknown step',
      { name: 'w', steps: { split: {}, merge: {} }, edges: [{ from: 'split', to: 'mrege' }] },
      'edges[0].to',
      ['edges[0].to "mrege" is not a step of this workflow', 'did you mean "merge"?', 'steps are split, merge'],
    ],
    ['a self-edge', wf([{ from: 'a', to: 'b' }, { from: 'b', to: 'b' }]), 'edges[1]', ['edges[1] goes from step "b" to itself', 'two different steps']],
    ['a duplicate edge', wf([{ from: 'a', to: 'b' }, { from: 'b', to: 'c' }, { from: 'a', to: 'b', via: 's3' }]), 'edges[2]', ['edges[2] repeats edges[0] (from "a" to "b")', 'keep one edge per pair']],
    ['a bad fanout', wf([{ from: 'a', to: 'b', fanout: 'round-robin' }]), 'edges[0].fanout', ['edges[0].fanout is "round-robin"', 'use "broadcast" or "partition" or "balance"']],
    ['a bad balance policy', wf([{ from: 'a', to: 'b', fanout: 'balance', policy: 'random' }]), 'edges[0].policy', ['edges[0].policy is "random"', 'use "local-first" or "always-local" or "least-loaded" or "affinity" (default "local-first")']],
    ['a policy on a broadcast edge', wf([{ from: 'a', to: 'b', policy: 'affinity' }]), 'edges[0].policy', ['edges[0].policy applies to `fanout: balance` only (this edge is broadcast)']],
    ['an affinity key without affinity', wf([{ from: 'a', to: 'b', fanout: 'balance', key: 'run' }]), 'edges[0].key', ['edges[0].key applies to `fanout: balance` with `policy: affinity` only']],
    ['a bad affinity key', wf([{ from: 'a', to: 'b', fanout: 'balance', policy: 'affinity', key: 'user' }]), 'edges[0].key', ['edges[0].key is "user"', 'use "run" or "producer"']],
    ['a balance edge through the store', wf([{ from: 'a', to: 'b', fanout: 'balance', via: 's3' }]), 'edges[0].via', ['balances streams across live instances', '`via: s3`']],
    ['a persisted balance edge', wf([{ from: 'a', to: 'b', fanout: 'balance', persist: true }]), 'edges[0].persist', ['`persist: true` does not go with']],
    ['a bad via', wf([{ from: 'a', to: 'b', via: 'tcp' }]), 'edges[0].via', ['edges[0].via is "tcp"', 'use "direct" or "s3"']],
    ['persist as a string', wf([{ from: 'a', to: 'b', persist: 'yes' }]), 'edges[0].persist', ['edges[0].persist is "yes"', 'use true or false']],
    [
      'a cycle',
      wf([
        { from: 'a', to: 'b' },
        { from: 'b', to: 'c' },
        { from: 'c', to: 'a' },
      ]),
      'edges',
      ['workflow "w" has a cycle: a → b → c → a', 'must be a DAG'],
    ],
    [
      'a cycle downstream of the first step',
      wf([
        { from: 'a', to: 'b' },
        { from: 'b', to: 'c' },
        { from: 'c', to: 'b' },
      ]),
      'edges',
      ['has a cycle: b → c → b'],
    ],
  ];

  it.each(cases)('%s', (_behaviour, input, path, fragments) => {
    const err = refusal(() => validateWorkflow(input));
    expect(err).toBeInstanceOf(RequestError);
    expect(err.code).toBe(ErrorCodes.INVALID);
    for (const fragment of fragments) {
      if (typeof fragment === 'string') expect(err.message).toContain(fragment);
      else expect(err.message).toMatch(fragment);
    }
    if (path !== undefined) expect(err.details?.['path']).toBe(path);
  });

  it('reports the cycle in its details too', () => {
    const err = refusal(() => validateWorkflow(wf([{ from: 'a', to: 'b' }, { from: 'b', to: 'a' }])));
    expect(err.details).toMatchObject({ path: 'edges', cycle: ['a', 'b', 'a'] });
  });

  it('refuses more than 256 steps', () => {
    const steps: Record<string, unknown> = {};
    for (let i = 0; i <= MAX_STEPS; i++) steps[`s${i}`] = {};
    const err = refusal(() => validateWorkflow({ name: 'w', steps }));
    expect(err.message).toContain('has 257 steps, over the limit of 256');
    expect(err.details).toMatchObject({ path: 'steps' });
  });

  it('refuses more than 1024 edges', () => {
    const edges = Array.from({ length: MAX_EDGES + 1 }, () => ({ from: 'a', to: 'b' }));
    const err = refusal(() => validateWorkflow(wf(edges)));
    expect(err.message).toContain('has 1025 edges, over the limit of 1024');
    expect(err.details).toMatchObject({ path: 'edges' });
  });

  it('refuses text over 1 MiB before parsing it', () => {
    const text = `name: w\nsteps: { a: {} }\n#${'x'.repeat(MAX_WORKFLOW_BYTES)}\n`;
    const err = refusal(() => parseWorkflowText(text, 'huge.yaml'));
    expect(err.code).toBe(ErrorCodes.INVALID);
    expect(err.message).toMatch(/^huge\.yaml: the workflow is \d+ bytes, over the limit of 1048576/);
    expect(refusal(() => parseWorkflowText(Buffer.alloc(MAX_WORKFLOW_BYTES + 1, 0x20))).message).toContain('over the limit');
  });

  it('refuses bytes that are not UTF-8', () => {
    const err = refusal(() => parseWorkflowText(Buffer.from([0x6e, 0x61, 0xff, 0xfe]), 'bin.yaml'));
    expect(err.code).toBe(ErrorCodes.INVALID);
    expect(err.message).toBe('bin.yaml: not valid UTF-8 text; save the file as UTF-8');
  });

  it('reports a YAML syntax error with its line and column', () => {
    const err = refusal(() => parseWorkflowText('name: w\nsteps:\n  a: {\nedges: []\n', 'broken.yaml'));
    expect(err.code).toBe(ErrorCodes.INVALID);
    expect(err.message).toMatch(/^broken\.yaml: YAML syntax error at line \d+, column \d+: /);
    expect(err.details).toMatchObject({ source: 'broken.yaml', line: expect.any(Number), column: expect.any(Number) });
  });

  it('reports a JSON syntax error with its line and column', () => {
    const err = refusal(() => parseWorkflowText('{\n  "name": "w",\n  "steps": { "a": {} },\n}\n', 'broken.json'));
    expect(err.code).toBe(ErrorCodes.INVALID);
    expect(err.message).toMatch(/^broken\.json: JSON syntax error at line 4, column 1: /);
    expect(err.details).toMatchObject({ source: 'broken.json', line: 4, column: 1 });
  });

  it('refuses a YAML key given twice rather than keeping one of them', () => {
    const err = refusal(() => parseWorkflowText('name: w\nsteps: { a: {} }\nname: v\n', 'twice.yaml'));
    expect(err.message).toMatch(/^twice\.yaml: YAML syntax error at line 3, column 1: Map keys must be unique/);
  });

  it('refuses several YAML documents in one file', () => {
    const err = refusal(() => parseWorkflowText(`${designYaml}---\n${designYaml}`, 'two.yaml'));
    expect(err.message).toContain('multiple documents');
    expect(err.details).toMatchObject({ line: 10 });
  });

  it('starts messages with the source name after parsing too', () => {
    const err = refusal(() => parseWorkflowText('name: w\nsteps: { a: {}, b: {} }\nedges:\n  - { from: a, to: z }\n', 'flows/w.yaml'));
    expect(err.message).toMatch(/^flows\/w\.yaml: workflow "w": edges\[0\]\.to "z" is not a step/);
    expect(err.details).toEqual({ path: 'edges[0].to', source: 'flows/w.yaml' });
  });

  it('answers NOT_FOUND for the neighbours of an unknown step', () => {
    const w = parseWorkflowText(designYaml);
    const err = refusal(() => successors(w, 'reduce'));
    expect(err.code).toBe(ErrorCodes.NOT_FOUND);
    expect(err.message).toBe('workflow "wordcount" has no step "reduce"; its steps are split, count, merge');
    expect(refusal(() => predecessors(w, 'reduce')).code).toBe(ErrorCodes.NOT_FOUND);
  });
});

describe('balance edges', () => {
  it('default to local-first, and to the run id as the affinity key', () => {
    const w = validateWorkflow(
      wf([
        { from: 'a', to: 'b', fanout: 'balance' },
        { from: 'b', to: 'c', fanout: 'balance', policy: 'affinity' },
        { from: 'a', to: 'c', fanout: 'balance', policy: 'affinity', key: 'producer' },
      ]),
    );
    expect(w.edges).toEqual([
      { from: 'a', to: 'b', fanout: 'balance', via: 'direct', persist: false, policy: 'local-first' },
      { from: 'b', to: 'c', fanout: 'balance', via: 'direct', persist: false, policy: 'affinity', key: 'run' },
      { from: 'a', to: 'c', fanout: 'balance', via: 'direct', persist: false, policy: 'affinity', key: 'producer' },
    ]);
    // other edges carry neither
    expect(validateWorkflow(wf([{ from: 'a', to: 'b' }])).edges[0]).not.toHaveProperty('policy');
  });
});
