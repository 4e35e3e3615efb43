#!/usr/bin/env -S node --single-threaded-gc
/**
 * `sluice`: the command line, and the composition root. Only this file (and config files)
 * read the environment.
 */
import { createWriteStream, readFileSync, rmSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { connect } from '../client/index.js';
import { control } from '../client/control.js';
import { ErrorCodes, NAME_PATTERN, codeOf, defaultRuntimeDir, hasCode } from '../transports/index.js';
import { DAY, SECOND, durationUsage, parseDuration } from '../transports/units.js';
import { demo, demoConsumer, demoFunction, demoPaths } from './demo.js';
import { configHelp, loadConfig } from './config.js';
import type { ReplicaStatus } from './balance.js';
import type { PeerStatus } from './peers.js';
import { startDaemon } from './daemon.js';
import { runTokenFor } from './k8s-discovery.js';
import { didYouMean, parseWorkflowText } from './workflow.js';

const usage = `sluice — proactive data forwarding for serverless workflows

Usage:
  sluice daemon [--node NAME] [--dir DIR] [--listen HOST:PORT] [--config FILE] [...]
      Run this node's forwarder. "sluice daemon --help" lists every option.
  sluice workflow apply FILE            Register a workflow (JSON or YAML).
  sluice workflow list
  sluice run create WORKFLOW [--place STEP=NODE[,NODE...] | --place STEP.I=NODE ...] [--id ID]
                    [--ttl DURATION] [--json]
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
  sluice recv --run RUN --step STEP [--from STEP] [--token T] [--instance I] [-o FILE]
      Stream the step's input to standard output, or to FILE (written as FILE.partial, renamed
      once verified); exits non-zero, with the error code on standard error, when the stream
      is incomplete or corrupt.
  sluice status [--json]
      This node: peers, runs and their channels, and the consumer replicas of balance edges
      (streams in flight, saturated or ejected, routed, failed, ejections) with the share of
      balanced streams this node routed to a local replica.
  sluice demo [--mib N] [--path unix|fifo]
      Start a daemon on the embedded defaults in a temporary directory, run a 3-step
      workflow (one process per step) through it, and stream N MiB (default 256) between two
      processes over each same-node transport; every byte checked.
  sluice --version | sluice --help | sluice COMMAND --help

Every command but daemon and demo talks to the node's daemon through DIR/daemon.sock.
Common option: --dir DIR (default $SLUICE_DIR, else $XDG_RUNTIME_DIR/sluice, else
/tmp/sluice-<uid>). send and recv also read SLUICE_RUN, SLUICE_STEP, SLUICE_TOKEN,
SLUICE_INSTANCE. Durations are written 500ms, 30s, 2m, 24h or 7d (a plain number is the
option's unit); sizes 64KiB, 8MiB, 1GiB (a plain number is bytes).
Exit status: 0 ok; 1 failed (stderr: "sluice: SLUICE_<CODE>: message"); 2 bad usage (an
unknown flag, a missing or bad value: stderr names it and the fix; nothing was done).
`;

const DIR_HELP = '  --dir DIR      the runtime directory of the node\'s daemon (default $SLUICE_DIR, else\n                 $XDG_RUNTIME_DIR/sluice, else /tmp/sluice-<uid>)\n';
const JSON_HELP = '  --json         print the daemon\'s answer as JSON\n';

/** What `sluice COMMAND --help` prints. */
const commandUsage: Record<string, string> = {
  workflow: 'Usage: sluice workflow apply FILE [--dir DIR] [--json]\n       sluice workflow list [--dir DIR] [--json]\n\n"sluice workflow apply --help", "sluice workflow list --help" say more.\n',
  'workflow apply': `Usage: sluice workflow apply FILE [--dir DIR] [--json]\n\nRegister a workflow (a JSON or YAML file; see deploy/examples/), shared with the peers. Refused,\nwith the reason, when it is not a valid DAG.\n\nOptions:\n${DIR_HELP}${JSON_HELP}`,
  'workflow list': `Usage: sluice workflow list [--dir DIR] [--json]\n\nThe workflows the node's daemon knows.\n\nOptions:\n${DIR_HELP}${JSON_HELP}`,
  run: 'Usage: sluice run create|show|list|delete|token ...\n\n"sluice run create --help" (and show, list, delete, token) say more.\n',
  'run create': `Usage: sluice run create WORKFLOW [--place ...] [--id ID] [--ttl DURATION] [--dir DIR] [--json]

Create a run of WORKFLOW; its channels are prepared before this returns.

Options:
  --place STEP=NODE            every instance of STEP on NODE
  --place STEP=N1,N2,...       instance i of STEP on the i-th node
  --place STEP.I=NODE          instance I (0, 1, ...) of STEP on NODE
                 Repeat --place for each step or instance; placing one instance twice is
                 refused. Instances not placed are on the node of the daemon asked.
  --id ID        the run's id (1-63 of a-z 0-9 _ -); default a fresh one
  --ttl DURATION remove the run this long after it was created (30s, 90m, 24h, 7d; a plain
                 number is seconds); default the daemon's --run-ttl
${DIR_HELP}  --json         print {"run": ID, "token": SECRET}
`,
  'run show': `Usage: sluice run show RUN [--dir DIR] [--json]\n\nThe run's channels: path, state, bytes; with --json also each step's nodes.\n\nOptions:\n${DIR_HELP}${JSON_HELP}`,
  'run list': `Usage: sluice run list [--dir DIR] [--json]\n\nThe runs the node's daemon knows.\n\nOptions:\n${DIR_HELP}${JSON_HELP}`,
  'run delete': `Usage: sluice run delete RUN [--dir DIR]\n\nDelete the run everywhere: endpoints, buffers, stored segments.\n\nOptions:\n${DIR_HELP}`,
  'run token': `Usage: sluice run token RUN [--secret-file FILE] [--json]\n\nPrint the token of a run placed by its pods on Kubernetes (--discovery kubernetes), derived\nfrom the run id and the cluster secret; no daemon is asked.\n\nOptions:\n  --secret-file FILE   the cluster secret (a trailing newline is ignored); default $SLUICE_SECRET\n${JSON_HELP}`,
  send: `Usage: sluice send --run RUN --step STEP [--to STEP] [--token T] [--instance I] [--dir DIR]

Stream standard input to the step's output (every successor when --to is omitted); exits 0
once every consumer verified the bytes.

Options:
  --run RUN        default $SLUICE_RUN
  --step STEP      the producing step; default $SLUICE_STEP
  --to STEP        one successor only
  --token T        the run's token; default $SLUICE_TOKEN
  --instance I     this step instance (0, 1, ...); default $SLUICE_INSTANCE, else 0
${DIR_HELP}`,
  recv: `Usage: sluice recv --run RUN --step STEP [--from STEP] [--token T] [--instance I] [-o FILE] [--dir DIR]

Stream the step's input to standard output, or to FILE. Exits 0 once the stream is complete
and verified; otherwise non-zero, with "sluice: SLUICE_<CODE>: ..." on standard error (then
discard what standard output got).

Options:
  --run RUN        default $SLUICE_RUN
  --step STEP      the consuming step; default $SLUICE_STEP
  --from STEP      the predecessor to read (needed when there are several)
  --token T        the run's token; default $SLUICE_TOKEN
  --instance I     this step instance (0, 1, ...); default $SLUICE_INSTANCE, else 0
  -o, --output FILE
                   write to FILE.partial, and rename it FILE (replacing one there) only once the
                   stream is verified and on disk (fsync); on failure FILE.partial is removed and
                   an existing FILE is left as it was
${DIR_HELP}`,
  status: `Usage: sluice status [--dir DIR] [--json]\n\nThis node: peers, runs and their channels, and the consumer replicas of balance edges.\n\nOptions:\n${DIR_HELP}${JSON_HELP}`,
  demo: 'Usage: sluice demo [--mib N] [--path unix|fifo]\n\nStart a daemon on the embedded defaults in a temporary directory, run a 3-step workflow\n(one process per step) through it, and stream N MiB (default 256, 1..65536) between two\nprocesses over each same-node transport (or only --path); every byte checked.\n',
};

/** How each flag's value is written, for "--dir needs a value: --dir DIR". */
const FLAG_ARGS: Record<string, string> = {
  dir: 'DIR', place: 'STEP=NODE', id: 'ID', ttl: 'DURATION', 'secret-file': 'FILE', run: 'RUN', step: 'STEP', token: 'T', instance: 'I', to: 'STEP', from: 'STEP', output: 'FILE', mib: 'N', path: 'unix|fifo',
};

type Options = NonNullable<ParseArgsConfig['options']>;
/** What parseArgs gives for `O`: a string (or strings, for multiple) per string option, a boolean per boolean one. */
type Values<O extends Options> = {
  [K in keyof O]?: O[K] extends { type: 'boolean' } ? boolean : O[K] extends { multiple: true } ? string[] : string;
};

/**
 * parseArgs for `sluice COMMAND`, its complaints made usage errors that name the flag and the fix.
 * Returns undefined when --help was asked for (its usage is printed).
 */
function flags<O extends Options>(command: string, args: string[], options: O, positionals = true): { values: Values<O>; positionals: string[] } | undefined {
  const all: Options = { ...options, help: { type: 'boolean', short: 'h' } };
  let parsed: { values: Values<O> & { help?: boolean }; positionals: string[] };
  try {
    parsed = parseArgs({ args, options: all, allowPositionals: positionals, strict: true }) as unknown as typeof parsed;
  } catch (err) {
    const code = codeOf(err);
    const message = (err as Error).message;
    const named = /'(-[^' ]+)/.exec(message)?.[1] ?? '';
    const see = `"sluice ${command} --help" lists its options`;
    // --help wins over whatever else is wrong on the line
    if (args.includes('--help') || args.includes('-h')) return help(command);
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      const names = Object.entries(all).flatMap(([name, o]) => [`--${name}`, ...('short' in o && o.short ? [`-${o.short}`] : [])]);
      const hint = didYouMean(named, names);
      throw new UsageError(`unknown option ${named} for sluice ${command}${hint ? ` (did you mean ${hint}?)` : ''}; ${see}`, command);
    }
    if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      const name = named.replace(/^--?/, '');
      const long = name.length === 1 ? Object.entries(all).find(([, o]) => 'short' in o && o.short === name)?.[0] ?? name : name;
      if (all[long]?.type === 'boolean') throw new UsageError(`--${long} takes no value; ${see}`, command);
      throw new UsageError(`--${long} needs a value: --${long} ${FLAG_ARGS[long] ?? 'VALUE'} (to give one starting with "-", write --${long}=VALUE)`, command);
    }
    if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      const extra = /'([^']*)'/.exec(message)?.[1] ?? '';
      throw new UsageError(`unexpected argument ${JSON.stringify(extra)}: sluice ${command} takes options only; ${see}`, command);
    }
    throw err;
  }
  if (parsed.values.help) return help(command);
  return parsed;
}

