/** The ws transport's mutual authentication: wrong secrets, plain clients and stalled handshakes never reach accept(). */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { ChannelReader, ChannelWriter, WS_CLOSE_UNAUTHORIZED, WsTransport, type Connection, type Listener } from '../../transports/index.js';
import { drain } from '../helpers/streams.js';

const listeners: Listener[] = [];
afterEach(async () => {
  await Promise.all(listeners.splice(0).map((l) => l.close()));
});

async function serve(transport: WsTransport): Promise<Listener> {
  const listener = await transport.listen('127.0.0.1:0');
  listeners.push(listener);
  return listener;
}

/** Whether accept() handed out a connection within `ms`. */
async function acceptedWithin(listener: Listener, ms: number): Promise<Connection | undefined> {
  try {
    return await listener.accept({ signal: AbortSignal.timeout(ms) });
  } catch (err) {
    expect(err).toMatchObject({ code: 'SLUICE_ABORTED' });
    return undefined;
  }
}

function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  return new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
}

describe('ws transport authentication', () => {
  it('carries a channel between ends with the same secret', async () => {
    const transport = new WsTransport({ secret: 's3cret-shared' });
    const listener = await serve(transport);
    const accepted = listener.accept();
    const writer = new ChannelWriter(await transport.dial(listener.endpoint, { timeoutMs: 1_000 }));
    const received = drain(new ChannelReader(await accepted));
    writer.end(Buffer.from('authenticated bytes'));
    const { bytes, ended } = await received;
    expect(ended).toBe(true);
    expect(bytes.toString()).toBe('authenticated bytes');
  });

  it('refuses a client with a wrong secret: SLUICE_UNAUTHORIZED, and accept() never sees it', async () => {
    const listener = await serve(new WsTransport({ secret: 'the-right-secret' }));
    const accepting = acceptedWithin(listener, 500);
    await expect(new WsTransport({ secret: 'a-wrong-secret' }).dial(listener.endpoint, { timeoutMs: 1_000 })).rejects.toMatchObject({ code: 'SLUICE_UNAUTHORIZED' });
    expect(await accepting).toBeUndefined();
  });

  it('refuses a server that cannot prove it knows the secret: SLUICE_UNAUTHORIZED', async () => {
    const impostor = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise((resolve) => impostor.once('listening', resolve));
    const closes: number[] = [];
    impostor.on('connection', (ws) => {
      ws.on('close', (code) => closes.push(code));
      ws.once('message', () => ws.send(Buffer.alloc(32, 9))); // a proof made up without the secret
      ws.send(Buffer.alloc(32, 1)); // the challenge
    });
    const { port } = impostor.address() as { port: number };
    try {
      await expect(new WsTransport({ secret: 'the-right-secret' }).dial(`127.0.0.1:${port}`, { timeoutMs: 1_000 })).rejects.toMatchObject({ code: 'SLUICE_UNAUTHORIZED' });
      await sleep(100);
      expect(closes).toEqual([WS_CLOSE_UNAUTHORIZED]);
    } finally {
      for (const ws of impostor.clients) ws.terminate();
      impostor.close();
    }
  });

  it('closes a plain ws client that sends bytes without the handshake with 4401, before accept()', async () => {
    const listener = await serve(new WsTransport({ secret: 'the-right-secret' }));
    const accepting = acceptedWithin(listener, 500);
    const ws = new WebSocket(`ws://${listener.endpoint}/`);
    const gotClose = closed(ws);
    const firstMessage = new Promise<Buffer>((resolve) => ws.once('message', (d) => resolve(d as Buffer)));
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    ws.send(Buffer.from('\x01HELLO straight away, no proof'));
    expect((await firstMessage).length).toBe(32); // the challenge: a nonce, never the secret
    expect((await gotClose).code).toBe(WS_CLOSE_UNAUTHORIZED);
    expect(await accepting).toBeUndefined();
  });

  it('closes a plain ws client that sends a text message with 4401', async () => {
    const listener = await serve(new WsTransport({ secret: 'the-right-secret' }));
    const ws = new WebSocket(`ws://${listener.endpoint}/`);
    const gotClose = closed(ws);
    await new Promise((resolve) => ws.once('open', resolve));
    ws.send('x'.repeat(64));
    expect((await gotClose).code).toBe(WS_CLOSE_UNAUTHORIZED);
  });

  it('drops a handshake that stalls after handshakeTimeoutMs', async () => {
    const listener = await serve(new WsTransport({ secret: 'the-right-secret', handshakeTimeoutMs: 200 }));
    const accepting = acceptedWithin(listener, 1_000);
    const ws = new WebSocket(`ws://${listener.endpoint}/`);
    ws.on('error', () => undefined);
    const started = performance.now();
    const gotClose = closed(ws);
    await new Promise((resolve) => ws.once('open', resolve));
    // say nothing
    const { code } = await gotClose;
    const elapsed = performance.now() - started;
    expect(code).not.toBe(1000);
    expect(elapsed).toBeGreaterThanOrEqual(150);
    expect(elapsed).toBeLessThan(900);
    expect(await accepting).toBeUndefined();
  });

  it('fails a dial whose server never finishes the handshake, after handshakeTimeoutMs', async () => {
    // a server without a secret never sends the challenge: the client must not hang
    const listener = await serve(new WsTransport());
    const started = performance.now();
    await expect(new WsTransport({ secret: 'client-only', handshakeTimeoutMs: 200 }).dial(listener.endpoint, { timeoutMs: 1_000 })).rejects.toMatchObject({
      code: 'SLUICE_UNAVAILABLE',
    });
    expect(performance.now() - started).toBeLessThan(2_000);
    await sleep(10);
  });

  it('treats a text message on an open connection as a protocol violation', async () => {
    const transport = new WsTransport();
    const listener = await serve(transport);
    const accepted = listener.accept();
    const ws = new WebSocket(`ws://${listener.endpoint}/`);
    const gotClose = closed(ws);
    await new Promise((resolve) => ws.once('open', resolve));
    const conn = await accepted;
    const reading = drain(new ChannelReader(conn));
    ws.send('not binary');
    const { error, ended } = await reading;
    expect(ended).toBe(false);
    expect(error?.code).toBe('SLUICE_PROTOCOL');
    expect((await gotClose).code).toBe(1006);
  });

  it('treats a message over maxPayload as a protocol violation', async () => {
    const transport = new WsTransport({ maxPayload: 1024 });
    const listener = await serve(transport);
    const accepted = listener.accept();
    const ws = new WebSocket(`ws://${listener.endpoint}/`);
    ws.on('error', () => undefined);
    await new Promise((resolve) => ws.once('open', resolve));
    const reading = drain(new ChannelReader(await accepted));
    ws.send(Buffer.alloc(4096, 1));
    const { error, ended } = await reading;
    expect(ended).toBe(false);
    expect(error?.code).toBe('SLUICE_PROTOCOL');
  });

  it('splits writes larger than maxPayload into messages the peer accepts', async () => {
    const transport = new WsTransport({ maxPayload: 1000 });
    const listener = await serve(transport);
    const accepted = listener.accept();
    const writer = new ChannelWriter(await transport.dial(listener.endpoint, { timeoutMs: 1_000 }));
    const received = drain(new ChannelReader(await accepted));
    const data = Buffer.alloc(200_000, 7);
    writer.end(data);
    const { bytes, ended, error } = await received;
    expect(error).toBeUndefined();
    expect(ended).toBe(true);
    expect(bytes.equals(data)).toBe(true);
  });

  it('rejects a malformed endpoint with SLUICE_INVALID', async () => {
    const transport = new WsTransport();
    await expect(transport.listen('no-port')).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
    await expect(transport.dial('127.0.0.1:99999')).rejects.toMatchObject({ code: 'SLUICE_INVALID' });
  });
});
