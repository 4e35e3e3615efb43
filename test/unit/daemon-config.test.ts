/**
 * The daemon's configuration (server/config.ts): defaults < config file < environment < flags;
 * every bad value refused with SLUICE_CONFIG and a message naming the option as the user wrote
 * it; sizes and durations with units; the secret never shown; the result deeply frozen.
 */
import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ErrorCodes, RequestError } from '../../transports/index.js';
import { CONFIG_OPTIONS, configHelp, describeConfig, loadConfig, optionText, type DaemonConfig, type LoadConfigOptions } from '../../server/config.js';
import { issue } from '../helpers/certs.js';

const SECRET = 'correct-horse-battery-staple-42';

/** loadConfig with a fixed machine (host name, uid, cwd) and an in-memory file system. */
function load(argv: string[] = [], env: Record<string, string | undefined> = {}, files: Record<string, string> = {}, extra: Partial<LoadConfigOptions> = {}): DaemonConfig {
  return loadConfig({
    argv,
    env,
    readFile: (path) => {
      const content = files[path];
      if (content === undefined) throw Object.assign(new Error(`ENOENT: no such file or directory, open '${path}'`), { code: 'ENOENT' });
      return content;
    },
    cwd: '/work',
    hostname: 'Build-Host.Example.com',
    uid: 1234,
    ...extra,
  });
}

/** The error loading throws; fails the test when it loads. */
function refusal(...args: Parameters<typeof load>): RequestError {
  try {
    load(...args);
  } catch (err) {
    return err as RequestError;
  }
  throw new Error('expected the configuration to be refused');
}

describe('defaults', () => {
  it('are complete when nothing is given', () => {
    const c = load();
    expect({ ...c }).toEqual({
      node: 'build-host-example-com',
      dir: '/tmp/sluice-1234',
      listen: undefined,
      peers: {},
      store: { kind: 'file', path: '/tmp/sluice-1234/store' },
      secret: undefined,
      tlsCert: undefined,
      tlsKey: undefined,
      tlsCa: undefined,
      logLevel: 'info',
      logFormat: 'json',
      relayBufferBytes: 8 * 1024 * 1024,
      segmentBytes: 8 * 1024 * 1024,
      attachTimeoutMs: 30_000,
      peerWindowBytes: 2 * 1024 * 1024,
      memoryBudgetBytes: 256 * 1024 * 1024,
      peerHeartbeatMs: 2_000,
      runTtlSeconds: 86_400,
      maxRuns: 1000,
      maxBodyBytes: 1024 * 1024,
      graceMs: 25_000,
      bindTimeoutMs: 30_000,
      replicaMaxStreams: 8,
      ejectAfterFailures: 5,
      ejectionMs: 30_000,
      discovery: 'none',
      k8sApi: undefined,
      k8sCredentials: '/var/run/secrets/kubernetes.io/serviceaccount',
      k8sNamespace: undefined,
      k8sService: 'sluice',
      k8sResyncMs: 300_000,
      configFile: undefined,
      sources: Object.fromEntries(CONFIG_OPTIONS.filter((o) => o.key !== 'configFile').map((o) => [o.key, 'default'])),
    });
  });

  it('put the runtime directory under XDG_RUNTIME_DIR when it is set (and absolute)', () => {
    expect(load([], { XDG_RUNTIME_DIR: '/run/user/1234' }).dir).toBe('/run/user/1234/sluice');
    expect(load([], { XDG_RUNTIME_DIR: 'relative/dir' }).dir).toBe('/tmp/sluice-1234');
  });

  it('make a valid node name from any host name', () => {
    expect(load([], {}, {}, { hostname: 'ip-10-0-0-1.ec2.internal' }).node).toBe('ip-10-0-0-1-ec2-internal');
    expect(load([], {}, {}, { hostname: '--Weird__Host--' }).node).toBe('weird__host');
    expect(load([], {}, {}, { hostname: 'x'.repeat(100) }).node).toBe('x'.repeat(63));
    expect(load([], {}, {}, { hostname: '...' }).node).toBe('node');
  });

  it('keep the default store inside the configured directory', () => {
    expect(load(['--dir', '/srv/sluice']).store).toEqual({ kind: 'file', path: '/srv/sluice/store' });
  });
});

describe('precedence: flag > environment > file > default', () => {
  const files = {
    '/etc/sluice.yaml': 'node: from-file\nlogLevel: warn\nrelayBufferBytes: 2MiB\nmaxRuns: 10\nlisten: 127.0.0.1:1000\n',
  };
  const env = { SLUICE_CONFIG: '/etc/sluice.yaml', SLUICE_NODE: 'from-env', SLUICE_LOG_LEVEL: 'debug', SLUICE_RELAY_BUFFER: '4MiB' };

  it('takes the file over the defaults', () => {
    const c = load([], { SLUICE_CONFIG: '/etc/sluice.yaml' }, files);
    expect([c.node, c.logLevel, c.relayBufferBytes, c.maxRuns]).toEqual(['from-file', 'warn', 2 * 1024 * 1024, 10]);
    expect(c.listen).toEqual({ host: '127.0.0.1', port: 1000 });
    expect(c.configFile).toBe('/etc/sluice.yaml');
    expect(c.sources).toMatchObject({ node: 'file', logLevel: 'file', maxRuns: 'file', dir: 'default' });
  });

  it('takes the environment over the file', () => {
    const c = load([], env, files);
    expect([c.node, c.logLevel, c.relayBufferBytes, c.maxRuns]).toEqual(['from-env', 'debug', 4 * 1024 * 1024, 10]);
    expect(c.sources).toMatchObject({ node: 'env', logLevel: 'env', relayBufferBytes: 'env', maxRuns: 'file' });
  });

  it('takes flags over the environment', () => {
    const c = load(['--node', 'from-flag', '--log-level=error', '--relay-buffer', '1MiB'], env, files);
    expect([c.node, c.logLevel, c.relayBufferBytes, c.maxRuns]).toEqual(['from-flag', 'error', 1024 * 1024, 10]);
    expect(c.sources).toMatchObject({ node: 'flag', logLevel: 'flag', relayBufferBytes: 'flag', maxRuns: 'file' });
  });

  it('takes --config over SLUICE_CONFIG', () => {
    const c = load(['--config', 'local.json'], { SLUICE_CONFIG: '/etc/sluice.yaml' }, { ...files, '/work/local.json': '{ "node": "from-json" }' });
    expect(c.node).toBe('from-json');
    expect(c.configFile).toBe('/work/local.json');
  });

  it('lets the last of a repeated flag win', () => {
    expect(load(['--node', 'first', '--node', 'second']).node).toBe('second');
  });

  it('treats an empty environment variable as not set', () => {
    expect(load([], { SLUICE_NODE: '', SLUICE_LISTEN: '' }).node).toBe('build-host-example-com');
  });

  it('treats a null value in the file as not set', () => {
    expect(load(['--config', '/c.yaml'], {}, { '/c.yaml': 'listen:\nnode: n1\n' }).listen).toBeUndefined();
  });

  it('accepts an empty config file', () => {
    expect(load(['--config', '/empty.yaml'], {}, { '/empty.yaml': '# nothing yet\n' }).node).toBe('build-host-example-com');
  });

  it('still refuses a bad value that a higher source overrides', () => {
    const err = refusal(['--relay-buffer', '1MiB'], { SLUICE_RELAY_BUFFER: '8MB' });
    expect(err.message).toMatch(/^SLUICE_RELAY_BUFFER "8MB": not a size/);
  });
});

