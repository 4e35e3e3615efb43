/**
 * The conventions of the `sluice` command, through the real command against a real daemon:
 * `--help` on every subcommand, exit status 2 for a wrong command line (naming the flag and the
 * fix) and 1 with the SLUICE_* code for what failed at run time, one way to write durations and
 * sizes, `recv -o FILE` that never leaves a partial file under FILE's name, and log lines with
 * level names.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { control } from '../../client/control.js';
import { cli, startDaemonProcess, type DaemonProcess } from '../helpers/daemon.js';

let daemon: DaemonProcess;
let scratch: string;
let serial = 0;

beforeAll(async () => {
  daemon = await startDaemonProcess(['--attach-timeout', '5s', '--log-format', 'json-levels']);
  scratch = mkdtempSync(join(tmpdir(), 'sluice-cli-'));
}, 30_000);
afterAll(async () => {
  await daemon?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

interface Ran {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Start `sluice ARGS` against the test's daemon; `input` goes to its standard input. */
function start(args: string[], env: NodeJS.ProcessEnv = {}): { child: ReturnType<typeof spawn>; done: Promise<Ran> } {
  const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, SLUICE_DIR: daemon.dir, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => out.push(c));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  // a test that kills the command may leave a write to its stdin pending: that write fails with EPIPE
  child.stdin!.on('error', () => undefined);
  const done = once(child, 'exit').then(([code]) => ({ code: code as number | null, stdout: Buffer.concat(out), stderr }));
  return { child, done };
}

function sluice(args: string[], input?: Buffer, env: NodeJS.ProcessEnv = {}): Promise<Ran> {
  const { child, done } = start(args, env);
  child.stdin!.end(input);
  return done;
}

/** A fresh workflow up → down and a run of it. */
async function pipeRun(): Promise<{ run: string; token: string }> {
  const name = `cli-conv-${++serial}`;
  await control(daemon.dir, 'POST', '/v1/workflows', { name, steps: { up: {}, down: {} }, edges: [{ from: 'up', to: 'down' }] });
  return (await control<{ run: string; token: string }>(daemon.dir, 'POST', '/v1/runs', { workflow: name })).body;
}

describe('--help', () => {
  it.each([
    ['daemon', /^Usage: sluice daemon \[options\][\s\S]*--log-format FORMAT/],
    ['workflow', /^Usage: sluice workflow apply FILE/],
    ['workflow apply', /^Usage: sluice workflow apply FILE/],
    ['workflow list', /^Usage: sluice workflow list/],
    ['run', /^Usage: sluice run create\|show\|list\|delete\|token/],
    ['run create', /^Usage: sluice run create WORKFLOW[\s\S]*--place STEP\.I=NODE/],
    ['run show', /^Usage: sluice run show RUN/],
    ['run list', /^Usage: sluice run list/],
    ['run delete', /^Usage: sluice run delete RUN/],
    ['run token', /^Usage: sluice run token RUN/],
    ['send', /^Usage: sluice send --run RUN --step STEP/],
    ['recv', /^Usage: sluice recv --run RUN --step STEP[\s\S]*-o, --output FILE/],
    ['status', /^Usage: sluice status/],
    ['demo', /^Usage: sluice demo/],
  ])('sluice %s --help prints its usage and exits 0', async (command, shown) => {
    const ran = await sluice([...command.split(' '), '--help']);
    expect(ran.stderr).toBe('');
    expect(ran.code).toBe(0);
    expect(ran.stdout.toString()).toMatch(shown);
  });

  it('wins over anything else wrong on the line, and -h is the same', async () => {
    const ran = await sluice(['recv', '-h', '--run']);
    expect([ran.code, ran.stderr]).toEqual([0, '']);
    expect(ran.stdout.toString()).toMatch(/^Usage: sluice recv/);
  });
});

