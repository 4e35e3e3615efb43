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
 * | `resumeTimeoutMs` | `SLUICE_RESUME_TIMEOUT_MS` | 60000: how long an input from another node waits for its stream to resume after its node's daemon or link was lost |
 */
import { ErrorCodes, RequestError, defaultRuntimeDir } from '../transports/index.js';
import { connect as connectWith, type ConnectOptions, type Sluice } from './sluice.js';

export { Input, Output, Sluice, type ConnectOptions, type InputStream, type OutputOptions, type Source } from './sluice.js';
export { control } from './control.js';
export { ErrorCodes, SluiceError, hasCode, type ErrorCode } from '../transports/index.js';

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
  const resumeText = env.SLUICE_RESUME_TIMEOUT_MS;
  const resumeTimeoutMs = options.resumeTimeoutMs ?? (resumeText ? Number(resumeText) : undefined);
  if (resumeTimeoutMs !== undefined && !(Number.isInteger(resumeTimeoutMs) && resumeTimeoutMs >= 0)) {
    throw new RequestError(ErrorCodes.INVALID, `connect(): resumeTimeoutMs (SLUICE_RESUME_TIMEOUT_MS) must be a whole number of milliseconds, got ${JSON.stringify(options.resumeTimeoutMs ?? resumeText)}`);
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
