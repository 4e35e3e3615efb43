/**
 * Discovery on Kubernetes (`--discovery kubernetes`): peers from the EndpointSlices of the
 * daemons' headless Service, placements from the pods scheduled to this node.
 *
 * **Peers.** Every endpoint of the Service's EndpointSlices (`kubernetes.io/service-name=NAME`)
 * that is not terminating and has a `nodeName` and an address is the daemon of that node,
 * dialled at `ws://ADDRESS:PORT` (`wss://` when this node serves TLS), PORT being the slice's port
 * named "peer", else its first. The set goes to `PeerLinks.setDiscovered` after every change.
 *
 * **Placements.** The pods of a workflow run carry the labels below. When one is scheduled to
 * this node (the scheduler sets `spec.nodeName` before the kubelet starts its containers, so
 * there is time), the daemon lists the run's pods: once every instance of every step is
 * scheduled, the placement is known and the run is created with it — here, shared with the
 * other nodes involved, its channels prepared — before the functions connect. The daemon of the
 * node whose pod is scheduled last is the one that creates it; the others find it prepared. Its
 * token is derived from the cluster secret and the run id (`runTokenFor`), so that whoever holds
 * the secret — the workflow engine — gives the functions their token without asking a daemon
 * (`sluice run token RUN`). A run whose workflow is not known yet, or whose pods are not all
 * scheduled, waits: every event of its pods, and every resync, tries again. A run is placed by
 * its pods once: deleted later (by request or by its TTL), it is not created again while its pods
 * live on (until this daemon restarts).
 */
import { createHmac } from 'node:crypto';
import type { Logger } from 'pino';
import { ErrorCodes, hasCode } from '../transports/index.js';
import { Informer, type KubeClient, type KubeObject } from './k8s.js';
import type { PeerLinks } from './peers.js';
import type { CreateRunRequest, Run, RunRegistry } from './runs.js';
import type { Workflow } from './workflow.js';

/** The labels of a workflow's function pods. */
export const LABELS = {
  /** the run id (a Sluice name: a-z 0-9 _ -, 1-63) */
  run: 'sluice.dev/run',
  /** the step this pod runs */
  step: 'sluice.dev/step',
  /** the workflow's name, as applied */
  workflow: 'sluice.dev/workflow',
  /** the step instance, 0-based; 0 when absent */
  instance: 'sluice.dev/instance',
} as const;

/** The label EndpointSlices carry to name their Service. */
const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';

/** The token of a run placed by its pods: HMAC-SHA256 of the run id under the cluster secret, 32 base64url characters, never starting with "-". */
export function runTokenFor(secret: string, run: string): string {
  for (let i = 0; ; i++) {
    const token = createHmac('sha256', secret).update(`sluice/run-token/${i}/${run}`).digest().subarray(0, 24).toString('base64url');
    if (token[0] !== '-') return token;
  }
}

// -- peers --------------------------------------------------------------------------------------

interface EndpointSlice extends KubeObject {
  addressType?: string;
  endpoints?: Array<{ addresses?: string[]; nodeName?: string; conditions?: { ready?: boolean; serving?: boolean; terminating?: boolean } }>;
  ports?: Array<{ name?: string; port?: number }> | null;
}

export interface PeerDiscoveryOptions {
  client: KubeClient;
  namespace: string;
  service: string;
  /** this node serves TLS: peers are dialled with wss:// */
  tls: boolean;
  resyncMs: number;
  log: Logger;
  peers: PeerLinks;
}

/** Watch the Service's EndpointSlices and keep `peers` told; call `stop()` on the result. */
export function discoverPeers(options: PeerDiscoveryOptions): Informer<EndpointSlice> {
  const { namespace, service, log } = options;
  let last = '';
  const informer: Informer<EndpointSlice> = new Informer<EndpointSlice>({
    client: options.client,
    path: `/apis/discovery.k8s.io/v1/namespaces/${namespace}/endpointslices`,
    query: { labelSelector: `${SERVICE_NAME_LABEL}=${service}` },
    resyncMs: options.resyncMs,
    log,
    onEvent: () => update(),
  });
  function update(): void {
    const found = peersOf([...informer.cache.values()], options.tls ? 'wss' : 'ws');
    const text = JSON.stringify(Object.entries(found).sort());
    if (text === last) return;
    last = text;
    log.debug({ peers: found }, 'peers from the EndpointSlices');
    options.peers.setDiscovered(found);
  }
  informer.start();
  return informer;
}

/** node name → URL, from the endpoints of `slices`. */
export function peersOf(slices: readonly EndpointSlice[], scheme: 'ws' | 'wss'): Record<string, string> {
  const found: Record<string, string> = {};
  for (const slice of slices) {
    if (slice.addressType !== undefined && slice.addressType !== 'IPv4' && slice.addressType !== 'IPv6') continue;
    const port = (slice.ports ?? []).find((p) => p.name === 'peer')?.port ?? slice.ports?.[0]?.port;
    if (port === undefined) continue;
    for (const e of slice.endpoints ?? []) {
      const address = e.addresses?.[0];
      if (!e.nodeName || !address || e.conditions?.terminating === true) continue;
      found[e.nodeName] = `${scheme}://${address.includes(':') ? `[${address}]` : address}:${port}`;
    }
  }
  return found;
}

// -- placements ---------------------------------------------------------------------------------

