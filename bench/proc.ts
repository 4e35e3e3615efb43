/**
 * What the kernel counts for a process (Linux /proc): bytes it sent to the storage layer and its
 * peak resident memory. The benchmark measures disk and memory with these rather than assume them.
 */
import fs from 'node:fs';

/** Bytes `pid` caused to be written to storage so far (`write_bytes` of /proc/PID/io); 0 when unreadable. */
export function writeBytes(pid: number | 'self'): number {
  try {
    return Number(/^write_bytes:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** Peak resident memory of `pid` since it started or since `resetPeakRss`, MB (VmHWM); 0 when unreadable. */
export function peakRssMb(pid: number): number {
  try {
    const kb = Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
    return Math.round((kb * 1024) / 1e6);
  } catch {
    return 0;
  }
}

/** Start `pid`'s peak resident memory over from its current size (writes 5 to /proc/PID/clear_refs). */
export function resetPeakRss(pid: number): void {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    // not allowed here: the peak stays the process's lifetime peak, which is still an upper bound
  }
}
