/**
 * bench/results/REPORT.md and its SVG charts: the object-store comparison as evaluators read it —
 * speed-up over S3 by size and pattern, closeness to the raw limits, latency, disk, memory, and
 * the KNIX-style run beside KNIX's published medians.
 */
import fs from 'node:fs';
import path from 'node:path';
import { size, type Case, type Report, type Speedup } from './report.js';
import { lineChart, type Series } from './svg.js';

/** KNIX workflowmesh, 5-step chain of CloudEvents on Kubernetes, median per hop, ms (DESIGN.md). */
export const KNIX_REFERENCE: Array<{ name: string; points: Array<[number, number]> }> = [
  { name: 'KNIX: Services', points: [[1024, 0.617], [1024 * 1024, 24.2], [40 * 1024 * 1024, 673]] },
  { name: 'KNIX: Serving', points: [[1024, 2.15]] },
  { name: 'KNIX: Eventing seq.', points: [[1024, 1.453]] },
  { name: 'KNIX: Eventing+Serving', points: [[1024, 4.594], [40 * 1024 * 1024, 1526]] },
];

/** The acceptance targets of the comparison (S3 e2e / direct e2e, fifo path, proactive). */
export const TARGETS: Array<{ label: string; pattern: Case['pattern']; hops: number; fanout: number; bytes: number; bound: number }> = [
  { label: '1 GiB, 1 hop', pattern: 'chain', hops: 1, fanout: 1, bytes: 2 ** 30, bound: 10 },
  { label: '1 GiB, 5-hop chain', pattern: 'chain', hops: 5, fanout: 1, bytes: 2 ** 30, bound: 10 },
  { label: '1 MiB, 5-hop chain', pattern: 'chain', hops: 5, fanout: 1, bytes: 2 ** 20, bound: 30 },
  { label: '1 GiB, broadcast 1→4', pattern: 'broadcast', hops: 1, fanout: 4, bytes: 2 ** 30, bound: 5 },
];

const num = (x: number | null | undefined, digits = 0): string => (x == null ? '–' : x.toFixed(digits));
const row = (cells: string[]): string => `| ${cells.join(' | ')} |`;
const patternName = (c: { pattern: string; hops: number; fanout: number }): string =>
  c.pattern === 'chain' ? `chain ${c.hops}` : c.pattern === 'broadcast' ? `broadcast 1→${c.fanout}` : c.pattern === 'gather' ? `gather ${c.fanout}→1` : `shuffle ${c.fanout}→${c.fanout}`;
/** The workflow throughput cases, failed ones included (a row that did not verify is shown as such, never left out); not the transport's or the balance section's, which have tables of their own. */
const flowCases = (r: Report): Case[] => r.cases.filter((c) => c.pattern !== 'transport' && c.pattern !== 'balance' && c.records === undefined);
/** Why a row is not verified: its errors, or the plain fact. */
const reasonOf = (x: { errors?: string[] }): string => (x.errors && x.errors.length > 0 ? [...new Set(x.errors.map((e) => e.split('\n')[0]!))].join('; ') : 'not every byte arrived intact (no error was reported)');
const disk = (b: number | null | undefined): string => (b == null ? 'n/a' : b === 0 ? '0' : b < 1e6 ? `${(b / 1e3).toFixed(0)} kB` : `${(b / 1e6).toFixed(0)} MB`);
const pathLabel = (c: { path: string; proactive: boolean }): string => `${c.path}${c.proactive ? '' : ' (on demand)'}`;

/**
 * The "of raw" cell of a workflow case: its MB/s over each raw limit of its topology, each ratio
 * named by the baseline it divides by. `raw-fifo` (for the 5-hop chain: `raw-chain5`) is the
 * topology built from plain FIFOs between Node processes, paired per repetition; `raw-chain5-c`
 * (5-hop chains only) is six plain processes joined by pipes, four of them `cat`, measured at the
 * same size in the same run (median over median).
 */
export function ofRaw(r: Report, c: Case): string {
  const parts: string[] = [];
  const paired = speedupOf(r, c, 'raw-fifo')?.value;
  const chain5 = c.pattern === 'chain' && c.hops === 5;
  if (paired != null) parts.push(`${num(paired, 2)} of ${chain5 ? 'raw-chain5' : 'raw-fifo'}`);
  const machine = chain5 ? r.baselines.find((b) => b.name === 'raw-chain5-c' && b.bytes === c.bytes && b.MBps) : undefined;
  if (machine && c.MBps != null) parts.push(`${num(c.MBps / machine.MBps!, 2)} of raw-chain5-c`);
  return parts.length > 0 ? parts.join('; ') : '–';
}

