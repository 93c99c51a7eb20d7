// Slow callbacks and stalls: one live log, newest first, each entry with duration,
// site, task, and its stack (stalls: the loop thread's stack during the stall; slow
// callbacks: the handle's traceback in debug mode).

import { h, fill, text } from "../dom.js";
import { get, loopPath, url } from "../api.js";
import { store, stallOngoing } from "../store.js";
import { timeChart, theme } from "../charts.js";
import { windowNow } from "../ui.js";
import { count } from "../format.js";
import { errorNote, poller, slowEntry, stallEntry } from "./common.js";

export function slowTab(el, l) {
  const t = theme();
  let show = "all";
  let slow = [];
  const open = new Set();
  const chartEl = h("div", { class: "chart" });
  const err = h("div");
  const logEl = h("div", { class: "log", id: "slow-log" });
  const summary = h("span", { class: "muted" });
  const filters = ["all", "slow callbacks", "stalls"].map((f) =>
    h("button", { type: "button", class: "seg", onclick: () => ((show = f), render(true)) }, f),
  );
  el.append(
    h(
      "section",
      { class: "card panel" },
      h("h3", null, "Per interval", h("span", { class: "help" }, "slow callbacks and stalls")),
      chartEl,
    ),
    h(
      "section",
      { class: "card" },
      h("div", { class: "toolbar" }, h("h3", null, "Live log"), h("span", { class: "segs" }, filters), h("span", { class: "spacer" }), summary),
      err,
      logEl,
    ),
  );
  const chart = timeChart(chartEl, {
    series: [
      { label: "slow callbacks", color: t.warn, fill: true },
      { label: "stalls", color: t.bad, fill: true },
    ],
    height: 120,
    bars: true,
    fmt: count,
  });
  logEl.addEventListener(
    "toggle",
    (ev) => {
      const d = ev.target;
      if (d.dataset.key) d.open ? open.add(d.dataset.key) : open.delete(d.dataset.key);
    },
    true,
  );

  let shown = "";
  function render(force = false) {
    for (const b of filters) b.classList.toggle("on", b.textContent === show);
    const stalls = [...store.stalls.values()].filter((s) => s.loop_id === l.id);
    const entries = [];
    if (show !== "stalls") for (const e of slow) entries.push({ at: e.unix_ms, key: `slow:${e.unix_ms}:${e.site}:${e.duration_ns}`, e, kind: "slow" });
    if (show !== "slow callbacks") for (const s of stalls) entries.push({ at: s.started_unix_ms, key: `stall:${s.id}`, e: s, kind: "stall" });
    entries.sort((a, b) => b.at - a.at);
    const sig = entries.map((x) => x.key + (x.kind === "stall" ? `:${stallOngoing(x.e)}:${x.e.stack_status}:${x.e.ongoing ? "" : x.e.duration_ns}` : "")).join("|");
    const ongoing = stalls.some(stallOngoing);
    if (!force && sig === shown && !ongoing) return;
    shown = sig;
    text(summary, `${count(slow.length)} slow callbacks (the loop keeps the latest) · ${count(stalls.length)} stalls`);
    if (!entries.length) {
      fill(logEl, h("p", { class: "empty" }, "Nothing slow yet: no callback has run past slow_callback_duration or the stall threshold."));
      return;
    }
    fill(
      logEl,
      entries.slice(0, 300).map((x) => {
        const node = x.kind === "slow" ? slowEntry(x.e, l.id) : stallEntry(x.e);
        node.dataset.key = x.key;
        if (open.has(x.key)) node.open = true;
        return node;
      }),
    );
  }

  async function load() {
    try {
      const body = await get(url(loopPath(l.id, "/slow-callbacks"), { limit: 200 }));
      slow = body.items;
      fill(err);
      render();
    } catch (e) {
      fill(err, errorNote(e));
    }
  }

  let drawn = -1;
  function draw(force) {
    if (!force && drawn === l.series.version) return;
    drawn = l.series.version;
    const win = windowNow();
    chart.update(l.series.data(["slow", "stalls"], win[0]), win);
  }

  // Stalls of this loop the store has not seen (older than the stream).
  get(url(loopPath(l.id, "/stalls"), { limit: 256 }))
    .then((b) => {
      for (const s of b.stalls) if (!store.stalls.has(s.id)) store.stalls.set(s.id, s);
      render();
    })
    .catch(() => {});
  const p = poller(load, 1000);
  draw(true);
  render(true);
  return {
    update(kind) {
      if (kind === "stall" || kind === "tick") render();
      if (kind === "sample" || kind === "range") draw(kind === "range");
    },
    destroy() {
      p.stop();
      chart.destroy();
    },
  };
}
