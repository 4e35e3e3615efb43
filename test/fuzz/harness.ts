/**
 * The fuzz runner: runs a target's cases from one seed, in batches (one case at a time for the
 * in-process targets, many concurrent connections for the live ones), checks the system after
 * each batch, and on a failure says which seed and case index reproduce it.
 *
 * Counting: one case is one generated input — one call of a pure decoder, one link's worth of
 * frames into a Mux, one connection to the relay socket, one peer link, one HTTP request.
 */
import { caseRandom, type Prng } from './gen.js';

export interface Target {
  readonly name: string;
  /** cases run at once (live targets: concurrent connections); default 1 */
  readonly batch?: number;
  setup?(): Promise<void>;
  /** Run one case; throw (anything) to report it as a failure. `describe` says what the input was. */
  one(r: Prng, index: number): void | Promise<void>;
  /** After each batch: is the system under test still well? Throw if not. */
  check?(): Promise<void>;
  /** After the last batch: the acceptance check (a real stream byte-exact, resources back to baseline). */
  final?(): Promise<void>;
  teardown?(): Promise<void>;
  /** A short description of case `index`'s input, for a failure report (hex of the bytes, ...). */
  describe?(r: Prng): string;
  /**
   * Bring the system under test back (restart a dead daemon). When given, a batch that fails its
   * check is replayed one case at a time to name the case that did it.
   */
  reset?(): Promise<void>;
  /** counters a target keeps (findings that are not failures, outcomes) */
  readonly stats?: Record<string, number>;
}

export interface FuzzOptions {
  cases: number;
  seed: number;
  /** run only this case (and its batch, for live targets) */
  only?: number | undefined;
  /** print progress every this many ms; 0: never */
  progressMs?: number;
  log?: (line: string) => void;
}

export interface FuzzResult {
  target: string;
  seed: number;
  cases: number;
  ms: number;
  perSecond: number;
  stats: Record<string, number>;
}

export class FuzzFailure extends Error {
  constructor(
    readonly target: string,
    readonly seed: number,
    readonly first: number,
    readonly last: number,
    cause: unknown,
    input: string | undefined,
  ) {
    const which = first === last ? `case ${first}` : `the batch of cases ${first}..${last}`;
    super(
      `fuzz target "${target}" failed at ${which} (seed ${seed}): ${cause instanceof Error ? `${cause.name}: ${cause.message}` : String(cause)}\n` +
        (input ? `  input: ${input}\n` : '') +
        `  reproduce: npm run fuzz -- --target ${target} --seed ${seed} --case ${first}`,
      { cause },
    );
  }
}

/** Uncaught exceptions and unhandled rejections while a case runs are that case's failure. */
class Unhandled {
  private error: unknown;
  private readonly onError = (err: unknown): void => {
    this.error ??= err;
  };
  install(): void {
    process.on('uncaughtException', this.onError);
    process.on('unhandledRejection', this.onError);
  }
  uninstall(): void {
    process.off('uncaughtException', this.onError);
    process.off('unhandledRejection', this.onError);
  }
  take(): unknown {
    const e = this.error;
    this.error = undefined;
    return e;
  }
}

function short(text: string, max = 400): string {
  return text.length <= max ? text : `${text.slice(0, max)}… (${text.length} chars)`;
}

export async function fuzz(target: Target, options: FuzzOptions): Promise<FuzzResult> {
  const { seed } = options;
  const batch = Math.max(1, target.batch ?? 1);
  const log = options.log ?? (() => undefined);
  const progressMs = options.progressMs ?? 0;
  const unhandled = new Unhandled();
  const from = options.only === undefined ? 0 : options.only - (options.only % batch);
  const to = options.only === undefined ? options.cases : Math.min(from + batch, Math.max(options.cases, options.only + 1));
  await target.setup?.();
  unhandled.install();
  const started = performance.now();
  let lastProgress = started;
  let done = 0;
  try {
    for (let first = from; first < to; first += batch) {
      const last = Math.min(to, first + batch) - 1;
      const fail = (err: unknown, index?: number): never => {
        let desc: string | undefined;
        try {
          desc = index !== undefined && target.describe ? short(target.describe(caseRandom(seed, index))) : undefined;
        } catch (err2) {
          desc = `(describing the input threw too: ${String(err2)})`;
        }
        throw new FuzzFailure(target.name, seed, index ?? first, index ?? last, err, desc);
      };
      if (batch === 1) {
        try {
          const p = target.one(caseRandom(seed, first), first);
          if (p) await p;
        } catch (err) {
          fail(err, first);
        }
      } else {
        const results = await Promise.allSettled(Array.from({ length: last - first + 1 }, (_, k) => Promise.resolve().then(() => target.one(caseRandom(seed, first + k), first + k))));
        const bad = results.findIndex((x) => x.status === 'rejected');
        if (bad >= 0) fail((results[bad] as PromiseRejectedResult).reason, first + bad);
      }
      const stray = unhandled.take();
      if (stray !== undefined) fail(stray, batch === 1 ? first : undefined);
      if (target.check) {
        try {
          await target.check();
        } catch (err) {
          if (batch > 1 && target.reset) await bisect(target, seed, first, last, err);
          fail(err);
        }
      }
      done += last - first + 1;
      const now = performance.now();
      if (progressMs > 0 && now - lastProgress >= progressMs) {
        lastProgress = now;
        log(`  ${target.name}: ${done} cases, ${Math.round(done / ((now - started) / 1000))}/s`);
      }
    }
    const ms = performance.now() - started;
    if (target.final) {
      try {
        await target.final();
      } catch (err) {
        throw new FuzzFailure(target.name, seed, to - 1, to - 1, err, 'final check after the last case');
      }
    }
    const stray = unhandled.take();
    if (stray !== undefined) throw new FuzzFailure(target.name, seed, to - 1, to - 1, stray, 'after the last case');
    return { target: target.name, seed, cases: done, ms, perSecond: done / (ms / 1000), stats: { ...(target.stats ?? {}) } };
  } finally {
    unhandled.uninstall();
    await target.teardown?.();
  }
}

/** Replay the cases of a failed batch one by one, each followed by the check, to find the one that fails. */
async function bisect(target: Target, seed: number, first: number, last: number, batchError: unknown): Promise<void> {
  for (let i = first; i <= last; i++) {
    await target.reset!();
    let err: unknown;
    try {
      await target.one(caseRandom(seed, i), i);
      await target.check!();
    } catch (e) {
      err = e;
    }
    if (err !== undefined) {
      let desc: string | undefined;
      try {
        desc = target.describe ? short(target.describe(caseRandom(seed, i)), 2000) : undefined;
      } catch {
        desc = undefined;
      }
      throw new FuzzFailure(target.name, seed, i, i, err, `${desc ?? ''}\n  (the batch ${first}..${last} failed with: ${String((batchError as Error)?.message ?? batchError).split('\n')[0]}; case ${i} alone fails too)`);
    }
  }
}

/** A thrown value is a Sluice error (any SLUICE_* code): what decoders may throw on bad input. */
export function isSluiceError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return err instanceof Error && typeof code === 'string' && code.startsWith('SLUICE_');
}

/** Fail unless `err` is a Sluice error with `code`. */
export function expectSluice(err: unknown, code: string, what: string): void {
  if (!isSluiceError(err) || (err as { code: string }).code !== code) {
    throw new Error(`${what} threw ${err instanceof Error ? `${err.constructor.name} ${String((err as { code?: unknown }).code)}: ${err.message}` : String(err)}, not a ${code} SluiceError`, { cause: err });
  }
}

export const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
