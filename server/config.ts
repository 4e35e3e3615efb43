/**
 * The daemon's configuration: one schema (`CONFIG_OPTIONS`), validated once at start, frozen.
 *
 * The schema is one typed row per option: its kind (size, duration, count, enum or text), typed
 * default and bounds (in the option's own unit), flag, environment variable, file key and text.
 * Everything else is made from the rows: the parser (bounds and messages), the defaults, the JSON
 * view (`describeConfig`), `sluice daemon --help` (`configHelp`), and, through `npm run
 * docs:config` (server/config-docs.ts), docs/configuration.md and docs/sluice-config.schema.json.
 * `ConfigValues` stays a written interface for its documentation; the row helpers check each
 * row's default and parser against its property's type, and `RowsMatchConfigValues` that the
 * rows and the properties are the same set. An option is added by adding a property and a row.
 *
 * Sources, lowest to highest precedence: built-in defaults < config file (JSON or YAML, named by
 * `--config FILE` or `SLUICE_CONFIG`) < environment variables < command-line flags. Every value
 * given is validated, even one a higher source overrides, so a latent mistake in the config file
 * surfaces at once rather than the day the override goes away. An empty environment variable
 * counts as not set; a `null` value in the file too.
 *
 * Errors are `SLUICE_CONFIG` RequestErrors whose message names the option as the user wrote it
 * (`--relay-buffer`, `SLUICE_RELAY_BUFFER`, or `relayBufferBytes` with the file's path) and says
 * how to fix it; `details` holds { option, source, name, file? }. The cluster secret is never
 * shown: not in messages, not in `toJSON()`, not in `util.inspect`; nor is the TLS private key
 * (only its file's path is).
 *
 * No I/O but reading the config file, the secret file and the TLS files (through `readFile`,
 * injectable), each once, here: the daemon never reads them again.
 */
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';
import { hostname as osHostname } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inspect } from 'node:util';
import { ErrorCodes, RequestError } from '../transports/errors.js';
import { DAEMON_SOCKET, NAME_PATTERN, RELAY_SOCKET, defaultRuntimeDir } from '../transports/layout.js';
import { MAX_UNIX_PATH_BYTES } from '../transports/unix.js';
import { DAY, GiB, HOUR, KiB, MINUTE, MiB, SECOND, durationUsage, formatBytes, formatDuration, parseDuration as parseDurationValue, parseSize as parseSizeValue } from '../transports/units.js';
import type { StoreLocation } from '../transports/store.js';
import { didYouMean, parseJsonOrYaml } from './workflow.js';
import { MAX_HELD, MAX_UNVERIFIED } from './binding.js';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
/** json: pino's own lines ("level":30); json-levels: the same with the level's name ("level":"info"). */
export const LOG_FORMATS = ['json', 'json-levels'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** Largest config file accepted, in bytes. */
export const MAX_CONFIG_FILE_BYTES = 1024 * 1024;
/** Shortest cluster secret accepted, in bytes (UTF-8). */
export const MIN_SECRET_BYTES = 16;
const MAX_SECRET_BYTES = 4096;


/** A TCP address to listen on. `host` is bare (no brackets around an IPv6 address). */
export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

/** A PEM file read at start: where it was, and what it held. */
export interface PemFile {
  /** absolute path */
  readonly path: string;
  /** the file's content, PEM text (validated) */
  readonly pem: string;
}

/** Where spilled, forced (`via: s3`) and persisted channel data goes. */
export type StoreConfig = StoreLocation;

/** The values of the options (everything `DaemonConfig` holds but its bookkeeping). */
export interface ConfigValues {
  /** This node's name (a valid name: 1-63 of a-z 0-9 _ -). */
  readonly node: string;
  /** The runtime directory, absolute: control socket, relay socket, runs. */
  readonly dir: string;
  /** The optional TCP control API address. */
  readonly listen: ListenAddress | undefined;
  /** Static peers: node name → ws:// or wss:// URL. This node's own name never appears. */
  readonly peers: Readonly<Record<string, string>>;
  readonly store: StoreConfig;
  /** The cluster secret for peer links (≥ 16 bytes), if any. Never log it. */
  readonly secret: string | undefined;
  /**
   * This node's TLS certificate (PEM, optionally followed by intermediate CAs). Set together with
   * `tlsKey`, and only with `listen`: the TCP port then serves HTTPS, peer links `wss://`.
   */
  readonly tlsCert: PemFile | undefined;
  /** The private key of `tlsCert` (PEM, unencrypted). Never log its content. */
  readonly tlsKey: PemFile | undefined;
  /** CA certificates (PEM) that `wss://` peers' certificates must chain to; Node's default CAs when absent. */
  readonly tlsCa: PemFile | undefined;
  readonly logLevel: LogLevel;
  /** how log lines write their level: pino's number (json) or its name (json-levels) */
  readonly logFormat: LogFormat;
  /** bytes */
  readonly relayBufferBytes: number;
  /** bytes */
  readonly segmentBytes: number;
  /** milliseconds */
  readonly attachTimeoutMs: number;
  /** bytes */
  readonly peerWindowBytes: number;
  /** bytes */
  readonly memoryBudgetBytes: number;
  /** milliseconds */
  readonly peerHeartbeatMs: number;
  /** seconds */
  readonly runTtlSeconds: number;
  readonly maxRuns: number;
  /** bytes */
  readonly maxBodyBytes: number;
  /** milliseconds: how long SIGTERM lets streams in flight finish */
  readonly graceMs: number;
  /** milliseconds: how long a function that connects before its run is known here is held; 0: not at all */
  readonly bindTimeoutMs: number;
  /** streams in flight at which a replica of a balanced step is saturated (gets no new stream) */
  readonly replicaMaxStreams: number;
  /** failures in a row that eject a replica of a balanced step */
  readonly ejectAfterFailures: number;
  /** milliseconds: a replica's first ejection; the k-th lasts k times as long, at most 10 times */
  readonly ejectionMs: number;
  /** where peers and placements come from besides --peers and the control API */
  readonly discovery: Discovery;
  /** the Kubernetes API server's URL (https://HOST:PORT), when known */
  readonly k8sApi: string | undefined;
  /** the directory holding the service-account token, ca.crt and namespace (absolute) */
  readonly k8sCredentials: string;
  /** the namespace of the headless Service listing the daemons, when discovery is on */
  readonly k8sNamespace: string | undefined;
  /** the headless Service whose EndpointSlices list the daemons */
  readonly k8sService: string;
  /** milliseconds between resyncs of the Kubernetes watches */
  readonly k8sResyncMs: number;
}

export const DISCOVERY_MODES = ['none', 'kubernetes'] as const;
export type Discovery = (typeof DISCOVERY_MODES)[number];
/** Where a pod finds its service-account credentials. */
export const K8S_CREDENTIALS_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export type ConfigKey = keyof ConfigValues;
export type ConfigSource = 'default' | 'file' | 'env' | 'flag';

export interface DaemonConfig extends ConfigValues {
  /** The config file read, absolute, if any. */
  readonly configFile: string | undefined;
  /** Where each value came from, for the start-up log. */
  readonly sources: Readonly<Record<ConfigKey, ConfigSource>>;
  /** The configuration with the secret redacted (what `JSON.stringify` and loggers see). */
  toJSON(): ConfigDescription;
}

/** An option's value in the JSON view: undefined as null, the secret redacted, a PEM file by its path. */
type JsonOf<K extends ConfigKey> = K extends 'secret'
  ? '[redacted]' | null
  : [ConfigValues[K]] extends [PemFile | undefined]
    ? string | null
    : undefined extends ConfigValues[K]
      ? Exclude<ConfigValues[K], undefined> | null
      : ConfigValues[K];

/**
 * A JSON-safe view of a config (what `JSON.stringify`, `util.inspect` and the start-up log see):
 * every option in CONFIG_OPTIONS order, the secret replaced by "[redacted]", TLS files by their
 * paths; then the config file and the sources.
 */
export type ConfigDescription = { -readonly [K in ConfigKey]: JsonOf<K> } & {
  configFile: string | null;
  sources: Record<ConfigKey, ConfigSource>;
};

// ---------------------------------------------------------------------------------------------
// The schema: one typed row per option. The parser (bounds, messages), the defaults, the JSON
// view, `sluice daemon --help`, docs/configuration.md and docs/sluice-config.schema.json all come
// from these rows (the last two through `npm run docs:config`, server/config-docs.ts).

/** A JSON Schema (draft 2020-12) fragment. */
export type JsonSchema = { readonly [keyword: string]: unknown };

/** What every row has: how the option is written in each source, and what it means. */
interface OptionBase<K extends ConfigKey | 'configFile'> {
  /** The property of DaemonConfig it sets (`configFile` for --config). */
  readonly key: K;
  readonly flag: `--${string}`;
  /** The flag's argument, as shown in --help. */
  readonly arg: string;
  readonly env: `SLUICE_${string}`;
  /** The key in the config file: the property's own name (none for --config itself). */
  readonly fileKey: K extends ConfigKey ? K : undefined;
  /** What it does, for --help and the docs: sentences, no line breaks. */
  readonly describe: string;
}

/** --config: names the file the other options' file keys are read from. */
export interface ConfigFileOption extends OptionBase<'configFile'> {
  readonly kind: 'config';
}

/** A size in bytes, written as bytes or with KiB, MiB or GiB. */
export interface SizeOption<K extends ConfigKey = ConfigKey> extends OptionBase<K> {
  readonly kind: 'size';
  /** bytes */
  readonly default: number;
  /** bytes */
  readonly min: number;
  /** bytes */
  readonly max: number;
}

/** A duration kept in `base` units (what a plain number means), written with ms, s, m, h or d. */
export interface DurationOption<K extends ConfigKey = ConfigKey> extends OptionBase<K> {
  readonly kind: 'duration';
  readonly base: 'ms' | 's';
  /** in `base` units */
  readonly default: number;
  /** in `base` units */
  readonly min: number;
  /** in `base` units */
  readonly max: number;
  /** How the default is written (--help, docs, the example in messages); formatDuration(default) when absent. */
  readonly shown?: string;
}

/** A whole number of things. */
export interface CountOption<K extends ConfigKey = ConfigKey> extends OptionBase<K> {
  readonly kind: 'count';
  /** what is counted, e.g. "runs" */
  readonly unit: string;
  readonly default: number;
  readonly min: number;
  readonly max: number;
}

/** One of a few words. */
export interface EnumOption<K extends ConfigKey = ConfigKey, V extends string = string> extends OptionBase<K> {
  readonly kind: 'enum';
  readonly values: readonly V[];
  /** what a value is, for messages: "a log level" */
  readonly noun: string;
  readonly default: V;
}

/** Anything else: a name, a path, an address, a URL, a map; parsed by its own function. */
export interface TextOption<K extends ConfigKey = ConfigKey, T = unknown> extends OptionBase<K> {
  readonly kind: 'text';
  /** Validates a value from any source (a string, or what the file holds); throws Problem. */
  parse(value: unknown, ctx: ParseContext): T;
  /** The default value (`undefined`: none), or how to make it from the machine and the options before this one. */
  readonly default: T | ((d: DefaultContext) => T);
  /** The default as --help and the docs say it, when it is computed or none (then required). */
  readonly defaultText?: string;
  /** What is accepted, as --help and the docs say it. */
  readonly accepted: string;
  /** The value's JSON Schema in the config file. */
  readonly schema: JsonSchema;
  /** The value in the JSON view, when not the value itself. */
  json?(value: T): unknown;
}

export type ConfigOption = ConfigFileOption | SizeOption | DurationOption | CountOption | EnumOption | TextOption;
/** The rows that set a value (all but --config). */
export type ValueOption = Exclude<ConfigOption, ConfigFileOption>;

/** What a computed default may use. */
export interface DefaultContext {
  readonly env: Readonly<Record<string, string | undefined>>;
  hostname(): string;
  uid(): number;
  /** the values of the options above this one in CONFIG_OPTIONS */
  readonly values: Readonly<Partial<ConfigValues>>;
  /** This option's own parser on `raw`; a bad one is refused as "the default --flag". */
  parse(raw: unknown): unknown;
}

/** The properties of ConfigValues whose values are `T`. */
type KeyOf<T> = { [K in ConfigKey]: ConfigValues[K] extends T ? K : never }[ConfigKey];

function sizeOption<K extends KeyOf<number>>(o: Omit<SizeOption<K>, 'kind' | 'arg' | 'fileKey'>): SizeOption<K> {
  return { kind: 'size', arg: 'BYTES', ...o, fileKey: o.key as SizeOption<K>['fileKey'] };
}

function durationOption<K extends KeyOf<number>>(o: Omit<DurationOption<K>, 'kind' | 'arg' | 'fileKey'>): DurationOption<K> {
  return { kind: 'duration', arg: o.base === 'ms' ? 'MS' : 'SECONDS', ...o, fileKey: o.key as DurationOption<K>['fileKey'] };
}

function countOption<K extends KeyOf<number>>(o: Omit<CountOption<K>, 'kind' | 'arg' | 'fileKey'>): CountOption<K> {
  return { kind: 'count', arg: 'N', ...o, fileKey: o.key as CountOption<K>['fileKey'] };
}

function enumOption<K extends KeyOf<string>>(o: Omit<EnumOption<K, ConfigValues[K] & string>, 'kind' | 'fileKey'>): EnumOption<K, ConfigValues[K] & string> {
  return { kind: 'enum', ...o, fileKey: o.key as EnumOption<K>['fileKey'] };
}

function textOption<K extends ConfigKey>(o: Omit<TextOption<K, ConfigValues[K]>, 'kind' | 'fileKey'>): TextOption<K, ConfigValues[K]> {
  return { kind: 'text', ...o, fileKey: o.key as TextOption<K>['fileKey'] };
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/** An AWS (or S3-compatible) region name, in ?region= and AWS_REGION alike. */
const REGION = /^[a-z0-9][a-z0-9-]{0,40}$/;
/** The S3 region when neither the store URL nor the environment names one. */
export const DEFAULT_S3_REGION = 'us-east-1';
const PATH_SCHEMA: JsonSchema = { type: 'string', minLength: 1 };

const ROWS = deepFreeze([
  {
    kind: 'config',
    key: 'configFile',
    flag: '--config',
    arg: 'FILE',
    env: 'SLUICE_CONFIG',
    fileKey: undefined,
    describe: 'A JSON or YAML file setting any of the file keys below. A relative path is taken from the working directory.',
  } satisfies ConfigFileOption,
  textOption({
    key: 'node',
    flag: '--node',
    arg: 'NAME',
    env: 'SLUICE_NODE',
    parse: parseNode,
    default: (d) => defaultNodeName(d.hostname()),
    defaultText: 'the host name, lowercased, other characters replaced by "-"',
    accepted: '1-63 characters of a-z, 0-9, _ and -, starting with a letter or digit',
    schema: { type: 'string', pattern: NAME_PATTERN.source },
    describe: "This node's name: placements (--place STEP=NODE) and peers refer to it.",
  }),
  textOption({
    key: 'dir',
    flag: '--dir',
    arg: 'DIR',
    env: 'SLUICE_DIR',
    parse: parseDir,
    default: (d) => d.parse(defaultRuntimeDir({ ...d.env }, d.uid())) as string,
    defaultText: '$XDG_RUNTIME_DIR/sluice if XDG_RUNTIME_DIR is set, else /tmp/sluice-<uid>',
    accepted: `short enough that DIR/${DAEMON_SOCKET} fits in ${MAX_UNIX_PATH_BYTES} bytes`,
    schema: PATH_SCHEMA,
    describe: `The runtime directory: control socket (${DAEMON_SOCKET}), relay socket and runs. A relative path is taken from the working directory.`,
  }),
  textOption({
    key: 'listen',
    flag: '--listen',
    arg: 'HOST:PORT',
    env: 'SLUICE_LISTEN',
    parse: (v) => parseListen(text(v, 'HOST:PORT, e.g. 127.0.0.1:7700')),
    default: undefined,
    defaultText: 'none (the control API is served on the Unix socket only)',
    accepted: 'port 0-65535 (0: any free port); IPv6 in brackets, e.g. [::1]:7700',
    schema: { type: 'string', pattern: ':[0-9]{1,5}$', examples: ['127.0.0.1:7700', '[::1]:7700'] },
    describe: 'Also serve the control API over TCP at this address.',
  }),
  textOption({
    key: 'peers',
    flag: '--peers',
    arg: 'NAME=URL,...',
    env: 'SLUICE_PEERS',
    parse: parsePeers,
    default: {},
    defaultText: 'none',
    accepted: 'URLs are ws:// (the peer serves plain HTTP) or wss:// (the peer serves TLS: --tls-cert there, its certificate checked against --tls-ca here)',
    schema: {
      anyOf: [
        { type: 'string', examples: ['node-2=ws://10.0.0.2:7700,node-3=wss://node-3.example:7700'] },
        { type: 'object', propertyNames: { pattern: NAME_PATTERN.source }, additionalProperties: { type: 'string', pattern: '^wss?://' } },
      ],
    },
    describe:
      "Static peers: other nodes' daemons, by node name. In the file, a mapping of NAME: URL or the same string. An entry with this node's own name is skipped, so every node can share one list. The flag can be repeated.",
  }),
  textOption({
    key: 'store',
    flag: '--store',
    arg: 'URL',
    env: 'SLUICE_STORE',
    parse: (v) => parseStore(text(v, 'file:///path or s3://bucket/prefix')),
    default: (d) => ({ kind: 'file', path: join(d.values.dir!, 'store') }),
    defaultText: 'file://<dir>/store',
    accepted: 'file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX[?endpoint=URL&region=REGION&forcePathStyle=true|false]',
    schema: { type: 'string', pattern: '^(file|s3)://', examples: ['file:///var/lib/sluice/store', 's3://sluice-data/streams/?region=eu-west-1'] },
    json: (store) => ({ ...store }),
    describe: `The object store for spilled, forced (via: s3) and persisted data. Credentials for S3 come from the usual AWS environment variables or files, never from this URL. The S3 region is the URL's region, else AWS_REGION, else AWS_DEFAULT_REGION, else ${DEFAULT_S3_REGION}.`,
  }),
  textOption({
    key: 'secret',
    flag: '--secret-file',
    arg: 'FILE',
    env: 'SLUICE_SECRET',
    parse: parseSecret,
    default: undefined,
    defaultText: 'none',
    accepted: `at least ${MIN_SECRET_BYTES} bytes`,
    schema: { type: 'string', minLength: 1 },
    json: (secret) => (secret === undefined ? null : '[redacted]'),
    describe:
      'The cluster secret that authenticates peer links. The flag names a file holding it (a trailing newline is ignored); the environment variable and the file key hold the secret itself.',
  }),
  textOption({
    key: 'tlsCert',
    flag: '--tls-cert',
    arg: 'FILE',
    env: 'SLUICE_TLS_CERT',
    parse: (v, ctx) => {
      const file = readPem(v, ctx, 'certificate');
      certificates(file);
      return file;
    },
    default: undefined,
    defaultText: 'none (the --listen port serves plain HTTP and ws://)',
    accepted: "a PEM file: this node's certificate, optionally followed by intermediate CA certificates; needs --tls-key and --listen",
    schema: PATH_SCHEMA,
    json: (file) => file?.path ?? null,
    describe:
      "Serve the --listen port over TLS with this certificate: the control API becomes HTTPS and peers must dial this node with wss:// (plain ws:// and HTTP are refused). Its subjectAltName must name the host the other nodes' --peers use for this node. The flag, the variable and the file key name the file (a relative path is taken from the working directory), read once at start; so do those of --tls-key and --tls-ca.",
  }),
  textOption({
    key: 'tlsKey',
    flag: '--tls-key',
    arg: 'FILE',
    env: 'SLUICE_TLS_KEY',
    parse: (v, ctx) => {
      const file = readPem(v, ctx, 'private key');
      privateKey(file);
      return file;
    },
    default: undefined,
    defaultText: 'none',
    accepted: 'a PEM file: the unencrypted private key of --tls-cert',
    schema: PATH_SCHEMA,
    json: (file) => file?.path ?? null,
    describe: 'The private key of --tls-cert.',
  }),
  textOption({
    key: 'tlsCa',
    flag: '--tls-ca',
    arg: 'FILE',
    env: 'SLUICE_TLS_CA',
    parse: (v, ctx) => {
      const file = readPem(v, ctx, 'CA bundle');
      certificates(file);
      return file;
    },
    default: undefined,
    defaultText: "Node's default CAs",
    accepted: 'a PEM file of one or more CA certificates',
    schema: PATH_SCHEMA,
    json: (file) => file?.path ?? null,
    describe:
      'The CAs trusted when dialling wss:// peers: a peer whose certificate does not chain to one of them is never linked (SLUICE_UNAUTHORIZED: "TLS verification of peer ... failed"). Given, it replaces Node\'s default CAs. Needs no --tls-cert: a node can dial wss:// peers without serving TLS itself.',
  }),
  enumOption({
    key: 'logLevel',
    flag: '--log-level',
    arg: 'LEVEL',
    env: 'SLUICE_LOG_LEVEL',
    values: LOG_LEVELS,
    noun: 'a log level',
    default: 'info',
    describe: 'The least severe level logged.',
  }),
  enumOption({
    key: 'logFormat',
    flag: '--log-format',
    arg: 'FORMAT',
    env: 'SLUICE_LOG_FORMAT',
    values: LOG_FORMATS,
    noun: 'a log format',
    default: 'json',
    describe:
      'How log lines (JSON, one per line, on standard output) write their level: json as pino does, a number ("level":30 for info; 10 trace, 20 debug, 40 warn, 50 error, 60 fatal); json-levels by its name ("level":"info"), for log collectors that do not map pino\'s numbers.',
  }),
  sizeOption({
    key: 'relayBufferBytes',
    flag: '--relay-buffer',
    env: 'SLUICE_RELAY_BUFFER',
    default: 8 * MiB,
    min: 64 * KiB,
    max: GiB,
    describe: 'Per-channel buffer the daemon holds for a producer whose consumer is not attached yet; once it is full (or the attach timeout passes) the stream spills to the object store.',
  }),
  sizeOption({
    key: 'segmentBytes',
    flag: '--segment-size',
    env: 'SLUICE_SEGMENT_SIZE',
    default: 8 * MiB,
    min: 64 * KiB,
    max: GiB,
    describe:
      'Size of the objects a stream is cut into in the object store. A consumer reads a segment once it is whole, so smaller segments reach it sooner; each spilling stream holds up to three in memory. Segments above 16 MiB go to S3 as multipart uploads.',
  }),
  durationOption({
    key: 'attachTimeoutMs',
    flag: '--attach-timeout',
    env: 'SLUICE_ATTACH_TIMEOUT',
    base: 'ms',
    default: 30 * SECOND,
    min: 100,
    max: HOUR,
    describe: 'How long a producer waits for its consumer to attach.',
  }),
  sizeOption({
    key: 'peerWindowBytes',
    flag: '--peer-window',
    env: 'SLUICE_PEER_WINDOW',
    default: 2 * MiB,
    min: 64 * KiB,
    max: 64 * MiB,
    describe: 'Credit window of each cross-node channel on a peer link: the most bytes in flight per channel and the most the receiving daemon buffers for it. A stalled consumer holds back only its own channel.',
  }),
  sizeOption({
    key: 'memoryBudgetBytes',
    flag: '--memory-budget',
    env: 'SLUICE_MEMORY_BUDGET',
    default: 256 * MiB,
    min: 16 * MiB,
    max: 64 * GiB,
    describe:
      "What the buffers of all streams on this daemon hold together at most: relay buffers, cross-node streams' replay tails, peer channels' receive windows. Streams take full buffers while the budget lasts, then smaller ones; a stream that cannot get 64 KiB waits (its producer held back) up to the attach timeout, then fails SLUICE_UNAVAILABLE naming this option. Leave room in the container's memory limit for the daemon itself (about 80 MiB) and the store's segments.",
  }),
  durationOption({
    key: 'peerHeartbeatMs',
    flag: '--peer-heartbeat',
    env: 'SLUICE_PEER_HEARTBEAT',
    base: 'ms',
    default: 2 * SECOND,
    min: 50,
    max: MINUTE,
    describe: 'Peer links are pinged this often; a link silent for three intervals is declared down, its channels fail with typed errors, and it is dialled again.',
  }),
  durationOption({
    key: 'runTtlSeconds',
    flag: '--run-ttl',
    env: 'SLUICE_RUN_TTL',
    base: 's',
    default: DAY / SECOND,
    shown: '24h',
    min: 10,
    max: (30 * DAY) / SECOND,
    describe: 'A run that is never deleted is removed this long after it was created, with its endpoints and buffers (a run can ask for its own TTL).',
  }),
  countOption({
    key: 'maxRuns',
    flag: '--max-runs',
    env: 'SLUICE_MAX_RUNS',
    unit: 'runs',
    default: 1000,
    min: 1,
    max: 100_000,
    describe: 'The most live runs this daemon keeps; creating one more is refused.',
  }),
  sizeOption({
    key: 'maxBodyBytes',
    flag: '--max-body',
    env: 'SLUICE_MAX_BODY',
    default: MiB,
    min: KiB,
    max: 16 * MiB,
    describe: 'The largest control API request body accepted.',
  }),
  durationOption({
    key: 'graceMs',
    flag: '--grace',
    env: 'SLUICE_GRACE',
    base: 'ms',
    default: 25 * SECOND,
    min: 0,
    max: HOUR,
    describe:
      'On SIGTERM or SIGINT the daemon stops admitting channels and runs at once (readyz turns 503), lets streams in flight finish (relayed, delivered from a peer, or fed from the store) for up to this long, then cuts what is left and exits. Streams still waiting for their consumer go to the object store when 5s (at most half of it) are left; the next daemon on this directory feeds them. On Kubernetes set terminationGracePeriodSeconds a few seconds above it.',
  }),
  durationOption({
    key: 'bindTimeoutMs',
    flag: '--bind-timeout',
    env: 'SLUICE_BIND_TIMEOUT',
    base: 'ms',
    default: 30 * SECOND,
    min: 0,
    max: HOUR,
    describe: `Late binding: a function that connects before its run is known on this node (its pods not seen yet, the run still being shared by a peer or not created yet) is held this long, and bound as soon as the run is ready here; then SLUICE_NOT_FOUND. 0 answers SLUICE_NOT_FOUND at once. A wrong token is refused at once wherever it can be checked; at most ${MAX_HELD} functions are held at once (${MAX_UNVERIFIED} whose token cannot be checked yet), more are answered SLUICE_NOT_FOUND at once.`,
  }),
  countOption({
    key: 'replicaMaxStreams',
    flag: '--replica-max-streams',
    env: 'SLUICE_REPLICA_MAX_STREAMS',
    unit: 'streams',
    default: 8,
    min: 1,
    max: 100_000,
    describe:
      'On a `fanout: balance` edge, a consumer replica (an instance index of the step on a node, across runs) with this many streams in flight — routed by this node or, as its peers report, by them — is saturated: it gets no new stream until one ends, and local-first spills to the other replicas. When every replica is saturated a new stream waits (its producer held back) up to --attach-timeout, then fails with SLUICE_UNAVAILABLE.',
  }),
  countOption({
    key: 'ejectAfterFailures',
    flag: '--eject-after',
    env: 'SLUICE_EJECT_AFTER',
    unit: 'failures in a row',
    default: 5,
    min: 1,
    max: 1000,
    describe:
      "A consumer replica of a balance edge whose streams fail this many times in a row on its side (not the producer's) is ejected: it gets no new stream for --ejection-time, then is admitted again. Never more than half the replicas of a step are ejected at once (the panic threshold). Peers learn of an ejection over the peer links.",
  }),
  durationOption({
    key: 'ejectionMs',
    flag: '--ejection-time',
    env: 'SLUICE_EJECTION_TIME',
    base: 'ms',
    default: 30 * SECOND,
    min: 100,
    max: HOUR,
    describe: "How long a replica's first ejection lasts; its k-th lasts k times as long, at most 10 times this.",
  }),
  enumOption({
    key: 'discovery',
    flag: '--discovery',
    arg: 'MODE',
    env: 'SLUICE_DISCOVERY',
    values: DISCOVERY_MODES,
    noun: 'a discovery mode',
    default: 'none',
    describe:
      "kubernetes: learn the peers from the EndpointSlices of the headless Service --k8s-service (beside --peers), and the placement of runs from the pods scheduled to this node that carry the labels sluice.dev/run, sluice.dev/step and sluice.dev/workflow (their channels are prepared before the pods' containers start). Needs the cluster secret and the Kubernetes API (--k8s-api).",
  }),
  textOption({
    key: 'k8sApi',
    flag: '--k8s-api',
    arg: 'URL',
    env: 'SLUICE_K8S_API',
    parse: parseK8sApi,
    default: (d) => inClusterApi(d.env),
    defaultText: 'https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT (set in every pod)',
    accepted: 'an https:// URL (or http:// for a local proxy or a test server)',
    schema: { type: 'string', pattern: '^https?://' },
    describe: 'The Kubernetes API server, for --discovery kubernetes.',
  }),
  textOption({
    key: 'k8sCredentials',
    flag: '--k8s-credentials',
    arg: 'DIR',
    env: 'SLUICE_K8S_CREDENTIALS',
    parse: (v, ctx) => {
      const s = text(v, `a directory, e.g. ${K8S_CREDENTIALS_DIR}`);
      if (s.includes('\0')) throw new Problem('contains a NUL byte; give a plain directory path');
      return resolve(ctx.cwd, s);
    },
    default: K8S_CREDENTIALS_DIR,
    accepted: 'a directory holding token, and optionally ca.crt and namespace',
    schema: PATH_SCHEMA,
    describe:
      "Where the service account's credentials are: the bearer token (read again at every connection, as bound tokens rotate), the CA of the API server's certificate (Node's default CAs when absent), and this pod's namespace.",
  }),
  textOption({
    key: 'k8sNamespace',
    flag: '--k8s-namespace',
    arg: 'NAMESPACE',
    env: 'SLUICE_K8S_NAMESPACE',
    parse: (v) => dnsLabel(text(v, 'a namespace, e.g. sluice-system'), 'a namespace'),
    default: undefined,
    defaultText: "the namespace file in --k8s-credentials (the daemon pod's own namespace)",
    accepted: 'a DNS label: 1-63 characters of a-z, 0-9 and -',
    schema: { type: 'string', pattern: DNS_LABEL.source },
    describe: 'The namespace of the headless Service --k8s-service.',
  }),
  textOption({
    key: 'k8sService',
    flag: '--k8s-service',
    arg: 'NAME',
    env: 'SLUICE_K8S_SERVICE',
    parse: (v) => dnsLabel(text(v, 'a Service name, e.g. sluice'), 'a Service name'),
    default: 'sluice',
    accepted: 'a DNS label: 1-63 characters of a-z, 0-9 and -',
    schema: { type: 'string', pattern: DNS_LABEL.source },
    describe:
      'The headless Service selecting the daemon pods: each ready endpoint of its EndpointSlices is a peer, named by the endpoint\'s nodeName and dialled at ws://ADDRESS:PORT (wss:// when this node serves TLS), PORT being the Service port named "peer" (else its first port).',
  }),
  durationOption({
    key: 'k8sResyncMs',
    flag: '--k8s-resync',
    env: 'SLUICE_K8S_RESYNC',
    base: 'ms',
    default: 5 * MINUTE,
    min: SECOND,
    max: HOUR,
    describe: 'How often the Kubernetes watches list everything again, in case an event was missed.',
  }),
] as const);

type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type Expect<T extends true> = T;
/**
 * Compile-time check: the rows' keys are exactly ConfigValues' properties (and --config). A type
 * error here means a property without a row or a row without a property: add the missing one.
 * (Each row's default and parser are checked against its property's type by the row helpers.)
 */
export type RowsMatchConfigValues = Expect<Same<(typeof ROWS)[number]['key'], ConfigKey | 'configFile'>>;

/** The schema: every option, in the order --help and the docs list them. */
export const CONFIG_OPTIONS: readonly ConfigOption[] = ROWS;

const SIZE_UNIT = 'bytes, or a number with KiB, MiB or GiB (e.g. 8MiB)';

/** How --help and the docs show an option's default, unit and accepted values (all from its row). */
export interface OptionText {
  /** the default as written: a value (`literal`) or words saying what it is */
  readonly default: string;
  /** the default is a value one could write (`8MiB`, `info`), not a description */
  readonly literal: boolean;
  readonly unit: string | undefined;
  readonly accepted: string | undefined;
}

export function optionText(o: ConfigOption): OptionText {
  switch (o.kind) {
    case 'config':
      return { default: 'none', literal: false, unit: undefined, accepted: undefined };
    case 'size':
      return { default: formatBytes(o.default), literal: true, unit: SIZE_UNIT, accepted: `${formatBytes(o.min)}..${formatBytes(o.max)}` };
    case 'duration': {
      const ms = o.base === 'ms' ? 1 : SECOND;
      const shown = shownDuration(o);
      return { default: shown, literal: true, unit: durationUsage(o.base, shown), accepted: `${formatDuration(o.min * ms)}..${formatDuration(o.max * ms)}` };
    }
    case 'count':
      return { default: String(o.default), literal: true, unit: o.unit, accepted: `${o.min}..${o.max}` };
    case 'enum':
      return { default: o.default, literal: true, unit: undefined, accepted: o.values.join(', ') };
    case 'text': {
      if (o.defaultText !== undefined) return { default: o.defaultText, literal: false, unit: undefined, accepted: o.accepted };
      if (typeof o.default !== 'string') throw new Error(`config option ${o.key}: a default that is computed, none or not a string needs a defaultText`);
      return { default: o.default, literal: true, unit: undefined, accepted: o.accepted };
    }
  }
}

/** How a duration option's default is written: its `shown`, else the default formatted. */
function shownDuration(o: DurationOption): string {
  return o.shown ?? formatDuration(o.default * (o.base === 'ms' ? 1 : SECOND));
}

/** What --help and the docs say before the options. */
const CONFIG_INTRO = [
  'Runs the per-node forwarding daemon. Every option can also be set by an environment variable',
  'or a key in the config file (--config). A flag wins over the environment, the environment',
  'over the file, the file over the built-in default.',
] as const;

export interface LoadConfigOptions {
  /** The arguments after `sluice daemon`. */
  argv: readonly string[];
  /** The environment: the options' variables, and what some defaults use (XDG_RUNTIME_DIR, KUBERNETES_SERVICE_HOST/PORT, AWS_REGION, AWS_DEFAULT_REGION). */
  env: Readonly<Record<string, string | undefined>>;
  /** Reads the config file, the secret file and the TLS files; `fs.readFileSync(path, 'utf8')` by default. */
  readFile?: (path: string) => string;
  /** Relative paths are resolved against this; `process.cwd()` by default. */
  cwd?: string;
  /** The machine's host name, for the default node name; `os.hostname()` by default. */
  hostname?: string;
  /** The user id, for the default directory; `process.getuid()` by default. */
  uid?: number;
}

/** Builds, validates and freezes the daemon's configuration. Throws SLUICE_CONFIG. */
export function loadConfig(options: LoadConfigOptions): DaemonConfig {
  const cwd = options.cwd ?? process.cwd();
  const readFile = options.readFile ?? ((path: string) => readFileSync(path, 'utf8'));
  const env = options.env;

  const flags = parseArgv(options.argv);

  // The config file: --config, else SLUICE_CONFIG.
  const configOption = optionFor('configFile');
  const configGiven = flags.get('configFile') ?? given(env, configOption.env, 'env');
  let configFile: string | undefined;
  let fileValues = new Map<ConfigKey, unknown>();
  if (configGiven) {
    const path = String(configGiven.value);
    if (path.trim() === '') throw configError(configOption, configGiven, undefined, 'is empty; give the path of a JSON or YAML file');
    configFile = resolve(cwd, path);
    fileValues = readConfigFile(configFile, configOption, configGiven, readFile);
  }

  const ctx = { cwd, readFile };
  const sources = {} as Record<ConfigKey, ConfigSource>;
  const values: Partial<Record<ConfigKey, unknown>> = {};
  /** the value that won, per option given, for checks across options */
  const winners = new Map<ConfigKey, Given>();
  // Validate every value given, lowest precedence first, so the winner is the last one parsed.
  for (const option of CONFIG_OPTIONS) {
    if (option.kind === 'config') continue;
    const key = option.key;
    const candidates: Given[] = [];
    if (fileValues.has(key)) candidates.push({ source: 'file', value: fileValues.get(key), file: configFile });
    const fromEnv = given(env, option.env, 'env');
    if (fromEnv) candidates.push(fromEnv);
    const fromFlag = flags.get(key);
    if (fromFlag) candidates.push(fromFlag);
    for (const candidate of candidates) {
      values[key] = parseWith(option, candidate, ctx);
      sources[key] = candidate.source;
      winners.set(key, candidate);
    }
  }

  // Defaults, in row order: a computed one may use the options above it (the store, the directory).
  const machine = {
    env,
    hostname: () => options.hostname ?? osHostname(),
    uid: () => options.uid ?? process.getuid?.() ?? 0,
    values: values as Partial<ConfigValues>,
  };
  for (const option of CONFIG_OPTIONS) {
    if (option.kind === 'config' || option.key in values) continue;
    const fallback = option.default;
    values[option.key] =
      typeof fallback === 'function'
        ? (fallback as (d: DefaultContext) => unknown)({ ...machine, parse: (raw) => parseWith(option, { source: 'default', value: raw }, ctx) })
        : fallback;
    sources[option.key] = 'default';
  }

  const node = values['node'] as string;
  const peers = values['peers'] as Record<string, string>;
  if (Object.hasOwn(peers, node)) {
    const rest: Record<string, string> = Object.create(null) as Record<string, string>;
    for (const [name, url] of Object.entries(peers)) if (name !== node) rest[name] = url;
    values['peers'] = rest;
  }
  values['store'] = withRegion(values['store'] as StoreConfig, env);

  checkTls(values as unknown as ConfigValues, winners);
  checkDiscovery(values as Record<ConfigKey, unknown>, winners, readFile);

  const config = { ...(values as unknown as ConfigValues), configFile, sources } as DaemonConfig;
  Object.defineProperty(config, 'toJSON', { value: () => describeConfig(config), enumerable: false });
  Object.defineProperty(config, inspect.custom, { value: () => describeConfig(config), enumerable: false });
  return deepFreeze(config);
}

/**
 * An S3 store with its region: the URL's ?region=, else AWS_REGION, else AWS_DEFAULT_REGION (the
 * variables the AWS SDK and CLI read), else us-east-1. Decided here, once, so the store itself
 * never reads the environment.
 */
function withRegion(store: StoreConfig, env: Readonly<Record<string, string | undefined>>): StoreConfig {
  if (store.kind !== 's3' || store.region !== undefined) return store;
  for (const name of ['AWS_REGION', 'AWS_DEFAULT_REGION']) {
    const region = env[name];
    if (region === undefined || region === '') continue;
    if (!REGION.test(region)) {
      throw new RequestError(ErrorCodes.CONFIG, `${name} ${showValue(region)}: not a region name; use e.g. ${DEFAULT_S3_REGION}, or give the store's region in its URL (?region=REGION)`, {
        details: { option: 'store', source: 'env', name },
      });
    }
    return { ...store, region };
  }
  return { ...store, region: DEFAULT_S3_REGION };
}

/** A JSON-safe copy of `config` with the secret redacted: what to log at start-up. */
export function describeConfig(config: DaemonConfig): ConfigDescription {
  const view: Record<string, unknown> = {};
  for (const o of CONFIG_OPTIONS) {
    if (o.kind === 'config') continue;
    const value: unknown = config[o.key];
    view[o.key] = o.kind === 'text' && o.json ? o.json(value) : jsonValue(value);
  }
  view['configFile'] = config.configFile ?? null;
  view['sources'] = { ...config.sources };
  return view as ConfigDescription;
}

/** undefined as null; an object (an address, the peers) copied, so the view is not frozen. */
function jsonValue(value: unknown): unknown {
  if (value === undefined) return null;
  if (typeof value === 'object' && value !== null) return { ...value };
  return value;
}

/**
 * The body of `sluice daemon --help` (the CLI prints its own "Usage:" line first): every option
 * with its flag, variable, file key, default and unit.
 */
export function configHelp(): string {
  const lines: string[] = [...CONFIG_INTRO, '', 'Options:'];
  for (const o of CONFIG_OPTIONS) {
    const t = optionText(o);
    lines.push('', `  ${o.flag} ${o.arg}`);
    for (const l of wrap(o.describe, 90)) lines.push(`      ${l}`);
    const where = [`env ${o.env}`, ...(o.fileKey ? [`file key ${o.fileKey}`] : []), `default: ${t.default}`];
    for (const l of wrap(where.join(' · '), 90)) lines.push(`      ${l}`);
    if (t.unit) for (const l of wrap(`unit: ${t.unit}`, 90)) lines.push(`      ${l}`);
    if (t.accepted) for (const l of wrap(`accepted: ${t.accepted}`, 90)) lines.push(`      ${l}`);
  }
  lines.push('', '  --help', '      Print this text.', '');
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------

/** A value as one source gave it. */
interface Given {
  source: ConfigSource;
  value: unknown;
  /** the config file, for source 'file' */
  file?: string | undefined;
}

/** What a parser may use besides the value. */
export interface ParseContext {
  readonly cwd: string;
  readonly readFile: (path: string) => string;
  /** where the value came from: the secret's flag names a file, its variable holds the secret; only the file may hold a mapping of peers */
  readonly source: ConfigSource;
}

/** A value is wrong; the message says why and how to fix it (the caller adds which option). */
class Problem extends Error {
  constructor(
    message: string,
    readonly reason?: unknown,
  ) {
    super(message);
  }
}

/** The parsers of the rows of kind size, duration, count and enum: bounds and words from the row. */
function parseValue(option: ValueOption, v: unknown, ctx: ParseContext): unknown {
  switch (option.kind) {
    case 'size':
      return parseSize(v, option.min, option.max);
    case 'duration': {
      const ms = option.base === 'ms' ? 1 : SECOND;
      return parseDuration(v, option.base, option.min * ms, option.max * ms, durationUsage(option.base, shownDuration(option)));
    }
    case 'count':
      return parseCount(v, option.min, option.max);
    case 'enum': {
      const choices = option.values.join(', ');
      const s = text(v, `one of ${choices}`);
      if (option.values.includes(s)) return s;
      const hint = didYouMean(s, option.values);
      throw new Problem(`not ${option.noun}${hint ? ` (did you mean "${hint}"?)` : ''}; use one of ${choices}`);
    }
    case 'text':
      return option.parse(v, ctx);
  }
}

function parseNode(v: unknown): string {
  const s = text(v, 'a node name, e.g. node-1');
  if (!NAME_PATTERN.test(s)) {
    const suggestion = toName(s);
    throw new Problem(`not a valid node name; use 1-63 characters of a-z, 0-9, _ and -, starting with a letter or digit${suggestion && suggestion !== s ? ` (e.g. "${suggestion}")` : ''}`);
  }
  return s;
}

function parseDir(v: unknown, ctx: ParseContext): string {
  const s = text(v, 'a directory, e.g. /run/sluice');
  if (s.includes('\0')) throw new Problem('contains a NUL byte; give a plain directory path');
  const dir = resolve(ctx.cwd, s);
  const longest = [DAEMON_SOCKET, RELAY_SOCKET].reduce((a, b) => (a.length >= b.length ? a : b));
  const bytes = Buffer.byteLength(join(dir, longest));
  if (bytes > MAX_UNIX_PATH_BYTES) {
    throw new Problem(`the socket path ${join(dir, longest)} would be ${bytes} bytes, over the Unix socket limit of ${MAX_UNIX_PATH_BYTES}; use a shorter directory`);
  }
  return dir;
}

function parseSecret(v: unknown, ctx: ParseContext): string {
  let secret: string;
  if (ctx.source === 'flag') {
    const path = resolve(ctx.cwd, text(v, 'the path of a file holding the secret'));
    try {
      secret = ctx.readFile(path);
    } catch (err) {
      throw new Problem(`cannot read the secret file ${path} (${errText(err)}); check the path and its permissions`, err);
    }
    secret = secret.replace(/(\r?\n)+$/, '');
  } else {
    if (typeof v !== 'string') throw new Problem(`must be a string (the secret itself), not ${typeName(v)}`);
    secret = v;
  }
  const bytes = Buffer.byteLength(secret);
  if (bytes < MIN_SECRET_BYTES) {
    throw new Problem(`the secret is ${bytes === 0 ? 'empty' : `${bytes} bytes`}; use at least ${MIN_SECRET_BYTES} random bytes (e.g. the output of \`openssl rand -hex 32\`)`);
  }
  if (bytes > MAX_SECRET_BYTES) throw new Problem(`the secret is ${bytes} bytes, over the limit of ${MAX_SECRET_BYTES}; 32 random bytes are plenty`);
  return secret;
}

function parseK8sApi(v: unknown): string {
  const s = text(v, 'the API server URL, e.g. https://10.96.0.1:443');
  let url: URL;
  try {
    url = new URL(s);
  } catch {
    throw new Problem('not a URL; use https://HOST:PORT, e.g. https://10.96.0.1:443');
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Problem('must be an https:// URL (or http:// for a local proxy); e.g. https://10.96.0.1:443');
  if (url.username || url.password || url.search || url.hash) throw new Problem('takes no credentials, ?query or #fragment: the token comes from --k8s-credentials');
  return s.replace(/\/+$/, '');
}

function dnsLabel(s: string, what: string): string {
  if (!DNS_LABEL.test(s)) throw new Problem(`not ${what}: use a DNS label, 1-63 characters of a-z, 0-9 and -, starting and ending with a letter or digit`);
  return s;
}

/** The API server as every pod's environment names it, or undefined outside a cluster. */
function inClusterApi(env: Readonly<Record<string, string | undefined>>): string | undefined {
  const host = env['KUBERNETES_SERVICE_HOST'];
  if (!host) return undefined;
  const port = env['KUBERNETES_SERVICE_PORT'] || '443';
  return `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** Checks across the discovery options; fills the namespace from the credentials directory. */
function checkDiscovery(values: Record<ConfigKey, unknown>, winners: ReadonlyMap<ConfigKey, Given>, readFile: (path: string) => string): void {
  if (values['discovery'] !== 'kubernetes') return;
  const given = winners.get('discovery')!;
  const fail = (problem: string): never => {
    throw configError(optionFor('discovery'), given, undefined, problem);
  };
  if (values['secret'] === undefined) fail('needs the cluster secret, which authenticates the discovered peers and derives the tokens of runs placed by pods: give --secret-file FILE (or SLUICE_SECRET)');
  if (values['k8sApi'] === undefined) fail('needs the Kubernetes API: KUBERNETES_SERVICE_HOST is not set (not in a pod?); give --k8s-api https://HOST:PORT');
  if (values['k8sNamespace'] === undefined) {
    const file = join(values['k8sCredentials'] as string, 'namespace');
    let ns: string;
    try {
      ns = readFile(file).trim();
    } catch (err) {
      return fail(`cannot read the namespace from ${file} (${errText(err)}): give --k8s-namespace NAMESPACE, or --k8s-credentials DIR where the service account is mounted`);
    }
    if (!DNS_LABEL.test(ns)) fail(`${file} holds ${JSON.stringify(ns.slice(0, 64))}, not a namespace: give --k8s-namespace NAMESPACE`);
    values['k8sNamespace'] = ns;
  }
}

/** Reads the PEM file named by `v` (a path; relative to the working directory). */
function readPem(v: unknown, ctx: ParseContext, what: string): PemFile {
  const path = resolve(ctx.cwd, text(v, `the path of a PEM file holding the ${what}`));
  let pem: string;
  try {
    pem = ctx.readFile(path);
  } catch (err) {
    throw new Problem(`cannot read the ${what} file ${path} (${errText(err)}); check the path and its permissions`, err);
  }
  return { path, pem };
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----/g;

/** The certificates in `file`, parsed; Problem naming the file when there is none or one is not valid. */
function certificates(file: PemFile): X509Certificate[] {
  const blocks = file.pem.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) {
    throw new Problem(`${file.path} holds no PEM certificate (a "-----BEGIN CERTIFICATE-----" block); give a PEM file, e.g. what \`openssl x509 -outform PEM\` writes`);
  }
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new Problem(`${file.path}: certificate ${i + 1} of ${blocks.length} is not a valid PEM certificate (${errText(err)}); replace the file`, err);
    }
  });
}

