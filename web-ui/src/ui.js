// View state shared by the header and the views: the time range the charts show.

import { serverNow } from "./store.js";

/** [seconds (0 = all kept history), label]. */
export const RANGES = [
  [60, "1 min"],
  [300, "5 min"],
  [900, "15 min"],
  [0, "all"],
];

const KEY = "glassloop-range";

function initial() {
  try {
    const raw = localStorage.getItem(KEY);
    const v = Number(raw);
    if (raw != null && RANGES.some(([s]) => s === v)) return v;
  } catch {
    /* no storage */
  }
  return 300;
}

export const ui = {
  /** Seconds of history the charts show; 0 = everything kept. */
  range: initial(),
  onRange: null,
};

export function setRange(secs) {
  ui.range = secs;
  try {
    localStorage.setItem(KEY, String(secs));
  } catch {
    /* no storage */
  }
  ui.onRange?.();
}

/** [from, to] in Unix seconds for the current range, ending at `now`. */
export function windowNow(nowS = serverNow() / 1000) {
  return [ui.range ? nowS - ui.range : 0, nowS];
}
