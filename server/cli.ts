#!/usr/bin/env -S node --single-threaded-gc
/**
 * `sluice`: the command line, and the composition root. Only this file (and config files)
 * read the environment.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { connect } from '../client/index.js';
import { control } from '../client/control.js';
import { defaultRuntimeDir, isErrorCode } from '../transports/index.js';
import { demo, demoConsumer, demoFunction, demoPaths } from './demo.js';
import { configHelp, loadConfig } from './config.js';
import type { ReplicaStatus } from './balance.js';
import type { PeerStatus } from './peers.js';
import { startDaemon } from './daemon.js';
import { runTokenFor } from './k8s-discovery.js';
import { parseWorkflowText } from './workflow.js';

const usage = `sluice — proactive data forwarding for serverless workflows

Usage:
  sluice daemon [--node NAME] [--dir DIR] [--listen HOST:PORT] [--config FILE] [...]
      Run this node's forwarder. "sluice daemon --help" lists every option.
  sluice workflow apply FILE            Register a workflow (JSON or YAML).
  sluice workflow list
  sluice run create WORKFLOW [--place STEP=NODE ...] [--id ID] [--ttl SECONDS] [--json]
      Create a run; its channels are prepared before this returns. --json prints
      {"run": ID, "token": SECRET}.
  sluice run show RUN [--json] | sluice run list [--json] | sluice run delete RUN
  sluice run token RUN [--secret-file FILE]
      Print the token of a run placed by its pods on Kubernetes (--discovery kubernetes):
      derived from the run id and the cluster secret (--secret-file, else SLUICE_SECRET); no
      daemon is asked. Give it to the run's functions as SLUICE_TOKEN.
  sluice send --run RUN --step STEP [--to STEP] [--token T] [--instance I]
      Stream standard input to the step's output (all successors when --to is omitted);
      exits 0 once every consumer verified the bytes.
  sluice recv --run RUN --step STEP [--from STEP] [--token T] [--instance I]
      Stream the step's input to standard output; exits non-zero, with the error code on
      standard error, when the stream is incomplete or corrupt.
  sluice status [--json]
      This node: peers, runs and their channels, and the consumer replicas of balance edges
      (streams in flight, saturated or ejected, routed, failed, ejections) with the share of
      balanced streams this node routed to a local replica.
  sluice demo [--mib N] [--path unix|fifo]
      Start a daemon on the embedded defaults in a temporary directory, run a 3-step
      workflow (one process per step) through it, and stream N MiB (default 256) between two
      processes over each same-node transport; every byte checked.
  sluice --version | sluice --help

Every command but daemon and demo talks to the node's daemon through DIR/daemon.sock.
Common option: --dir DIR (default $SLUICE_DIR, else $XDG_RUNTIME_DIR/sluice, else
/tmp/sluice-<uid>). send and recv also read SLUICE_RUN, SLUICE_STEP, SLUICE_TOKEN,
SLUICE_INSTANCE. Exit status: 0 ok, 1 failed (stderr: "sluice: SLUICE_<CODE>: message"),
2 bad usage.
`;

function runtimeDir(flag: string | undefined): string {
  return resolve(flag ?? process.env.SLUICE_DIR ?? defaultRuntimeDir(process.env, process.getuid?.() ?? 0));
}

function print(value: unknown, json: boolean, human: () => string): void {
  process.stdout.write(json ? `${JSON.stringify(value, null, 2)}\n` : human());
}

/** Options every daemon-facing command takes. */
const common = { dir: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } as const;

interface ChannelView {
  name: string;
  path: string;
  state: string;
  relayedBytes: number;
  via?: string;
  stored?: string;
  routed?: boolean;
}

/** One replica of a balance edge in `status`: its load and health as this node sees them. */
function replicaLine(r: ReplicaStatus): string {
  const health = r.ejected ? `EJECTED for ${Math.ceil(r.ejectedForMs / 1000)}s` : r.saturated ? 'saturated' : 'ok';
  return `replica ${r.replica.padEnd(32)} ${String(r.streams).padStart(4)} stream(s) in flight  ${health.padEnd(16)} routed ${r.routed}  failed ${r.failed}  ejections ${r.ejections}`;
}

