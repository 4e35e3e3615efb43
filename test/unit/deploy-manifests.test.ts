/**
 * deploy/kubernetes: the kustomize base and overlays render — with the real `kubectl kustomize`
 * where kubectl is installed, and with the small fallback (test/helpers/kustomize.ts), which must
 * give the same objects — and every object validates offline against the Kubernetes API schemas
 * with unknown fields refused (test/helpers/k8s-schema.ts); the example function pods too. The
 * daemon's settings in them are checked with the daemon's own config loader. Applying the base
 * again never writes a Secret: the cluster secret is created once, by hand, as docs/operations.md says.
 * (The Dockerfile: test/unit/dockerfile-stages.test.ts.)
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../server/config.js';
import { LABELS } from '../../server/k8s-discovery.js';
import { preload, validate } from '../helpers/k8s-schema.js';
import { byKey, deployDir, kubectl, kubectlKustomize, kustomize, readYamlDocuments, render, type K8sObject } from '../helpers/kustomize.js';

type Any = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const kustomizations = ['base', 'overlays/tls', 'overlays/s3'] as const;
const dirOf = (which: string) => join(deployDir, 'kubernetes', which);
const base = () => render(dirOf('base'));
const overlay = (name: string) => render(dirOf(`overlays/${name}`));
const examples = () => readYamlDocuments(join(deployDir, 'examples/kubernetes/pipe-run.yaml')) as K8sObject[];
const find = (objects: K8sObject[], kind: string, name?: string): Any => {
  const found = objects.find((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  if (!found) throw new Error(`no ${kind} ${name ?? ''}`);
  return found;
};
const container = (ds: Any, name = 'sluice'): Any => ds.spec.template.spec.containers.find((c: Any) => c.name === name);
const envOf = (c: Any): Record<string, Any> => Object.fromEntries((c.env as Any[]).map((e) => [e.name, e]));

/** The daemon's config as it would load in the pod: the ConfigMap's file, the container's environment, the service account's namespace. */
function daemonConfig(objects: K8sObject[]) {
  const ds = find(objects, 'DaemonSet');
  const env: Record<string, string> = { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443', SLUICE_NODE: 'node-1', SLUICE_SECRET: 'a'.repeat(64) };
  for (const e of container(ds).env as Any[]) if (typeof e.value === 'string') env[e.name] = e.value.replace('$(POD_IP)', '10.1.2.3');
  const file = find(objects, 'ConfigMap', 'sluice-config').data['config.yaml'] as string;
  const files: Record<string, string> = { '/etc/sluice/config.yaml': file, '/var/run/secrets/kubernetes.io/serviceaccount/namespace': 'sluice-system' };
  return loadConfig({
    argv: (container(ds).args as string[]).slice(1),
    env,
    readFile: (path) => {
      if (files[path] !== undefined) return files[path]!;
      throw Object.assign(new Error(`ENOENT: ${path}`), { code: 'ENOENT' });
    },
  });
}

describe('deploy/kubernetes', () => {
  beforeAll(() => {
    preload([...base(), ...examples()].map((o) => ({ apiVersion: o.apiVersion, kind: o.kind })));
  }, 60_000);

  it.each([['base'], ['overlays/tls'], ['overlays/s3'], ['examples']])('%s renders, and every object is valid against the API schemas, no unknown field', async (which) => {
    const objects = which === 'base' ? base() : which === 'examples' ? examples() : overlay(which.slice('overlays/'.length));
    expect(objects.length).toBeGreaterThan(0);
    const problems = (await Promise.all(objects.map((o) => validate(o)))).flat();
    expect(problems).toEqual([]);
  });

  it('the base holds the pieces of a DaemonSet install, namespaced, labelled', () => {
    const objects = base();
    expect(objects.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual(
      [
        'ClusterRole/sluice-pod-reader',
        'ClusterRoleBinding/sluice-pod-reader',
        'ConfigMap/sluice-config',
        'DaemonSet/sluice',
        'Namespace/sluice-system',
        'Role/sluice-peer-discovery',
        'RoleBinding/sluice-peer-discovery',
        'Service/sluice',
        'ServiceAccount/sluice',
      ].sort(),
    );
    for (const o of objects) {
      expect(o.metadata.labels?.['app.kubernetes.io/part-of']).toBe('sluice');
      if (!['Namespace', 'ClusterRole', 'ClusterRoleBinding'].includes(o.kind)) expect(o.metadata.namespace).toBe('sluice-system');
    }
    expect(find(objects, 'RoleBinding').subjects).toEqual([{ kind: 'ServiceAccount', name: 'sluice', namespace: 'sluice-system' }]);
  });

  it('RBAC is least privilege: reading pods and EndpointSlices, nothing written, no secrets', () => {
    const rules = base()
      .filter((o) => o.kind === 'Role' || o.kind === 'ClusterRole')
      .flatMap((o) => (o as Any).rules as Any[]);
    // (kustomize lists Roles before ClusterRoles)
    expect(rules).toHaveLength(2);
    expect(rules).toEqual(
      expect.arrayContaining([
        { apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch'] },
        { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['list', 'watch'] },
      ]),
    );
    expect(find(base(), 'Role').metadata.namespace).toBe('sluice-system'); // EndpointSlices of its own namespace only
  });

  it('the DaemonSet: downward API, probes, resources, non-root, Prometheus, rolling updates, the shared hostPath', () => {
    const ds = find(base(), 'DaemonSet');
    const pod = ds.spec.template.spec;
    const c = container(ds);
    const env = envOf(c);
    expect(env['SLUICE_NODE']!.valueFrom.fieldRef.fieldPath).toBe('spec.nodeName');
    expect(env['POD_IP']!.valueFrom.fieldRef.fieldPath).toBe('status.podIP');
    expect(env['SLUICE_LISTEN']!.value).toBe('$(POD_IP):7700');
    expect(env['SLUICE_SECRET']!.valueFrom.secretKeyRef).toEqual({ name: 'sluice-cluster-secret', key: 'secret' });
    expect(c.livenessProbe.httpGet.path).toBe('/healthz');
    expect(c.readinessProbe.httpGet.path).toBe('/readyz');
    expect(Object.keys(c.resources.requests).sort()).toEqual(['cpu', 'memory']);
    expect(Object.keys(c.resources.limits).sort()).toEqual(['cpu', 'memory']);
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 10001 });
    expect(c.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
    expect(ds.spec.template.metadata.annotations).toMatchObject({ 'prometheus.io/scrape': 'true', 'prometheus.io/port': '7700', 'prometheus.io/path': '/metrics' });
    expect(ds.spec.template.metadata.annotations['prometheus.io/scheme']).toBeUndefined(); // http, the default
    expect(ds.spec.updateStrategy.type).toBe('RollingUpdate');
    expect(pod.volumes.find((v: Any) => v.name === 'runtime').hostPath).toEqual({ path: '/run/sluice', type: 'DirectoryOrCreate' });
    expect(c.image).toBe('ghcr.io/sluice-dev/sluice:0.1.0'); // images: applied
    // the daemon exits on its own within the pod's grace period
    const config = daemonConfig(base());
    expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThan(config.graceMs + 5_000);
    const svc = find(base(), 'Service');
    expect(svc.spec.clusterIP).toBe('None');
    expect(svc.spec.selector).toEqual(ds.spec.selector.matchLabels);
    expect(svc.spec.ports).toEqual([expect.objectContaining({ name: 'peer', port: 7700 })]);
  });

  it("the daemon's settings in the ConfigMap and the environment load with the daemon's own config schema", () => {
    const config = daemonConfig(base());
    expect(config).toMatchObject({ node: 'node-1', dir: '/run/sluice', discovery: 'kubernetes', k8sApi: 'https://10.96.0.1:443', k8sNamespace: 'sluice-system', k8sService: 'sluice', listen: { host: '10.1.2.3', port: 7700 }, store: { kind: 'file', path: '/var/lib/sluice/store' } });
    expect(daemonConfig(overlay('s3')).store).toMatchObject({ kind: 's3', bucket: 'sluice-data', prefix: 'streams/', region: 'us-east-1' });
    // a weak secret is refused, with the fix (docs/operations.md's `openssl rand -hex 32` is 32 bytes)
    expect(() => loadConfig({ argv: [], env: { SLUICE_SECRET: 'replace-me' } })).toThrow(/use at least 16 random bytes/);
  });

  it('the TLS overlay mounts per-pod certificates naming the pod IP, and the probes and Prometheus speak HTTPS', () => {
    const ds = find(overlay('tls'), 'DaemonSet');
    const c = container(ds);
    expect(c.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'peer', scheme: 'HTTPS' });
    // Prometheus scrapes /metrics over HTTPS too (the port serves nothing else)
    expect(ds.spec.template.metadata.annotations).toMatchObject({ 'prometheus.io/scrape': 'true', 'prometheus.io/port': '7700', 'prometheus.io/scheme': 'https' });
    expect(Object.keys(envOf(c))).toEqual(expect.arrayContaining(['SLUICE_NODE', 'SLUICE_SECRET', 'SLUICE_TLS_CERT', 'SLUICE_TLS_KEY', 'SLUICE_TLS_CA']));
    expect(ds.spec.template.spec.volumes.find((v: Any) => v.name === 'tls').csi.volumeAttributes['csi.cert-manager.io/ip-sans']).toBe('${POD_IP}');
    expect(c.volumeMounts.map((m: Any) => m.mountPath)).toEqual(expect.arrayContaining(['/run/sluice', '/etc/sluice-tls']));
  });

  it("the example's function pods carry Sluice's labels, mount the daemon's directory and run as its user", () => {
    const ds = find(base(), 'DaemonSet');
    const pods = examples().filter((o) => o.kind === 'Pod') as Any[];
    expect(pods).toHaveLength(2);
    for (const pod of pods) {
      expect(Object.keys(pod.metadata.labels).sort()).toEqual([LABELS.run, LABELS.step, LABELS.workflow].sort());
      expect(pod.spec.volumes[0].hostPath.path).toBe(ds.spec.template.spec.volumes.find((v: Any) => v.name === 'runtime').hostPath.path);
      expect(pod.spec.securityContext.runAsUser).toBe(ds.spec.template.spec.securityContext.runAsUser);
      expect(Object.keys(envOf(pod.spec.containers[0]))).toEqual(['SLUICE_DIR', 'SLUICE_RUN', 'SLUICE_STEP', 'SLUICE_TOKEN']);
    }
    const workflow = readYamlDocuments(join(deployDir, 'examples/pipe.yaml'))[0] as Any;
    expect(pods.map((p) => p.metadata.labels[LABELS.step]).sort()).toEqual(Object.keys(workflow.steps).sort());
  });
});

describe('the offline validator', () => {
  const daemonSet = (): Any => structuredClone(find(base(), 'DaemonSet'));

  it('refuses unknown fields at any depth, and names them', async () => {
    const ds = daemonSet();
    ds.metadata.lables = { a: 'b' };
    ds.spec.template.spec.containers[0].imagePullPolicyy = 'Always';
    ds.spec.template.spec.volumes[0].hostPath.kind = 'Directory';
    expect(await validate(ds)).toEqual([
      'DaemonSet sluice: metadata.lables: unknown field (did you mean "labels"?)',
      'DaemonSet sluice: spec.template.spec.containers[0].imagePullPolicyy: unknown field (did you mean "imagePullPolicy"?)',
      'DaemonSet sluice: spec.template.spec.volumes[0].hostPath.kind: unknown field',
    ]);
  });

  it('refuses wrong types, missing required fields and unknown kinds; accepts any keys in maps', async () => {
    const ds = daemonSet();
    ds.spec.template.spec.containers[0].ports[0].containerPort = '7700';
    delete ds.spec.selector;
    ds.metadata.labels['any.example/key'] = 'fine';
    const problems = await validate(ds);
    expect(problems).toHaveLength(2);
    expect(problems.join('\n')).toMatch(/containers\/0\/ports\/0\/containerPort must be integer/);
    expect(problems.join('\n')).toMatch(/spec must have required property selector/);
    expect(await validate({ apiVersion: 'apps/v1', kind: 'DaemonSett', metadata: { name: 'x' } })).toEqual(['DaemonSett x: no schema for apiVersion apps/v1, kind DaemonSett']);
  });
});

describe('deploy/kubernetes applied again', () => {
  it.for(kustomizations)('%s: the real kustomize and the fallback give the same objects', (which, ctx) => {
    if (!kubectl) return ctx.skip('kubectl is not installed here: the tests render with the fallback alone');
    expect(byKey(kustomize(dirOf(which)))).toEqual(byKey(kubectlKustomize(dirOf(which))));
  });

  it.each(kustomizations)('%s renders the same twice in a row, and neither render holds a Secret or a placeholder: applying again never overwrites the cluster secret', (which) => {
    const once = kubectl ? kubectlKustomize(dirOf(which)) : kustomize(dirOf(which));
    const again = kubectl ? kubectlKustomize(dirOf(which)) : kustomize(dirOf(which));
    expect(again).toEqual(once);
    for (const objects of [once, again]) {
      expect(objects.filter((o) => o.kind === 'Secret').map((o) => o.metadata.name)).toEqual([]);
      expect(JSON.stringify(objects)).not.toMatch(/replace-me|REPLACE/i);
    }
    // the DaemonSet needs the secret made by hand, and waits for it rather than run without one
    const ref = envOf(container(find(once, 'DaemonSet')))['SLUICE_SECRET']!.valueFrom.secretKeyRef;
    expect(ref).toEqual({ name: 'sluice-cluster-secret', key: 'secret' });
  });

  it('no file of deploy/kubernetes holds a Secret', () => {
    const files = readdirSync(join(deployDir, 'kubernetes'), { recursive: true, encoding: 'utf8' }).filter((f) => /\.ya?ml$/.test(f));
    expect(files.length).toBeGreaterThan(5);
    for (const f of files) {
      const kinds = readYamlDocuments(join(deployDir, 'kubernetes', f)).map((d) => (d as Any).kind);
      expect(kinds, f).not.toContain('Secret');
    }
  });

  it("the Kubernetes steps of docs/operations.md make the cluster secret once, with a command that refuses to overwrite it, and apply only kustomizations without a Secret", () => {
    const readme = readFileSync(join(deployDir, '../docs/operations.md'), 'utf8');
    const section = readme.slice(readme.indexOf('\n## Deploy on Kubernetes'), readme.indexOf('\n## ', readme.indexOf('\n## Deploy on Kubernetes') + 1));
    const commands = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap((m) => m[1]!.replace(/\s*\\\n\s*/g, ' ').split('\n'));
    const secretSteps = commands.filter((c) => c.includes('sluice-cluster-secret'));
    expect(secretSteps).toHaveLength(1);
    // `kubectl create` fails with AlreadyExists on a second run; `apply` (or create --dry-run | apply) would replace it
    expect(secretSteps[0]).toMatch(/^kubectl -n sluice-system create secret generic sluice-cluster-secret --from-literal=secret="\$\(openssl rand -hex 32\)"/);
    expect(secretSteps[0]).not.toMatch(/--dry-run|apply|replace/);
    const applied = [...section.matchAll(/kubectl apply -k (deploy\/kubernetes\/[\w/-]+)/g)].map((m) => m[1]!);
    expect(applied.length).toBeGreaterThan(0);
    for (const dir of applied) expect(render(join(deployDir, '..', dir)).filter((o) => o.kind === 'Secret'), dir).toEqual([]);
    // the upgrade and configure steps apply again, and say the secret stays
    expect(section).toMatch(/### Upgrade[\s\S]*never (touches|overwrites) the cluster secret/);
  });
});