describe('paths', () => {
  it('resolves a relative --dir against the working directory', () => {
    expect(load(['--dir', 'run/sluice']).dir).toBe('/work/run/sluice');
    expect(load([], { SLUICE_DIR: '../elsewhere' }).dir).toBe('/elsewhere');
  });

  it('refuses a directory too long for its control socket path', () => {
    const err = refusal(['--dir', `/${'d'.repeat(99)}`]);
    expect(err.code).toBe(ErrorCodes.CONFIG);
    expect(err.message).toMatch(/^--dir "\/d+": the socket path .* would be \d+ bytes, over the Unix socket limit of 107; use a shorter directory$/);
  });

  it('says so when the default directory is the one too long', () => {
    const err = refusal([], { XDG_RUNTIME_DIR: `/${'x'.repeat(100)}` });
    expect(err.message).toMatch(/^the default --dir ".*": the socket path/);
    expect(err.details).toMatchObject({ option: 'dir', source: 'default' });
  });
});

describe('listen addresses', () => {
  it.each([
    ['127.0.0.1:7700', { host: '127.0.0.1', port: 7700 }],
    ['0.0.0.0:0', { host: '0.0.0.0', port: 0 }],
    ['localhost:65535', { host: 'localhost', port: 65535 }],
    ['[::1]:8080', { host: '::1', port: 8080 }],
    ['[fe80::1%eth0]:8080', { host: 'fe80::1%eth0', port: 8080 }],
    ['daemon.sluice.svc:80', { host: 'daemon.sluice.svc', port: 80 }],
  ])('accepts %s', (value, expected) => {
    expect(load(['--listen', value]).listen).toEqual(expected);
  });

  it.each([
    ['7700', 'has no port; use HOST:PORT'],
    [':7700', 'has no host; name the interface, e.g. 127.0.0.1:7700 (or 0.0.0.0:7700 for every interface)'],
    ['::1:8080', 'an IPv6 address goes in brackets: [::1]:8080'],
    ['localhost:70000', 'port "70000" is not a number from 0 to 65535'],
    ['localhost:http', 'port "http" is not a number'],
    ['300.1.1.1:80', '"300.1.1.1" is not an IP address or host name'],
    ['bad_host:80', '"bad_host" is not an IP address or host name'],
    ['[nope]:80', '"nope" is not an IPv6 address'],
  ])('refuses %s', (value, problem) => {
    const err = refusal([], { SLUICE_LISTEN: value });
    expect(err.code).toBe(ErrorCodes.CONFIG);
    expect(err.message).toContain(`SLUICE_LISTEN ${JSON.stringify(value)}: ${problem}`);
  });
});

describe('peers', () => {
  it('reads NAME=URL,... from a flag or the environment', () => {
    const expected = { 'node-2': 'ws://10.0.0.2:7700', 'node-3': 'wss://node-3.example:7700/sluice' };
    expect(load(['--peers', 'node-2=ws://10.0.0.2:7700, node-3=wss://node-3.example:7700/sluice']).peers).toEqual(expected);
    expect(load([], { SLUICE_PEERS: 'node-2=ws://10.0.0.2:7700,node-3=wss://node-3.example:7700/sluice,' }).peers).toEqual(expected);
  });

  it('adds up repeated --peers flags', () => {
    expect(load(['--peers', 'a=ws://a:1', '--peers', 'b=ws://b:1']).peers).toEqual({ a: 'ws://a:1', b: 'ws://b:1' });
  });

  it('reads a mapping or the same string from the file', () => {
    const files = { '/m.yaml': 'peers:\n  a: ws://a:1\n  b: wss://b:2\n', '/s.yaml': 'peers: a=ws://a:1,b=wss://b:2\n' };
    expect(load(['--config', '/m.yaml'], {}, files).peers).toEqual({ a: 'ws://a:1', b: 'wss://b:2' });
    expect(load(['--config', '/s.yaml'], {}, files).peers).toEqual({ a: 'ws://a:1', b: 'wss://b:2' });
  });

  it("skips this node's own entry, so every node can share one list", () => {
    expect(load(['--node', 'a', '--peers', 'a=ws://a:1,b=ws://b:1']).peers).toEqual({ b: 'ws://b:1' });
  });

  it.each([
    ['b=http://b:1', 'peer "b" has URL "http://b:1"; a peer is reached over WebSocket: use ws://HOST:PORT or wss://HOST:PORT'],
    ['B=ws://b:1', 'peer name "B" is not a valid node name'],
    ['b', 'entry "b" is not NAME=URL'],
    ['b=ws://b:1,b=ws://c:1', 'peer "b" is listed twice'],
    ['b=not a url', 'peer "b" has URL "not a url", which is not a URL'],
    ['b=ws://user:pw@b:1', 'peer "b" has credentials in its URL; remove them'],
  ])('refuses %s', (value, problem) => {
    expect(refusal(['--peers', value]).message.startsWith(`--peers ${JSON.stringify(value)}: ${problem}`)).toBe(true);
  });
});