function help(command: string): undefined {
  process.stdout.write(commandUsage[command] ?? usage);
  return undefined;
}

/** Exactly `count` positionals (the command's arguments), or a usage error showing its usage line. */
function positionalArgs(command: string, positionals: string[], names: string[]): string[] {
  if (positionals.length < names.length) throw new UsageError(`sluice ${command} needs ${names.join(' ')}: ${usageLine(command)}`, command);
  if (positionals.length > names.length) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[names.length])}: ${usageLine(command)}`, command);
  return positionals;
}

function usageLine(command: string): string {
  return (commandUsage[command] ?? '').split('\n')[0]!.replace(/^Usage: /, '');
}

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
  let config;
  try {
    config = loadConfig({ argv: args, env: process.env });
  } catch (err) {
    // nothing started: the invocation (its flags, environment or config file) is what is wrong
    if (hasCode(err, ErrorCodes.CONFIG)) throw new UsageError((err as Error).message, 'daemon', ErrorCodes.CONFIG);
    throw err;
  }
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
  if (sub === undefined || sub === '--help' || sub === '-h') {
    if (sub === undefined) throw new UsageError('sluice workflow needs a subcommand: apply or list', 'workflow');
    process.stdout.write(commandUsage['workflow']!);
    return 0;
  }
  if (sub !== 'apply' && sub !== 'list') {
    const hint = didYouMean(sub, ['apply', 'list']);
    throw new UsageError(`unknown subcommand "workflow ${sub}"${hint ? ` (did you mean "workflow ${hint}"?)` : ''}; use sluice workflow apply FILE | sluice workflow list`, 'workflow');
  }
  const command = `workflow ${sub}`;
  const parsed = flags(command, rest, common);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  const dir = runtimeDir(values.dir);
  if (sub === 'apply') {
    const [file] = positionalArgs(command, positionals, ['FILE']);
    let text: string;
    try {
      text = readFileSync(file!, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read ${file}: ${(err as Error).message}`, command);
    }
    const workflow = parseWorkflowText(text, file!);
    const { body } = await control<{ name: string; steps: Record<string, unknown>; edges: unknown[] }>(dir, 'POST', '/v1/workflows', workflow);
    print(body, values.json === true, () => `workflow ${body.name} applied: ${Object.keys(body.steps).length} steps, ${body.edges.length} edges\n`);
    return 0;
  }
  positionalArgs(command, positionals, []);
  const { body } = await control<Array<{ name: string; steps: Record<string, unknown>; edges: unknown[] }>>(dir, 'GET', '/v1/workflows');
  print(body, values.json === true, () => body.map((w) => `${w.name}\t${Object.keys(w.steps).length} steps\t${w.edges.length} edges\n`).join('') || 'no workflows\n');
  return 0;
}