function speedupOf(r: Report, c: { pattern: string; hops: number; fanout: number; bytes: number; path: string; proactive: boolean }, over: Speedup['over']): Speedup | undefined {
  return r.speedups?.find((s) => s.over === over && s.pattern === c.pattern && s.hops === c.hops && s.fanout === c.fanout && s.bytes === c.bytes && s.path === c.path && s.proactive === c.proactive);
}

/** The acceptance lines: measured ratio against each target. */
export function acceptance(r: Report): string[] {
  const lines = ['| case | S3 e2e / fifo e2e (median of paired) | runs | target | result |', '|---|--:|---|---|---|'];
  for (const t of TARGETS) {
    const s = speedupOf(r, { ...t, path: 'fifo', proactive: true }, 's3');
    const failed = flowCases(r).filter((c) => c.pattern === t.pattern && c.hops === t.hops && c.fanout === t.fanout && c.bytes === t.bytes && c.proactive && (c.path === 'fifo' || c.path === 's3') && !c.verified);
    const result = failed.length > 0 ? `**not verified** (${failed.map((c) => c.path).join(', ')}: see "Not verified")` : s?.value == null ? 'not measured' : s.value >= t.bound ? 'met' : '**not met**';
    lines.push(row([t.label, num(s?.value, 1), s ? s.runs.map((x) => num(x, 1)).join(' / ') : 'not measured', `≥ ${t.bound}`, result]));
  }
  return lines;
}