describe('stores', () => {
  it.each([
    ['file:///var/lib/sluice/store', { kind: 'file', path: '/var/lib/sluice/store' }],
    ['file://localhost/var/store', { kind: 'file', path: '/var/store' }],
    ['s3://sluice-data', { kind: 's3', bucket: 'sluice-data', prefix: '', region: 'us-east-1', forcePathStyle: false }],
    ['s3://sluice-data/runs/prod', { kind: 's3', bucket: 'sluice-data', prefix: 'runs/prod/', region: 'us-east-1', forcePathStyle: false }],
    [
      's3://sluice.data/runs/?endpoint=http://127.0.0.1:9000',
      { kind: 's3', bucket: 'sluice.data', prefix: 'runs/', endpoint: 'http://127.0.0.1:9000', region: 'us-east-1', forcePathStyle: true },
    ],
    [
      's3://b12/p?endpoint=https://rgw.example&region=eu-west-1&forcePathStyle=false',
      { kind: 's3', bucket: 'b12', prefix: 'p/', endpoint: 'https://rgw.example', region: 'eu-west-1', forcePathStyle: false },
    ],
  ])('parses %s', (value, expected) => {
    expect(load(['--store', value]).store).toEqual(expected);
  });

  it("takes an S3 store's region from its URL, else AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1", () => {
    const region = (env: Record<string, string>, url = 's3://bucket/p') => (load(['--store', url], env).store as { region?: string }).region;
    expect(region({})).toBe('us-east-1');
    expect(region({ AWS_DEFAULT_REGION: 'eu-west-2' })).toBe('eu-west-2');
    expect(region({ AWS_REGION: 'ap-south-1', AWS_DEFAULT_REGION: 'eu-west-2' })).toBe('ap-south-1');
    expect(region({ AWS_REGION: '', AWS_DEFAULT_REGION: 'eu-west-2' })).toBe('eu-west-2');
    expect(region({ AWS_REGION: 'ap-south-1' }, 's3://bucket/p?region=eu-central-1')).toBe('eu-central-1');
    // a file store has no region, whatever the environment says
    expect(load([], { AWS_REGION: 'ap-south-1' }).store).toEqual({ kind: 'file', path: '/tmp/sluice-1234/store' });
    expect(load([], { AWS_REGION: 'Not A Region' }).store.kind).toBe('file');
  });

  it('refuses a bad AWS_REGION for an S3 store, naming the variable', () => {
    const err = refusal(['--store', 's3://bucket/p'], { AWS_REGION: 'EU West' });
    expect(err.code).toBe(ErrorCodes.CONFIG);
    expect(err.message).toBe('AWS_REGION "EU West": not a region name; use e.g. us-east-1, or give the store\'s region in its URL (?region=REGION)');
    expect(err.details).toEqual({ option: 'store', source: 'env', name: 'AWS_REGION' });
  });

  it.each([
    ['/var/store', 'not a URL; use file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX?endpoint=http://HOST:PORT (e.g. file:///var/store)'],
    ['file://var/store', 'a file URL needs three slashes and an absolute path: file:///var/store'],
    ['file:///', 'the store cannot be the root directory'],
    ['http://minio:9000/bucket', '"http" is not a store kind'],
    ['s3://Sluice_Data/p', 'bucket "Sluice_Data" is not a valid bucket name; S3 bucket names are 3-63 characters'],
    ['s3://ab', 'bucket "ab" is 2 characters long'],
    ['s3://a..b', 'bucket "a..b" has two dots in a row'],
    ['s3://192.168.1.10', 'bucket "192.168.1.10" looks like an IP address'],
    ['s3://bucket:9000/p', "the bucket cannot have a port; put the server's address in ?endpoint=http://HOST:9000"],
    ['s3://key:secret@bucket', 'credentials do not go in the store URL; set AWS_ACCESS_KEY_ID'],
    ['s3://bucket?endpiont=http://x:1', 'unknown parameter "endpiont" (did you mean "endpoint"?); allowed: endpoint, region, forcePathStyle'],
    ['s3://bucket?endpoint=ftp://x', 'endpoint "ftp://x" must be an http:// or https:// URL'],
    ['s3://bucket?endpoint=minio:9000x', 'endpoint "minio:9000x" must be an http:// or https:// URL'],
    ['s3://bucket?endpoint=nope', 'endpoint "nope" is not a URL'],
    ['s3://bucket?forcePathStyle=yes', 'forcePathStyle "yes" must be true or false'],
    ['s3://bucket?region=EU%20West', 'region "EU West" is not a region name'],
  ])('refuses %s', (value, problem) => {
    const err = refusal([], { SLUICE_STORE: value });
    expect(err.code).toBe(ErrorCodes.CONFIG);
    expect(err.message).toContain(`SLUICE_STORE ${JSON.stringify(value)}: ${problem}`);
  });
});

