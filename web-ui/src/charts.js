// Charts, all drawn by uPlot: time series (lines, log or linear), sparklines, a
// duration histogram (bars over the fixed buckets) and a heatmap (the same buckets
// over time, cells drawn in a uPlot draw hook). Colors come from CSS variables, so
// light and dark follow prefers-color-scheme; views rebuild charts when it changes.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { boundLabel } from "./format.js";

/** The palette, read from CSS (see style.css). */
export function theme() {
  const cs = getComputedStyle(document.documentElement);
  const v = (n) => cs.getPropertyValue(n).trim();
  return {
    fg: v("--fg"),
    muted: v("--muted"),
    grid: v("--grid"),
    card: v("--card"),
    accent: v("--accent"),
    p50: v("--c-p50"),
    p90: v("--c-p90"),
    p99: v("--c-p99"),
    max: v("--c-max"),
    c2: v("--c-2"),
    c3: v("--c-3"),
    warn: v("--warn"),
    bad: v("--bad"),
    heat: v("--heat"),
  };
}

const FONT = '11px system-ui, -apple-system, "Segoe UI", sans-serif';

function axis(t, fmt, extra = {}) {
  return {
    stroke: t.muted,
    font: FONT,
    grid: { stroke: t.grid, width: 1 },
    ticks: { stroke: t.grid, width: 1, size: 4 },
    ...(fmt ? { values: (u, splits) => splits.map((v) => (v == null ? "" : fmt(v))) } : {}),
    ...extra,
  };
}

function lastValue(col) {
  if (!col) return null;
  for (let i = col.length - 1; i >= 0; i--) if (col[i] != null) return col[i];
  return null;
}

const pad2 = (n) => String(n).padStart(2, "0");

/** Time ticks as 24-hour local time; seconds only on short ranges. */
function timeValues(u, splits) {
  const span = (u.scales.x.max ?? 0) - (u.scales.x.min ?? 0);
  return splits.map((v) => {
    const d = new Date(v * 1000);
    const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
    return span > 300 ? hm : `${hm}:${pad2(d.getSeconds())}`;
  });
}

/** Time tick steps (s): whole seconds and up, never twice the same label. */
const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400];

/** Keeps a chart as wide as its container. */
function fit(u, el, height) {
  let last = 0;
  const ro = new ResizeObserver(() => {
    const w = Math.floor(el.clientWidth);
    if (w > 0 && w !== last) {
      last = w;
      u.setSize({ width: w, height });
    }
  });
  ro.observe(el);
  return ro;
}

