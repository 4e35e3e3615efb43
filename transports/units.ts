/**
 * The one way Sluice writes durations and sizes, for the daemon's options, the CLI's flags and the
 * client's environment alike.
 *
 * - A size is a whole number of bytes, or a number with KiB, MiB or GiB (`64KiB`, `8MiB`,
 *   `1.5GiB`; case-insensitive; `B` is bytes). `8MB` is refused: say which of 10^6 and 2^20 you mean.
 * - A duration is a number with ms, s, m, h or d (`500ms`, `30s`, `2m`, `24h`, `7d`); a plain
 *   number is in the option's own unit (milliseconds or seconds, as documented with the option).
 *
 * Pure; no I/O. A value that is not one throws a SLUICE_INVALID RequestError whose message says
 * what is wrong and how to write it, without the option's name: the caller adds that.
 */
import { ErrorCodes, RequestError } from './errors.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const SECOND = 1000;
export const MINUTE = 60 * SECOND;
export const HOUR = 60 * MINUTE;
export const DAY = 24 * HOUR;

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, kib: KiB, mib: MiB, gib: GiB };
const DURATION_UNITS: Record<string, number> = { ms: 1, s: SECOND, m: MINUTE, h: HOUR, d: DAY };

function problem(message: string): never {
  throw new RequestError(ErrorCodes.INVALID, message);
}

/** Parses a size into bytes, in `min..max` bytes. A number is taken as bytes. */
export function parseSize(v: unknown, min: number, max: number): number {
  const usage = `use bytes or a number with KiB, MiB or GiB (e.g. ${formatBytes(8 * MiB)})`;
  let bytes: number;
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) problem(`not a whole number of bytes; ${usage}`);
    bytes = v;
  } else if (typeof v === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(v);
    const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
    if (!m || unit === undefined) problem(`not a size; ${usage}`);
    if (unit === 1 && m[1]!.includes('.')) problem(`not a whole number of bytes; ${usage}`);
    bytes = Math.floor(Number(m[1]) * unit);
  } else {
    problem(`not a size; ${usage}`);
  }
  if (bytes < min || bytes > max) problem(`is out of range; use ${formatBytes(min)} to ${formatBytes(max)}`);
  return bytes;
}

/** How a duration option in `base` units is written, for messages and help: "milliseconds or a number with ms, s, m or h (e.g. 30s)". */
export function durationUsage(base: 'ms' | 's', example: string): string {
  return base === 'ms' ? `milliseconds or a number with ms, s, m or h (e.g. ${example})` : `seconds or a number with s, m, h or d (e.g. ${example})`;
}

/**
 * Parses a duration into `base` units (milliseconds or seconds: what a plain number means);
 * `min` and `max` are in milliseconds. `usage` is how the option is written (see durationUsage).
 */
export function parseDuration(v: unknown, base: 'ms' | 's', min: number, max: number, usage: string): number {
  const baseMs = DURATION_UNITS[base]!;
  let ms: number;
  if (typeof v === 'number') {
    if (!Number.isFinite(v) || v < 0) problem(`not a duration; use ${usage}`);
    ms = v * baseMs;
  } else if (typeof v === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(v);
    const unit = m ? (m[2] === '' ? baseMs : DURATION_UNITS[m[2]!.toLowerCase()]) : undefined;
    if (!m || unit === undefined) problem(`not a duration; use ${usage}`);
    ms = Number(m[1]) * unit;
  } else {
    problem(`not a duration; use ${usage}`);
  }
  if (ms < min || ms > max) problem(`is out of range; use ${formatDuration(min)} to ${formatDuration(max)}`);
  const value = ms / baseMs;
  if (!Number.isInteger(value)) problem(`is not a whole number of ${base === 'ms' ? 'milliseconds' : 'seconds'}; use ${usage}`);
  return value;
}

/** `8MiB`, `64KiB`, or `N bytes`. */
export function formatBytes(n: number): string {
  for (const [unit, size] of [
    ['GiB', GiB],
    ['MiB', MiB],
    ['KiB', KiB],
  ] as const) {
    if (n >= size && n % size === 0) return `${n / size}${unit}`;
  }
  return `${n} bytes`;
}

/** `30d`, `24h`, `2m`, `30s` or `N ms` written as `Nms`. */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [
    ['d', DAY],
    ['h', HOUR],
    ['m', MINUTE],
    ['s', SECOND],
  ] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
