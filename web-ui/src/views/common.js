// Pieces the views share: log entries for slow callbacks and stalls, a poller that
// rests while the tab is hidden, error notes, table headers and a pager.

import { h, link } from "../dom.js";
import { clock, duration, splitSite } from "../format.js";
import { store, stallOngoing } from "../store.js";

/** A site label `qualname (file:line)` as code + muted location. */
export function site(label) {
  if (!label) return h("span", { class: "muted" }, "unknown site");
  const s = splitSite(label);
  return h(
    "span",
    { class: "site" },
    h("code", null, s.qualname),
    s.file ? h("span", { class: "loc" }, ` ${s.file}:${s.line}`) : "",
  );
}

/** A stall as a log entry (expandable to its stack). */
export function stallEntry(s, { showLoop = false } = {}) {
  const ongoing = stallOngoing(s);
  const ran = ongoing ? Math.max(s.duration_ns, (Date.now() - store.skewMs - s.started_unix_ms) * 1e6) : s.duration_ns;
  const l = store.loops.get(s.loop_id);
  const stackNote = {
    pending: "capturing the loop thread's stack…",
    unavailable: "no stack: the loop registered no capture function",
    timeout: "no stack: the capture did not answer within 1 s",
    skipped: "no stack: the capture was busy with earlier stalls",
    stale: "no stack: the callback returned before the capture answered",
  }[s.stack_status];
  return h(
    "details",
    { class: `entry kind-stall${ongoing ? " ongoing" : ""}`, dataset: { stall: String(s.id), loop: String(s.loop_id) } },
    h(
      "summary",
      null,
      h("span", { class: "badge bad" }, ongoing ? "stall · ongoing" : "stall"),
      h("time", null, clock(s.started_unix_ms)),
      h("span", { class: "dur" }, duration(ran)),
      site(s.site),
      showLoop ? h("span", { class: "muted" }, ` loop ${l?.info.name || s.loop_id}`) : "",
    ),
    s.stack ? h("pre", { class: "stack" }, s.stack) : h("p", { class: "muted stack-note" }, stackNote ?? s.stack_status),
  );
}

/** A slow callback as a log entry. */
export function slowEntry(e, loopId) {
  return h(
    "details",
    { class: "entry kind-slow", dataset: { unix: String(e.unix_ms) } },
    h(
      "summary",
      null,
      h("span", { class: "badge warn" }, "slow callback"),
      h("time", null, clock(e.unix_ms)),
      h("span", { class: "dur" }, duration(e.duration_ns)),
      site(e.site),
      e.task_id != null
        ? h("span", { class: "task" }, " task ", link(`/loop/${loopId}/task/${e.task_id}`, e.task_name || `#${e.task_id}`))
        : "",
    ),
    e.traceback
      ? h("pre", { class: "stack" }, e.traceback)
      : h("p", { class: "muted stack-note" }, "No traceback: the loop records one in debug mode (PYTHONASYNCIODEBUG=1)."),
  );
}

/** Calls `fn` now and every `ms` while the tab is visible; `now()` forces a call. */
export function poller(fn, ms) {
  let timer = null;
  let stopped = false;
  let running = false;
  async function tick() {
    clearTimeout(timer);
    if (stopped) return;
    if (!document.hidden && !running) {
      running = true;
      try {
        await fn();
      } catch (e) {
        console.warn(e);
      } finally {
        running = false;
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  }
  tick();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
    now: tick,
  };
}

/** An API failure explained (the "loop busy" answer is a finding, not a glitch). */
export function errorNote(e) {
  if (!e) return null;
  if (e.busy)
    return h(
      "div",
      { class: "banner bad busy-note" },
      h("strong", null, "Loop busy: "),
      `the loop did not answer within ${e.body?.waited_ms ?? "?"} ms. A callback may be blocking it; try again, or see Slow & stalls.`,
    );
  if (e.unreachable) return h("div", { class: "banner bad" }, "The process does not answer (gone?).");
  if (e.status === 410) return h("div", { class: "banner warn" }, "The loop has closed.");
  return h("div", { class: "banner warn" }, e.message || String(e));
}

/** A sortable header row. cols: [{key, label, sort?: apiKey, num?}]. */
export function headerRow(cols, sort, order, onSort) {
  return h(
    "tr",
    null,
    cols.map((c) => {
      if (!c.sort) return h("th", { class: c.num ? "n" : null, scope: "col" }, c.label);
      const on = sort === c.sort;
      const next = on && order === "desc" ? "asc" : "desc";
      return h(
        "th",
        { class: `${c.num ? "n " : ""}sortable${on ? " on" : ""}`, scope: "col", "aria-sort": on ? (order === "desc" ? "descending" : "ascending") : "none" },
        h(
          "button",
          { type: "button", onclick: () => onSort(c.sort, on ? next : c.defaultOrder || "desc") },
          c.label,
          h("span", { class: "arrow", "aria-hidden": "true" }, on ? (order === "desc" ? " ▼" : " ▲") : ""),
        ),
      );
    }),
  );
}

/** "1–50 of 1,234" with previous/next buttons. */
export function pager(offset, limit, total, onPage) {
  const from = total ? offset + 1 : 0;
  const to = Math.min(offset + limit, total);
  return h(
    "div",
    { class: "pager" },
    h("button", { type: "button", disabled: offset <= 0, onclick: () => onPage(Math.max(0, offset - limit)) }, "‹ prev"),
    h("span", null, `${from.toLocaleString("en-US")}–${to.toLocaleString("en-US")} of ${total.toLocaleString("en-US")}`),
    h("button", { type: "button", disabled: to >= total, onclick: () => onPage(offset + limit) }, "next ›"),
  );
}

/** "as of 14:03:05" for a table's publication time. */
export function asOf(unixMs) {
  return unixMs ? `tables as of ${clock(unixMs)}` : "";
}