/** The private key in `file`; Problem naming the file when it is missing, invalid or encrypted. */
function privateKey(file: PemFile): KeyObject {
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(file.pem)) {
    throw new Problem(`${file.path} holds no PEM private key (a "-----BEGIN PRIVATE KEY-----" block); give the key --tls-cert was made with`);
  }
  try {
    return createPrivateKey(file.pem);
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ERR_MISSING_PASSPHRASE' || /ENCRYPTED/.test(file.pem)) {
      throw new Problem(`${file.path} holds an encrypted private key; give it unencrypted (e.g. \`openssl pkey -in ${file.path} -out key.pem\`) and protect the file with its permissions`, err);
    }
    throw new Problem(`${file.path} is not a valid PEM private key (${errText(err)}); replace the file`, err);
  }
}

/** Checks across the TLS options: certificate and key together, matching, and something to serve. */
function checkTls(values: ConfigValues, winners: ReadonlyMap<ConfigKey, Given>): void {
  const { tlsCert, tlsKey } = values;
  const fail = (key: 'tlsCert' | 'tlsKey', cause: unknown, problem: string): never => {
    throw configError(optionFor(key), winners.get(key)!, cause, problem);
  };
  if (tlsCert && !tlsKey) fail('tlsCert', undefined, 'has no private key: also give --tls-key FILE (SLUICE_TLS_KEY, file key tlsKey), or drop --tls-cert to serve without TLS');
  if (tlsKey && !tlsCert) fail('tlsKey', undefined, 'has no certificate: also give --tls-cert FILE (SLUICE_TLS_CERT, file key tlsCert), or drop --tls-key to serve without TLS');
  if (!tlsCert || !tlsKey) return;
  const leaf = certificates(tlsCert)[0]!;
  if (!leaf.checkPrivateKey(privateKey(tlsKey))) {
    fail('tlsKey', undefined, `${tlsKey.path} is not the private key of the certificate in ${tlsCert.path} (the first one there); give the key that certificate was made for`);
  }
  if (!values.listen) fail('tlsCert', undefined, 'needs --listen HOST:PORT: TLS is served on the --listen port, and there is none; add --listen, or drop --tls-cert and --tls-key');
}

