/**
 * Sluice's client library, imported inside functions.
 *
 * `connect()` takes its defaults from the environment a workflow engine sets for a function:
 *
 * | option     | environment       | default                                          |
 * | ---------- | ----------------- | ------------------------------------------------ |
 * | `dir`      | `SLUICE_DIR`      | `$XDG_RUNTIME_DIR/sluice`, else `/tmp/sluice-<uid>` |
 * | `run`      | `SLUICE_RUN`      | required                                         |
 * | `step`     | `SLUICE_STEP`     | required                                         |
 * | `token`    | `SLUICE_TOKEN`    | required                                         |
 * | `instance` | `SLUICE_INSTANCE` | 0                                                |
 * | `resumeTimeoutMs` | `SLUICE_RESUME_TIMEOUT_MS` | 60000 (ms; the variable also takes `90s`, `2m`: the durations of `sluice daemon`), at most 1d: how long an input from another node waits for its stream to resume after its node's daemon or link was lost |
 */
import { ErrorCodes, RequestError, defaultRuntimeDir } from '../transports/client.js';
import { DAY, durationUsage, parseDuration } from '../transports/units.js';
import { connect as connectWith, type ConnectOptions, type Sluice } from './sluice.js';

export { Input, Output, Sluice, type ConnectOptions, type InputStream, type OutputOptions, type Source } from './sluice.js';
export { control } from './control.js';
export { ErrorCodes, SluiceError, hasCode, type ErrorCode } from '../transports/client.js';

/** Open this function's view of its run: its inputs and outputs. */
export async function connect(options: ConnectOptions = {}): Promise<Sluice> {
  const env = process.env;
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
  return connectWith({
    dir: options.dir ?? env.SLUICE_DIR ?? defaultRuntimeDir(env, process.getuid?.() ?? 0),
    run: need(options.run ?? env.SLUICE_RUN, 'run', 'SLUICE_RUN'),
    step: need(options.step ?? env.SLUICE_STEP, 'step', 'SLUICE_STEP'),
    token: need(options.token ?? env.SLUICE_TOKEN, 'token', 'SLUICE_TOKEN'),
    instance: options.instance ?? (instanceText ? Number(instanceText) : 0),
    ...(resumeTimeoutMs !== undefined ? { resumeTimeoutMs } : {}),
  });
}
