/**
 * The Node options the daemon is meant to run with; `sluice` (the CLI's shebang, hence the image's
 * entrypoint) passes them, and so do the tests and benchmarks that start daemons.
 *
 * `--single-threaded-gc`: V8 does its garbage collection on the main thread only, with no helper
 * threads for concurrent marking, sweeping or parallel scavenges. The daemon's heap is small
 * (~16 MB) but it allocates a buffer for every socket read; when the helper threads lose the CPU
 * to the functions on the node (always, on a busy 2-core machine), memory of dead buffers is handed
 * back late, V8 sees "external memory pressure" and runs a full mark-compact every 50–100 ms. On
 * the cross-node benchmark that was ~150 mark-compacts per 3 GiB in the consumer's daemon and half
 * of both daemons' CPU; with this option, 1 each, daemon CPU from 11–15 s to 6–7 s, and ws
 * throughput from 0.4–0.6 to 0.6–0.9 of the raw relay baseline. It also keeps the daemon off the
 * cores its functions run on.
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ['--single-threaded-gc'];

/** Is this process running with them? */
export function hasDaemonNodeFlags(): boolean {
  return DAEMON_NODE_FLAGS.every((flag) => process.execArgv.includes(flag));
}