export function renderWorkflowMarkdown(r: Report, command: string): string {
  const cases = flowCases(r);
  const sizes = [...new Set(cases.map((c) => c.bytes))].sort((a, b) => a - b);
  const shapes = [...new Map(cases.map((c) => [patternName(c), c])).values()];
  const out: string[] = [];
  const w = r.workflows;
  out.push(`# Sluice vs. object storage, ${r.machine.date}`, '');
  out.push(`Made by \`${command}\` on ${r.machine.cpus} × ${r.machine.cpu_model}, node ${r.machine.node}, Linux ${r.machine.kernel}.`);
  if (w) {
    out.push(`S3: ${w.s3}. Workflow sizes ${w.sizes.map(size).join(', ')}; repetitions ${w.reps.join(', ')} (per size, every path back to back within a repetition, ratios paired per repetition).`);
    if (w.cross_node) out.push(`Cross-node: ${w.cross_node}.`);
    out.push(`How: ${w.note}. Every step process is warm: before the clock starts it has moved 4 MiB through the same code over the medium its channels use, a FIFO or a Unix socket (S3 steps: one PUT and GET, keeping the connections), and its channels are open; the clock starts when the sources are told to go, the other steps already reading. Endpoints and the daemon's directory are on a tmpfs, as Sluice's runtime directory is; stores write to the disk.`);
  }
  out.push('');
  out.push('Paths: `fifo` = a Sluice run on this node\'s daemon, set up when the run is created (proactive), each channel a FIFO straight from producer to consumer; `relay` = the same through the daemon\'s relay; `unix` = Sluice\'s framed Unix-socket channels between the step processes (no daemon); `file` = the same workflow with every edge `via: s3` on the embedded directory store; `raw-fifo` = plain FIFOs, no framing: the raw limit of the topology (`raw-chain5` for the 5-hop chain); `ws` = a Sluice run across two nodes, every edge over the daemons\' peer link (producer → its daemon → WebSocket → the consumer\'s daemon → consumer); `s3` = store-and-forward as users do it today.', '');
  out.push('`bytes` is the data set: a chain\'s or broadcast\'s object (a broadcast delivers it to each of 4 consumers); a gather\'s 4 inputs together; a shuffle\'s 4 outputs together (16 parts). MB/s = bytes / e2e; e2e = first write of a source → last verified byte at the last sink; ttfb = first write → first byte at the latest sink to get one (in a chain, the first chunk through every hop). Every byte is verified at every step.', '');

  out.push('## Acceptance (fifo, proactive)', '', ...acceptance(r), '');
  const rawChain = r.baselines.find((b) => b.name === 'raw-chain5');
  const big = Math.max(0, ...sizes);
  const fifo5 = cases.find((c) => c.pattern === 'chain' && c.hops === 5 && c.bytes === big && c.path === 'fifo' && c.proactive);
  if (rawChain && fifo5) {
    const v = speedupOf(r, fifo5, 'raw-fifo');
    out.push(`Closeness to the machine at ${size(big)}, 5-hop chain: fifo ${num(fifo5.MBps)} MB/s against raw-chain5 ${num(rawChain.MBps)} MB/s (six plain processes joined by FIFOs, no framing) = **${num(v?.value, 2)}** of the raw limit (paired). On 2 cores six processes share two CPUs, so the raw chain itself is CPU-bound.`, '');
  }
  const rawC = r.baselines.filter((b) => b.name === 'raw-chain5-c');
  if (rawC.length > 0) {
    out.push(`raw-chain5-c (Python writer → 4 × cat → Python reader, median of 7): ${rawC.map((b) => `${size(b.bytes)} ${b.verified ? `${num(b.e2e_ms, 1)} ms, ${num(b.MBps)} MB/s` : 'failed'}`).join('; ')}.`, '');
  }

  out.push('## Speed-up over S3 (S3 e2e / path e2e, median of paired repetitions)', '');
  out.push(row(['pattern', 'path', ...sizes.map(size)]), row(['---', '---', ...sizes.map(() => '--:')]));
  for (const shape of shapes) {
    const paths = [...new Map(cases.filter((c) => patternName(c) === patternName(shape) && c.path !== 's3').map((c) => [pathLabel(c), c])).values()];
    for (const p of paths) {
      out.push(row([patternName(shape), pathLabel(p), ...sizes.map((b) => num(speedupOf(r, { ...p, bytes: b }, 's3')?.value, 1))]));
    }
  }
  out.push('', '![speed-up over S3 vs size](speedup-vs-size.svg)', '', '![throughput vs the raw limit](throughput-vs-raw.svg)', '');

  out.push('## Every case', '');
  out.push(row(['pattern', 'path', 'bytes', 'e2e ms', 'ttfb ms', 'MB/s', 'of raw', 'disk written', 'daemon MB', 'via daemon', 'verified']));
  out.push(row(['---', '---', '--:', '--:', '--:', '--:', '--:', '--:', '--:', '--:', '---']));
  for (const c of [...cases].sort((a, b) => patternName(a).localeCompare(patternName(b)) || a.bytes - b.bytes)) {
    out.push(
      row([
        patternName(c),
        pathLabel(c),
        size(c.bytes),
        num(c.e2e_ms, c.e2e_ms !== null && c.e2e_ms < 100 ? 1 : 0),
        num(c.ttfb_ms, 2),
        num(c.MBps),
        ofRaw(r, c),
        c.verified ? disk(c.disk_bytes) : '–',
        c.verified && c.daemon_rss_mb ? `${c.daemon_rss_mb}${c.path === 's3' ? ' (s3rver)' : ''}` : '–',
        c.relayed_channels ?? '–',
        c.verified ? 'yes' : '**NO** (see "Not verified")',
      ]),
    );
  }
  out.push('', 'of raw = MB/s over the raw limit each ratio names: `raw-fifo` = the same topology from plain FIFOs between Node processes (`raw-chain5` for the 5-hop chain), paired per repetition; `raw-chain5-c` = six already-running processes joined by pipes, the middle four coreutils `cat`, a Python writer and reader (bench/raw-chain5-c.py), median of 7 at the same size: the machine\'s limit with no Node in it.', '');
  out.push('disk written = bytes the processes involved (daemon, s3rver, steps) sent to storage while the case ran (/proc/PID/io write_bytes), measured, not assumed; s3rver writes a multipart upload twice (the parts, then the assembled object). daemon MB = the peak resident memory of the daemon (s3 rows: of s3rver) during the case (VmHWM, reset before each case). via daemon = the run\'s channels that went through the daemon (relay or store), of all.', '');

  const od = cases.filter((c) => !c.proactive);
  if (od.length > 0) {
    out.push('## Set-up: proactive vs on demand (fifo chains, time to first byte)', '');
    out.push(row(['pattern', 'bytes', 'proactive ttfb ms', 'on demand ttfb ms', 'proactive e2e ms', 'on demand e2e ms']), row(['---', '--:', '--:', '--:', '--:', '--:']));
    for (const c of od) {
      const p = cases.find((x) => x.proactive && x.path === c.path && patternName(x) === patternName(c) && x.bytes === c.bytes);
      out.push(row([patternName(c), size(c.bytes), num(p?.ttfb_ms, 2), num(c.ttfb_ms, 2), num(p?.e2e_ms, 1), num(c.e2e_ms, 1)]));
    }
    out.push('', 'On demand, the source creates the run when it starts (the daemon makes the run directory, its FIFOs and manifest), then every step joins it and opens its channels; proactively all of that happened before. "On demand" is the run created at the moment the producer starts (late binding would let the steps connect even earlier; they start after it here).', '');
  }

  const lat = r.cases.filter((c) => c.pattern === 'chain' && c.hop_us);
  if (lat.length > 0) {
    out.push('## Per-hop latency, 1 KiB records through a 5-hop chain (HDR histogram, µs)', '');
    out.push(row(['path', 'records', 'p50', 'p90', 'p99', 'verified']), row(['---', '--:', '--:', '--:', '--:', '---']));
    for (const c of lat) out.push(row([c.path, String(c.records ?? '–'), num(c.hop_us?.p50, 1), num(c.hop_us?.p90, 1), num(c.hop_us?.p99, 1), c.verified ? 'yes' : '**NO**']));
    out.push('', 'One record in flight at a time (the sink answers each on a side socket); each step records the delay from the previous step\'s send. S3: PUT then GET per hop in one process, no notification delay — S3 at its best.', '');
  }

  if (r.knix && r.knix.length > 0) {
    out.push('## KNIX-style run: CloudEvents through a 5-step chain, per hop (ms)', '');
    const ks = [...new Set(r.knix.map((k) => k.bytes))].sort((a, b) => a - b);
    const kp = [...new Set(r.knix.map((k) => k.path))];
    out.push(row(['event size', ...kp.map((p) => `${p} p50 (p90)`), 'KNIX Services', 'KNIX Eventing+Serving']), row(['--:', ...kp.map(() => '--:'), '--:', '--:']));
    const ref = (name: string, b: number): string => num(KNIX_REFERENCE.find((k) => k.name === name)?.points.find(([x]) => x === b)?.[1], 3);
    for (const b of ks) {
      out.push(row([size(b), ...kp.map((p) => {
        const k = r.knix!.find((x) => x.bytes === b && x.path === p);
        return k ? (k.verified ? `${num(k.hop_ms.p50, 3)} (${num(k.hop_ms.p90, 3)})` : '**NOT VERIFIED**') : '–';
      }), ref('KNIX: Services', b), ref('KNIX: Eventing+Serving', b)]));
    }
    out.push('', 'Each step parses the JSON document, changes an attribute, serialises it and sends it on; a hop is the sender\'s serialisation + transfer + the receiver\'s parse. KNIX\'s figures are on a Kubernetes cluster (published medians; DESIGN.md), ours on one machine: the comparison shows orders of magnitude, not a controlled race. Also: 1 KiB Knative Serving 2.150 ms, Knative Eventing sequence 1.453 ms.', '');
    out.push('![per-hop latency vs size](hop-latency-vs-size.svg)', '');
  }

  const unverified = notVerified(r);
  if (unverified.length > 0) {
    out.push('## Not verified', '', 'These rows did not deliver every byte intact (or did not finish); their figures are left out of every table and ratio above.', '', ...unverified, '');
  }

  const rss = rssAcrossSizes(r);
  if (rss.length > 0) {
    out.push('## Daemon memory across sizes', '', ...rss, '');
  }
  return out.join('\n') + '\n';
}

