/**
 * A daemon-wide memory budget: the bytes that buffers of every stream on a daemon may hold
 * together, whatever the number of streams.
 *
 * Each stream that buffers (a relayed stream waiting for its consumer, a cross-node stream's
 * replay tail, a peer connection's receive window) takes a **grant** from the budget when it
 * starts and gives it back when it ends; its buffer is at most its grant. A stream asks for what
 * it would like (`want`) and takes less when the budget is short, down to `floor`: the first
 * streams get full buffers, later ones smaller ones (a small buffer spills or back-pressures
 * sooner, it never grows memory), and a stream that cannot get even `floor` waits — back-pressure
 * on its producer — until grants are given back. So the sum of grants never exceeds `limit`.
 *
 * A grant is an eighth of what is left at most (never less than `floor`): one stream alone may not
 * take the whole budget from the streams that arrive after it.
 */
import { ConnectError, ErrorCodes } from './errors.js';

export interface Grant {
  /** bytes granted */
  readonly bytes: number;
  /** Give the bytes back. Idempotent. */
  release(): void;
  /** Keep only `bytes` of the grant (no more than it has), giving the rest back. */
  shrink(bytes: number): void;
}

interface Waiter {
  want: number;
  floor: number;
  resolve: (grant: Grant) => void;
  reject: (err: Error) => void;
}

export class MemoryBudget {
  private usedBytes = 0;
  private peakBytes = 0;
  private readonly waiting: Waiter[] = [];

  /** @param limit bytes that every grant together may hold */
  constructor(readonly limit: number) {}

  /** Bytes granted now. */
  get used(): number {
    return this.usedBytes;
  }

  /** The most bytes granted at once since the start. */
  get peak(): number {
    return this.peakBytes;
  }

  /** Streams waiting for a grant now. */
  get queued(): number {
    return this.waiting.length;
  }

  /** A grant of up to `want` bytes (at least `floor`) now, or undefined when not even `floor` fits. */
  tryTake(want: number, floor = want): Grant | undefined {
    if (this.waiting.length > 0) return undefined; // first come, first served
    return this.grantNow(want, floor);
  }

  /**
   * A grant of up to `want` bytes, at least `floor`, waiting in line while not even `floor` fits.
   * Rejects with SLUICE_UNAVAILABLE, naming the budget, when `signal` fires first.
   */
  take(want: number, floor: number, signal?: AbortSignal): Promise<Grant> {
    const now = this.tryTake(want, floor);
    if (now) return Promise.resolve(now);
    return new Promise<Grant>((resolve, reject) => {
      const waiter: Waiter = { want, floor, resolve, reject };
      const onAbort = (): void => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(
          new ConnectError(ErrorCodes.UNAVAILABLE, `the daemon's memory budget (${this.limit} bytes) is held by other streams: ${this.usedBytes} bytes granted, ${this.waiting.length} streams waiting`, {
            cause: signal?.reason,
            details: { budget: this.limit, used: this.usedBytes },
          }),
        );
        this.wake();
      };
      waiter.resolve = (grant) => {
        signal?.removeEventListener('abort', onAbort);
        resolve(grant);
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  private grantNow(want: number, floor: number): Grant | undefined {
    const free = this.limit - this.usedBytes;
    const bytes = Math.min(want, Math.max(floor, Math.floor(free / 8)));
    if (bytes > free || bytes <= 0) return undefined;
    this.usedBytes += bytes;
    this.peakBytes = Math.max(this.peakBytes, this.usedBytes);
    let held = bytes;
    const grant = {
      bytes,
      release: () => grant.shrink(0),
      shrink: (keep: number) => {
        const back = held - Math.max(0, Math.min(held, keep));
        if (back === 0) return;
        held -= back;
        grant.bytes = held;
        this.usedBytes -= back;
        this.wake();
      },
    };
    return grant;
  }

  private wake(): void {
    while (this.waiting.length > 0) {
      const next = this.waiting[0]!;
      const grant = this.grantNow(next.want, next.floor);
      if (!grant) return;
      this.waiting.shift();
      next.resolve(grant);
    }
  }
}
