/**
 * Sluice's client library, imported inside functions.
 *
 * `connect()` takes its defaults from the environment a workflow engine sets for a function
 * (read in ./config.ts):
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
import { connectOptions } from './config.js';
import { connect as connectWith, type ConnectOptions, type Sluice } from './sluice.js';

export { Input, Output, Sluice, type ConnectOptions, type InputStream, type OutputOptions, type Source } from './sluice.js';
export { control } from './control.js';
export { ErrorCodes, SluiceError, hasCode, type ErrorCode } from '../transports/client.js';

/** Open this function's view of its run: its inputs and outputs. */
export async function connect(options: ConnectOptions = {}): Promise<Sluice> {
  return connectWith(connectOptions(options));
}
