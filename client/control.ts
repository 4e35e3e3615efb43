/**
 * A small client for the daemon's control API over `$SLUICE_DIR/daemon.sock`, used by the CLI
 * and by `connect()` to explain a failure precisely. Errors come back as the SluiceError the
 * daemon described (same code and message), or SLUICE_UNAVAILABLE when no daemon answers.
 */
import http from 'node:http';
import { join } from 'node:path';
import { ConnectError, DAEMON_SOCKET, ErrorCodes, RequestError, codeOf, isErrorCode } from '../transports/client.js';

export interface ControlResponse<T> {
  status: number;
  body: T;
}

/** Largest response body accepted from the daemon, bytes. */
const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

export async function control<T = unknown>(dir: string, method: string, path: string, body?: unknown): Promise<ControlResponse<T>> {
  const socketPath = join(dir, DAEMON_SOCKET);
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const response = await new Promise<{ status: number; text: string }>((resolve, reject) => {
    const request = http.request(
      { socketPath, path, method, headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {} },
      (res) => {
        const parts: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_RESPONSE_BYTES) request.destroy(new Error('response too large'));
          else parts.push(c);
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(parts).toString('utf8') }));
        res.on('error', reject);
      },
    );
    request.on('error', reject);
    request.end(payload);
  }).catch((err: unknown) => {
    throw new ConnectError(ErrorCodes.UNAVAILABLE, `no Sluice daemon answers on ${socketPath} (${codeOf(err) ?? (err as Error).message}): start one with "sluice daemon", or point --dir / SLUICE_DIR at its directory`, {
      cause: err,
      details: { socketPath },
    });
  });
  let parsed: unknown = undefined;
  if (response.text.length > 0) {
    try {
      parsed = JSON.parse(response.text);
    } catch {
      parsed = response.text;
    }
  }
  if (response.status >= 400) {
    const described = parsed as { code?: unknown; message?: unknown; details?: Record<string, unknown> } | undefined;
    const code = isErrorCode(described?.code) ? described.code : ErrorCodes.UNAVAILABLE;
    throw new RequestError(code, typeof described?.message === 'string' ? described.message : `daemon answered ${response.status}`, {
      ...(described?.details ? { details: described.details } : {}),
    });
  }
  return { status: response.status, body: parsed as T };
}
