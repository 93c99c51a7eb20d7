// A loop's samples as columns (what uPlot draws), bounded like the inspector's
// history. Pure data code, unit-tested; no DOM.

/** The columns kept per sample. Durations are milliseconds, rates per second. */
export const COLUMNS = [
  "t", // end of the interval, Unix seconds
  "util", // utilization, 0..1
  "cbps", // callbacks per second
  "lag50", "lag90", "lag99", "lagmax", // asyncio.eventloop.delay, ms
  "cb50", "cb90", "cb99", "cbmax", // asyncio.callback.duration, ms
  "timer99", "step99", // timer lateness and task step duration p99, ms
  "ready", "readymax", "timers", "tasks", "transports", "fds",
  "slow", "stalls", "exceptions", // counts in the interval
  "created", "finished", // tasks per second
  "bin", "bout", // bytes per second
  "exq", "exr", "exdone", // executor queued, running, done per second
  "ex50", "ex99", "exmax", // executor job duration, ms
];

/** Histograms whose fixed buckets are kept per sample (heatmaps, distributions). */
export const BUCKETED = ["callback_duration", "eventloop_delay", "executor_job_duration"];

/** A gap longer than this between two samples breaks the lines (s). */
const GAP_S = 2;

const nsToMs = (ns) => ns / 1e6;
/** A percentile of an empty histogram is not 0, it is absent. */
const pct = (h, key) => (h && h.count > 0 ? nsToMs(h[key]) : null);

/** One sample → one row of column values. */
export function row(s) {
  const secs = Math.max((s.end_unix_ms - s.start_unix_ms) / 1000, 0.001);
  const h = s.histograms || {};
  const lag = h.eventloop_delay;
  const cb = h.callback_duration;
  const ex = h.executor_job_duration;
  return {
    t: s.end_unix_ms / 1000,
    util: s.utilization,
    cbps: s.callbacks / secs,
    lag50: pct(lag, "p50_ns"), lag90: pct(lag, "p90_ns"), lag99: pct(lag, "p99_ns"), lagmax: pct(lag, "max_ns"),
    cb50: pct(cb, "p50_ns"), cb90: pct(cb, "p90_ns"), cb99: pct(cb, "p99_ns"), cbmax: pct(cb, "max_ns"),
    timer99: pct(h.timer_delay, "p99_ns"),
    step99: pct(h.task_step_duration, "p99_ns"),
    ready: s.ready_queue_last, readymax: s.ready_queue_max,
    timers: s.timers_pending, tasks: s.tasks_live, transports: s.transports_open, fds: s.fds_registered,
    slow: s.slow_callbacks, stalls: s.stalls || 0, exceptions: s.exceptions,
    created: s.tasks_created / secs, finished: s.tasks_finished / secs,
    bin: s.bytes_in / secs, bout: s.bytes_out / secs,
    exq: s.executor_queued, exr: s.executor_running, exdone: s.executor_done / secs,
    ex50: pct(ex, "p50_ns"), ex99: pct(ex, "p99_ns"), exmax: pct(ex, "max_ns"),
  };
}

/** The samples of one loop, oldest first, at most `capacity` of them. */
export class Series {
  constructor(capacity = 3600) {
    this.capacity = capacity;
    this.cols = Object.fromEntries(COLUMNS.map((c) => [c, []]));
    this.buckets = Object.fromEntries(BUCKETED.map((c) => [c, []]));
    this.seqs = [];
    this.lastSeq = 0;
    this.lastEnd = 0; // end_unix_ms of the newest sample
    this.latest = null; // the newest Sample, as sent
    this.version = 0; // bumps on every change (renderers compare it)
  }

  get length() {
    return this.cols.t.length;
  }

  /** Appends a sample; ignores ones already held (by `seq`). Returns whether it was added. */
  push(s) {
    if (s.seq <= this.lastSeq) return false;
    if (this.lastEnd && s.start_unix_ms - this.lastEnd > GAP_S * 1000) {
      // The loop (or our view of it) went quiet: a null row breaks the lines there.
      this.appendRow(null, (this.lastEnd + s.start_unix_ms) / 2000, null);
    }
    this.appendRow(row(s), s.end_unix_ms / 1000, s);
    this.lastSeq = s.seq;
    this.lastEnd = s.end_unix_ms;
    this.latest = s;
    this.trim();
    this.version++;
    return true;
  }

  appendRow(r, t, s) {
    for (const c of COLUMNS) this.cols[c].push(c === "t" ? t : r ? r[c] : null);
    for (const b of BUCKETED) this.buckets[b].push(s ? (s.histograms?.[b]?.buckets ?? null) : null);
    this.seqs.push(s ? s.seq : null);
  }

  /** Drops the oldest rows past capacity, in batches so a push stays O(1) amortized. */
  trim() {
    const excess = this.length - this.capacity;
    if (excess <= 0 || (excess < 64 && excess < this.capacity / 10)) return;
    for (const c of COLUMNS) this.cols[c].splice(0, excess);
    for (const b of BUCKETED) this.buckets[b].splice(0, excess);
    this.seqs.splice(0, excess);
  }

  /** Index of the first row at or after Unix second `t`. */
  indexAt(t) {
    const ts = this.cols.t;
    let lo = 0;
    let hi = ts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (ts[mid] < t) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** uPlot data for `names` over the rows since Unix second `from` (null = all). */
  data(names, from = null) {
    const i = from == null ? 0 : this.indexAt(from);
    const out = [this.cols.t.slice(i)];
    for (const n of names) out.push(this.cols[n].slice(i));
    return out;
  }

  /** Sum of column `name` over rows since Unix second `from`. */
  sumSince(name, from) {
    const col = this.cols[name];
    let total = 0;
    for (let i = this.indexAt(from); i < col.length; i++) total += col[i] || 0;
    return total;
  }

  /** Largest value of column `name` since `from` (null when none). */
  maxSince(name, from) {
    const col = this.cols[name];
    let m = null;
    for (let i = this.indexAt(from); i < col.length; i++) if (col[i] != null && (m == null || col[i] > m)) m = col[i];
    return m;
  }

  /** Bucket counts of histogram `name` added up over rows since `from`. */
  bucketsSince(name, from) {
    const rows = this.buckets[name];
    let sum = null;
    for (let i = this.indexAt(from); i < rows.length; i++) {
      const b = rows[i];
      if (!b) continue;
      if (!sum) sum = new Array(b.length).fill(0);
      for (let j = 0; j < b.length; j++) sum[j] += b[j];
    }
    return sum;
  }

  /** The newest value of column `name`, skipping gap rows. */
  last(name) {
    const col = this.cols[name];
    for (let i = col.length - 1; i >= 0; i--) if (col[i] != null) return col[i];
    return null;
  }
}

/**
 * A percentile from fixed buckets (upper bounds `bounds`, the last bucket open):
 * the bound of the bucket holding the q-th value. Coarse, for labels only.
 */
export function bucketPercentile(buckets, bounds, q) {
  if (!buckets) return null;
  const total = buckets.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const want = q * total;
  let seen = 0;
  for (let i = 0; i < buckets.length; i++) {
    seen += buckets[i];
    if (seen >= want) return i < bounds.length ? bounds[i] : Infinity;
  }
  return Infinity;
}
