/** The results' JSON shape (DESIGN.md, "Benchmarks") and its Markdown rendering. */

/** CPU time of each side during a throughput run, ms (medians) */
export interface SideCpuMs {
  consumer: { user: number | null; system: number | null };
  producer: { user: number | null; system: number | null };
}

export interface Baseline {
  name: string;
  MBps: number | null;
  /** per repetition, in run order; null where the run failed */
  MBps_runs: Array<number | null>;
  bytes: number;
  e2e_ms?: number | null;
  ttfb_ms?: number | null;
  cpu_ms?: SideCpuMs | undefined;
  hop_us_p50?: number | null;
  hop_us_p90?: number | null;
  hop_us_p99?: number | null;
  /** per latency round, in run order; null where the round failed */
  hop_us_p50_runs?: Array<number | null>;
  hop_us_rounds?: Array<Percentiles | null>;
  verified: boolean;
  errors?: string[];
}

/** One-way latency percentiles, µs. In a result row, each is the median over rounds of that round's percentile. */
export interface Percentiles {
  p50: number | null;
  p90: number | null;
  p99: number | null;
}

/** One row per measurement: a throughput row (hop_us null) or a 1 KiB latency row (MBps null). */
export interface Case {
  /** `transport`: one framed channel between two processes; the others are workflow patterns of step processes */
  pattern: 'transport' | 'chain' | 'broadcast' | 'gather' | 'shuffle' | 'balance';
  hops: number;
  fanout: number;
  path: string;
  /** cross-node: producer and consumer in two network namespaces joined by veth links and a bridge */
  placement: 'same-node' | 'cross-node';
  bytes: number;
  e2e_ms: number | null;
  ttfb_ms: number | null;
  MBps: number | null;
  MBps_runs?: Array<number | null>;
  cpu_ms?: SideCpuMs | undefined;
  hop_us: Percentiles | null;
  /** the largest one-way latency seen in any round */
  hop_us_max?: number | null;
  /** per latency round, in run order; null where the round failed */
  hop_us_p50_runs?: Array<number | null>;
  hop_us_rounds?: Array<Percentiles | null>;
  /** measured records per latency round (after the warm-up ones) */
  records?: number;
  rounds?: number;
  disk_bytes: number;
  daemon_rss_mb: number;
  proactive: boolean;
  verified: boolean;
  errors?: string[];
  /** workflow cases: bytes the sinks received together (a broadcast delivers `bytes` to each consumer) */
  delivered_bytes?: number;
  e2e_ms_runs?: Array<number | null>;
  ttfb_ms_runs?: Array<number | null>;
  /** channels of the run that went through the daemon (relay or store), of all its channels */
  relayed_channels?: string;
  /** balance cases: the edge's routing policy */
  policy?: string;
  /** balance cases: runs one at a time (`none`) or all at once at one node, more than its replica takes (`saturated`) */
  load?: 'none' | 'saturated';
  /** balance cases: runs in the case */
  runs?: number;
  /** balance cases: share of streams delivered to a consumer instance on the producer's node */
  local_share?: number;
  /** balance cases with affinity: the most streams one consumer instance got over the mean */
  max_load_ratio?: number;
}

/** A workflow case against another path of the same case (pattern, size), paired per repetition. */
export interface Speedup {
  pattern: Case['pattern'];
  hops: number;
  fanout: number;
  bytes: number;
  path: string;
  /** `s3`: S3 e2e / this path's e2e (the speed-up); `raw-fifo`: this path's MB/s / the raw limit's */
  over: 's3' | 'raw-fifo';
  proactive: boolean;
  value: number | null;
  runs: Array<number | null>;
}

/** The KNIX-style run: CloudEvents through a 5-step chain, per hop. */
export interface KnixRow {
  bytes: number;
  path: string;
  events: number;
  hop_ms: Percentiles;
  verified: boolean;
  errors?: string[];
}

export interface Report {
  machine: {
    cpus: number;
    node: string;
    date: string;
    cpu_model: string;
    kernel: string;
    mode: string;
    /** throughput repetitions */
    reps: number;
    latency_rounds?: number;
    /** measured 1 KiB records per latency run, and the warm-up records before them */
    latency_records?: number;
    latency_warmup?: number;
    /** whether the cross-node rows were measured, and how (or why not) */
    cross_node?: { measured: boolean; note: string };
  };
  baselines: Baseline[];
  cases: Case[];
  ratios?: Ratio[];
  speedups?: Speedup[];
  knix?: KnixRow[];
  /** how the workflow section ran: repetitions per size, the S3 service */
  /** `cross_node`: how the `ws` path's two nodes were made, or why it was not measured */
  workflows?: { sizes: number[]; reps: number[]; s3: string; note: string; cross_node?: string };
}