describe('sizes', () => {
  it.each([
    ['8MiB', 8 * 1024 * 1024],
    ['8 MiB', 8 * 1024 * 1024],
    ['8mib', 8 * 1024 * 1024],
    ['64KiB', 64 * 1024],
    ['1GiB', 1024 ** 3],
    ['1.5MiB', 1.5 * 1024 * 1024],
    ['1048576', 1024 * 1024],
  ])('reads --relay-buffer %s', (value, bytes) => {
    expect(load(['--relay-buffer', value]).relayBufferBytes).toBe(bytes);
  });

  it('reads a number in the file as bytes', () => {
    expect(load(['--config', '/c.json'], {}, { '/c.json': '{"relayBufferBytes": 131072, "maxBodyBytes": "4KiB"}' })).toMatchObject({ relayBufferBytes: 131072, maxBodyBytes: 4096 });
  });

  const usage = 'use bytes or a number with KiB, MiB or GiB (e.g. 8MiB)';
  it.each([
    ['8MB', `not a size; ${usage}`],
    ['8 mb', `not a size; ${usage}`],
    ['lots', `not a size; ${usage}`],
    ['-1', `not a size; ${usage}`],
    ['1.5', `not a whole number of bytes; ${usage}`],
    ['32KiB', 'is out of range; use 64KiB to 1GiB'],
    ['2GiB', 'is out of range; use 64KiB to 1GiB'],
  ])('refuses --relay-buffer %s', (value, problem) => {
    expect(refusal(['--relay-buffer', value]).message).toBe(`--relay-buffer ${JSON.stringify(value)}: ${problem}`);
  });

  it('keeps --max-body within 1KiB..16MiB', () => {
    expect(load(['--max-body', '16MiB']).maxBodyBytes).toBe(16 * 1024 * 1024);
    expect(refusal(['--max-body', '512']).message).toBe('--max-body "512": is out of range; use 1KiB to 16MiB');
    expect(refusal([], { SLUICE_MAX_BODY: '32MiB' }).message).toBe('SLUICE_MAX_BODY "32MiB": is out of range; use 1KiB to 16MiB');
  });
});

describe('durations', () => {
  it.each([
    ['30s', 30_000],
    ['500ms', 500],
    ['2m', 120_000],
    ['1h', 3_600_000],
    ['1.5s', 1500],
    ['250', 250],
  ])('reads --attach-timeout %s as milliseconds', (value, ms) => {
    expect(load(['--attach-timeout', value]).attachTimeoutMs).toBe(ms);
  });

  it('reads --bind-timeout, where 0 turns late binding off', () => {
    expect(load(['--bind-timeout', '0']).bindTimeoutMs).toBe(0);
    expect(load([], { SLUICE_BIND_TIMEOUT: '2m' }).bindTimeoutMs).toBe(120_000);
    expect(load(['--config', '/c.yaml'], {}, { '/c.yaml': 'bindTimeoutMs: 500ms\n' }).bindTimeoutMs).toBe(500);
  });

  it.each([
    ['24h', 86_400],
    ['90m', 5400],
    ['30s', 30],
    ['7d', 604_800],
    ['3600', 3600],
    ['20000ms', 20],
  ])('reads --run-ttl %s as seconds', (value, seconds) => {
    expect(load(['--run-ttl', value]).runTtlSeconds).toBe(seconds);
  });

  it('reads numbers in the file in the option unit', () => {
    const c = load(['--config', '/c.yaml'], {}, { '/c.yaml': 'attachTimeoutMs: 1500\nrunTtlSeconds: 60\n' });
    expect([c.attachTimeoutMs, c.runTtlSeconds]).toEqual([1500, 60]);
  });

  it.each([
    ['--attach-timeout', 'soon', 'not a duration; use milliseconds or a number with ms, s, m or h (e.g. 30s)'],
    ['--attach-timeout', '50ms', 'is out of range; use 100ms to 1h'],
    ['--attach-timeout', '2h', 'is out of range; use 100ms to 1h'],
    ['--attach-timeout', '0.5ms', 'is out of range; use 100ms to 1h'],
    ['--attach-timeout', '100.5', 'is not a whole number of milliseconds'],
    ['--run-ttl', '5s', 'is out of range; use 10s to 30d'],
    ['--run-ttl', '31d', 'is out of range; use 10s to 30d'],
    ['--run-ttl', '10500ms', 'is not a whole number of seconds; use seconds or a number with s, m, h or d (e.g. 24h)'],
    ['--run-ttl', '1 week', 'not a duration; use seconds or a number with s, m, h or d (e.g. 24h)'],
  ])('refuses %s %s', (flag, value, problem) => {
    expect(refusal([flag, value]).message).toContain(`${flag} ${JSON.stringify(value)}: ${problem}`);
  });
});

describe('counts and levels', () => {
  it('reads --max-runs and --log-level', () => {
    expect(load(['--max-runs', '100000', '--log-level', 'silent'])).toMatchObject({ maxRuns: 100_000, logLevel: 'silent' });
  });

  it.each([
    [['--max-runs', '0'], '--max-runs "0": is out of range; use a whole number from 1 to 100000'],
    [['--max-runs', '100001'], '--max-runs "100001": is out of range; use a whole number from 1 to 100000'],
    [['--max-runs', 'ten'], '--max-runs "ten": not a whole number; use a number from 1 to 100000'],
    [['--log-level', 'warning'], '--log-level "warning": not a log level (did you mean "warn"?); use one of fatal, error, warn, info, debug, trace, silent'],
    [['--log-level', 'verbose'], '--log-level "verbose": not a log level; use one of fatal, error, warn, info, debug, trace, silent'],
    [['--node', 'Node 1'], '--node "Node 1": not a valid node name; use 1-63 characters of a-z, 0-9, _ and -, starting with a letter or digit (e.g. "node-1")'],
  ])('refuses %j', (argv, message) => {
    expect(refusal(argv).message).toBe(message);
  });
});

