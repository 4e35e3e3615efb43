/**
 * The client's configuration: `connect()`'s options, completed from the environment a workflow
 * engine sets for a function (the variables, defaults and units are in the table of ./index.ts).
 * The one file of client/ that reads the environment; an option given to `connect()` wins over
 * its variable.
 */
import { ErrorCodes, RequestError, defaultRuntimeDir } from '../transports/client.js';
import { DAY, durationUsage, parseDuration } from '../transports/units.js';
import type { ConnectOptions } from './sluice.js';

/** `connect()`'s options with every one that has a default filled in, and the required ones checked. */
export type ResolvedConnectOptions = ConnectOptions & { dir: string; run: string; step: string; token: string; instance: number };

/** `options`, completed from `env`; SLUICE_INVALID names the option (and its variable) that is missing or wrong. */
export function connectOptions(options: ConnectOptions = {}, env: NodeJS.ProcessEnv = process.env): ResolvedConnectOptions {
  const need = (value: string | undefined, option: string, variable: string): string => {
    if (value === undefined || value === '') {
      throw new RequestError(ErrorCodes.INVALID, `connect(): no ${option}; pass { ${option} } or set ${variable}`);
    }
    return value;
  };
  const instanceText = env.SLUICE_INSTANCE;
  const resumeGiven = options.resumeTimeoutMs ?? (env.SLUICE_RESUME_TIMEOUT_MS || undefined);
  let resumeTimeoutMs: number | undefined;
  if (resumeGiven !== undefined) {
    try {
      resumeTimeoutMs = parseDuration(resumeGiven, 'ms', 0, DAY, durationUsage('ms', '90s'));
    } catch (err) {
      const name = options.resumeTimeoutMs !== undefined ? 'resumeTimeoutMs' : 'SLUICE_RESUME_TIMEOUT_MS';
      throw new RequestError(ErrorCodes.INVALID, `connect(): ${name} ${JSON.stringify(resumeGiven)}: ${(err as Error).message}`, { cause: err });
    }
  }
  return {
    dir: options.dir ?? env.SLUICE_DIR ?? defaultRuntimeDir(env, process.getuid?.() ?? 0),
    run: need(options.run ?? env.SLUICE_RUN, 'run', 'SLUICE_RUN'),
    step: need(options.step ?? env.SLUICE_STEP, 'step', 'SLUICE_STEP'),
    token: need(options.token ?? env.SLUICE_TOKEN, 'token', 'SLUICE_TOKEN'),
    instance: options.instance ?? (instanceText ? Number(instanceText) : 0),
    ...(resumeTimeoutMs !== undefined ? { resumeTimeoutMs } : {}),
  };
}
