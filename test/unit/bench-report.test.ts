/**
 * The benchmark's report writers (bench/svg.ts, bench/summary.ts): charts are well-formed SVG with
 * every series and escaped text; the acceptance lines read the paired speed-ups of the fifo path.
 */
import { describe, expect, it } from 'vitest';
import type { Case, Report, Speedup } from '../../bench/report.js';
import { acceptance, charts, notVerified, ofRaw, renderWorkflowMarkdown } from '../../bench/summary.js';
import { escapeXml, lineChart, ticks } from '../../bench/svg.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

function flowCase(over: Partial<Case>): Case {
  return { pattern: 'chain', hops: 5, fanout: 1, path: 'fifo', placement: 'same-node', bytes: GiB, e2e_ms: 1000, ttfb_ms: 1, MBps: 1073.7, hop_us: null, disk_bytes: 0, daemon_rss_mb: 80, proactive: true, verified: true, ...over };
}

const speedup = (over: Partial<Speedup>): Speedup => ({ pattern: 'chain', hops: 5, fanout: 1, bytes: GiB, path: 'fifo', over: 's3', proactive: true, value: 12, runs: [12], ...over });

const report: Report = {
  machine: { cpus: 2, node: 'v20', date: '2026-01-01T00:00:00Z', cpu_model: 'x', kernel: 'k', mode: 'quick', reps: 1 },
  baselines: [{ name: 'raw-chain5', MBps: 1500, MBps_runs: [1500], bytes: GiB, verified: true }],
  cases: [
    flowCase({}),
    flowCase({ path: 's3', e2e_ms: 12000, MBps: 89, disk_bytes: 10 * GiB }),
    flowCase({ path: 'raw-fifo', e2e_ms: 700, MBps: 1500 }),
    flowCase({ bytes: MiB, e2e_ms: 5, MBps: 200 }),
    flowCase({ bytes: MiB, path: 's3', e2e_ms: 100, MBps: 10 }),
  ],
  speedups: [speedup({}), speedup({ bytes: MiB, value: 20, runs: [20] }), speedup({ over: 'raw-fifo', value: 0.7, runs: [0.7] })],
  knix: [{ bytes: 1024, path: 'fifo', events: 10, hop_ms: { p50: 0.1, p90: 0.2, p99: 0.3 }, verified: true }],
};

describe('the SVG chart writer', () => {
  it('draws every series, escapes text and stays well-formed', () => {
    const svg = lineChart({ title: 'a < b & "c"', xLabel: 'x', yLabel: 'y', logX: true, logY: true, series: [{ name: 'one', points: [[1, 1], [10, 100]] }, { name: 'two <2>', points: [[1, 2], [10, null]], markersOnly: true }] });
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trim().endsWith('</svg>')).toBe(true);
    expect(svg).toContain('a &lt; b &amp; &quot;c&quot;');
    expect(svg).toContain('two &lt;2&gt;');
    expect(svg).not.toContain('NaN');
    expect((svg.match(/<circle /g) ?? []).length).toBe(2);
  });

  it('says so when there is nothing to draw', () => {
    expect(lineChart({ title: 't', xLabel: 'x', yLabel: 'y', series: [] })).toContain('no data');
  });

  it('puts log ticks on powers of ten, linear ones on round steps', () => {
    expect(ticks(1, 1000, true)).toEqual([1, 10, 100, 1000]);
    expect(ticks(0, 10, false)).toEqual([0, 2, 4, 6, 8, 10]);
    expect(escapeXml(`'&'`)).toBe('&apos;&amp;&apos;');
  });
});

