// Transfer rates from successive table readings. Pure (unit-tested).

/**
 * Rates from two readings of cumulative byte counters: per transport id, bytes per
 * second between the tables' publication times.
 */
export function rates(prev, items, tablesMs) {
  const out = new Map();
  for (const r of items) {
    const p = prev.get(r.id);
    if (p && tablesMs > p.at) {
      const dt = (tablesMs - p.at) / 1000;
      out.set(r.id, { at: tablesMs, bin: r.bytes_in, bout: r.bytes_out, rin: Math.max(0, (r.bytes_in - p.bin) / dt), rout: Math.max(0, (r.bytes_out - p.bout) / dt) });
    } else if (p) {
      out.set(r.id, p); // same tables as last time: keep the last rate
    } else {
      out.set(r.id, { at: tablesMs, bin: r.bytes_in, bout: r.bytes_out, rin: null, rout: null });
    }
  }
  return out;
}