/** One channel in `run show` and `status`: where its consumer is, its state, what the relay carried, and the store if it went there. */
function channelLine(c: ChannelView): string {
  const store = c.stored ? `, object store (${c.stored})` : c.via === 'store' ? ', via the object store' : '';
  const routed = c.routed === undefined ? '' : c.routed ? ', balanced: routed here' : ', balanced: routed elsewhere';
  return `  ${c.name.padEnd(32)} ${c.path.padEnd(6)} ${c.state.padEnd(9)} relayed ${c.relayedBytes} B${store}${routed}`;
}

async function daemonCommand(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`Usage: sluice daemon [options]\n\n${configHelp()}`);
    return 0;
  }
  const config = loadConfig({ argv: args, env: process.env });
  const daemon = await startDaemon(config, { version: packageVersion() });
  // Node's own warnings (a listener leak, a deprecation) belong in the JSON log, not as plain text beside it
  process.removeAllListeners('warning');
  process.on('warning', (warning) => daemon.log.warn({ err: warning }, 'node warning'));
  await new Promise<void>((resolveStop) => {
    const stop = (signal: string): void => {
      daemon.log.info({ signal }, 'signal received');
      void daemon.close().then(resolveStop);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  // everything is closed, so the process ends by itself; a handle left open by mistake (a request,
  // a timer) must still not keep a stopped daemon up, holding its pod in Terminating
  setTimeout(() => {
    daemon.log.warn('handles still open 2 s after the daemon stopped: exiting anyway');
    process.exit(process.exitCode ?? 0);
  }, 2_000).unref();
  return 0;
}

async function workflowCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({ args: rest, options: common, allowPositionals: true });
  const dir = runtimeDir(values.dir);
  if (sub === 'apply') {
    const file = positionals[0];
    if (!file || positionals.length > 1) throw new UsageError('usage: sluice workflow apply FILE');
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read ${file}: ${(err as Error).message}`);
    }
    const workflow = parseWorkflowText(text, file);
    const { body } = await control<{ name: string; steps: Record<string, unknown>; edges: unknown[] }>(dir, 'POST', '/v1/workflows', workflow);
    print(body, values.json === true, () => `workflow ${body.name} applied: ${Object.keys(body.steps).length} steps, ${body.edges.length} edges\n`);
    return 0;
  }
  if (sub === 'list') {
    const { body } = await control<Array<{ name: string; steps: Record<string, unknown>; edges: unknown[] }>>(dir, 'GET', '/v1/workflows');
    print(body, values.json === true, () => body.map((w) => `${w.name}\t${Object.keys(w.steps).length} steps\t${w.edges.length} edges\n`).join('') || 'no workflows\n');
    return 0;
  }
  throw new UsageError('usage: sluice workflow apply FILE | sluice workflow list');
}

async function runCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest,
    options: { ...common, place: { type: 'string', multiple: true }, id: { type: 'string' }, ttl: { type: 'string' }, 'secret-file': { type: 'string' } },
    allowPositionals: true,
  });
  const dir = runtimeDir(values.dir);
  const json = values.json === true;
  switch (sub) {
    case 'create': {
      const workflow = positionals[0];
      if (!workflow || positionals.length > 1) throw new UsageError('usage: sluice run create WORKFLOW [--place STEP=NODE ...] [--id ID] [--ttl SECONDS] [--json]');
      const placement: Record<string, string> = {};
      for (const p of values.place ?? []) {
        const [step, node, extra] = p.split('=');
        if (!step || !node || extra !== undefined) throw new UsageError(`--place "${p}": use STEP=NODE`);
        placement[step] = node;
      }
      let ttlSeconds: number | undefined;
      if (values.ttl !== undefined) {
        ttlSeconds = Number(values.ttl);
        if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1) throw new UsageError(`--ttl "${values.ttl}": a whole number of seconds, at least 1`);
      }
      const { body } = await control<{ run: string; token: string; channels: number; expiresAt: string }>(dir, 'POST', '/v1/runs', {
        workflow,
        ...(values.id !== undefined ? { id: values.id } : {}),
        ...(Object.keys(placement).length > 0 ? { placement } : {}),
        ...(ttlSeconds !== undefined ? { ttlSeconds } : {}),
      });
      if (json) process.stdout.write(`${JSON.stringify({ run: body.run, token: body.token })}\n`);
      else process.stdout.write(`run ${body.run} created: ${body.channels} channel(s) prepared, expires ${body.expiresAt}\nexport SLUICE_RUN=${body.run} SLUICE_TOKEN=${body.token}\n`);
      return 0;
    }
    case 'show': {
      const run = positionals[0];
      if (!run) throw new UsageError('usage: sluice run show RUN [--json]');
      const { body } = await control<{ run: string; workflow: string; expiresAt: string; channels: ChannelView[] }>(dir, 'GET', `/v1/runs/${encodeURIComponent(run)}`);
      print(body, json, () => [`run ${body.run} (workflow ${body.workflow}), expires ${body.expiresAt}`, ...body.channels.map(channelLine), ''].join('\n'));
      return 0;
    }
    case 'list': {
      const { body } = await control<Array<{ run: string; workflow: string; channels: number; expiresAt: string }>>(dir, 'GET', '/v1/runs');
      print(body, json, () => body.map((r) => `${r.run}\t${r.workflow}\t${r.channels} channels\texpires ${r.expiresAt}\n`).join('') || 'no runs\n');
      return 0;
    }
    case 'token': {
      const run = positionals[0];
      if (!run || positionals.length > 1) throw new UsageError('usage: sluice run token RUN [--secret-file FILE]');
      const file = values['secret-file'];
      let secret: string | undefined;
      if (file !== undefined) {
        try {
          secret = readFileSync(file, 'utf8').replace(/(\r?\n)+$/, '');
        } catch (err) {
          throw new UsageError(`cannot read ${file}: ${(err as Error).message}`);
        }
      } else secret = process.env.SLUICE_SECRET;
      if (!secret) throw new UsageError('sluice run token needs the cluster secret: --secret-file FILE or SLUICE_SECRET');
      process.stdout.write(json ? `${JSON.stringify({ run, token: runTokenFor(secret, run) })}\n` : `${runTokenFor(secret, run)}\n`);
      return 0;
    }
    case 'delete': {
      const run = positionals[0];
      if (!run) throw new UsageError('usage: sluice run delete RUN');
      await control(dir, 'DELETE', `/v1/runs/${encodeURIComponent(run)}`);
      if (!json) process.stdout.write(`run ${run} deleted\n`);
      return 0;
    }
    default:
      throw new UsageError('usage: sluice run create|show|list|delete|token ...');
  }
}

function functionOptions(args: string[], direction: 'to' | 'from') {
  const { values, positionals } = parseArgs({
    args,
    options: { dir: { type: 'string' }, run: { type: 'string' }, step: { type: 'string' }, token: { type: 'string' }, instance: { type: 'string' }, [direction]: { type: 'string' } },
    allowPositionals: false,
  });
  void positionals;
  const instance = values.instance ?? process.env.SLUICE_INSTANCE;
  if (instance !== undefined && !/^\d+$/.test(instance)) throw new UsageError(`--instance "${instance}": a whole number from 0`);
  const options = {
    dir: runtimeDir(values.dir as string | undefined),
    ...((values.run ?? process.env.SLUICE_RUN) ? { run: (values.run ?? process.env.SLUICE_RUN) as string } : {}),
    ...((values.step ?? process.env.SLUICE_STEP) ? { step: (values.step ?? process.env.SLUICE_STEP) as string } : {}),
    ...((values.token ?? process.env.SLUICE_TOKEN) ? { token: (values.token ?? process.env.SLUICE_TOKEN) as string } : {}),
    ...(instance !== undefined ? { instance: Number(instance) } : {}),
  };
  if (!options.run || !options.step) throw new UsageError(`usage: sluice ${direction === 'to' ? 'send' : 'recv'} --run RUN --step STEP [--${direction} STEP] [--token T]`);
  return { options, peer: values[direction] as string | undefined };
}

async function sendCommand(args: string[]): Promise<number> {
  const { options, peer } = functionOptions(args, 'to');
  const sl = await connect(options);
  await pipeline(process.stdin, sl.output(peer));
  return 0;
}

async function recvCommand(args: string[]): Promise<number> {
  const { options, peer } = functionOptions(args, 'from');
  const sl = await connect(options);
  await pipeline(sl.input(peer), process.stdout);
  return 0;
}

async function statusCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: common });
  const { body } = await control<{
    node: string;
    version: string;
    uptimeSeconds: number;
    ready: boolean;
    workflows: number;
    relays: number;
    peers: PeerStatus[];
    replicas: ReplicaStatus[];
    balanced: { local: number; remote: number; localShare: number | null };
    runs: Array<{ run: string; workflow: string; channels: ChannelView[] }>;
  }>(
    runtimeDir(values.dir),
    'GET',
    '/v1/status',
  );
  print(body, values.json === true, () =>
    [
      `node ${body.node}  sluice ${body.version}  ${body.ready ? 'ready' : 'NOT READY'}  up ${body.uptimeSeconds}s`,
      `${body.workflows} workflow(s), ${body.runs.length} run(s), ${body.relays} relayed stream(s) now`,
      ...(body.peers.length === 0 ? ['no peers'] : body.peers.map((p) => `peer ${p.node.padEnd(16)} ${p.state.padEnd(10)} since ${p.since}  ${p.channels} channel(s)  sent ${p.bytesSent} B  received ${p.bytesReceived} B  reconnects ${p.reconnects}${p.lastError ? `  last error: ${p.lastError}` : ''}`)),
      ...(body.balanced.localShare === null
        ? []
        : [`balanced streams routed here: ${body.balanced.local} to local replicas, ${body.balanced.remote} to remote ones (local share ${body.balanced.localShare.toFixed(2)})`]),
      ...body.replicas.map(replicaLine),
      ...body.runs.flatMap((r) => [`run ${r.run} (${r.workflow})`, ...r.channels.map(channelLine)]),
      '',
    ].join('\n'),
  );
  return 0;
}

function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      process.stdout.write(usage);
      return 0;
    case '--version':
    case '-v':
      process.stdout.write(`${packageVersion()}\n`);
      return 0;
    case 'daemon':
      return daemonCommand(rest);
    case 'workflow':
      return workflowCommand(rest);
    case 'run':
      return runCommand(rest);
    case 'send':
      return sendCommand(rest);
    case 'recv':
      return recvCommand(rest);
    case 'status':
      return statusCommand(rest);
    case 'demo': {
      const { values } = parseArgs({ args: rest, options: { mib: { type: 'string', default: '256' }, path: { type: 'string' }, help: { type: 'boolean', short: 'h' } } });
      if (values.help) {
        process.stdout.write(usage);
        return 0;
      }
      const mib = Number(values.mib);
      if (!Number.isInteger(mib) || mib < 1 || mib > 65536) throw new UsageError(`--mib must be a whole number of MiB in 1..65536, got "${values.mib}"`);
      if (values.path !== undefined && !(values.path in demoPaths)) throw new UsageError(`--path must be one of ${Object.keys(demoPaths).join(', ')}, got "${values.path}"`);
      await demo(mib, values.path);
      return 0;
    }
    case '__demo-consume':
      await demoConsumer(rest[0]!, rest[1]!, Number(rest[2]));
      return 0;
    case '__demo-fn':
      await demoFunction(rest[0]!, Number(rest[1]));
      return 0;
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

class UsageError extends Error {}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const code = (err as { code?: string }).code;
    if (err instanceof UsageError || code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' || code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      process.stderr.write(`sluice: ${(err as Error).message}\nRun "sluice --help" for usage.\n`);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`sluice: ${isErrorCode((err as { code?: unknown }).code) ? `${(err as { code: string }).code}: ` : ''}${(err as Error).message}\n`);
    process.exitCode = 1;
  },
);
