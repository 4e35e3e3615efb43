#!/usr/bin/env python3
"""raw-chain5-c: the machine's limit for a 5-hop chain of processes.

    python3 bench/raw-chain5-c.py BYTES [REPS]   # REPS default 7

Six already-running processes joined by pipes: this writer, four coreutils `cat`, a reader (a
Python child). Each repetition starts the six, warms them (1 MiB through the whole chain, which
the reader acknowledges) and only then starts the clock: from the writer's first write of BYTES
to the reader's last byte read (CLOCK_MONOTONIC, one clock for every process on Linux).
Prints one JSON object: {"bytes", "runs_ms", "median_ms", "MBps"} (MB = 10^6 bytes).
"""
import json
import os
import statistics
import subprocess
import sys
import time

WARM = 1 << 20
CHUNK = 1 << 20

READER = r"""
import os, sys, time
warm, total = int(sys.argv[1]), int(sys.argv[2])
fd = sys.stdin.fileno()
buf = bytearray(1 << 20)
view = memoryview(buf)
left = warm
while left > 0:
    n = os.readv(fd, [view[:min(left, len(buf))]])
    if n == 0: sys.exit('EOF during warm-up')
    left -= n
os.write(1, b'warm\n')
got = 0
while got < total:
    n = os.readv(fd, [view])
    if n == 0: break
    got += n
t1 = time.monotonic_ns()
os.write(1, f'{t1} {got}\n'.encode())
"""


def once(total: int) -> float:
    # the chain, built from the reader end backwards: cat4 | reader, cat3 | cat4, ...
    r, w = os.pipe()
    reader = subprocess.Popen([sys.executable, '-c', READER, str(WARM), str(total)], stdin=r, stdout=subprocess.PIPE)
    os.close(r)
    cats = []
    upstream_w = w
    for _ in range(4):
        r, w = os.pipe()
        cats.append(subprocess.Popen(['cat'], stdin=r, stdout=upstream_w))
        os.close(r)
        os.close(upstream_w)
        upstream_w = w
    out = upstream_w
    data = memoryview(b'\x5a' * CHUNK)
    left = WARM
    while left > 0:
        left -= os.write(out, data[:min(left, CHUNK)])
    if reader.stdout.readline().strip() != b'warm':
        raise SystemExit('the reader did not warm up')
    t0 = time.monotonic_ns()
    left = total
    while left > 0:
        left -= os.write(out, data[:min(left, CHUNK)])
    os.close(out)
    t1, got = (int(x) for x in reader.stdout.readline().split())
    for p in cats + [reader]:
        p.wait()
    if got != total:
        raise SystemExit(f'the reader got {got} of {total} bytes')
    return (t1 - t0) / 1e6


def main() -> None:
    total = int(sys.argv[1])
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    runs = [once(total) for _ in range(reps)]
    med = statistics.median(runs)
    print(json.dumps({'bytes': total, 'runs_ms': [round(x, 3) for x in runs], 'median_ms': round(med, 3), 'MBps': round(total / 1e6 / (med / 1000), 1)}))


if __name__ == '__main__':
    main()