describe('every validation error names the option as the user wrote it', () => {
  const bad: Record<string, unknown> = {
    node: 'Not A Name',
    dir: `/${'d'.repeat(99)}`,
    listen: 'nowhere',
    peers: 'x=http://x',
    store: 'ftp://x',
    logLevel: 'loud',
    logFormat: 'yaml',
    relayBufferBytes: '8MB',
    segmentBytes: '1KiB',
    attachTimeoutMs: 'soon',
    peerWindowBytes: '1KiB',
    memoryBudgetBytes: '1MiB',
    peerHeartbeatMs: '10ms',
    runTtlSeconds: 'forever',
    maxRuns: 'many',
    maxBodyBytes: '1TB',
    tlsCert: '/missing/cert.pem',
    tlsKey: '/missing/key.pem',
    tlsCa: '/missing/ca.pem',
    graceMs: 'soon',
    bindTimeoutMs: '2h',
    replicaMaxStreams: '0',
    ejectAfterFailures: 'often',
    ejectionMs: '10ms',
    discovery: 'consul',
    k8sApi: 'ftp://api',
    k8sCredentials: 'a\0b',
    k8sNamespace: 'Bad_NS',
    k8sService: 'bad.svc',
    k8sResyncMs: '1ms',
  };
  const options = CONFIG_OPTIONS.filter((o) => o.key in bad);

  it('covers every option but --config and the secret', () => {
    expect(options.map((o) => o.key).sort()).toEqual(Object.keys(bad).sort());
    expect(CONFIG_OPTIONS.map((o) => o.key).filter((k) => !(k in bad)).sort()).toEqual(['configFile', 'secret']);
  });

  it.each(options.map((o) => [o.flag, o] as const))('%s, and its variable and file key', (_flag, o) => {
    const value = bad[o.key] as string;
    const fromFlag = refusal([o.flag, value]);
    expect(fromFlag.code).toBe(ErrorCodes.CONFIG);
    expect(fromFlag).toBeInstanceOf(RequestError);
    expect(fromFlag.message.startsWith(`${o.flag} ${JSON.stringify(value)}: `)).toBe(true);
    expect(fromFlag.details).toEqual({ option: o.key, source: 'flag', name: o.flag });

    const fromEnv = refusal([], { [o.env]: value });
    expect(fromEnv.message.startsWith(`${o.env} ${JSON.stringify(value)}: `)).toBe(true);
    expect(fromEnv.details).toEqual({ option: o.key, source: 'env', name: o.env });

    const fromFile = refusal(['--config', 'conf/daemon.json'], {}, { '/work/conf/daemon.json': JSON.stringify({ [o.fileKey!]: value }) });
    expect(fromFile.message.startsWith(`/work/conf/daemon.json: ${o.fileKey} ${JSON.stringify(value)}: `)).toBe(true);
    expect(fromFile.details).toEqual({ option: o.key, source: 'file', name: o.fileKey, file: '/work/conf/daemon.json' });
  });

  it('gives the example message for a size in MB', () => {
    expect(refusal(['--relay-buffer', '8MB']).message).toBe('--relay-buffer "8MB": not a size; use bytes or a number with KiB, MiB or GiB (e.g. 8MiB)');
  });

  it('says which type a file value should have', () => {
    expect(refusal(['--config', '/c.yaml'], {}, { '/c.yaml': 'node: [a, b]\n' }).message).toBe('/c.yaml: node (a list): must be a string (a node name, e.g. node-1), not a list');
    expect(refusal(['--config', '/c.yaml'], {}, { '/c.yaml': 'maxRuns: true\n' }).message).toBe('/c.yaml: maxRuns true: not a whole number; use a number from 1 to 100000');
  });
});

describe('unknown and malformed command lines', () => {
  it.each([
    [['--relay-bufer', '1MiB'], 'unknown option --relay-bufer (did you mean --relay-buffer?); sluice daemon --help lists the options'],
    [['--relayBufferBytes=1MiB'], 'unknown option --relayBufferBytes (did you mean --relay-buffer?); sluice daemon --help lists the options'],
    [['--secret', 'x'], 'unknown option --secret (did you mean --secret-file?); sluice daemon --help lists the options'],
    [['--frobnicate'], 'unknown option --frobnicate; sluice daemon --help lists the options'],
    [['-n', 'x'], 'unknown option -n; sluice daemon --help lists the options'],
    [['node-1'], 'unexpected argument "node-1": sluice daemon takes options only, e.g. --node NAME (see --help)'],
    [['--', 'extra'], 'unexpected argument "extra": sluice daemon takes options only (see --help)'],
    [['--node'], '--node needs a value: --node NAME'],
    [['--node', '--dir', '/x'], '--node needs a value: --node NAME'],
  ])('refuses %j', (argv, message) => {
    const err = refusal(argv);
    expect(err.code).toBe(ErrorCodes.CONFIG);
    expect(err.message).toBe(message);
  });

  it('refuses an empty value given with =', () => {
    expect(refusal(['--node=']).message).toBe('--node "": is empty; give a node name, e.g. node-1');
  });
});