function parseWith(option: ValueOption, given: Given, ctx: Omit<ParseContext, 'source'>): unknown {
  try {
    return parseValue(option, given.value, { ...ctx, source: given.source });
  } catch (err) {
    if (!(err instanceof Problem)) throw err;
    throw configError(option, given, err.reason, err.message);
  }
}

/** The error for `option` as `given`: names the option as the user wrote it, never shows a secret. */
function configError(option: ConfigOption, given: Given, cause: unknown, problem: string): RequestError {
  const name = given.source === 'flag' ? option.flag : given.source === 'env' ? option.env : given.source === 'file' ? (option.fileKey ?? option.key) : `the default ${option.flag}`;
  // The secret itself is never shown; the secret *file* path is not secret.
  const hideValue = option.key === 'secret' && given.source !== 'flag';
  const shown = hideValue || given.value === undefined ? '' : ` ${showValue(given.value)}`;
  const where = given.source === 'file' && given.file ? `${given.file}: ` : '';
  return new RequestError(ErrorCodes.CONFIG, `${where}${name}${shown}: ${problem}`, {
    ...(cause === undefined ? {} : { cause }),
    details: { option: option.key, source: given.source, name, ...(given.source === 'file' && given.file ? { file: given.file } : {}) },
  });
}

function optionFor(key: ConfigOption['key']): ConfigOption {
  return CONFIG_OPTIONS.find((o) => o.key === key)!;
}

