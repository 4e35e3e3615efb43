/**
 * What the kernel counts for a process (Linux /proc): bytes it sent to the storage layer and its
 * peak resident memory. The benchmark measures disk and memory with these rather than assume them.
 */
import fs from 'node:fs';
import os from 'node:os';

const TMPFS_MAGIC = 0x01021994;

/**
 * Where the benchmark keeps what a Sluice node keeps in its runtime directory — the daemons'
 * directories (run directories, FIFOs, manifests, state files) and every endpoint: a tmpfs, as
 * Sluice's default ($XDG_RUNTIME_DIR/sluice) is where it exists. On a disk, creating and removing
 * those files dirties directory blocks, which /proc/PID/io counts as write_bytes (a few kB per
 * case), so a direct path would seem to write to disk while no byte of data does. Stores (the
 * directory store, s3rver) stay on the disk: their writes are the data. `tmpfs: false` when no
 * tmpfs is writable here (the scratch directory is used, and the report says so).
 */
export function runtimeBase(): { dir: string; tmpfs: boolean } {
  const candidates = [process.env.XDG_RUNTIME_DIR, '/dev/shm', `/run/user/${process.getuid?.() ?? 0}`];
  for (const dir of candidates) {
    if (!dir || !dir.startsWith('/')) continue;
    try {
      if (fs.statfsSync(dir).type !== TMPFS_MAGIC) continue;
      fs.accessSync(dir, fs.constants.W_OK);
      return { dir, tmpfs: true };
    } catch {
      // not there, or not ours
    }
  }
  return { dir: os.tmpdir(), tmpfs: false };
}

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