/** One --place as given: a step, the instance it names (STEP.I) if any, and the nodes. */
interface PlaceArg {
  text: string;
  step: string;
  instance: number | undefined;
  nodes: string[];
}

function parsePlaceArg(text: string): PlaceArg {
  const forms = 'use STEP=NODE (every instance there), STEP=N1,N2,... (instance i on the i-th node) or STEP.I=NODE (instance I)';
  const eq = text.indexOf('=');
  if (eq < 0 || text.indexOf('=', eq + 1) >= 0) throw new UsageError(`--place ${JSON.stringify(text)}: ${forms}`, 'run create');
  const target = text.slice(0, eq).trim();
  const m = /^([^.]+)(?:\.(\d+))?$/.exec(target);
  if (!m) throw new UsageError(`--place ${JSON.stringify(text)}: ${JSON.stringify(target)} is not STEP or STEP.I (I a whole number from 0); ${forms}`, 'run create');
  const step = m[1]!;
  if (!NAME_PATTERN.test(step)) throw new UsageError(`--place ${JSON.stringify(text)}: ${JSON.stringify(step)} is not a step name (1-63 of a-z, 0-9, _ and -); ${forms}`, 'run create');
  const instance = m[2] === undefined ? undefined : Number(m[2]);
  const nodes = text.slice(eq + 1).split(',').map((n) => n.trim());
  for (const node of nodes) {
    if (!NAME_PATTERN.test(node)) throw new UsageError(`--place ${JSON.stringify(text)}: ${JSON.stringify(node)} is not a node name (1-63 of a-z, 0-9, _ and -, starting with a letter or digit); ${forms}`, 'run create');
  }
  if (instance !== undefined && nodes.length > 1) throw new UsageError(`--place ${JSON.stringify(text)}: one instance goes on one node; for instance i on the i-th node write ${step}=${nodes.join(',')}`, 'run create');
  return { text, step, instance, nodes };
}