function given(env: Readonly<Record<string, string | undefined>>, name: string, source: 'env'): Given | undefined {
  const value = env[name];
  return value === undefined || value === '' ? undefined : { source, value };
}

/** Flags by option key. `--flag value` and `--flag=value`; the last one wins, `--peers` adds up. */
function parseArgv(argv: readonly string[]): Map<ConfigOption['key'], Given> {
  const byFlag = new Map(CONFIG_OPTIONS.map((o) => [o.flag as string, o]));
  const out = new Map<ConfigOption['key'], Given>();
  const fail = (message: string, details: Record<string, unknown>): never => {
    throw new RequestError(ErrorCodes.CONFIG, message, { details: { source: 'flag', ...details } });
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      if (i + 1 < argv.length) fail(`unexpected argument ${showValue(argv[i + 1])}: sluice daemon takes options only (see --help)`, { name: argv[i + 1] });
      break;
    }
    if (!arg.startsWith('-') || arg === '-') fail(`unexpected argument ${showValue(arg)}: sluice daemon takes options only, e.g. --node NAME (see --help)`, { name: arg });
    const eq = arg.indexOf('=');
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    const option = byFlag.get(flag);
    if (flag === '--help' || flag === '-h') {
      fail(`${flag} is for the CLI: check for it before loading the configuration, and print configHelp()`, { name: flag });
    }
    if (!option) {
      const aliases = new Map<string, string>();
      for (const o of CONFIG_OPTIONS) {
        aliases.set(o.flag, o.flag);
        aliases.set(`--${o.key}`, o.flag);
        if (o.fileKey) aliases.set(`--${o.fileKey}`, o.flag);
      }
      const hint = didYouMean(flag, [...aliases.keys()]);
      const suggestion = hint === undefined ? undefined : aliases.get(hint);
      fail(`unknown option ${flag}${suggestion ? ` (did you mean ${suggestion}?)` : ''}; sluice daemon --help lists the options`, { name: flag });
    }
    const o = option!;
    let value: string | undefined;
    if (eq > 0) value = arg.slice(eq + 1);
    else {
      value = argv[i + 1];
      if (value === undefined || value.startsWith('--')) value = undefined;
      else i++;
    }
    if (value === undefined) fail(`${o.flag} needs a value: ${o.flag} ${o.arg}`, { option: o.key, name: o.flag });
    const previous = out.get(o.key);
    if (o.key === 'peers' && previous && typeof previous.value === 'string' && previous.value !== '' && value !== '') {
      value = `${previous.value},${value}`;
    }
    out.set(o.key, { source: 'flag', value });
  }
  return out;
}