/** One line per row that did not verify, with the reason: workflow cases, latency rows, KNIX rows, baselines. */
export function notVerified(r: Report): string[] {
  const lines: string[] = [];
  for (const c of r.cases.filter((x) => x.pattern !== 'transport' && !x.verified)) {
    const what = c.records === undefined ? `${patternName(c)} ${pathLabel(c)} ${size(c.bytes)}` : `latency, ${patternName(c)} ${c.path}, ${size(c.bytes)} records`;
    lines.push(`- ${what}: ${reasonOf(c)}`);
  }
  for (const k of (r.knix ?? []).filter((x) => !x.verified)) lines.push(`- KNIX-style, ${size(k.bytes)} events on ${k.path}: ${reasonOf(k)}`);
  for (const b of r.baselines.filter((x) => !x.verified && (x.name === 'raw-chain5' || x.name === 'raw-chain5-c'))) lines.push(`- baseline ${b.name}: ${reasonOf(b)}`);
  return lines;
}

/** Daemon peak RSS of each (pattern, path) at its smallest ≥ 1 GiB size against its largest. */
function rssAcrossSizes(r: Report): string[] {
  const lines: string[] = [];
  for (const c of flowCases(r).filter((x) => x.path !== 's3' && x.daemon_rss_mb > 0)) {
    const same = flowCases(r).filter((x) => x.verified && x.path === c.path && x.proactive === c.proactive && patternName(x) === patternName(c) && x.bytes >= 2 ** 30);
    const lo = same.reduce<Case | undefined>((a, b) => (!a || b.bytes < a.bytes ? b : a), undefined);
    const hi = same.reduce<Case | undefined>((a, b) => (!a || b.bytes > a.bytes ? b : a), undefined);
    if (!lo || !hi || lo === hi || c !== hi) continue;
    const ratio = hi.daemon_rss_mb / lo.daemon_rss_mb;
    lines.push(`- ${patternName(c)} ${pathLabel(c)}: daemon peak ${lo.daemon_rss_mb} MB at ${size(lo.bytes)}, ${hi.daemon_rss_mb} MB at ${size(hi.bytes)}: ${((ratio - 1) * 100).toFixed(0)}% (${Math.abs(ratio - 1) <= 0.2 ? 'within' : '**outside**'} 20%).`);
  }
  return lines;
}