/** Each step's placement as the --place flags give it: every instance on one node, or some instances each on its node. */
type StepPlacement = { all: string; by: string } | { instances: Map<number, { node: string; by: string }> };

/** The --place flags by step; placing a step or an instance twice is a usage error saying which flags clash. */
function placementFlags(places: readonly string[]): Map<string, StepPlacement> {
  const steps = new Map<string, StepPlacement>();
  for (const text of places) {
    const p = parsePlaceArg(text);
    const before = steps.get(p.step);
    const clash = (what: string, by: string): never => {
      throw new UsageError(`--place ${JSON.stringify(text)}: ${what} is already placed by --place ${JSON.stringify(by)}; place each instance once (STEP=N1,N2,... puts instance i on the i-th node)`, 'run create');
    };
    if (before && 'all' in before) clash(`step "${p.step}" (every instance)`, before.by);
    if (p.instance === undefined && p.nodes.length === 1) {
      if (before && 'instances' in before) clash(`instance ${[...before.instances.keys()][0]} of step "${p.step}"`, [...before.instances.values()][0]!.by);
      steps.set(p.step, { all: p.nodes[0]!, by: text });
      continue;
    }
    const instances = before && 'instances' in before ? before.instances : new Map<number, { node: string; by: string }>();
    const placed = p.instance === undefined ? p.nodes.map((node, i) => [i, node] as const) : [[p.instance, p.nodes[0]!] as const];
    for (const [i, node] of placed) {
      const already = instances.get(i);
      if (already) clash(`instance ${i} of step "${p.step}" (on ${already.node})`, already.by);
      instances.set(i, { node, by: text });
    }
    steps.set(p.step, { instances });
  }
  return steps;
}