function readConfigFile(path: string, option: ConfigOption, given: Given, readFile: (path: string) => string): Map<ConfigKey, unknown> {
  let content: string;
  try {
    content = readFile(path);
  } catch (err) {
    throw configError(option, given, err, `cannot read ${path} (${errText(err)}); check the path and its permissions`);
  }
  const bytes = Buffer.byteLength(content);
  if (bytes > MAX_CONFIG_FILE_BYTES) throw configError(option, given, undefined, `${path} is ${bytes} bytes, over the limit of ${MAX_CONFIG_FILE_BYTES}; is it the right file?`);
  const fileFail = (message: string, details: Record<string, unknown> = {}): never => {
    throw new RequestError(ErrorCodes.CONFIG, `${path}: ${message}`, { details: { source: 'file', file: path, ...details } });
  };
  let parsed: unknown;
  try {
    parsed = parseJsonOrYaml(content, path, ErrorCodes.CONFIG);
  } catch (err) {
    const e = err as RequestError;
    throw new RequestError(ErrorCodes.CONFIG, e.message, { cause: e.cause ?? e, details: { ...e.details, source: 'file', file: path } });
  }
  const keys = CONFIG_OPTIONS.flatMap((o) => (o.fileKey ? [o.fileKey] : []));
  if (parsed === null || parsed === undefined) return new Map();
  if (typeof parsed !== 'object' || Array.isArray(parsed)) {
    fileFail(`a config file must be a mapping of option keys (${keys.join(', ')}), not ${typeName(parsed)}`);
  }
  const out = new Map<ConfigKey, unknown>();
  for (const [key, value] of Object.entries(parsed as Record<string, unknown>)) {
    const o = CONFIG_OPTIONS.find((c) => c.fileKey === key);
    if (!o) {
      if (key === 'config') fileFail('unknown key "config": a config file cannot name another one', { name: key });
      const aliases = new Map<string, string>();
      for (const c of CONFIG_OPTIONS) {
        if (!c.fileKey) continue;
        aliases.set(c.fileKey, c.fileKey);
        aliases.set(c.flag.slice(2), c.fileKey);
        aliases.set(c.env, c.fileKey);
      }
      const hint = didYouMean(key, [...aliases.keys()]);
      const suggestion = hint === undefined ? undefined : aliases.get(hint);
      fileFail(`unknown key ${JSON.stringify(key)}${suggestion ? ` (did you mean "${suggestion}"?)` : ''}; allowed keys: ${keys.join(', ')}`, { name: key });
    }
    if (value === null) continue;
    out.set(o!.key as ConfigKey, value);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Value parsers: throw Problem with what is wrong and how to fix it.

function text(v: unknown, expected: string): string {
  if (typeof v !== 'string') throw new Problem(`must be a string (${expected}), not ${typeName(v)}`);
  if (v.trim() === '') throw new Problem(`is empty; give ${expected}`);
  return v.trim();
}

const HOSTNAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$/i;

function parseListen(s: string): ListenAddress {
  const example = 'e.g. 127.0.0.1:7700, localhost:7700 or [::1]:7700';
  let host: string;
  let port: string;
  const bracketed = /^\[([^\]]*)\]:(.*)$/.exec(s);
  if (bracketed) {
    host = bracketed[1]!;
    port = bracketed[2]!;
    if (!isIPv6(host)) throw new Problem(`${JSON.stringify(host)} is not an IPv6 address; use HOST:PORT, ${example}`);
  } else {
    const colon = s.lastIndexOf(':');
    if (colon < 0) throw new Problem(`has no port; use HOST:PORT, ${example}`);
    host = s.slice(0, colon);
    port = s.slice(colon + 1);
    if (host === '') throw new Problem(`has no host; name the interface, e.g. 127.0.0.1:${port || '7700'} (or 0.0.0.0:${port || '7700'} for every interface)`);
    if (host.includes(':')) throw new Problem(`an IPv6 address goes in brackets: [${host}]:${port}`);
    if (/^[\d.]+$/.test(host) ? !isIPv4(host) : !HOSTNAME.test(host)) throw new Problem(`${JSON.stringify(host)} is not an IP address or host name; use HOST:PORT, ${example}`);
  }
  if (!/^\d{1,5}$/.test(port) || Number(port) > 65535) throw new Problem(`port ${JSON.stringify(port)} is not a number from 0 to 65535; use HOST:PORT, ${example}`);
  return { host, port: Number(port) };
}

function parsePeers(v: unknown, ctx: ParseContext): Record<string, string> {
  const peers: Record<string, string> = Object.create(null) as Record<string, string>;
  const example = 'e.g. node-2=ws://10.0.0.2:7700,node-3=wss://node-3.example:7700';
  let entries: Array<[string, unknown]>;
  if (typeof v === 'string') {
    entries = [];
    for (const part of v.split(',')) {
      const entry = part.trim();
      if (entry === '') continue;
      const eq = entry.indexOf('=');
      if (eq < 0) throw new Problem(`entry ${JSON.stringify(entry)} is not NAME=URL; use NAME=URL,..., ${example}`);
      entries.push([entry.slice(0, eq).trim(), entry.slice(eq + 1).trim()]);
    }
  } else if (typeof v === 'object' && v !== null && !Array.isArray(v) && ctx.source === 'file') {
    entries = Object.entries(v as Record<string, unknown>);
  } else {
    throw new Problem(`must be ${ctx.source === 'file' ? 'a mapping of NAME: URL or ' : ''}a string of NAME=URL,..., ${example}; not ${typeName(v)}`);
  }
  for (const [name, url] of entries) {
    if (!NAME_PATTERN.test(name)) {
      throw new Problem(`peer name ${JSON.stringify(name)} is not a valid node name; use 1-63 characters of a-z, 0-9, _ and -, starting with a letter or digit`);
    }
    if (Object.hasOwn(peers, name)) throw new Problem(`peer "${name}" is listed twice; keep one URL per peer`);
    if (typeof url !== 'string') throw new Problem(`peer "${name}" has ${typeName(url)} as its URL; use a ws:// or wss:// URL`);
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new Problem(`peer "${name}" has URL ${JSON.stringify(url)}, which is not a URL; use ws://HOST:PORT or wss://HOST:PORT`);
    }
    if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:') {
      throw new Problem(`peer "${name}" has URL ${JSON.stringify(url)}; a peer is reached over WebSocket: use ws://HOST:PORT or wss://HOST:PORT`);
    }
    if (parsed.username || parsed.password) {
      throw new Problem(`peer "${name}" has credentials in its URL; remove them — peers authenticate with the cluster secret (--secret-file / SLUICE_SECRET)`);
    }
    peers[name] = url;
  }
  return peers;
}

