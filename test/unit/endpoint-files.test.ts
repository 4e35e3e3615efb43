/** What each medium does with its endpoint files: permissions, stale leftovers, reuse, limits. */
import { mkdtempSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChannelReader, ChannelWriter, fifoTransport, unixTransport, MAX_UNIX_PATH_BYTES, ACK_SUFFIX } from '../../transports/index.js';

import { drain } from '../helpers/streams.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sluice-ep-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('unix endpoints', () => {
  it('creates the socket file owner-only (0600) and removes it on close', async () => {
    const ep = join(dir, 'mode.sock');
    const listener = await unixTransport.listen(ep);
    expect(statSync(ep).mode & 0o777).toBe(0o600);
    await listener.close();
    expect(existsSync(ep)).toBe(false);
  });

  it('keeps a connection that arrives while listen() is still settling (a daemon dialling a consumer as it starts)', async () => {
    for (let i = 0; i < 20; i++) {
      const ep = join(dir, `early-${i}.sock`);
      const listening = unixTransport.listen(ep);
      // retries every few ms from before the file exists: it often connects before listen() resolves
      const dialled = unixTransport.dial(ep, { timeoutMs: 2_000 });
      const listener = await listening;
      const accepted = await listener.accept({ signal: AbortSignal.timeout(2_000) });
      const writer = new ChannelWriter(await dialled);
      const received = drain(new ChannelReader(accepted));
      await new Promise<void>((resolve, reject) => writer.end(Buffer.from('early'), () => resolve()).once('error', reject));
      expect((await received).bytes.toString()).toBe('early');
      await listener.close();
    }
  });

  it('replaces a stale socket file left by a dead process', async () => {
    const ep = join(dir, 'stale.sock');
    // a process that dies with SIGKILL leaves its socket file behind
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(ep)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await once(child.stdout!, 'data');
    child.kill('SIGKILL');
    await once(child, 'exit');
    expect(existsSync(ep)).toBe(true);
    const listener = await unixTransport.listen(ep);
    const accepted = listener.accept();
    const writer = new ChannelWriter(await unixTransport.dial(ep));
    writer.end(Buffer.from('fresh'));
    expect((await drain(new ChannelReader(await accepted))).bytes.toString()).toBe('fresh');
    await listener.close();
  });

  it('refuses to take over a socket another process serves', async () => {
    const ep = join(dir, 'live.sock');
    const first = await unixTransport.listen(ep);
    await expect(unixTransport.listen(ep)).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
    await first.close();
  });

  it('refuses to replace a file that is not a socket', async () => {
    const ep = join(dir, 'plain-file');
    writeFileSync(ep, 'precious');
    await expect(unixTransport.listen(ep)).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
    expect(existsSync(ep)).toBe(true);
  });

  it('refuses a path longer than sun_path allows, before touching the file system', async () => {
    const ep = join(dir, 'x'.repeat(MAX_UNIX_PATH_BYTES));
    await expect(unixTransport.listen(ep)).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
    await expect(unixTransport.dial(ep)).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
  });

  it('closes the listener without waiting for channels it accepted, which go on', async () => {
    const ep = join(dir, 'close.sock');
    const listener = await unixTransport.listen(ep);
    const accepted = listener.accept();
    const writer = new ChannelWriter(await unixTransport.dial(ep));
    const reader = new ChannelReader(await accepted);
    const received = drain(reader);
    const closed = await Promise.race([listener.close().then(() => 'closed'), new Promise((r) => setTimeout(r, 2_000, 'hung'))]);
    expect(closed).toBe('closed');
    expect(existsSync(ep)).toBe(false);
    await expect(unixTransport.dial(ep, { timeoutMs: 0 })).rejects.toMatchObject({ code: 'SLUICE_UNAVAILABLE' });
    writer.end(Buffer.from('still flowing'));
    expect((await received).bytes.toString()).toBe('still flowing');
  });

  it('accepts several producers on one listener, each its own channel', async () => {
    const ep = join(dir, 'many.sock');
    const listener = await unixTransport.listen(ep);
    const writers = await Promise.all([1, 2, 3].map(async (i) => {
      const w = new ChannelWriter(await unixTransport.dial(ep), { hello: { i } });
      w.end(Buffer.from(`from ${i}`));
      return w;
    }));
    const got = await Promise.all(writers.map(async () => {
      const reader = new ChannelReader(await listener.accept());
      const { bytes } = await drain(reader);
      return `${String(reader.hello?.i)}:${bytes.toString()}`;
    }));
    expect(got.sort()).toEqual(['1:from 1', '2:from 2', '3:from 3']);
    await listener.close();
  });
});

describe('fifo endpoints', () => {
  it('creates both pipes owner-only (0600) and removes them on close', async () => {
    const ep = join(dir, 'mode.fifo');
    const listener = await fifoTransport.listen(ep);
    for (const file of [ep, ep + ACK_SUFFIX]) {
      expect(statSync(file).isFIFO()).toBe(true);
      expect(statSync(file).mode & 0o777).toBe(0o600);
    }
    await listener.close();
    expect(existsSync(ep) || existsSync(ep + ACK_SUFFIX)).toBe(false);
  });

  it('serves pipes created beforehand (proactive set-up) without recreating or removing them', async () => {
    const ep = join(dir, 'pre.fifo');
    execFileSync('mkfifo', ['-m', '600', ep, ep + ACK_SUFFIX]);
    const inode = statSync(ep).ino;
    const listener = await fifoTransport.listen(ep);
    expect(statSync(ep).ino).toBe(inode);
    const accepted = listener.accept();
    const writer = new ChannelWriter(await fifoTransport.dial(ep));
    writer.end(Buffer.from('prepared'));
    expect((await drain(new ChannelReader(await accepted))).bytes.toString()).toBe('prepared');
    await listener.close();
    // prepared by someone else (the daemon), so left for them to remove
    expect(statSync(ep).isFIFO() && statSync(ep + ACK_SUFFIX).isFIFO()).toBe(true);
  });

  it('refuses to use a file that is not a FIFO', async () => {
    const ep = join(dir, 'not-a-fifo');
    writeFileSync(ep, 'precious');
    await expect(fifoTransport.listen(ep)).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
  });

  it('carries exactly one connection: a second accept is refused', async () => {
    const ep = join(dir, 'once.fifo');
    const listener = await fifoTransport.listen(ep);
    const first = listener.accept();
    await expect(listener.accept()).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
    const writer = new ChannelWriter(await fifoTransport.dial(ep));
    writer.end();
    await drain(new ChannelReader(await first));
    await listener.close();
  });
});