/**
 * The control API's placement for the --place flags: one node for a step placed whole, else one
 * node per instance (the workflow says how many), instances not named on the daemon's own node
 * (where a step not placed goes).
 */
async function placementBody(dir: string, workflowName: string, steps: Map<string, StepPlacement>): Promise<Record<string, string | string[]>> {
  const placement: Record<string, string | string[]> = {};
  const perInstance = [...steps].filter((e): e is [string, { instances: Map<number, { node: string; by: string }> }] => 'instances' in e[1]);
  for (const [step, p] of steps) if ('all' in p) placement[step] = p.all;
  if (perInstance.length === 0) return placement;
  const { body: workflow } = await control<{ steps: Record<string, { replicas?: number }> }>(dir, 'GET', `/v1/workflows/${encodeURIComponent(workflowName)}`);
  let self: string | undefined;
  for (const [step, { instances }] of perInstance) {
    const spec = workflow.steps[step];
    // a step the workflow lacks: the daemon refuses it, with its reason
    if (!spec) {
      placement[step] = [...instances.values()].map((v) => v.node);
      continue;
    }
    const replicas = spec.replicas ?? 1;
    for (const [i, { by }] of instances) {
      if (i >= replicas) throw new UsageError(`--place ${JSON.stringify(by)}: step "${step}" of workflow "${workflowName}" has ${replicas} instance(s), numbered 0 to ${replicas - 1}; there is no instance ${i}`, 'run create');
    }
    if (instances.size < replicas) self ??= (await control<{ node: string }>(dir, 'GET', '/v1/status')).body.node;
    placement[step] = Array.from({ length: replicas }, (_, i) => instances.get(i)?.node ?? self!);
  }
  return placement;
}

