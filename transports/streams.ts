/**
 * Small stream helpers shared by the media (ws, mux) and the daemon's pass-through code.
 */
import type { Readable, Writable } from 'node:stream';
import { ConnectError, ErrorCodes } from './errors.js';

/**
 * The error a dead medium gives, with the errno-style code the channel layer translates once:
 * ECONNRESET for an input cut before its end, EPIPE for an output that can no longer deliver.
 */
export function mediumError(code: 'ECONNRESET' | 'EPIPE', message: string): Error {
  return Object.assign(new Error(message), { code });
}

/**
 * Destroy `stream` with `err` if someone listens for errors; otherwise without, so that an idle
 * stream nobody watches cannot crash the process (finished() still reports a premature close).
 */
export function destroyWith(stream: Readable | Writable, err: Error): void {
  if (stream.destroyed) return;
  stream.destroy(stream.listenerCount('error') > 0 ? err : undefined);
}

/**
 * The first chunk `input` delivers. The stream is left paused right after it, so nothing that
 * follows is lost to a listener that is gone. Rejects if the stream ends, closes or fails first,
 * or (when `timeoutMs` is given) with SLUICE_TIMEOUT after that many milliseconds.
 */
export function firstChunk(input: Readable, timeoutMs?: number): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => done(new ConnectError(ErrorCodes.TIMEOUT, `nothing arrived within ${timeoutMs} ms`)), timeoutMs);
    const onData = (chunk: Buffer): void => {
      input.pause();
      done(undefined, chunk);
    };
    const onGone = (): void => done(new ConnectError(ErrorCodes.UNAVAILABLE, 'the stream closed before its first bytes'));
    const onError = (err: Error): void => done(err);
    function done(err: Error | undefined, chunk?: Buffer): void {
      clearTimeout(timer);
      input.off('data', onData);
      input.off('end', onGone);
      input.off('close', onGone);
      input.off('error', onError);
      if (err) reject(err);
      else resolve(chunk!);
    }
    input.on('data', onData);
    input.on('end', onGone);
    input.on('close', onGone);
    input.on('error', onError);
  });
}