function parseStore(s: string): StoreConfig {
  const forms = 'use file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX?endpoint=http://HOST:PORT';
  let url: URL;
  try {
    url = new URL(s);
  } catch {
    throw new Problem(`not a URL; ${forms}${s.startsWith('/') ? ` (e.g. file://${s})` : ''}`);
  }
  if (url.protocol === 'file:') {
    if (url.host !== '' && url.host !== 'localhost') {
      throw new Problem(`a file URL needs three slashes and an absolute path: file:///${url.host}${url.pathname === '/' ? '' : url.pathname}`);
    }
    if (url.search || url.hash) throw new Problem('a file store URL takes no ?query or #fragment; use file:///ABSOLUTE/PATH');
    const path = fileURLToPath(url);
    if (path === '/') throw new Problem('the store cannot be the root directory; use a directory of its own, e.g. file:///var/lib/sluice/store');
    return { kind: 'file', path };
  }
  if (url.protocol !== 's3:') throw new Problem(`${JSON.stringify(url.protocol.replace(/:$/, ''))} is not a store kind; ${forms}`);
  if (url.username || url.password) {
    throw new Problem('credentials do not go in the store URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile / IAM role) instead');
  }
  if (url.port) throw new Problem(`the bucket cannot have a port; put the server's address in ?endpoint=http://HOST:${url.port}`);
  const bucket = url.hostname;
  if (bucket === '') throw new Problem(`names no bucket; use s3://BUCKET/PREFIX`);
  const bucketProblem = checkBucket(bucket);
  if (bucketProblem) throw new Problem(`bucket ${JSON.stringify(bucket)} ${bucketProblem}`);
  if (url.hash) throw new Problem('an s3 store URL takes no #fragment');
  let prefix: string;
  try {
    prefix = decodeURIComponent(url.pathname).replace(/^\/+/, '');
  } catch {
    throw new Problem('the prefix is not valid percent-encoding');
  }
  if (prefix !== '' && !prefix.endsWith('/')) prefix += '/';

  const allowed = ['endpoint', 'region', 'forcePathStyle'];
  const seen = new Set<string>();
  for (const key of url.searchParams.keys()) {
    if (!allowed.includes(key)) {
      const hint = didYouMean(key, allowed);
      throw new Problem(`unknown parameter ${JSON.stringify(key)}${hint ? ` (did you mean "${hint}"?)` : ''}; allowed: ${allowed.join(', ')}`);
    }
    if (seen.has(key)) throw new Problem(`parameter "${key}" is given twice; keep one`);
    seen.add(key);
  }
  const store: { kind: 's3'; bucket: string; prefix: string; endpoint?: string; region?: string; forcePathStyle: boolean } = { kind: 's3', bucket, prefix, forcePathStyle: false };
  const endpoint = url.searchParams.get('endpoint');
  if (endpoint !== null) {
    let e: URL;
    try {
      e = new URL(endpoint);
    } catch {
      throw new Problem(`endpoint ${JSON.stringify(endpoint)} is not a URL; use http://HOST:PORT or https://HOST`);
    }
    if (e.protocol !== 'http:' && e.protocol !== 'https:') throw new Problem(`endpoint ${JSON.stringify(endpoint)} must be an http:// or https:// URL`);
    if (e.username || e.password) throw new Problem('credentials do not go in the endpoint URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead');
    if (e.search || e.hash) throw new Problem(`endpoint ${JSON.stringify(endpoint)} must not have a ?query or #fragment (percent-encode ? and & inside the store URL)`);
    store.endpoint = endpoint;
  }
  const region = url.searchParams.get('region');
  if (region !== null) {
    if (!REGION.test(region)) throw new Problem(`region ${JSON.stringify(region)} is not a region name; use e.g. us-east-1`);
    store.region = region;
  }
  const pathStyle = url.searchParams.get('forcePathStyle');
  if (pathStyle === null) store.forcePathStyle = endpoint !== null;
  else if (pathStyle === 'true' || pathStyle === '1') store.forcePathStyle = true;
  else if (pathStyle === 'false' || pathStyle === '0') store.forcePathStyle = false;
  else throw new Problem(`forcePathStyle ${JSON.stringify(pathStyle)} must be true or false`);
  return store;
}

/** Why `bucket` breaks S3's bucket naming rules, or undefined. */
function checkBucket(bucket: string): string | undefined {
  const rules = 'S3 bucket names are 3-63 characters of a-z, 0-9, . and -, starting and ending with a letter or digit';
  if (bucket.length < 3 || bucket.length > 63) return `is ${bucket.length} characters long; ${rules}`;
  if (!/^[a-z0-9][a-z0-9.-]*[a-z0-9]$/.test(bucket)) return `is not a valid bucket name; ${rules}`;
  if (bucket.includes('..')) return 'has two dots in a row; S3 bucket names cannot';
  if (isIPv4(bucket)) return 'looks like an IP address; S3 bucket names cannot (put the server in ?endpoint=http://HOST:PORT)';
  if (bucket.startsWith('xn--') || bucket.startsWith('sthree-')) return 'starts with a prefix S3 reserves (xn--, sthree-)';
  if (bucket.endsWith('-s3alias') || bucket.endsWith('--ol-s3')) return 'ends with a suffix S3 reserves (-s3alias, --ol-s3)';
  return undefined;
}

/** The shared parsers (transports/units.ts), their complaint made a Problem of this option. */
function parseSize(v: unknown, min: number, max: number): number {
  return asProblem(() => parseSizeValue(v, min, max));
}

function parseDuration(v: unknown, base: 'ms' | 's', min: number, max: number, usage: string): number {
  return asProblem(() => parseDurationValue(v, base, min, max, usage));
}

function asProblem<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof RequestError && err.code === ErrorCodes.INVALID) throw new Problem(err.message);
    throw err;
  }
}

