/**
 * Rendering deploy/kubernetes/ in the tests: `render(dir)` is the real `kubectl kustomize`
 * (kustomize v5 inside kubectl) where kubectl is installed, else `kustomize(dir)` below; the
 * deploy tests check that both give the same objects wherever kubectl is there to compare with.
 *
 * `kustomize(dir)` is a small kustomize, the fallback for machines without a kubectl binary:
 * the features those kustomizations use, and an error for any other.
 *
 * - `resources`: YAML files (multi-document) and directories holding a kustomization, in order;
 * - `namespace`: set on every namespaced object, and on the ServiceAccount subjects of
 *   RoleBindings and ClusterRoleBindings that name none (as kustomize does);
 * - `labels: [{ pairs }]` (without includeSelectors/includeTemplates): added to metadata.labels;
 * - `images: [{ name, newName, newTag }]`: containers' and initContainers' images named `name`;
 * - `patches: [{ path }]`: strategic merge patches, found by kind and name: maps merge, `null`
 *   deletes, lists of containers, initContainers, volumes, env and envFrom-less lists merge by
 *   their merge key (name; volumeMounts by mountPath; ports by containerPort), the patch's new
 *   items first (as kustomize orders them), other lists replace.
 *
 * Output: the objects, in resource order, as `kubectl kustomize` would list them (its order by
 * kind aside: compare with `byKey`).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import { parseAllDocuments } from 'yaml';

export type K8sObject = Record<string, unknown> & { apiVersion: string; kind: string; metadata: Record<string, unknown> & { name: string; namespace?: string; labels?: Record<string, string> } };

const KNOWN_KEYS = new Set(['apiVersion', 'kind', 'resources', 'namespace', 'labels', 'images', 'patches']);
const CLUSTER_SCOPED = new Set(['Namespace', 'ClusterRole', 'ClusterRoleBinding', 'CustomResourceDefinition', 'PriorityClass', 'StorageClass']);
/** merge keys of the lists strategic merge patches merge (the rest are replaced) */
const MERGE_KEYS: Record<string, string> = { containers: 'name', initContainers: 'name', volumes: 'name', env: 'name', volumeMounts: 'mountPath', ports: 'containerPort', tolerations: 'key' };

/** Parse every YAML document of `file` (empty documents skipped). */
export function readYamlDocuments(file: string): unknown[] {
  return parseYamlDocuments(readFileSync(file, 'utf8'), file);
}

/** Parse every YAML document of `text` (empty documents skipped); `source` names it in errors. */
export function parseYamlDocuments(text: string, source: string): unknown[] {
  const docs = parseAllDocuments(text);
  return docs.flatMap((d) => {
    if (d.errors.length > 0) throw new Error(`${source}: ${d.errors[0]!.message}`);
    const value: unknown = d.toJS();
    return value === null || value === undefined ? [] : [value];
  });
}

/** Render the kustomization in `dir`. */
export function kustomize(dir: string): K8sObject[] {
  const file = ['kustomization.yaml', 'kustomization.yml', 'Kustomization'].map((f) => join(dir, f)).find((f) => existsSync(f));
  if (!file) throw new Error(`${dir}: no kustomization.yaml`);
  const k = readYamlDocuments(file)[0] as Record<string, unknown>;
  for (const key of Object.keys(k)) if (!KNOWN_KEYS.has(key)) throw new Error(`${file}: "${key}" is not supported by this renderer (supported: ${[...KNOWN_KEYS].join(', ')})`);
  let objects: K8sObject[] = [];
  for (const r of (k['resources'] as string[] | undefined) ?? []) {
    const path = resolve(dir, r);
    if (statSync(path).isDirectory()) objects.push(...kustomize(path));
    else objects.push(...(readYamlDocuments(path) as K8sObject[]));
  }
  for (const p of (k['patches'] as Array<{ path?: string }> | undefined) ?? []) {
    if (!p.path || Object.keys(p).length !== 1) throw new Error(`${file}: only patches with a path (strategic merge) are supported`);
    for (const patch of readYamlDocuments(resolve(dir, p.path)) as K8sObject[]) {
      const i = objects.findIndex((o) => o.kind === patch.kind && o.metadata.name === patch.metadata.name);
      if (i < 0) throw new Error(`${file}: patch ${p.path} matches no ${patch.kind} named ${patch.metadata.name}`);
      objects[i] = merge(objects[i], patch, '') as K8sObject;
    }
  }
  const namespace = k['namespace'] as string | undefined;
  if (namespace) objects = objects.map((o) => withNamespace(o, namespace));
  for (const { pairs, ...rest } of (k['labels'] as Array<{ pairs: Record<string, string> }> | undefined) ?? []) {
    if (Object.keys(rest).length > 0) throw new Error(`${file}: labels options ${Object.keys(rest).join(', ')} are not supported`);
    for (const o of objects) o.metadata.labels = { ...o.metadata.labels, ...pairs };
  }
  for (const image of (k['images'] as Array<{ name: string; newName?: string; newTag?: string }> | undefined) ?? []) {
    for (const o of objects) {
      const pod = (o.kind === 'Pod' ? o['spec'] : ((o['spec'] as Record<string, unknown> | undefined)?.['template'] as Record<string, unknown> | undefined)?.['spec']) as Record<string, unknown> | undefined;
      for (const c of [...((pod?.['containers'] as Array<{ image?: string }>) ?? []), ...((pod?.['initContainers'] as Array<{ image?: string }>) ?? [])]) {
        const [name, tag] = splitImage(c.image ?? '');
        if (name === image.name) c.image = `${image.newName ?? name}${image.newTag ? `:${image.newTag}` : tag ? `:${tag}` : ''}`;
      }
    }
  }
  return objects;
}