export function charts(r: Report): Record<string, string> {
  const cases = flowCases(r);
  const sizeFmt = (x: number): string => size(x);
  const speedSeries: Series[] = [...new Map(cases.filter((c) => c.path === 'fifo' && c.proactive).map((c) => [patternName(c), c])).values()].map((shape) => ({
    name: `${patternName(shape)} (fifo)`,
    points: cases.filter((c) => c.path === 'fifo' && c.proactive && patternName(c) === patternName(shape)).map((c) => [c.bytes, speedupOf(r, c, 's3')?.value ?? null]),
  }));
  const chain5 = cases.filter((c) => c.pattern === 'chain' && c.hops === 5 && c.proactive);
  const thrSeries: Series[] = [...new Set(chain5.map((c) => c.path))].map((p) => ({
    name: p === 'raw-fifo' ? 'raw-chain5 (limit)' : p,
    dashed: p === 'raw-fifo',
    points: chain5.filter((c) => c.path === p).map((c) => [c.bytes, c.MBps]),
  }));
  const knixPaths = [...new Set((r.knix ?? []).map((k) => k.path))];
  const latSeries: Series[] = [
    ...knixPaths.map((p) => ({ name: `${p} (this run)`, points: (r.knix ?? []).filter((k) => k.path === p).map((k): [number, number | null] => [k.bytes, k.hop_ms.p50]) })),
    ...KNIX_REFERENCE.map((k) => ({ name: k.name, points: k.points, markersOnly: true })),
  ];
  return {
    'speedup-vs-size.svg': lineChart({ title: 'Speed-up over S3 (S3 e2e / Sluice e2e)', xLabel: 'data size', yLabel: 'speed-up (×, log)', series: speedSeries, logX: true, logY: true, formatX: sizeFmt, hline: { y: 1, label: 'S3' } }),
    'throughput-vs-raw.svg': lineChart({ title: '5-hop chain throughput vs the raw limit', xLabel: 'data size', yLabel: 'MB/s (log)', series: thrSeries, logX: true, logY: true, formatX: sizeFmt }),
    'hop-latency-vs-size.svg': lineChart({ title: 'Per-hop latency, CloudEvents, 5-step chain (median)', xLabel: 'event size', yLabel: 'ms per hop (log)', series: latSeries, logX: true, logY: true, formatX: sizeFmt }),
  };
}

/** Write REPORT.md and the charts into `dir`. */
export function writeReport(r: Report, dir: string, command: string): void {
  fs.writeFileSync(path.join(dir, 'REPORT.md'), renderWorkflowMarkdown(r, command));
  for (const [name, svg] of Object.entries(charts(r))) fs.writeFileSync(path.join(dir, name), svg);
}