describe('the comparison report', () => {
  it('judges each acceptance target on the paired fifo speed-up', () => {
    const lines = acceptance(report).join('\n');
    expect(lines).toMatch(/1 GiB, 5-hop chain \| 12\.0 \| 12\.0 \| ≥ 10 \| met/);
    expect(lines).toMatch(/1 MiB, 5-hop chain \| 20\.0 \| 20\.0 \| ≥ 30 \| \*\*not met\*\*/);
    expect(lines).toMatch(/1 GiB, 1 hop \| – \| not measured/);
  });

  it('renders the tables, the closeness to raw-chain5 and the chart links', () => {
    const md = renderWorkflowMarkdown(report, 'npm run bench -- --quick');
    expect(md).toContain('`npm run bench -- --quick`');
    expect(md).toContain('= **0.70** of the raw limit');
    expect(md).toContain('| chain 5 | fifo | 20.0 | 12.0 |');
    expect(md).toContain('![speed-up over S3 vs size](speedup-vs-size.svg)');
    expect(Object.keys(charts(report)).sort()).toEqual(['hop-latency-vs-size.svg', 'speedup-vs-size.svg', 'throughput-vs-raw.svg']);
  });

  it('leaves the balance section\'s rows to their own table: no size column or pattern row of theirs in the workflow tables', () => {
    const withBalance: Report = {
      ...report,
      cases: [...report.cases, flowCase({ pattern: 'balance', hops: 1, fanout: 2, path: 'relay', bytes: 64 * MiB, e2e_ms: 700, MBps: null, policy: 'local-first', load: 'none' } as Partial<Case>)],
    };
    const md = renderWorkflowMarkdown(withBalance, 'x');
    expect(md).toContain('| pattern | path | 1 MiB | 1 GiB |');
    expect(md).not.toContain('64 MiB');
    expect(md).not.toMatch(/shuffle 2→2/);
  });

  it('keeps every row that did not verify, with its reason', () => {
    const failed: Report = {
      ...report,
      cases: [
        ...report.cases,
        flowCase({ pattern: 'broadcast', hops: 1, fanout: 4, path: 'fifo', e2e_ms: 7000, MBps: 150 }),
        flowCase({ pattern: 'broadcast', hops: 1, fanout: 4, path: 's3', e2e_ms: null, ttfb_ms: null, MBps: null, verified: false, errors: ['timed out after 110 s'] }),
      ],
      knix: [...report.knix!, { bytes: 40 * MiB, path: 'unix', events: 4, hop_ms: { p50: null, p90: null, p99: null }, verified: false, errors: ['case-9 unix s1 exited with SIGTERM'] }],
    };
    const md = renderWorkflowMarkdown(failed, 'x');
    expect(md).toMatch(/\| broadcast 1→4 \| s3 \| 1 GiB \| – \| – \| – \| – \| – \| – \| – \| \*\*NO\*\*/);
    expect(md).toContain('- broadcast 1→4 s3 1 GiB: timed out after 110 s');
    expect(md).toContain('- KNIX-style, 40 MiB events on unix: case-9 unix s1 exited with SIGTERM');
    expect(acceptance(failed).join('\n')).toMatch(/1 GiB, broadcast 1→4 \| – \| not measured \| ≥ 5 \| \*\*not verified\*\* \(s3/);
    expect(notVerified(report)).toEqual([]);
  });

  it('names the baseline each "of raw" ratio divides by: raw-chain5 (paired) and raw-chain5-c (same size) on the 5-hop chain, raw-fifo elsewhere', () => {
    const withC: Report = {
      ...report,
      baselines: [...report.baselines, { name: 'raw-chain5-c', MBps: 2000, MBps_runs: [2000], bytes: GiB, e2e_ms: 537, verified: true }, { name: 'raw-chain5-c', MBps: 400, MBps_runs: [400], bytes: MiB, e2e_ms: 2.6, verified: true }],
      cases: [...report.cases, flowCase({ hops: 1, MBps: 900 })],
      speedups: [...report.speedups!, speedup({ hops: 1, over: 'raw-fifo', value: 0.9, runs: [0.9] })],
    };
    // fifo 5-hop at 1 GiB: 0.7 paired over raw-chain5, 1073.7 / 2000 over the pipes-and-cat chain
    expect(ofRaw(withC, withC.cases[0]!)).toBe('0.70 of raw-chain5; 0.54 of raw-chain5-c');
    // at 1 MiB there is no paired raw-fifo run; raw-chain5-c of that size is used, not the 1 GiB one
    expect(ofRaw(withC, withC.cases[3]!)).toBe('0.50 of raw-chain5-c');
    // the single hop has no raw-chain5-c: only raw-fifo, by name
    expect(ofRaw(withC, withC.cases.at(-1)!)).toBe('0.90 of raw-fifo');
    // s3 has neither
    expect(ofRaw(report, report.cases[1]!)).toBe('–');
    const md = renderWorkflowMarkdown(withC, 'x');
    expect(md).toContain('| chain 5 | fifo | 1 GiB | 1000 | 1.00 | 1074 | 0.70 of raw-chain5; 0.54 of raw-chain5-c |');
    expect(md).toMatch(/raw-chain5-c \(Python writer → 4 × cat → Python reader, median of 7\): 1 GiB 537\.0 ms, 2000 MB\/s; 1 MiB 2\.6 ms, 400 MB\/s/);
    expect(md).toContain('`raw-chain5-c` = six already-running processes');
  });

  it('lists a raw-chain5-c baseline that failed under "Not verified"', () => {
    const failed: Report = { ...report, baselines: [...report.baselines, { name: 'raw-chain5-c', MBps: null, MBps_runs: [], bytes: MiB, verified: false, errors: ['python3: not found'] }] };
    expect(notVerified(failed).join('\n')).toMatch(/raw-chain5-c.*python3: not found/);
  });
});