function splitImage(image: string): [string, string | undefined] {
  const colon = image.lastIndexOf(':');
  return colon > image.lastIndexOf('/') ? [image.slice(0, colon), image.slice(colon + 1)] : [image, undefined];
}

function withNamespace(o: K8sObject, namespace: string): K8sObject {
  const out = structuredClone(o);
  if (!CLUSTER_SCOPED.has(o.kind)) out.metadata.namespace = namespace;
  if (o.kind === 'RoleBinding' || o.kind === 'ClusterRoleBinding') {
    for (const s of (out['subjects'] as Array<Record<string, unknown>> | undefined) ?? []) if (s['kind'] === 'ServiceAccount' && s['namespace'] === undefined) s['namespace'] = namespace;
  }
  return out;
}

/** Strategic merge of `patch` into `base` (see the file comment); `key` is the field's name. */
function merge(base: unknown, patch: unknown, key: string): unknown {
  if (patch === null) return undefined;
  if (Array.isArray(patch)) {
    const mergeKey = MERGE_KEYS[key];
    if (!mergeKey || !Array.isArray(base)) return structuredClone(patch);
    const out = structuredClone(base) as Array<Record<string, unknown>>;
    const added: Array<Record<string, unknown>> = [];
    for (const item of patch as Array<Record<string, unknown>>) {
      const i = out.findIndex((b) => b[mergeKey] === item[mergeKey]);
      if (i < 0) added.push(structuredClone(item));
      else out[i] = merge(out[i], item, '') as Record<string, unknown>;
    }
    // kustomize (kyaml) puts the patch's new items first, in the patch's order
    return [...added, ...out];
  }
  if (typeof patch === 'object' && typeof base === 'object' && base !== null && !Array.isArray(base)) {
    const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
    for (const [k, v] of Object.entries(patch)) {
      const merged = merge(out[k], v, k);
      if (merged === undefined) delete out[k];
      else out[k] = merged;
    }
    return out;
  }
  return structuredClone(patch);
}

/** The kubectl binary on PATH, or undefined where none is installed. */
export const kubectl: string | undefined = (process.env['PATH'] ?? '')
  .split(delimiter)
  .filter(Boolean)
  .map((d) => join(d, 'kubectl'))
  .find((f) => existsSync(f));

/** `kubectl kustomize DIR`: the objects the real kustomize renders (throws where kubectl is not installed). */
export function kubectlKustomize(dir: string): K8sObject[] {
  if (!kubectl) throw new Error('kubectl is not installed');
  const out = execFileSync(kubectl, ['kustomize', dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  return parseYamlDocuments(out, `kubectl kustomize ${dir}`) as K8sObject[];
}

const rendered = new Map<string, K8sObject[]>();

/** The kustomization in `dir` rendered by the real kustomize where kubectl is installed, else by `kustomize()`; one render per directory, a fresh copy each call. */
export function render(dir: string): K8sObject[] {
  let objects = rendered.get(dir);
  if (!objects) rendered.set(dir, (objects = kubectl ? kubectlKustomize(dir) : kustomize(dir)));
  return structuredClone(objects);
}

/** `objects` keyed `Kind namespace/name` and sorted by key, for comparing renders whatever their order. */
export function byKey(objects: K8sObject[]): Array<[string, K8sObject]> {
  return objects.map((o): [string, K8sObject] => [`${o.kind} ${o.metadata.namespace ?? ''}/${o.metadata.name}`, o]).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** The directory of this repository's deploy/. */
export const deployDir = resolve(dirname(new URL(import.meta.url).pathname), '../../deploy');
