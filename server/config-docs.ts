/**
 * The configuration reference (docs/configuration.md) and the JSON Schema of the config file
 * (docs/sluice-config.schema.json), made from the option rows (`CONFIG_OPTIONS` in config.ts),
 * like `sluice daemon --help`. Pure: the strings only; `npm run docs:config`
 * (scripts/gen-config-docs.ts) writes them, and test/unit/config-docs-generated.test.ts fails
 * when the committed files differ from what these functions make.
 */
import { CONFIG_OPTIONS, optionText, type ConfigOption, type JsonSchema } from './config.js';

/** Where the generated files go, relative to the repository root. */
export const CONFIG_REFERENCE_PATH = 'docs/configuration.md';
export const CONFIG_SCHEMA_PATH = 'docs/sluice-config.schema.json';
export const REGENERATE = 'npm run docs:config';

/** A size in a config file's string form, as transports/units.ts parseSize reads it (bounds aside). */
export const SIZE_PATTERN = '^\\s*[0-9]+(\\.[0-9]+)?\\s*([Bb]|[Kk][Ii][Bb]|[Mm][Ii][Bb]|[Gg][Ii][Bb])?\\s*$';
/** A duration in a config file's string form, as transports/units.ts parseDuration reads it (bounds aside). */
export const DURATION_PATTERN = '^\\s*[0-9]+(\\.[0-9]+)?\\s*([Mm][Ss]|[SsMmHhDd])?\\s*$';
/** A count in a config file's string form. */
export const COUNT_PATTERN = '^\\s*[0-9]+\\s*$';

/** What kind of value an option takes, in words; undefined for text (its `accepted` says it). */
function kindText(o: ConfigOption): string | undefined {
  switch (o.kind) {
    case 'config':
      return 'the path of a JSON or YAML file';
    case 'size':
      return 'a size';
    case 'duration':
      return 'a duration';
    case 'count':
      return 'a whole number';
    case 'enum':
      return `one of ${o.values.map((v) => code(v)).join(', ')}`;
    case 'text':
      return undefined;
  }
}