function parseCount(v: unknown, min: number, max: number): number {
  let n: number;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string' && /^\s*\d+\s*$/.test(v)) n = Number(v);
  else throw new Problem(`not a whole number; use a number from ${min} to ${max}`);
  if (!Number.isInteger(n) || n < min || n > max) throw new Problem(`is out of range; use a whole number from ${min} to ${max}`);
  return n;
}

/** The host name made a valid node name: "Node_1.Example.COM" → "node_1-example-com". */
function defaultNodeName(host: string): string {
  return toName(host) || 'node';
}

function toName(s: string): string {
  return s
    .toLowerCase()
    .replace(/[^a-z0-9_-]+/g, '-')
    .replace(/^[-_]+/, '')
    .slice(0, 63)
    .replace(/[-_]+$/, '');
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return `a ${typeof v}`;
}

function showValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 100 ? `${v.slice(0, 100)}…` : v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return `(${typeName(v)})`;
}

function errText(err: unknown): string {
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  const message = err instanceof Error ? err.message : String(err);
  return typeof code === 'string' && !message.startsWith(code) ? `${code}: ${message}` : message;
}

function wrap(s: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of s.split(/\s+/)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  if (line) lines.push(line);
  return lines;
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    for (const key of Reflect.ownKeys(value)) deepFreeze((value as Record<PropertyKey, unknown>)[key]);
    Object.freeze(value);
  }
  return value;
}