export interface Ratio {
  name: string;
  /**
   * The headline, judged against the target: the median of the paired ratios in `runs`. Each
   * repetition (throughput) or round (latency) runs the raw baseline and the framed path back to
   * back, so their ratio cancels most of the machine's minute-to-minute drift.
   */
  value: number | null;
  /** framed median / raw median: the two medians may come from different moments of the run */
  ratio_of_medians: number | null;
  /** the paired ratio of each repetition or round, in run order; null where either run failed */
  runs: Array<number | null>;
  /** what a pair is: a throughput repetition or a latency round */
  paired_by: 'repetition' | 'round';
  /** absent: reported for information, no target yet */
  target?: { op: '>=' | '<='; bound: number };
  pass?: boolean;
}

const div = (a: number | null | undefined, b: number | null | undefined): number | null => (a == null || b == null || b === 0 ? null : Number((a / b).toFixed(3)));
const divRuns = (a: Array<number | null> = [], b: Array<number | null> = []): Array<number | null> => a.map((x, i) => div(x, b[i]));

export function median(values: number[]): number | null {
  if (values.length === 0) return null;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function ratio(
  name: string,
  paired_by: Ratio['paired_by'],
  a: number | null | undefined,
  b: number | null | undefined,
  runs: Array<number | null>,
  target?: Ratio['target'],
): Ratio {
  const paired = median(runs.filter((x): x is number => x !== null));
  const value = paired === null ? null : Number(paired.toFixed(3));
  const r: Ratio = { name, value, ratio_of_medians: div(a, b), runs, paired_by };
  if (!target) return r;
  return { ...r, target, pass: value !== null && (target.op === '>=' ? value >= target.bound : value <= target.bound) };
}

/**
 * Sluice's framed paths against the raw baseline of the same medium, and its cross-node path
 * against the same topology built from plain processes (and against plain TCP), measured in
 * the same run.
 */
export function computeRatios(report: Pick<Report, 'baselines' | 'cases'>): Ratio[] {
  const out: Ratio[] = [];
  for (const path of ['unix', 'fifo']) {
    const raw = report.baselines.find((b) => b.name === `raw-${path}`);
    const row = report.cases.find((c) => c.path === path && c.hop_us === null);
    if (raw && row) out.push(ratio(`${path} / raw-${path} MB/s`, 'repetition', row.MBps, raw.MBps, divRuns(row.MBps_runs, raw.MBps_runs), { op: '>=', bound: 0.85 }));
  }
  for (const path of ['unix', 'fifo']) {
    const raw = report.baselines.find((b) => b.name === `raw-${path}`);
    const row = report.cases.find((c) => c.path === path && c.hop_us !== null);
    if (!raw || !row) continue;
    const target = path === 'unix' ? ({ op: '<=', bound: 1.2 } as const) : undefined;
    out.push(ratio(`${path} / raw-${path} 1 KiB hop p50`, 'round', row.hop_us?.p50, raw.hop_us_p50, divRuns(row.hop_us_p50_runs, raw.hop_us_p50_runs), target));
  }
  const wsBytes = report.cases.find((c) => c.path === 'ws' && c.hop_us === null);
  const wsHop = report.cases.find((c) => c.path === 'ws' && c.hop_us !== null);
  const against: Array<[string, { MBps?: Ratio['target']; hop?: Ratio['target'] }]> = [
    ['raw-relay-veth', { MBps: { op: '>=', bound: 0.7 }, hop: { op: '<=', bound: 1.3 } }],
    ['raw-tcp-veth', {}],
  ];
  for (const [name, targets] of against) {
    const raw = report.baselines.find((b) => b.name === name);
    if (!raw) continue;
    if (wsBytes) out.push(ratio(`ws / ${name} MB/s`, 'repetition', wsBytes.MBps, raw.MBps, divRuns(wsBytes.MBps_runs, raw.MBps_runs), targets.MBps));
    if (wsHop) out.push(ratio(`ws / ${name} 1 KiB hop p50`, 'round', wsHop.hop_us?.p50, raw.hop_us_p50, divRuns(wsHop.hop_us_p50_runs, raw.hop_us_p50_runs), targets.hop));
  }
  return out;
}

const num = (x: number | null | undefined, digits = 0): string => (x == null ? '–' : x.toFixed(digits));
const runs = (xs: Array<number | null> | undefined): string => (xs ? xs.map((x) => num(x)).join(' / ') : '');
const row = (cells: string[]): string => `| ${cells.join(' | ')} |`;
const yes = (ok: boolean): string => (ok ? 'yes' : '**NO**');
export const size = (bytes: number): string =>
  bytes >= 1 << 30 ? `${bytes / (1 << 30)} GiB` : bytes >= 1 << 20 ? `${bytes / (1 << 20)} MiB` : bytes >= 1 << 10 ? `${bytes / (1 << 10)} KiB` : `${bytes} B`;

/** Bytes per throughput run: the same for every throughput row. */
const throughputBytes = (report: Report): number => report.cases.find((c) => c.hop_us === null)?.bytes ?? report.baselines[0]?.bytes ?? 0;

export function renderMarkdown(report: Report): string {
  const m = report.machine;
  const lines = [
    `# Sluice bench, ${m.date}`,
    '',
    `${m.mode}: ${m.reps} throughput repetition(s) of ${size(throughputBytes(report))}` +
      (m.latency_rounds ? `, ${m.latency_rounds} latency round(s) of ${m.latency_records} + ${m.latency_warmup} warm-up 1 KiB records per subject` : '') +
      `; node ${m.node}, ${m.cpus} × ${m.cpu_model}, Linux ${m.kernel}.`,
    ...(m.cross_node ? [`Cross-node: ${m.cross_node.measured ? '' : 'not measured, '}${m.cross_node.note}.`] : []),
    'MB = 10^6 bytes; MB/s = median over repetitions (runs listed in order); hop = one-way latency of a 1 KiB record,',
    "each percentile the median over rounds of that round's percentile.",
    '',
    '**Ratio value = median of the paired ratios**: each throughput repetition and each latency round runs the raw baseline',
    'and the framed path back to back, so their ratio cancels most of the machine\'s drift; targets are judged on it.',
    '"of medians" = framed median / raw median, for reference (the two medians may come from different moments).',
    '',
    '## Baselines',
    '',
    '| name | bytes | MB/s | runs MB/s | hop µs p50 | p90 | p99 | verified |',
    '|---|--:|--:|---|--:|--:|--:|---|',
    ...report.baselines.map((b) =>
      row([b.name, size(b.bytes), num(b.MBps), runs(b.MBps_runs), num(b.hop_us_p50, 1), num(b.hop_us_p90, 1), num(b.hop_us_p99, 1), yes(b.verified)]),
    ),
    '',
    '## Cases: transport, 1 hop, fan-out 1, proactive',
    '',
    '| path | placement | bytes | MB/s | runs MB/s | e2e ms | ttfb ms | hop µs p50 | p90 | p99 | disk | daemon MB | verified |',
    '|---|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|---|',
    ...report.cases.filter((c) => c.pattern === 'transport').map((c) =>
      row([
        c.path,
        c.placement,
        size(c.bytes),
        num(c.MBps),
        runs(c.MBps_runs),
        num(c.e2e_ms),
        num(c.ttfb_ms, 2),
        num(c.hop_us?.p50, 1),
        num(c.hop_us?.p90, 1),
        num(c.hop_us?.p99, 1),
        c.disk_bytes ? `${num(c.disk_bytes / 1e6)} MB` : '0',
        c.daemon_rss_mb ? num(c.daemon_rss_mb) : '–',
        yes(c.verified),
      ]),
    ),
    '',
    '## Ratios (same run)',
    '',
    '| ratio | value (median of paired) | of medians | paired, per repetition or round | target | result |',
    '|---|--:|--:|---|---|---|',
    ...(report.ratios ?? []).map((r) => {
      const target = r.target ? `${r.target.op === '>=' ? '≥' : '≤'} ${r.target.bound}` : '–';
      const paired = `${r.paired_by === 'round' ? 'rounds' : 'reps'}: ${r.runs.map((x) => num(x, 2)).join(' / ')}`;
      return row([r.name, num(r.value, 2), num(r.ratio_of_medians, 2), paired, target, r.pass === undefined ? 'info' : r.pass ? 'pass' : '**FAIL**']);
    }),
    '',
    'Reference, KNIX workflowmesh (5-step chain of CloudEvents on Kubernetes, median per hop): 1 KiB: plain Services 617 µs,',
    'Knative Serving 2150 µs, Eventing sequence 1453 µs, Eventing + Serving 4594 µs; 1 MiB: 24.2 ms (Services).',
    '',
  ];
  // a subject that cannot run at all fails the same way in every repetition: one line each, counted
  const errors = [...report.baselines.map((b) => [b.name, b.errors] as const), ...report.cases.map((c) => [`${c.path} ${size(c.bytes)}`, c.errors] as const)].flatMap(([name, errs]) => {
    const counts = new Map<string, number>();
    for (const e of errs ?? []) {
      const line = `- ${name}: ${e.split('\n')[0]}`;
      counts.set(line, (counts.get(line) ?? 0) + 1);
    }
    return [...counts].map(([line, n]) => (n > 1 ? `${line} (×${n})` : line));
  });
  if (errors.length > 0) lines.push('## Errors', '', ...errors, '');
  return lines.join('\n');
}