async function runCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const subs = ['create', 'show', 'list', 'delete', 'token'];
  if (sub === undefined || sub === '--help' || sub === '-h') {
    if (sub === undefined) throw new UsageError(`sluice run needs a subcommand: ${subs.join(', ')}`, 'run');
    process.stdout.write(commandUsage['run']!);
    return 0;
  }
  if (!subs.includes(sub)) {
    const hint = didYouMean(sub, subs);
    throw new UsageError(`unknown subcommand "run ${sub}"${hint ? ` (did you mean "run ${hint}"?)` : ''}; use sluice run ${subs.join('|')} ...`, 'run');
  }
  const command = `run ${sub}`;
  switch (sub) {
    case 'create': {
      const parsed = flags(command, rest, { ...common, place: { type: 'string', multiple: true }, id: { type: 'string' }, ttl: { type: 'string' } });
      if (!parsed) return 0;
      const { values, positionals } = parsed;
      const [workflow] = positionalArgs(command, positionals, ['WORKFLOW']);
      const places = placementFlags(values.place ?? []);
      let ttlSeconds: number | undefined;
      if (values.ttl !== undefined) {
        try {
          ttlSeconds = parseDuration(values.ttl, 's', SECOND, 30 * DAY, durationUsage('s', '90m'));
        } catch (err) {
          throw new UsageError(`--ttl ${JSON.stringify(values.ttl)}: ${(err as Error).message}`, command);
        }
      }
      const dir = runtimeDir(values.dir);
      const placement = await placementBody(dir, workflow!, places);
      const { body } = await control<{ run: string; token: string; channels: number; expiresAt: string }>(dir, 'POST', '/v1/runs', {
        workflow,
        ...(values.id !== undefined ? { id: values.id } : {}),
        ...(Object.keys(placement).length > 0 ? { placement } : {}),
        ...(ttlSeconds !== undefined ? { ttlSeconds } : {}),
      });
      if (values.json === true) process.stdout.write(`${JSON.stringify({ run: body.run, token: body.token })}\n`);
      else process.stdout.write(`run ${body.run} created: ${body.channels} channel(s) prepared, expires ${body.expiresAt}\nexport SLUICE_RUN=${body.run} SLUICE_TOKEN=${body.token}\n`);
      return 0;
    }
    case 'show': {
      const parsed = flags(command, rest, common);
      if (!parsed) return 0;
      const [run] = positionalArgs(command, parsed.positionals, ['RUN']);
      const { body } = await control<{ run: string; workflow: string; expiresAt: string; channels: ChannelView[] }>(dir(parsed.values), 'GET', `/v1/runs/${encodeURIComponent(run!)}`);
      print(body, parsed.values.json === true, () => [`run ${body.run} (workflow ${body.workflow}), expires ${body.expiresAt}`, ...body.channels.map(channelLine), ''].join('\n'));
      return 0;
    }
    case 'list': {
      const parsed = flags(command, rest, common);
      if (!parsed) return 0;
      positionalArgs(command, parsed.positionals, []);
      const { body } = await control<Array<{ run: string; workflow: string; channels: number; expiresAt: string }>>(dir(parsed.values), 'GET', '/v1/runs');
      print(body, parsed.values.json === true, () => body.map((r) => `${r.run}\t${r.workflow}\t${r.channels} channels\texpires ${r.expiresAt}\n`).join('') || 'no runs\n');
      return 0;
    }
    case 'token': {
      const parsed = flags(command, rest, { json: { type: 'boolean' }, 'secret-file': { type: 'string' } });
      if (!parsed) return 0;
      const [run] = positionalArgs(command, parsed.positionals, ['RUN']);
      const file = parsed.values['secret-file'];
      let secret: string | undefined;
      if (file !== undefined) {
        try {
          secret = readFileSync(file, 'utf8').replace(/(\r?\n)+$/, '');
        } catch (err) {
          throw new UsageError(`cannot read ${file}: ${(err as Error).message}`, command);
        }
      } else secret = process.env.SLUICE_SECRET;
      if (!secret) throw new UsageError('sluice run token needs the cluster secret: --secret-file FILE or SLUICE_SECRET', command);
      process.stdout.write(parsed.values.json === true ? `${JSON.stringify({ run, token: runTokenFor(secret, run!) })}\n` : `${runTokenFor(secret, run!)}\n`);
      return 0;
    }
    default: {
      const parsed = flags(command, rest, common);
      if (!parsed) return 0;
      const [run] = positionalArgs(command, parsed.positionals, ['RUN']);
      await control(dir(parsed.values), 'DELETE', `/v1/runs/${encodeURIComponent(run!)}`);
      if (parsed.values.json !== true) process.stdout.write(`run ${run} deleted\n`);
      return 0;
    }
  }
}

function dir(values: { dir?: string | boolean | undefined }): string {
  return runtimeDir(typeof values.dir === 'string' ? values.dir : undefined);
}

function functionOptions(args: string[], direction: 'to' | 'from') {
  const command = direction === 'to' ? 'send' : 'recv';
  const parsed = flags(
    command,
    args,
    {
      dir: { type: 'string' },
      run: { type: 'string' },
      step: { type: 'string' },
      token: { type: 'string' },
      instance: { type: 'string' },
      [direction]: { type: 'string' },
      ...(direction === 'from' ? { output: { type: 'string', short: 'o' } } : {}),
    } as Options,
    false,
  );
  if (!parsed) return undefined;
  const values = parsed.values as Record<string, string | undefined>;
  const instance = values.instance ?? process.env.SLUICE_INSTANCE;
  if (instance !== undefined && !/^\d+$/.test(instance)) throw new UsageError(`--instance "${instance}": a whole number from 0`, command);
  const run = values.run ?? process.env.SLUICE_RUN;
  const step = values.step ?? process.env.SLUICE_STEP;
  const token = values.token ?? process.env.SLUICE_TOKEN;
  const options = {
    dir: runtimeDir(values.dir),
    ...(run ? { run } : {}),
    ...(step ? { step } : {}),
    ...(token ? { token } : {}),
    ...(instance !== undefined ? { instance: Number(instance) } : {}),
  };
  if (!options.run) throw new UsageError(`sluice ${command} needs the run: --run RUN (or SLUICE_RUN)`, command);
  if (!options.step) throw new UsageError(`sluice ${command} needs the step: --step STEP (or SLUICE_STEP)`, command);
  if (values.output === '') throw new UsageError('-o needs a file name: -o FILE', command);
  return { options, peer: values[direction], output: values.output };
}

