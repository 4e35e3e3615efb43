/** A small line-chart writer for the report: SVG text, no dependencies, pure (tested from its output). */

export interface Series {
  name: string;
  /** [x, y]; points with a y of null or ≤ 0 on a log axis are left out */
  points: Array<[number, number | null]>;
  dashed?: boolean;
  /** draw only the markers (reference figures) */
  markersOnly?: boolean;
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  logX?: boolean;
  logY?: boolean;
  formatX?: (x: number) => string;
  formatY?: (y: number) => string;
  /** a horizontal reference line, e.g. y = 1 on a speed-up chart */
  hline?: { y: number; label: string };
  width?: number;
  height?: number;
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#17becf', '#bcbd22'];

export const escapeXml = (text: string): string => text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);

const trim = (x: number): string => String(Number(x.toPrecision(3)));

/** Tick values: on a log axis the powers of 10 (and 2×, 5× when the range is short) within range; else about 5 round steps. */
export function ticks(min: number, max: number, log: boolean): number[] {
  if (!(max > min)) return [min];
  if (log) {
    const out: number[] = [];
    const decades = Math.log10(max / min);
    const mults = decades < 2 ? [1, 2, 5] : [1];
    for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e++) {
      for (const m of mults) {
        const v = m * 10 ** e;
        if (v >= min * 0.999 && v <= max * 1.001) out.push(v);
      }
    }
    return out.length > 0 ? out : [min, max];
  }
  const raw = (max - min) / 5;
  const step = [1, 2, 5, 10].map((m) => m * 10 ** Math.floor(Math.log10(raw))).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

export function lineChart(o: ChartOptions): string {
  const W = o.width ?? 720;
  const H = o.height ?? 400;
  const m = { left: 70, right: 190, top: 40, bottom: 55 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const usable = (x: number, y: number | null, logY: boolean): y is number => y !== null && Number.isFinite(y) && (!logY || y > 0) && (!o.logX || x > 0);
  const pts = o.series.flatMap((s) => s.points.filter(([x, y]) => usable(x, y, !!o.logY))) as Array<[number, number]>;
  const xs = pts.map((p) => p[0]);
  const ys = [...pts.map((p) => p[1]), ...(o.hline ? [o.hline.y] : [])];
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  parts.push(`<text x="${W / 2 - m.right / 2 + m.left / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(o.title)}</text>`);
  if (pts.length === 0) {
    parts.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle">no data</text></svg>`);
    return parts.join('\n') + '\n';
  }
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) [x0, x1] = o.logX ? [x0 / 2, x1 * 2] : [x0 - 1, x1 + 1];
  if (o.logY) [y0, y1] = [10 ** Math.floor(Math.log10(y0)), 10 ** Math.ceil(Math.log10(y1))];
  else [y0, y1] = [Math.min(0, y0), y1 === y0 ? y0 + 1 : y1 * 1.08];
  const sx = (x: number): number => m.left + (o.logX ? Math.log(x / x0) / Math.log(x1 / x0) : (x - x0) / (x1 - x0)) * pw;
  const sy = (y: number): number => m.top + ph - (o.logY ? Math.log(y / y0) / Math.log(y1 / y0) : (y - y0) / (y1 - y0)) * ph;
  const fx = o.formatX ?? trim;
  const fy = o.formatY ?? trim;
  // grid and ticks
  const xTicks = o.logX ? [...new Set(xs)].sort((a, b) => a - b) : ticks(x0, x1, false);
  for (const t of xTicks) {
    parts.push(`<line x1="${sx(t).toFixed(1)}" y1="${m.top}" x2="${sx(t).toFixed(1)}" y2="${m.top + ph}" stroke="#eee"/>`);
    parts.push(`<text x="${sx(t).toFixed(1)}" y="${m.top + ph + 18}" text-anchor="middle">${escapeXml(fx(t))}</text>`);
  }
  for (const t of ticks(y0, y1, !!o.logY)) {
    parts.push(`<line x1="${m.left}" y1="${sy(t).toFixed(1)}" x2="${m.left + pw}" y2="${sy(t).toFixed(1)}" stroke="#eee"/>`);
    parts.push(`<text x="${m.left - 6}" y="${(sy(t) + 4).toFixed(1)}" text-anchor="end">${escapeXml(fy(t))}</text>`);
  }
  parts.push(`<rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}" fill="none" stroke="#444"/>`);
  parts.push(`<text x="${m.left + pw / 2}" y="${H - 12}" text-anchor="middle">${escapeXml(o.xLabel)}</text>`);
  parts.push(`<text transform="translate(16 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">${escapeXml(o.yLabel)}</text>`);
  if (o.hline && o.hline.y >= y0 && o.hline.y <= y1) {
    const y = sy(o.hline.y).toFixed(1);
    parts.push(`<line x1="${m.left}" y1="${y}" x2="${m.left + pw}" y2="${y}" stroke="#888" stroke-dasharray="2 3"/>`);
    parts.push(`<text x="${m.left + pw - 4}" y="${Number(y) - 4}" text-anchor="end" fill="#666">${escapeXml(o.hline.label)}</text>`);
  }
  // series and legend
  o.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length]!;
    const own = (s.points.filter(([x, y]) => usable(x, y, !!o.logY)) as Array<[number, number]>).sort((a, b) => a[0] - b[0]);
    if (own.length > 1 && !s.markersOnly) {
      const d = own.map(([x, y], j) => `${j === 0 ? 'M' : 'L'}${sx(x).toFixed(1)} ${sy(y).toFixed(1)}`).join(' ');
      parts.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    }
    for (const [x, y] of own) {
      parts.push(
        s.markersOnly
          ? `<rect x="${(sx(x) - 4).toFixed(1)}" y="${(sy(y) - 4).toFixed(1)}" width="8" height="8" fill="none" stroke="${color}" stroke-width="2"><title>${escapeXml(`${s.name}: ${fx(x)}, ${fy(y)}`)}</title></rect>`
          : `<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3.5" fill="${color}"><title>${escapeXml(`${s.name}: ${fx(x)}, ${fy(y)}`)}</title></circle>`,
      );
    }
    const ly = m.top + 10 + i * 20;
    const lx = m.left + pw + 14;
    parts.push(
      s.markersOnly
        ? `<rect x="${lx + 8}" y="${ly - 4}" width="8" height="8" fill="none" stroke="${color}" stroke-width="2"/>`
        : `<line x1="${lx}" y1="${ly}" x2="${lx + 24}" y2="${ly}" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`,
    );
    parts.push(`<text x="${lx + 30}" y="${ly + 4}">${escapeXml(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