describe('config files', () => {
  it('reads JSON as well as YAML', () => {
    expect(load(['--config', '/c.json'], {}, { '/c.json': '{"node": "j", "peers": {"b": "ws://b:1"}}' })).toMatchObject({ node: 'j', peers: { b: 'ws://b:1' } });
  });

  it.each([
    ['relayBuffer: 1MiB\n', 'unknown key "relayBuffer" (did you mean "relayBufferBytes"?); allowed keys: node, dir, listen, peers, store, secret, tlsCert, tlsKey, tlsCa, logLevel, logFormat, relayBufferBytes, segmentBytes, attachTimeoutMs, peerWindowBytes, memoryBudgetBytes, peerHeartbeatMs, runTtlSeconds, maxRuns, maxBodyBytes'],
    ['log-level: debug\n', 'unknown key "log-level" (did you mean "logLevel"?)'],
    ['SLUICE_NODE: n\n', 'unknown key "SLUICE_NODE" (did you mean "node"?)'],
    ['colour: blue\n', 'unknown key "colour"; allowed keys: node,'],
    ['config: /other.yaml\n', 'unknown key "config": a config file cannot name another one'],
    ['- node: n\n', 'a config file must be a mapping of option keys (node, dir,'],
  ])('refuses %j', (content, problem) => {
    const err = refusal(['--config', '/etc/sluice/daemon.yaml'], {}, { '/etc/sluice/daemon.yaml': content });
    expect(err.code).toBe(ErrorCodes.CONFIG);
    expect(err.message).toContain(`/etc/sluice/daemon.yaml: ${problem}`);
    expect(err.details).toMatchObject({ source: 'file', file: '/etc/sluice/daemon.yaml' });
  });

  it('names the option that pointed at a file it cannot read', () => {
    const fromFlag = refusal(['--config', 'missing.yaml']);
    expect(fromFlag.message).toMatch(/^--config "missing\.yaml": cannot read \/work\/missing\.yaml \(ENOENT: no such file/);
    expect(fromFlag.cause).toMatchObject({ code: 'ENOENT' });
    expect(refusal([], { SLUICE_CONFIG: '/nope.yaml' }).message).toMatch(/^SLUICE_CONFIG "\/nope\.yaml": cannot read \/nope\.yaml/);
  });

  it('reports a syntax error with the file, line and column', () => {
    const err = refusal(['--config', '/c.yaml'], {}, { '/c.yaml': 'node: n\npeers: {a: ws://a:1\n' });
    expect(err.code).toBe(ErrorCodes.CONFIG);
    expect(err.message).toMatch(/^\/c\.yaml: YAML syntax error at line \d+, column \d+: /);
    expect(err.details).toMatchObject({ source: 'file', file: '/c.yaml', line: expect.any(Number), column: expect.any(Number) });
    const json = refusal(['--config', '/c.json'], {}, { '/c.json': '{"node": "n",}' });
    expect(json.message).toMatch(/^\/c\.json: JSON syntax error at line 1, column 14: /);
  });
});

describe('the cluster secret', () => {
  it('comes from SLUICE_SECRET, the file key or --secret-file (trailing newline dropped)', () => {
    expect(load([], { SLUICE_SECRET: SECRET }).secret).toBe(SECRET);
    expect(load(['--config', '/c.yaml'], {}, { '/c.yaml': `secret: ${SECRET}\n` }).secret).toBe(SECRET);
    const c = load(['--secret-file', 'secret.txt'], { SLUICE_SECRET: 'another-secret-of-enough-bytes' }, { '/work/secret.txt': `${SECRET}\n` });
    expect(c.secret).toBe(SECRET);
    expect(c.sources.secret).toBe('flag');
  });

  it('is refused when shorter than 16 bytes, without being shown', () => {
    const short = 'hunter2';
    const fromEnv = refusal([], { SLUICE_SECRET: short });
    expect(fromEnv.message).toBe('SLUICE_SECRET: the secret is 7 bytes; use at least 16 random bytes (e.g. the output of `openssl rand -hex 32`)');
    const fromFile = refusal(['--config', '/c.yaml'], {}, { '/c.yaml': `secret: ${short}\n` });
    expect(fromFile.message).toBe('/c.yaml: secret: the secret is 7 bytes; use at least 16 random bytes (e.g. the output of `openssl rand -hex 32`)');
    const fromSecretFile = refusal(['--secret-file', '/s'], {}, { '/s': `${short}\n` });
    expect(fromSecretFile.message).toBe('--secret-file "/s": the secret is 7 bytes; use at least 16 random bytes (e.g. the output of `openssl rand -hex 32`)');
    for (const err of [fromEnv, fromFile, fromSecretFile]) {
      expect(err.message).not.toContain(short);
      expect(JSON.stringify(err)).not.toContain(short);
    }
  });

  it('names the secret file it cannot read', () => {
    expect(refusal(['--secret-file', '/run/secrets/none']).message).toMatch(/^--secret-file "\/run\/secrets\/none": cannot read the secret file \/run\/secrets\/none \(ENOENT/);
    expect(refusal(['--secret-file', '/empty'], {}, { '/empty': '\n' }).message).toContain('the secret is empty');
  });

  it('is redacted in toJSON, describeConfig and util.inspect', () => {
    const c = load(['--listen', '[::1]:7700'], { SLUICE_SECRET: SECRET });
    expect(JSON.stringify(c)).not.toContain(SECRET);
    expect(JSON.parse(JSON.stringify(c))).toMatchObject({ secret: '[redacted]', listen: { host: '::1', port: 7700 } });
    expect(describeConfig(c)).toMatchObject({ secret: '[redacted]', node: 'build-host-example-com', configFile: null });
    expect(inspect(c, { depth: 5 })).not.toContain(SECRET);
    expect(inspect(c)).toContain('[redacted]');
    expect(describeConfig(load()).secret).toBeNull();
  });

  it('is still there for the code that needs it', () => {
    const c = load([], { SLUICE_SECRET: SECRET });
    expect(c.secret).toBe(SECRET);
    expect({ ...c }.secret).toBe(SECRET);
  });
});

describe('TLS files', () => {
  const ca = issue({ name: 'Test CA', ca: true });
  const server = issue({ name: 'node-a', issuer: ca, altNames: ['127.0.0.1'] });
  const other = issue({ name: 'node-b', issuer: ca, altNames: ['127.0.0.1'] });
  const pem = { '/tls/ca.pem': ca.cert, '/tls/cert.pem': server.cert, '/tls/key.pem': server.key, '/work/rel/cert.pem': server.cert };
  const listen = ['--listen', '127.0.0.1:7700'];
  const all = [...listen, '--tls-cert', '/tls/cert.pem', '--tls-key', '/tls/key.pem', '--tls-ca', '/tls/ca.pem'];

  it('reads certificate, key and CA bundle from flags, the environment or the file, each file once', () => {
    const reads: string[] = [];
    const c = load(all, {}, pem, {
      readFile: (path) => {
        reads.push(path);
        return pem[path as keyof typeof pem];
      },
    });
    expect(c.tlsCert).toEqual({ path: '/tls/cert.pem', pem: server.cert });
    expect(c.tlsKey).toEqual({ path: '/tls/key.pem', pem: server.key });
    expect(c.tlsCa).toEqual({ path: '/tls/ca.pem', pem: ca.cert });
    expect(c.sources).toMatchObject({ tlsCert: 'flag', tlsKey: 'flag', tlsCa: 'flag' });
    expect(reads.sort()).toEqual(['/tls/ca.pem', '/tls/cert.pem', '/tls/key.pem']);

    const fromEnv = load(listen, { SLUICE_TLS_CERT: 'rel/cert.pem', SLUICE_TLS_KEY: '/tls/key.pem', SLUICE_TLS_CA: '/tls/ca.pem' }, pem);
    expect(fromEnv.tlsCert).toEqual({ path: '/work/rel/cert.pem', pem: server.cert });
    expect(fromEnv.sources).toMatchObject({ tlsCert: 'env', tlsKey: 'env', tlsCa: 'env' });
    const fromFile = load(['--config', '/c.yaml'], {}, { ...pem, '/c.yaml': 'listen: 127.0.0.1:7700\ntlsCert: /tls/cert.pem\ntlsKey: /tls/key.pem\ntlsCa: /tls/ca.pem\n' });
    expect([fromFile.tlsCert?.path, fromFile.tlsKey?.path, fromFile.tlsCa?.path]).toEqual(['/tls/cert.pem', '/tls/key.pem', '/tls/ca.pem']);
  });

  it('accepts a certificate followed by its chain, a CA without a certificate of its own, and ws:// and wss:// peers together', () => {
    expect(load([...listen, '--tls-cert', '/chain.pem', '--tls-key', '/tls/key.pem'], {}, { ...pem, '/chain.pem': server.cert + ca.cert }).tlsCert?.pem).toBe(server.cert + ca.cert);
    expect(load(['--tls-ca', '/tls/ca.pem', '--peers', 'b=wss://127.0.0.1:7701'], {}, pem).tlsCa?.path).toBe('/tls/ca.pem');
    expect(load([...all, '--peers', 'b=wss://127.0.0.1:7701,c=ws://127.0.0.1:7702'], {}, pem).peers).toEqual({ b: 'wss://127.0.0.1:7701', c: 'ws://127.0.0.1:7702' });
  });

  it('refuses a certificate without its key, and a key without its certificate, naming the option given and the one missing', () => {
    const noKey = refusal([...listen, '--tls-cert', '/tls/cert.pem'], {}, pem);
    expect(noKey.code).toBe(ErrorCodes.CONFIG);
    expect(noKey.message).toBe('--tls-cert "/tls/cert.pem": has no private key: also give --tls-key FILE (SLUICE_TLS_KEY, file key tlsKey), or drop --tls-cert to serve without TLS');
    expect(noKey.details).toEqual({ option: 'tlsCert', source: 'flag', name: '--tls-cert' });
    const noCert = refusal(listen, { SLUICE_TLS_KEY: '/tls/key.pem' }, pem);
    expect(noCert.message).toBe('SLUICE_TLS_KEY "/tls/key.pem": has no certificate: also give --tls-cert FILE (SLUICE_TLS_CERT, file key tlsCert), or drop --tls-key to serve without TLS');
    expect(noCert.details).toMatchObject({ option: 'tlsKey', source: 'env' });
  });

  it('refuses a certificate and key with no --listen to serve them on', () => {
    expect(refusal(['--tls-cert', '/tls/cert.pem', '--tls-key', '/tls/key.pem'], {}, pem).message).toBe(
      '--tls-cert "/tls/cert.pem": needs --listen HOST:PORT: TLS is served on the --listen port, and there is none; add --listen, or drop --tls-cert and --tls-key',
    );
  });

  it.each([
    ['--tls-cert', 'certificate'],
    ['--tls-key', 'private key'],
    ['--tls-ca', 'CA bundle'],
  ])('names the %s file it cannot read', (flag, what) => {
    const err = refusal([...all, flag, '/etc/sluice/missing.pem'], {}, pem);
    expect(err.code).toBe(ErrorCodes.CONFIG);
    expect(err.message).toMatch(new RegExp(`^${flag} "/etc/sluice/missing\\.pem": cannot read the ${what} file /etc/sluice/missing\\.pem \\(ENOENT: no such file`));
    expect(err.cause).toMatchObject({ code: 'ENOENT' });
  });

  const garbageBlock = (label: string): string => `-----BEGIN ${label}-----\nbm90IGEgY2VydGlmaWNhdGUgYXQgYWxs\n-----END ${label}-----\n`;
  it.each([
    ['--tls-cert', 'hello, I am not PEM\n', '/g.pem holds no PEM certificate (a "-----BEGIN CERTIFICATE-----" block)'],
    ['--tls-cert', server.key, '/g.pem holds no PEM certificate'],
    ['--tls-cert', garbageBlock('CERTIFICATE'), '/g.pem: certificate 1 of 1 is not a valid PEM certificate ('],
    ['--tls-cert', server.cert + garbageBlock('CERTIFICATE'), '/g.pem: certificate 2 of 2 is not a valid PEM certificate ('],
    ['--tls-key', 'hello\n', '/g.pem holds no PEM private key (a "-----BEGIN PRIVATE KEY-----" block)'],
    ['--tls-key', server.cert, '/g.pem holds no PEM private key'],
    ['--tls-key', garbageBlock('PRIVATE KEY'), '/g.pem is not a valid PEM private key ('],
    ['--tls-key', server.keyObject.export({ type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'pw' }) as string, '/g.pem holds an encrypted private key; give it unencrypted'],
    ['--tls-key', other.key, '/g.pem is not the private key of the certificate in /tls/cert.pem (the first one there); give the key that certificate was made for'],
    ['--tls-ca', '\n', '/g.pem holds no PEM certificate'],
    ['--tls-ca', ca.cert + garbageBlock('CERTIFICATE'), '/g.pem: certificate 2 of 2 is not a valid PEM certificate ('],
  ])('refuses %s with bad content (%#), naming the file', (flag, content, problem) => {
    const err = refusal([...all, flag, '/g.pem'], {}, { ...pem, '/g.pem': content });
    expect(err.code).toBe(ErrorCodes.CONFIG);
    expect(err.message.startsWith(`${flag} "/g.pem": ${problem}`), err.message).toBe(true);
  });

  it('shows the files by path only: never the key in toJSON, describeConfig or util.inspect', () => {
    const c = load(all, { SLUICE_SECRET: SECRET }, pem);
    const keyBody = server.key.split('\n')[1]!;
    expect(describeConfig(c)).toMatchObject({ tlsCert: '/tls/cert.pem', tlsKey: '/tls/key.pem', tlsCa: '/tls/ca.pem' });
    expect(JSON.stringify(c)).not.toContain(keyBody);
    expect(inspect(c, { depth: 5 })).not.toContain(keyBody);
    expect(inspect(c, { depth: 5 })).toContain('/tls/key.pem');
    expect(describeConfig(load())).toMatchObject({ tlsCert: null, tlsKey: null, tlsCa: null });
  });

  it('has the flags, variables and file keys --help shows', () => {
    const names = CONFIG_OPTIONS.filter((o) => o.key.startsWith('tls')).map((o) => [o.flag, o.env, o.fileKey]);
    expect(names).toEqual([
      ['--tls-cert', 'SLUICE_TLS_CERT', 'tlsCert'],
      ['--tls-key', 'SLUICE_TLS_KEY', 'tlsKey'],
      ['--tls-ca', 'SLUICE_TLS_CA', 'tlsCa'],
    ]);
    expect(configHelp()).toContain('  --tls-ca FILE\n');
  });
});

describe('Kubernetes discovery and the grace period', () => {
  const sa = { '/var/run/secrets/kubernetes.io/serviceaccount/namespace': 'sluice-system\n' };
  const inPod = { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443', SLUICE_SECRET: SECRET };

  it('takes the API server from the pod environment and the namespace from the service account', () => {
    const c = load(['--discovery', 'kubernetes'], inPod, sa);
    expect(c).toMatchObject({ discovery: 'kubernetes', k8sApi: 'https://10.96.0.1:443', k8sNamespace: 'sluice-system', k8sService: 'sluice' });
    expect(load([], { KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '6443' }).k8sApi).toBe('https://[fd00::1]:6443');
    expect(load(['--discovery', 'kubernetes', '--k8s-api', 'http://127.0.0.1:8001/', '--k8s-namespace', 'ns1', '--k8s-resync', '30s'], { SLUICE_SECRET: SECRET })).toMatchObject({ k8sApi: 'http://127.0.0.1:8001', k8sNamespace: 'ns1', k8sResyncMs: 30_000 });
  });

  it('refuses discovery without the secret, the API server or a namespace, naming the option and the fix', () => {
    expect(refusal(['--discovery', 'kubernetes'], { KUBERNETES_SERVICE_HOST: '10.96.0.1' }, sa).message).toMatch(/^--discovery "kubernetes": needs the cluster secret.*--secret-file/);
    expect(refusal([], { SLUICE_DISCOVERY: 'kubernetes', SLUICE_SECRET: SECRET }, sa).message).toMatch(/^SLUICE_DISCOVERY "kubernetes": needs the Kubernetes API.*--k8s-api/);
    expect(refusal(['--discovery', 'kubernetes'], inPod).message).toMatch(/cannot read the namespace from \/var\/run\/secrets\/kubernetes\.io\/serviceaccount\/namespace.*--k8s-namespace/);
    expect(refusal(['--discovery', 'kube']).message).toMatch(/did you mean "kubernetes"/);
  });

  it('reads the grace period as a duration, 0 allowed', () => {
    expect(load(['--grace', '0']).graceMs).toBe(0);
    expect(load([], { SLUICE_GRACE: '1m' }).graceMs).toBe(60_000);
    expect(refusal(['--grace', '2h']).message).toMatch(/^--grace "2h": is out of range; use 0ms to 1h/);
  });
});

describe('the loaded configuration is deeply frozen', () => {
  it('throws on any mutation (strict mode)', () => {
    const c = load(['--peers', 'b=ws://b:1', '--listen', '127.0.0.1:1', '--store', 's3://bucket/p?endpoint=http://h:1']);
    expect(Object.isFrozen(c)).toBe(true);
    expect(() => {
      (c as { node: string }).node = 'other';
    }).toThrow(TypeError);
    expect(() => {
      (c.peers as Record<string, string>)['c'] = 'ws://c:1';
    }).toThrow(TypeError);
    expect(() => {
      (c.listen as { port: number }).port = 2;
    }).toThrow(TypeError);
    expect(() => {
      (c.store as { bucket: string }).bucket = 'other';
    }).toThrow(TypeError);
    expect(() => {
      (c.sources as Record<string, string>)['node'] = 'flag';
    }).toThrow(TypeError);
  });
});

describe('the schema and --help', () => {
  it('has one flag, one variable and one file key per option', () => {
    const flags = CONFIG_OPTIONS.map((o) => o.flag);
    const envs = CONFIG_OPTIONS.map((o) => o.env);
    const keys = CONFIG_OPTIONS.flatMap((o) => (o.fileKey ? [o.fileKey] : []));
    expect(new Set(flags).size).toBe(flags.length);
    expect(new Set(envs).size).toBe(envs.length);
    expect(new Set(keys).size).toBe(keys.length);
    expect(Object.isFrozen(CONFIG_OPTIONS)).toBe(true);
  });

  it("keeps DESIGN.md's contract names", () => {
    const byFlag = new Map(CONFIG_OPTIONS.map((o) => [o.flag, o.env]));
    expect(byFlag.get('--node')).toBe('SLUICE_NODE');
    expect(byFlag.get('--dir')).toBe('SLUICE_DIR');
    expect(byFlag.get('--listen')).toBe('SLUICE_LISTEN');
    expect(byFlag.get('--peers')).toBe('SLUICE_PEERS');
    expect(byFlag.get('--store')).toBe('SLUICE_STORE');
    expect(byFlag.get('--config')).toBe('SLUICE_CONFIG');
    expect(byFlag.get('--secret-file')).toBe('SLUICE_SECRET');
  });

  it('lists every option with its flag, variable, file key, default and unit', () => {
    const help = configHelp();
    expect(help).toMatch(/^Runs the per-node forwarding daemon\./);
    expect(help).not.toContain('Usage:'); // the CLI prints its own usage line before this text
    for (const o of CONFIG_OPTIONS) {
      expect(help).toContain(`  ${o.flag} ${o.arg}\n`);
      expect(help).toContain(`env ${o.env}`);
      if (o.fileKey) expect(help).toContain(`file key ${o.fileKey}`);
      const shown = optionText(o);
      expect(help.replace(/\s+/g, ' ')).toContain(`default: ${shown.default}`);
      if (shown.unit) expect(help.replace(/\s+/g, ' ')).toContain(`unit: ${shown.unit}`);
      if (shown.accepted) expect(help.replace(/\s+/g, ' ')).toContain(`accepted: ${shown.accepted}`);
    }
    expect(help.split('\n').every((line) => line.length <= 100)).toBe(true);
  });
});