describe('a wrong command line exits 2, naming the flag and the fix', () => {
  it.each([
    [['daemon', '--bad-flag'], 'sluice: SLUICE_CONFIG: unknown option --bad-flag; sluice daemon --help lists the options'],
    [['daemon', '--relay-bufer', '1MiB'], 'sluice: SLUICE_CONFIG: unknown option --relay-bufer (did you mean --relay-buffer?)'],
    [['daemon', '--attach-timeout', 'soon'], 'sluice: SLUICE_CONFIG: --attach-timeout "soon": not a duration; use milliseconds or a number with ms, s, m or h (e.g. 30s)'],
    [['daemon', '--log-format', 'text'], 'sluice: SLUICE_CONFIG: --log-format "text": not a log format; use one of json, json-levels'],
    [['run', 'create', 'wf', '--plac', 'a=b'], 'sluice: unknown option --plac for sluice run create (did you mean --place?); "sluice run create --help" lists its options'],
    [['run', 'create', 'wf', '--place'], 'sluice: --place needs a value: --place STEP=NODE'],
    [['run', 'create'], 'sluice: sluice run create needs WORKFLOW: sluice run create WORKFLOW'],
    [['run', 'create', 'wf', '--ttl', 'forever'], 'sluice: --ttl "forever": not a duration; use seconds or a number with s, m, h or d (e.g. 90m)'],
    [['run', 'create', 'wf', '--ttl', '31d'], 'sluice: --ttl "31d": is out of range; use 1s to 30d'],
    [['run', 'show', 'a', 'b'], 'sluice: unexpected argument "b": sluice run show RUN'],
    [['run', 'shwo', 'x'], 'sluice: unknown subcommand "run shwo" (did you mean "run show"?)'],
    [['send', 'stray'], 'sluice: unexpected argument "stray": sluice send takes options only; "sluice send --help" lists its options'],
    [['recv', '--step', 'down'], 'sluice: sluice recv needs the run: --run RUN (or SLUICE_RUN)'],
    [['status', '--json=yes'], 'sluice: --json takes no value'],
    [['stauts'], 'sluice: unknown command "stauts" (did you mean "status"?)'],
  ])('sluice %j', async (args, message) => {
    const ran = await sluice(args, undefined, { SLUICE_RUN: '', SLUICE_STEP: '' });
    expect(ran.stderr.startsWith(message), ran.stderr).toBe(true);
    expect(ran.stderr).toMatch(/\nRun "sluice [a-z ]*--help" for usage\.\n$/);
    expect(ran.stdout.toString()).toBe('');
    expect(ran.code).toBe(2);
  });

  it('while what fails at run time exits 1 with its SLUICE_* code', async () => {
    const missing = await sluice(['run', 'show', 'no-such-run']);
    expect([missing.code, missing.stderr]).toEqual([1, expect.stringMatching(/^sluice: SLUICE_NOT_FOUND: /)]);
    const nobody = await sluice(['status'], undefined, { SLUICE_DIR: join(scratch, 'no-daemon-here') });
    expect([nobody.code, nobody.stderr]).toEqual([1, expect.stringMatching(/^sluice: SLUICE_UNAVAILABLE: no Sluice daemon answers/)]);
  });
});

describe('durations and sizes', () => {
  it('run create --ttl takes a duration (90m), and a plain number as seconds', async () => {
    const name = `cli-conv-${++serial}`;
    await control(daemon.dir, 'POST', '/v1/workflows', { name, steps: { only: {} }, edges: [] });
    for (const [ttl, seconds] of [['90m', 5400], ['600', 600]] as const) {
      const before = Date.now();
      const created = await sluice(['run', 'create', name, '--ttl', ttl, '--json']);
      expect(created.code, created.stderr).toBe(0);
      const { run } = JSON.parse(created.stdout.toString()) as { run: string };
      const { body } = await control<{ createdAt: string; expiresAt: string }>(daemon.dir, 'GET', `/v1/runs/${run}`);
      expect(Date.parse(body.expiresAt) - Date.parse(body.createdAt)).toBe(seconds * 1000);
      expect(Date.parse(body.createdAt)).toBeGreaterThanOrEqual(before - 1000);
    }
  });

  it('the client reads SLUICE_RESUME_TIMEOUT_MS as a duration too, and refuses garbage naming it', async () => {
    const run = await pipeRun();
    const payload = Buffer.from('resumable\n'.repeat(1000));
    const receiving = sluice(['recv', '--run', run.run, '--step', 'down', '--token', run.token], undefined, { SLUICE_RESUME_TIMEOUT_MS: '90s' });
    const sent = await sluice(['send', '--run', run.run, '--step', 'up', '--token', run.token], payload);
    expect(sent.code, sent.stderr).toBe(0);
    const received = await receiving;
    expect(received.code, received.stderr).toBe(0);
    expect(received.stdout.equals(payload)).toBe(true);

    const refused = await sluice(['recv', '--run', run.run, '--step', 'down', '--token', run.token], undefined, { SLUICE_RESUME_TIMEOUT_MS: 'a while' });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe('sluice: SLUICE_INVALID: connect(): SLUICE_RESUME_TIMEOUT_MS "a while": not a duration; use milliseconds or a number with ms, s, m or h (e.g. 90s)\n');
  });
});