/** Prose for Markdown: no HTML. */
function prose(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function code(s: string): string {
  return s.includes('`') ? `\`\` ${s} \`\`` : `\`${s}\``;
}

function cell(s: string): string {
  return s.replace(/\|/g, '\\|');
}

function shownDefault(o: ConfigOption): string {
  const t = optionText(o);
  return t.literal ? code(t.default) : prose(t.default);
}

/** docs/configuration.md */
export function configReference(): string {
  const out: string[] = [
    `<!-- Generated from the option rows in server/config.ts (CONFIG_OPTIONS) by \`${REGENERATE}\`; do not edit by hand. test/unit/config-docs-generated.test.ts fails when this file is stale. -->`,
    '',
    '# Configuration',
    '',
    'The options of `sluice daemon`, the per-node forwarding daemon. Each is set by a flag, an',
    'environment variable or a key in the config file (`--config FILE`); a flag wins over the',
    'environment, the environment over the file, the file over the built-in default.',
    '',
    '- Every value given is checked once, at start, even one a higher source overrides. A bad one',
    '  stops the daemon with `SLUICE_CONFIG` (exit status 2) and a message naming the option as it was',
    '  written (`--relay-buffer`, `SLUICE_RELAY_BUFFER`, or `relayBufferBytes` with the file\'s path)',
    '  and the fix: `--relay-buffer "8MB": not a size; use bytes or a number with KiB, MiB or GiB (e.g. 8MiB)`.',
    '- An empty environment variable counts as not set; so does a `null` value in the config file.',
    '- **Sizes** are bytes, or a number with `KiB`, `MiB` or `GiB` (`64KiB`, `8MiB`, `1.5GiB`;',
    '  case-insensitive). `8MB` is refused: say which of 10^6 and 2^20 you mean.',
    '- **Durations** are a number with `ms`, `s`, `m`, `h` or `d` (`500ms`, `30s`, `24h`); a plain number',
    '  is in the option\'s own unit, which its file key names (`attachTimeoutMs`, `runTtlSeconds`).',
    `- **The config file** (JSON or YAML) can be checked against [the JSON Schema](${CONFIG_SCHEMA_PATH.replace(/^docs\//, '')})`,
    '  (draft 2020-12); an editor with YAML support reads it from a first line',
    `  \`# yaml-language-server: $schema=<path or URL of ${CONFIG_SCHEMA_PATH.replace(/^docs\//, '')}>\`.`,
    '',
    '## Options',
    '',
    '| option | environment | file key | default |',
    '| --- | --- | --- | --- |',
  ];
  for (const o of CONFIG_OPTIONS) {
    out.push(`| [${cell(code(`${o.flag} ${o.arg}`))}](#${o.flag}) | ${code(o.env)} | ${o.fileKey ? code(o.fileKey) : '—'} | ${cell(shownDefault(o))} |`);
  }
  out.push('', '`sluice daemon --help` prints the same, made from the same rows.');
  for (const o of CONFIG_OPTIONS) {
    const t = optionText(o);
    out.push('', `### ${code(o.flag)}`, '', prose(o.describe), '');
    out.push(`- flag: ${code(`${o.flag} ${o.arg}`)}`);
    out.push(`- environment: ${code(o.env)}`);
    out.push(`- file key: ${o.fileKey ? code(o.fileKey) : 'none (a config file cannot name another one)'}`);
    const kind = kindText(o);
    if (kind) out.push(`- value: ${kind}`);
    out.push(`- default: ${shownDefault(o)}`);
    if (t.accepted && o.kind !== 'enum') out.push(`- accepted: ${o.kind === 'text' ? prose(t.accepted) : code(t.accepted)}`);
    if (t.unit) out.push(`- unit: ${prose(t.unit)}`);
  }
  out.push('');
  return out.join('\n');
}

/** The JSON Schema of one file key's value. */
function valueSchema(o: Exclude<ConfigOption, { kind: 'config' }>): JsonSchema {
  switch (o.kind) {
    case 'size':
      return { anyOf: [{ type: 'integer', minimum: o.min, maximum: o.max }, { type: 'string', pattern: SIZE_PATTERN }] };
    case 'duration':
      return { anyOf: [{ type: 'integer', minimum: o.min, maximum: o.max }, { type: 'string', pattern: DURATION_PATTERN }] };
    case 'count':
      return { anyOf: [{ type: 'integer', minimum: o.min, maximum: o.max }, { type: 'string', pattern: COUNT_PATTERN }] };
    case 'enum':
      return { type: 'string', enum: [...o.values] };
    case 'text':
      return o.schema;
  }
}

/** The default as a file value, when there is one to show. */
function fileDefault(o: Exclude<ConfigOption, { kind: 'config' }>): unknown {
  if (o.kind !== 'text') return o.default;
  return typeof o.default === 'function' || o.default === undefined ? undefined : o.default;
}

/** docs/sluice-config.schema.json, as an object. */
export function configSchema(): JsonSchema {
  const properties: Record<string, JsonSchema> = {};
  for (const o of CONFIG_OPTIONS) {
    if (o.kind === 'config') continue;
    const t = optionText(o);
    const words = [`${o.flag} ${o.arg}, ${o.env}.`, o.describe, `Default: ${t.default}.`];
    if (t.accepted) words.push(`Accepted: ${t.accepted}.`);
    if (t.unit) words.push(`Unit: ${t.unit}.`);
    const fallback = fileDefault(o);
    properties[o.fileKey] = { description: words.join(' '), ...(fallback === undefined ? {} : { default: fallback }), ...valueSchema(o) };
  }
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $comment: `Generated from the option rows in server/config.ts by \`${REGENERATE}\`; do not edit by hand.`,
    title: 'Sluice daemon config file',
    description:
      'The file named by sluice daemon --config FILE (or SLUICE_CONFIG), JSON or YAML. Every key is optional; the environment and the flags override it. Sizes and durations may be written as numbers (bytes; the unit the key names) or as strings with units; their bounds hold for both, but only the numbers are checked against them here (the daemon checks both). The daemon also takes null for a key (not set).',
    type: 'object',
    additionalProperties: false,
    properties,
  };
}

/** docs/sluice-config.schema.json, as the file holds it. */
export function configSchemaText(): string {
  return `${JSON.stringify(configSchema(), null, 2)}\n`;
}
