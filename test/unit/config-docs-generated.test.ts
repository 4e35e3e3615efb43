/**
 * The files made from the option rows (server/config.ts) are the ones committed: the reference
 * docs/configuration.md and the config file's JSON Schema docs/sluice-config.schema.json. Both are
 * made again here, in memory, and compared; a stale one fails with what to run. The schema is a
 * valid draft 2020-12 schema that agrees with the loader on sample files (the deployment's own
 * included), and every row's default is a value its own parser accepts.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { CONFIG_OPTIONS, loadConfig, optionText, type ConfigOption, type LoadConfigOptions } from '../../server/config.js';
import {
  CONFIG_REFERENCE_PATH,
  CONFIG_SCHEMA_PATH,
  COUNT_PATTERN,
  DURATION_PATTERN,
  REGENERATE,
  SIZE_PATTERN,
  configReference,
  configSchema,
  configSchemaText,
} from '../../server/config-docs.js';
import { parseDuration, parseSize } from '../../transports/units.js';

const root = fileURLToPath(new URL('../..', import.meta.url));

function committed(path: string): string | undefined {
  try {
    return readFileSync(join(root, path), 'utf8');
  } catch {
    return undefined;
  }
}

/** Why `path` is stale, or undefined when it holds exactly `expected`. */
function staleness(path: string, expected: string): string | undefined {
  const actual = committed(path);
  if (actual === expected) return undefined;
  if (actual === undefined) return `${path} is missing: run ${REGENERATE}`;
  const a = actual.split('\n');
  const e = expected.split('\n');
  let line = 0;
  while (line < a.length && line < e.length && a[line] === e[line]) line++;
  return `${path} is stale (differs from the option rows in server/config.ts at line ${line + 1}): run ${REGENERATE} and commit it`;
}

/** loadConfig on a fixed machine, with an in-memory file system. */
function load(argv: string[], files: Record<string, string> = {}, env: LoadConfigOptions['env'] = {}) {
  return loadConfig({
    argv,
    env,
    cwd: '/work',
    hostname: 'host-1',
    uid: 1000,
    readFile: (path) => {
      const content = files[path];
      if (content === undefined) throw Object.assign(new Error(`ENOENT: no such file, open '${path}'`), { code: 'ENOENT' });
      return content;
    },
  });
}

const valueOptions = CONFIG_OPTIONS.filter((o): o is Exclude<ConfigOption, { kind: 'config' }> => o.kind !== 'config');
const numeric = valueOptions.filter((o) => o.kind === 'size' || o.kind === 'duration' || o.kind === 'count');

describe('generated files', () => {
  it(`${CONFIG_REFERENCE_PATH} is what ${REGENERATE} makes`, () => {
    const stale = staleness(CONFIG_REFERENCE_PATH, configReference());
    expect(stale, stale).toBeUndefined();
  });

  it(`${CONFIG_SCHEMA_PATH} is what ${REGENERATE} makes`, () => {
    const stale = staleness(CONFIG_SCHEMA_PATH, configSchemaText());
    expect(stale, stale).toBeUndefined();
  });

  it('the reference has a row and a section for every option, with its flag, variable, file key and default', () => {
    const md = configReference();
    for (const o of CONFIG_OPTIONS) {
      expect(md).toContain(`](#${o.flag}) | \`${o.env}\` | ${o.fileKey ? `\`${o.fileKey}\`` : '—'} |`);
      expect(md).toContain(`\n### \`${o.flag}\`\n`);
      expect(md).toContain(`- flag: \`${o.flag} ${o.arg}\``);
    }
  });
});