describe('recv -o FILE', () => {
  it('writes FILE.partial while streaming, and FILE, replacing an old one, once verified', async () => {
    const run = await pipeRun();
    const file = join(scratch, `out-${serial}.bin`);
    writeFileSync(file, 'the old content');
    const payload = Buffer.alloc(4 * 1024 * 1024, 7);
    const receiving = start(['recv', '--run', run.run, '--step', 'down', '--token', run.token, '-o', file]);
    receiving.child.stdin!.end();
    const sending = start(['send', '--run', run.run, '--step', 'up', '--token', run.token]);
    sending.child.stdin!.write(payload.subarray(0, 1024 * 1024));
    // the first MiB is in FILE.partial; FILE still holds the old content
    for (let i = 0; !(existsSync(`${file}.partial`) && statSync(`${file}.partial`).size > 0); i++) {
      if (i > 200) throw new Error('FILE.partial never got bytes');
      await sleep(25);
    }
    expect(readFileSync(file, 'utf8')).toBe('the old content');
    sending.child.stdin!.end(payload.subarray(1024 * 1024));
    const [sent, received] = await Promise.all([sending.done, receiving.done]);
    expect(sent.code, sent.stderr).toBe(0);
    expect([received.code, received.stderr, received.stdout.length]).toEqual([0, '', 0]);
    expect(readFileSync(file).equals(payload)).toBe(true);
    expect(existsSync(`${file}.partial`)).toBe(false);
  });

  it('on a truncated stream exits 1 with the code, removes FILE.partial and leaves FILE as it was', async () => {
    const run = await pipeRun();
    const file = join(scratch, `out-${serial}.bin`);
    writeFileSync(file, 'the old content');
    const receiving = start(['recv', '--run', run.run, '--step', 'down', '--token', run.token, '-o', file]);
    receiving.child.stdin!.end();
    const sending = start(['send', '--run', run.run, '--step', 'up', '--token', run.token]);
    sending.child.stdin!.write(Buffer.alloc(1024 * 1024, 1));
    for (let i = 0; !(existsSync(`${file}.partial`) && statSync(`${file}.partial`).size > 0); i++) {
      if (i > 200) throw new Error('FILE.partial never got bytes');
      await sleep(25);
    }
    sending.child.kill('SIGKILL');
    const received = await receiving.done;
    expect(received.code).toBe(1);
    expect(received.stderr).toMatch(/^sluice: SLUICE_(TRUNCATED|PRODUCER_ABORTED): /);
    expect(existsSync(`${file}.partial`)).toBe(false);
    expect(readFileSync(file, 'utf8')).toBe('the old content');
  }, 20_000);

  it('creates no FILE at all when the stream fails and there was none', async () => {
    const run = await pipeRun();
    const file = join(scratch, `never-${serial}.bin`);
    const receiving = start(['recv', '--run', run.run, '--step', 'down', '--token', run.token, '-o', file]);
    receiving.child.stdin!.end();
    const sending = start(['send', '--run', run.run, '--step', 'up', '--token', run.token]);
    sending.child.stdin!.write(Buffer.alloc(256 * 1024, 2));
    for (let i = 0; !existsSync(`${file}.partial`); i++) {
      if (i > 200) throw new Error('FILE.partial never appeared');
      await sleep(25);
    }
    sending.child.kill('SIGKILL');
    expect((await receiving.done).code).toBe(1);
    expect([existsSync(file), existsSync(`${file}.partial`)]).toEqual([false, false]);
  }, 20_000);
});

describe('--log-format json-levels', () => {
  it('writes the level by name', () => {
    const lines = daemon
      .logs()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { level: unknown; msg?: string });
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.every((l) => typeof l.level === 'string')).toBe(true);
    expect(lines.some((l) => l.level === 'info')).toBe(true);
  });
});