/** Hex "#rrggbb" (or rgb()) → [r, g, b]. */
export function rgb(color) {
  const m = /^#([0-9a-f]{6})$/i.exec(color);
  if (m) {
    const n = parseInt(m[1], 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }
  const r = /rgba?\((\d+),\s*(\d+),\s*(\d+)/.exec(color);
  return r ? [Number(r[1]), Number(r[2]), Number(r[3])] : [80, 120, 220];
}

function alpha(color, a) {
  const [r, g, b] = rgb(color);
  return `rgba(${r},${g},${b},${a})`;
}

/**
 * A time-series chart. `series`: [{label, color, width, fill, dash, fmt}].
 * Options: height, sparkline (no axes, legend, cursor), log (log y), fmt (y values),
 * yMin/yMax (fixed range bounds), bars (stepped bars for counts).
 */
export function timeChart(el, { series, height = 160, sparkline = false, log = false, fmt, yMin, yMax, bars = false, title }) {
  const t = theme();
  const width = Math.max(el.clientWidth, 100);
  const stepped = bars ? uPlot.paths.stepped({ align: 1 }) : undefined;
  const opts = {
    width,
    height,
    title,
    pxAlign: 1,
    padding: sparkline ? [4, 1, 2, 1] : [8, 22, 0, 0],
    legend: { show: !sparkline, live: true },
    cursor: sparkline ? { show: false } : { drag: { x: false, y: false }, points: { size: 5 } },
    select: { show: false },
    scales: {
      x: { time: true },
      y: log
        ? { distr: 3, log: 10 }
        : {
            range: (u, min, max) => {
              const lo = yMin ?? Math.min(0, min ?? 0);
              let hi = yMax ?? (max == null || max <= lo ? lo + 1 : max * 1.1);
              if (yMax == null && max != null && max > lo) hi = max + (max - lo) * 0.08;
              return [lo, hi];
            },
          },
    },
    axes: sparkline
      ? [{ show: false }, { show: false }]
      : [axis(t, null, { space: 80, incrs: TIME_INCRS, values: timeValues }), axis(t, fmt, { size: 58, space: 28 })],
    series: [
      {},
      ...series.map((s) => ({
        label: s.label,
        stroke: s.color,
        width: s.width ?? (sparkline ? 1.25 : 1.5),
        fill: s.fill ? alpha(s.color, sparkline ? 0.18 : 0.12) : undefined,
        dash: s.dash,
        points: { show: false },
        spanGaps: false,
        paths: stepped,
        // Hovering: the value under the cursor; otherwise the newest value.
        value: (u, v, si, idx) => {
          if (idx == null) v = lastValue(u.data[si]);
          return v == null ? "–" : (s.fmt ?? fmt ?? String)(v);
        },
      })),
    ],
  };
  const empty = [[], ...series.map(() => [])];
  const u = new uPlot(opts, empty, el);
  const ro = fit(u, el, height);
  return {
    u,
    /** data = [xs, ...ys]; window = [minX, maxX] in Unix seconds. */
    update(data, window) {
      u.batch(() => {
        u.setData(data, true);
        if (window && data[0].length) {
          const first = data[0][0];
          u.setScale("x", { min: Math.max(window[0], Math.min(first, window[1] - 1)), max: window[1] });
        }
      });
    },
    destroy() {
      ro.disconnect();
      u.destroy();
    },
  };
}

/** Bars of counts over the fixed duration buckets (the current distribution). */
export function histogramChart(el, { height = 160, bounds, color, label = "callbacks" }) {
  const t = theme();
  const width = Math.max(el.clientWidth, 100);
  let range = [0, bounds.length];
  const opts = {
    width,
    height,
    padding: [8, 8, 0, 0],
    legend: { show: false },
    cursor: { drag: { x: false, y: false }, points: { show: false } },
    select: { show: false },
    scales: {
      x: { time: false, range: () => [range[0] - 0.6, range[1] + 0.6] },
      y: { range: (u, min, max) => [0, Math.max(1, max) * 1.08] },
    },
    axes: [
      axis(t, null, {
        space: 34,
        splits: () => intsIn(range[0], range[1]),
        values: (u, splits) => splits.map((i) => (i < bounds.length ? "≤" + boundLabel(bounds[i]) : ">" + boundLabel(bounds[bounds.length - 1]))),
      }),
      axis(t, (v) => (v >= 1000 ? `${(v / 1000).toFixed(v >= 1e4 ? 0 : 1)}k` : String(Math.round(v))), { size: 50 }),
    ],
    series: [
      {},
      {
        label,
        stroke: color,
        fill: alpha(color, 0.55),
        width: 1,
        paths: uPlot.paths.bars({ size: [0.8, 80], align: 0 }),
        points: { show: false },
      },
    ],
  };
  const u = new uPlot(opts, [[], []], el);
  const ro = fit(u, el, height);
  return {
    u,
    update(buckets) {
      const xs = [];
      const ys = [];
      if (buckets) {
        const nz = buckets.map((c, i) => (c > 0 ? i : -1)).filter((i) => i >= 0);
        range = nz.length ? [Math.max(0, nz[0] - 1), Math.min(buckets.length - 1, nz[nz.length - 1] + 1)] : [0, 8];
        for (let i = range[0]; i <= range[1]; i++) {
          xs.push(i);
          ys.push(buckets[i]);
        }
      }
      u.setData([xs, ys], true);
    },
    destroy() {
      ro.disconnect();
      u.destroy();
    },
  };
}

function intsIn(lo, hi) {
  const n = hi - lo + 1;
  const step = n > 14 ? 3 : n > 8 ? 2 : 1;
  const out = [];
  for (let i = lo; i <= hi; i += step) out.push(i);
  return out;
}

/**
 * A heatmap of a duration histogram over time: one column per sample, one row per
 * fixed bucket, darker = more values. Cells are drawn in a uPlot draw hook.
 */
export function heatmapChart(el, { height = 180, bounds }) {
  const t = theme();
  const [hr, hg, hb] = rgb(t.heat);
  const width = Math.max(el.clientWidth, 100);
  let rows = [];
  let rowRange = [0, bounds.length];
  const opts = {
    width,
    height,
    padding: [8, 22, 0, 0],
    legend: { show: false },
    cursor: { drag: { x: false, y: false }, points: { show: false } },
    select: { show: false },
    scales: {
      x: { time: true },
      y: { auto: false, range: () => [rowRange[0] - 0.5, rowRange[1] + 0.5] },
    },
    axes: [
      axis(t, null, { space: 80, incrs: TIME_INCRS, values: timeValues }),
      axis(t, null, {
        size: 58,
        splits: () => {
          const out = [];
          const n = rowRange[1] - rowRange[0];
          const step = n > 12 ? 3 : n > 6 ? 2 : 1;
          for (let j = rowRange[0]; j < rowRange[1]; j += step) out.push(j + 0.5);
          return out;
        },
        values: (u, splits) => splits.map((v) => boundLabel(bounds[Math.round(v - 0.5)])),
      }),
    ],
    series: [{}, { label: "count", stroke: "transparent", paths: () => null, points: { show: false } }],
    hooks: {
      draw: [
        (u) => {
          const xs = u.data[0];
          if (!xs.length) return;
          const ctx = u.ctx;
          let peak = 0;
          for (const r of rows) if (r) for (const c of r) if (c > peak) peak = c;
          if (!peak) return;
          const lp = Math.log1p(peak);
          ctx.save();
          ctx.beginPath();
          ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
          ctx.clip();
          for (let i = 0; i < xs.length; i++) {
            const r = rows[i];
            if (!r) continue;
            const x1 = u.valToPos(xs[i], "x", true);
            const prev = i > 0 ? xs[i - 1] : xs[i] - 0.25;
            const x0 = u.valToPos(Math.max(prev, xs[i] - 2), "x", true);
            const w = Math.max(1, x1 - x0 + 0.5);
            for (let j = rowRange[0]; j <= rowRange[1]; j++) {
              const c = r[j];
              if (!c) continue;
              const y0 = u.valToPos(j + 0.5, "y", true);
              const y1 = u.valToPos(j - 0.5, "y", true);
              ctx.fillStyle = `rgba(${hr},${hg},${hb},${(0.12 + 0.88 * Math.log1p(c) / lp).toFixed(3)})`;
              ctx.fillRect(x0, y0, w, y1 - y0);
            }
          }
          ctx.restore();
        },
      ],
    },
  };
  const u = new uPlot(opts, [[], []], el);
  const ro = fit(u, el, height);
  return {
    u,
    /** xs: Unix seconds; bucketRows: per x, the bucket counts (or null for a gap). */
    update(xs, bucketRows, window) {
      rows = bucketRows;
      let lo = Infinity;
      let hi = -Infinity;
      for (const r of rows) {
        if (!r) continue;
        for (let j = 0; j < r.length; j++) {
          if (r[j]) {
            if (j < lo) lo = j;
            if (j > hi) hi = j;
          }
        }
      }
      rowRange = lo === Infinity ? [0, 8] : [Math.max(0, lo - 1), Math.min(bounds.length, hi + 1)];
      u.batch(() => {
        u.setData([xs, xs.map(() => rowRange[0])], true);
        if (window && xs.length) u.setScale("x", { min: Math.max(window[0], Math.min(xs[0], window[1] - 1)), max: window[1] });
      });
    },
    destroy() {
      ro.disconnect();
      u.destroy();
    },
  };
}