describe('the JSON Schema of the config file', () => {
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  const validate = ajv.compile(configSchema());
  const errors = (): string => ajv.errorsText(validate.errors);

  it('is a valid draft 2020-12 schema with one property per file key and nothing else allowed', () => {
    const schema = configSchema() as { $schema: string; additionalProperties: boolean; properties: Record<string, unknown> };
    expect(schema.$schema).toBe('https://json-schema.org/draft/2020-12/schema');
    expect(schema.additionalProperties).toBe(false);
    expect(Object.keys(schema.properties)).toEqual(valueOptions.map((o) => o.fileKey));
    expect(validate({ relayBufer: '1MiB' })).toBe(false);
  });

  it("accepts the deployment's config file, which the daemon loads", () => {
    const configMap = parseYaml(readFileSync(join(root, 'deploy/kubernetes/base/configmap.yaml'), 'utf8')) as { data: Record<string, string> };
    const file = configMap.data['config.yaml']!;
    expect(validate(parseYaml(file)), errors()).toBe(true);
    const sa = { '/var/run/secrets/kubernetes.io/serviceaccount/namespace': 'sluice-system\n' };
    expect(load(['--config', '/c.yaml'], { '/c.yaml': file, ...sa }, { SLUICE_SECRET: 'a'.repeat(32), KUBERNETES_SERVICE_HOST: '10.96.0.1' }).configFile).toBe('/c.yaml');
  });

  it('accepts a file setting every key, written as a user would, and so does the daemon', () => {
    const sample: Record<string, unknown> = {
      node: 'node-1',
      dir: '/run/sluice',
      listen: '127.0.0.1:7700',
      peers: { 'node-2': 'ws://10.0.0.2:7700' },
      store: 's3://sluice-data/streams/?region=eu-west-1',
      secret: 'a-secret-of-at-least-16-bytes',
      tlsCert: '/tls/cert.pem',
      tlsKey: '/tls/key.pem',
      tlsCa: '/tls/ca.pem',
      k8sApi: 'https://10.96.0.1:443',
      k8sCredentials: '/var/run/secrets/kubernetes.io/serviceaccount',
      k8sNamespace: 'sluice-system',
      k8sService: 'sluice',
    };
    // every other key: its default as --help shows it (8MiB, 30s, info, ...)
    for (const o of valueOptions) if (!(o.fileKey in sample)) sample[o.fileKey] = optionText(o).default;
    expect(Object.keys(sample).sort()).toEqual(valueOptions.map((o) => o.fileKey).sort());
    expect(validate(sample), errors()).toBe(true);
    // the same file loads (the TLS files left out: they are read, and these do not exist)
    const { tlsCert: _c, tlsKey: _k, tlsCa: _a, ...loadable } = sample;
    const c = load(['--config', '/c.json'], { '/c.json': JSON.stringify(loadable) });
    expect(c).toMatchObject({ node: 'node-1', relayBufferBytes: 8 * 1024 * 1024, runTtlSeconds: 86_400, store: { kind: 's3', region: 'eu-west-1' } });
  });

  it('holds the numbers to the bounds the daemon holds them to', () => {
    for (const o of numeric) {
      for (const [value, ok] of [
        [o.min, true],
        [o.max, true],
        [o.min - 1, false],
        [o.max + 1, false],
      ] as const) {
        if (value < 0) continue; // a negative number is not a duration, count or size either way
        expect(validate({ [o.fileKey]: value }), `${o.fileKey}: ${value}`).toBe(ok);
        const loads = (): unknown => load(['--config', '/c.json'], { '/c.json': JSON.stringify({ [o.fileKey]: value }) });
        if (ok) expect(loads, `${o.fileKey}: ${value}`).not.toThrow();
        else expect(loads, `${o.fileKey}: ${value}`).toThrow(/out of range/);
      }
    }
  });

  it('refuses what the daemon refuses: a wrong word, a wrong type, a size in MB, a fraction of a millisecond', () => {
    expect(validate({ logLevel: 'loud' })).toBe(false);
    expect(validate({ node: ['a'] })).toBe(false);
    expect(validate({ relayBufferBytes: '8MB' })).toBe(false);
    expect(validate({ attachTimeoutMs: 100.5 })).toBe(false);
    expect(validate({ peers: { 'node-2': 'http://x' } })).toBe(false);
    expect(validate({ k8sService: 'bad.svc' })).toBe(false);
  });

  it("writes sizes, durations and counts as the parsers in transports/units.ts read them", () => {
    const size = new RegExp(SIZE_PATTERN);
    const duration = new RegExp(DURATION_PATTERN);
    const count = new RegExp(COUNT_PATTERN);
    const says = (parse: () => unknown, complaint: RegExp): boolean => {
      try {
        parse();
        return false;
      } catch (err) {
        return complaint.test((err as Error).message);
      }
    };
    for (const s of ['8MiB', '8 mib', ' 64KiB ', '1.5GiB', '1048576', '12b', '8MB', '8 M', 'lots', '-1', '1e6', '0x10', '8MiBs']) {
      expect(size.test(s), s).toBe(!says(() => parseSize(s, 0, Number.MAX_SAFE_INTEGER), /^not a size/));
    }
    for (const s of ['30s', '500MS', ' 2m ', '1.5h', '7d', '250', 'soon', '1 week', '-5s', '10sec', '3w']) {
      expect(duration.test(s), s).toBe(!says(() => parseDuration(s, 'ms', 0, Number.MAX_SAFE_INTEGER, 'x'), /^not a duration/));
    }
    for (const s of ['10', ' 10 ', 'ten', '1.5', '-1']) expect(count.test(s), s).toBe(/^\s*\d+\s*$/.test(s));
  });
});

describe("every row's default", () => {
  it.each(numeric.map((o) => [o.flag, o] as const))('%s: inside its own bounds', (_flag, o) => {
    expect(o.min).toBeLessThanOrEqual(o.default);
    expect(o.default).toBeLessThanOrEqual(o.max);
  });

  it.each(valueOptions.filter((o) => optionText(o).literal).map((o) => [o.flag, o] as const))('%s: as --help writes it, parses to the default', (_flag, o) => {
    const fromDefault = load([])[o.key];
    expect(load([o.flag, optionText(o).default])[o.key]).toEqual(fromDefault);
    if (o.kind !== 'text') expect(fromDefault).toBe(o.default);
    // and as the schema's default, in the file
    const schema = configSchema() as { properties: Record<string, { default?: unknown }> };
    const inFile = schema.properties[o.fileKey]!.default;
    if (inFile !== undefined) expect(load(['--config', '/c.json'], { '/c.json': JSON.stringify({ [o.fileKey]: inFile }) })[o.key]).toEqual(fromDefault);
  });

  it('is shown by every row: a value, or words for a computed one or none', () => {
    for (const o of CONFIG_OPTIONS) expect(optionText(o).default, o.key).not.toBe('');
  });
});