interface Pod extends KubeObject {
  spec?: { nodeName?: string };
  status?: { phase?: string };
}

export interface PlacementDiscoveryOptions {
  client: KubeClient;
  node: string;
  secret: string;
  resyncMs: number;
  log: Logger;
  runs: RunRegistry;
  workflows: ReadonlyMap<string, Workflow>;
  /** creates a run here and on the other nodes it involves (Cluster.createRun) */
  createRun: (request: CreateRunRequest) => Promise<Run>;
  /** told when a run was created from its pods' placement */
  onCreated?: (run: Run) => void;
}

/** Watch the pods scheduled to this node that carry a run label; see the file comment. */
export function discoverPlacements(options: PlacementDiscoveryOptions): Informer<Pod> {
  const { node, log } = options;
  /** per run: the attempt under way, and whether another was asked for meanwhile */
  const busy = new Map<string, { again: boolean }>();
  /** what was last logged about a run that waits, so as not to repeat it at every event */
  const waiting = new Map<string, string>();

  /** runs seen here once: one deleted since (by request or TTL) is not created again from its pods */
  const seen = new Set<string>();
  const here = (runId: string): boolean => {
    if (!options.runs.list().some((r) => r.id === runId)) return false;
    seen.add(runId);
    waiting.delete(runId);
    return true;
  };

  const place = async (namespace: string, runId: string, workflowName: string | undefined): Promise<void> => {
    if (here(runId) || seen.has(runId)) return;
    const wait = (why: string, fields: Record<string, unknown> = {}): void => {
      if (waiting.get(runId) !== why) log.info({ run: runId, namespace, ...fields }, why);
      waiting.set(runId, why);
    };
    const workflow = workflowName === undefined ? undefined : options.workflows.get(workflowName);
    if (!workflow) return wait(`run waits: its pods name workflow ${JSON.stringify(workflowName ?? null)}, which is not applied (sluice workflow apply FILE)`);
    const pods = await options.client.get<{ items?: Pod[] }>(`/api/v1/namespaces/${namespace}/pods?${new URLSearchParams({ labelSelector: `${LABELS.run}=${runId}` })}`);
    const placement: Record<string, Array<string | undefined>> = {};
    for (const [step, { replicas }] of Object.entries(workflow.steps)) placement[step] = Array.from({ length: replicas }, () => undefined);
    for (const pod of pods.items ?? []) {
      if (!live(pod) || !pod.spec?.nodeName) continue;
      const labels = pod.metadata?.labels ?? {};
      const step = labels[LABELS.step];
      const index = Number(labels[LABELS.instance] ?? '0');
      const slots = step === undefined ? undefined : placement[step];
      if (!slots || !Number.isInteger(index) || index < 0 || index >= slots.length) {
        log.warn({ run: runId, pod: pod.metadata?.name, step, instance: labels[LABELS.instance] }, `pod names a step instance that workflow ${workflow.name} does not have: ignored`);
        continue;
      }
      slots[index] = pod.spec.nodeName;
    }
    const missing = Object.entries(placement).flatMap(([step, nodes]) => nodes.flatMap((n, i) => (n === undefined ? [`${step}.${i}`] : [])));
    if (missing.length > 0) return wait('run waits for the pods of its step instances to be scheduled', { missing });
    if (here(runId)) return;
    try {
      const run = await options.createRun({ workflow, id: runId, token: runTokenFor(options.secret, runId), placement: placement as Record<string, string[]> });
      here(runId);
      log.info({ run: runId, namespace, placement, channels: run.channels.size }, 'run placed by its pods: channels prepared');
      options.onCreated?.(run);
    } catch (err) {
      // a peer whose pod was scheduled at the same time created it first: then it is here
      if (here(runId)) return;
      wait(`cannot create the run its pods place: ${(err as Error).message}; trying again at the next event or resync`, { err: hasCode(err, ErrorCodes.INVALID) ? (err as Error).message : err });
    }
  };

  const schedule = (namespace: string, runId: string, workflowName: string | undefined): void => {
    const state = busy.get(runId);
    if (state) return void (state.again = true);
    const mine = { again: false };
    busy.set(runId, mine);
    void (async () => {
      do {
        mine.again = false;
        await place(namespace, runId, workflowName).catch((err: unknown) => log.warn({ err, run: runId }, 'cannot place a run from its pods'));
      } while (mine.again);
      busy.delete(runId);
    })();
  };

  const informer = new Informer<Pod>({
    client: options.client,
    path: '/api/v1/pods',
    query: { fieldSelector: `spec.nodeName=${node}`, labelSelector: LABELS.run },
    resyncMs: options.resyncMs,
    log,
    onEvent: (type, pod) => {
      if (type === 'DELETED' || !live(pod) || pod.spec?.nodeName !== node) return;
      const labels = pod.metadata?.labels ?? {};
      const runId = labels[LABELS.run];
      const namespace = pod.metadata?.namespace;
      if (!runId || !namespace) return;
      schedule(namespace, runId, labels[LABELS.workflow]);
    },
  });
  informer.start();
  return informer;
}

/** A pod that is not being deleted and has not finished. */
function live(pod: Pod): boolean {
  return !pod.metadata?.deletionTimestamp && pod.status?.phase !== 'Succeeded' && pod.status?.phase !== 'Failed';
}
