/**
 * Mux target: a peer's mutated frames into a real Mux (the listener side of a link) over an
 * in-memory connection pair. The Mux serves an endpoint that reads what is sent to it, and one
 * that answers and ends. After the bytes, the peer ends, half-closes or resets its side at a
 * random point. Whatever came, no exception may escape, the link must end with a typed error
 * (SLUICE_*, or the medium's ECONNRESET when the peer reset it) once the peer is gone, and no
 * connection may be left open on it.
 */
import { MemoryTransport, Mux, FrameType, encodeControl, type Connection } from '../../../transports/index.js';
import { chance, chunk, dataFrame, ending, mutate, pick, size, type Ending, type Prng } from '../gen.js';
import { tick, type Target } from '../harness.js';

const WINDOW = 64 * 1024;
const MAX_PIECE = 16 * 1024;

/** A plausible session from the dialer's side: OPENs (odd ids), DATA within the window, CREDIT, CLOSE, RESET. */
function session(r: Prng): Buffer[] {
  const out: Buffer[] = [];
  const ids: number[] = [];
  let next = 1;
  for (let n = r.int(1, 10); n > 0; n--) {
    const k = r.int(0, 9);
    if (k <= 2 || ids.length === 0) {
      const id = chance(r, 0.9) ? next : pick(r, [0, 2, Math.max(0, next - 2), 0xffffffff]);
      next += 2;
      ids.push(id);
      out.push(encodeControl(FrameType.OPEN, id, { endpoint: pick(r, ['sink', 'sink', 'echo', 'nowhere']), window: pick(r, [WINDOW, 1, 1 << 20]) }));
      continue;
    }
    const id = pick(r, ids);
    if (k <= 5) out.push(dataFrame(r, id, Math.min(MAX_PIECE, size(r, MAX_PIECE))));
    else if (k === 6) out.push(encodeControl(FrameType.CREDIT, id, { bytes: pick(r, [1, 4096, WINDOW]) }));
    else if (k === 7) out.push(encodeControl(FrameType.CLOSE, id, {}));
    else if (k === 8) out.push(encodeControl(FrameType.RESET, id, { code: 'SLUICE_CONSUMER_GONE', message: 'fuzz' }));
    else out.push(dataFrame(r, id, WINDOW + 1 - r.int(0, 2))); // at or past the window
  }
  return out;
}

function muxInput(r: Prng): { chunks: Buffer[]; end: Ending; cutAt: number } {
  const { bytes } = mutate(r, session(r));
  const chunks = chunk(r, bytes);
  return { chunks, end: ending(r), cutAt: r.int(0, chunks.length) };
}

function typed(err: Error, peerReset: boolean): boolean {
  const code = String((err as { code?: unknown }).code ?? '');
  return code.startsWith('SLUICE_') || (peerReset && (code === 'ECONNRESET' || code === 'EPIPE'));
}

export function muxTarget(): Target {
  const transport = new MemoryTransport(64 * 1024);
  const stats = { linkFailedTyped: 0, linkSurvived: 0, connectionsAccepted: 0 };
  let serial = 0;
  return {
    name: 'mux',
    stats,
    describe: (r) => {
      const i = muxInput(r);
      return `${i.end} after chunk ${i.cutAt}: ${Buffer.concat(i.chunks).toString('hex')}`;
    },
    async one(r) {
      const { chunks, end, cutAt } = muxInput(r);
      const endpoint = `mux-fuzz-${++serial}`;
      const listener = await transport.listen(endpoint);
      const accepted = listener.accept();
      const peer = await transport.dial(endpoint);
      const ours: Connection = await accepted;
      await listener.close();
      const mux = new Mux(ours, 'listener', { windowBytes: WINDOW, maxFramePayload: MAX_PIECE, maxConnections: 4 });
      const opened: Connection[] = [];
      mux.serve((name) => {
        if (name === 'nowhere') throw Object.assign(new Error('refused'), { code: 'SLUICE_NOT_FOUND' });
        return (conn) => {
          stats.connectionsAccepted++;
          opened.push(conn);
          conn.input.on('error', () => undefined);
          conn.output.on('error', () => undefined);
          if (name === 'echo') conn.output.end(Buffer.from('answer'));
          conn.input.resume();
        };
      });
      let failure: Error | undefined;
      void mux.closed.then((why) => (failure = why));
      peer.input.on('error', () => undefined);
      peer.output.on('error', () => undefined);
      peer.input.resume();
      const sent = end === 'destroy-midway' ? chunks.slice(0, cutAt) : chunks;
      const pauses = 3 / Math.max(1, sent.length);
      for (const c of sent) {
        if (peer.output.destroyed) break;
        peer.output.write(c);
        if (chance(r, pauses)) await tick();
      }
      await tick();
      const peerReset = end === 'destroy' || end === 'destroy-midway' || end === 'linger';
      if (peerReset) peer.destroy();
      else peer.output.end();
      for (let i = 0; i < 4 && failure === undefined; i++) await tick();
      if (end === 'half-close-wait' || end === 'end' || end === 'linger') {
        // the peer ended its side: the link is over, whatever its connections were doing
        if (!peerReset) peer.destroy();
      }
      for (let i = 0; i < 8 && failure === undefined; i++) await tick();
      if (failure === undefined) throw new Error(`the link did not close after the peer went away (${end})`);
      if (!typed(failure, true)) throw new Error(`the link closed with an untyped error: ${failure.constructor.name} ${String((failure as { code?: unknown }).code)} ${failure.message}`);
      stats.linkFailedTyped++;
      if (mux.size !== 0) throw new Error(`${mux.size} connection(s) left on a closed link`);
      await tick();
      for (const c of opened) {
        if (!c.input.destroyed && !c.input.readableEnded) throw new Error('a connection on a closed link still has an open input');
        if (!c.output.destroyed && !c.output.writableFinished) throw new Error('a connection on a closed link still has an open output');
      }
    },
  };
}