async function sendCommand(args: string[]): Promise<number> {
  const parsed = functionOptions(args, 'to');
  if (!parsed) return 0;
  const sl = await connect(parsed.options);
  await pipeline(process.stdin, sl.output(parsed.peer));
  return 0;
}

async function recvCommand(args: string[]): Promise<number> {
  const parsed = functionOptions(args, 'from');
  if (!parsed) return 0;
  const sl = await connect(parsed.options);
  if (parsed.output === undefined) await pipeline(sl.input(parsed.peer), process.stdout);
  else await receiveToFile(sl.input(parsed.peer), resolve(parsed.output));
  return 0;
}

/**
 * Write `input` to FILE.partial and rename it `file` once the input ended — which it does only
 * once the stream is verified — and the bytes are on disk: nothing partial ever carries the
 * file's name, and an existing `file` is replaced only by a complete one. On failure (or SIGINT /
 * SIGTERM) FILE.partial is removed.
 */
async function receiveToFile(input: Readable, file: string): Promise<void> {
  const partial = `${file}.partial`;
  const interrupted = (signal: NodeJS.Signals, code: number) => () => {
    rmSync(partial, { force: true });
    process.stderr.write(`sluice: ${signal}: stopped; ${partial} removed\n`);
    process.exit(code);
  };
  const onInt = interrupted('SIGINT', 130);
  const onTerm = interrupted('SIGTERM', 143);
  process.once('SIGINT', onInt);
  process.once('SIGTERM', onTerm);
  try {
    await pipeline(input, createWriteStream(partial, { flags: 'w' }));
    const written = await open(partial, 'r+');
    try {
      await written.sync();
    } finally {
      await written.close();
    }
    await rename(partial, file);
    // the rename itself survives a crash only once the directory is synced (not every file system can)
    const parent = await open(dirname(file), 'r').catch(() => undefined);
    await parent?.sync().catch(() => undefined);
    await parent?.close();
  } catch (err) {
    await rm(partial, { force: true });
    throw err;
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
}

async function statusCommand(args: string[]): Promise<number> {
  const parsed = flags('status', args, common, false);
  if (!parsed) return 0;
  const { values } = parsed;
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
      const parsed = flags('demo', rest, { mib: { type: 'string', default: '256' }, path: { type: 'string' } }, false);
      if (!parsed) return 0;
      const { values } = parsed;
      const mib = Number(values.mib);
      if (!Number.isInteger(mib) || mib < 1 || mib > 65536) throw new UsageError(`--mib must be a whole number of MiB in 1..65536, got "${values.mib}"`, 'demo');
      if (values.path !== undefined && !(values.path in demoPaths)) throw new UsageError(`--path must be one of ${Object.keys(demoPaths).join(', ')}, got "${values.path}"`, 'demo');
      await demo(mib, values.path);
      return 0;
    }
    case '__demo-consume':
      await demoConsumer(rest[0]!, rest[1]!, Number(rest[2]));
      return 0;
    case '__demo-fn':
      await demoFunction(rest[0]!, Number(rest[1]));
      return 0;
    default: {
      const hint = didYouMean(command, ['daemon', 'workflow', 'run', 'send', 'recv', 'status', 'demo']);
      throw new UsageError(`unknown command "${command}"${hint ? ` (did you mean "${hint}"?)` : ''}`);
    }
  }
}

/** The command line is wrong: nothing was done. Exit status 2; `command` says whose --help to read. */
class UsageError extends Error {
  constructor(
    message: string,
    readonly command?: string,
    /** the SLUICE_* code to print before the message, when there is one (SLUICE_CONFIG for the daemon's options) */
    readonly errorCode?: string,
  ) {
    super(message);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof UsageError) {
      process.stderr.write(`sluice: ${err.errorCode ? `${err.errorCode}: ` : ''}${err.message}\nRun "sluice ${err.command ? `${err.command} ` : ''}--help" for usage.\n`);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`sluice: ${hasCode(err) ? `${codeOf(err)}: ` : ''}${(err as Error).message}\n`);
    process.exitCode = 1;
  },
);
