/**
 * Offline validation of Kubernetes objects against the official API schemas, strictly, as
 * `kubeconform -strict` does: the package `kubernetes-models` (pinned as a devDependency) carries
 * the API's OpenAPI schemas, for every built-in kind, compiled into ajv validators (types,
 * required fields, enums, formats). Those schemas have no `additionalProperties: false`, so a
 * misspelt or misplaced field would pass; unknown fields are refused here from the same models'
 * TypeScript declarations (generated from the same OpenAPI document): every key of every object
 * must be a property of its type there, recursively, maps (`{ [key: string]: T }`) excepted.
 *
 * `validate(object)` returns the problems, empty when the object is valid.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { didYouMean } from '../../server/workflow.js';

/** the repository: where the virtual file of kinds resolves `kubernetes-models` from */
const root = fileURLToPath(new URL('../..', import.meta.url));

interface Kind {
  apiVersion: string;
  kind: string;
}

/** The module of `kubernetes-models` for a kind: `v1/Pod`, `apps/v1/DaemonSet`, ... */
function modulePath({ apiVersion, kind }: Kind): string {
  return `kubernetes-models/${apiVersion}/${kind}`;
}

let types: { checker: ts.TypeChecker; byKind: Map<string, ts.Type> } | undefined;

/** One TypeScript program over the declarations of `kinds`, built once. */
function typesFor(kinds: Kind[]): { checker: ts.TypeChecker; byKind: Map<string, ts.Type> } {
  const wanted = kinds.filter((k) => !types?.byKind.has(`${k.apiVersion}/${k.kind}`));
  if (types && wanted.length === 0) return types;
  const all = [...new Map([...(types ? [...types.byKind.keys()].map((key) => { const i = key.lastIndexOf('/'); return { apiVersion: key.slice(0, i), kind: key.slice(i + 1) }; }) : []), ...kinds].map((k) => [`${k.apiVersion}/${k.kind}`, k])).values()];
  const virtual = join(root, '__sluice_k8s_kinds__.ts');
  const text = all.map((k, i) => `import type { I${k.kind} as K${i} } from ${JSON.stringify(modulePath(k))};\nexport type T${i} = K${i};`).join('\n');
  const options: ts.CompilerOptions = { module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022, strict: true, noEmit: true, skipLibCheck: true, types: [] };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (file, lang, ...rest) => (file === virtual ? ts.createSourceFile(file, text, lang) : getSourceFile(file, lang, ...rest));
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (file) => file === virtual || fileExists(file);
  const program = ts.createProgram([virtual], options, host);
  const problems = ts.getPreEmitDiagnostics(program, program.getSourceFile(virtual));
  // a kind the package does not have would make its type `any` and check nothing
  if (problems.length > 0) throw new Error(`cannot load the schema types: ${problems.map((d) => ts.flattenDiagnosticMessageText(d.messageText, ' ')).join('; ')}`);
  const checker = program.getTypeChecker();
  const source = program.getSourceFile(virtual)!;
  const byKind = new Map<string, ts.Type>();
  let i = 0;
  source.forEachChild((node) => {
    if (ts.isTypeAliasDeclaration(node)) {
      const k = all[i++]!;
      byKind.set(`${k.apiVersion}/${k.kind}`, checker.getTypeFromTypeNode(node.type));
    }
  });
  types = { checker, byKind };
  return types;
}

/** Keys of `value` (recursively) that its type does not have. */
function unknownFields(checker: ts.TypeChecker, value: unknown, type: ts.Type, path: string, out: string[]): void {
  const t = checker.getNonNullableType(type);
  if (Array.isArray(value)) {
    const element = checker.getIndexInfoOfType(t, ts.IndexKind.Number)?.type;
    if (element) value.forEach((v, i) => unknownFields(checker, v, element, `${path}[${i}]`, out));
    return;
  }
  if (typeof value !== 'object' || value === null) return;
  // a union (IntOrString and the like) holds no object types with properties in these schemas
  const objectType = t.isUnion() ? t.types.find((u) => u.getProperties().length > 0) : t;
  if (!objectType) return;
  const properties = objectType.getProperties();
  const mapOf = checker.getIndexInfoOfType(objectType, ts.IndexKind.String)?.type;
  if (properties.length === 0) {
    if (mapOf) for (const [k, v] of Object.entries(value)) unknownFields(checker, v, mapOf, `${path}.${k}`, out);
    return; // free-form (JSON, RawExtension)
  }
  for (const [k, v] of Object.entries(value)) {
    const property = objectType.getProperty(k);
    if (!property) {
      out.push(`${path}.${k}: unknown field${suggest(k, properties.map((p) => p.name))}`);
      continue;
    }
    unknownFields(checker, v, checker.getTypeOfSymbol(property), `${path}.${k}`, out);
  }
}

function suggest(name: string, known: string[]): string {
  const close = didYouMean(name, known);
  return close ? ` (did you mean "${close}"?)` : '';
}

/** The problems of `object` against its kind's schema: schema errors and unknown fields. */
export async function validate(object: Record<string, unknown>): Promise<string[]> {
  const kind = { apiVersion: String(object['apiVersion']), kind: String(object['kind']) };
  const name = `${kind.kind} ${String((object['metadata'] as { name?: unknown } | undefined)?.name)}`;
  let model: { new (data: unknown): { validate(): void } } | undefined;
  try {
    model = ((await import(modulePath(kind))) as Record<string, { new (data: unknown): { validate(): void } }>)[kind.kind];
  } catch {
    model = undefined;
  }
  if (!model) return [`${name}: no schema for apiVersion ${kind.apiVersion}, kind ${kind.kind}`];
  const problems: string[] = [];
  try {
    new model(structuredClone(object)).validate();
  } catch (err) {
    problems.push(...(err as Error).message.split(', ').map((m) => `${name}: ${m}`));
  }
  const { checker, byKind } = typesFor([kind]);
  const unknown: string[] = [];
  unknownFields(checker, object, byKind.get(`${kind.apiVersion}/${kind.kind}`)!, '', unknown);
  problems.push(...unknown.map((u) => `${name}: ${u.slice(1)}`));
  return problems;
}

/** Load the schema types of `kinds` at once (one TypeScript program instead of one per kind). */
export function preload(kinds: Kind[]): void {
  typesFor(kinds);
}
