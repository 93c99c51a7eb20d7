// One loop's overview card: a tile per headline number, each with a live chart over
// the chosen range of the kept history.

import { h, text, link } from "../dom.js";
import { timeChart, theme } from "../charts.js";
import { loopState, serverNow } from "../store.js";
import { windowNow } from "../ui.js";
import { count, rate, percent, ms, byteRate, age } from "../format.js";

/** The tiles: what each shows, from which columns. */
function tiles(t) {
  return [
    {
      key: "utilization",
      title: "Utilization",
      help: "busy / (busy + idle) per interval (asyncio.eventloop.utilization)",
      cols: ["util"],
      series: [{ label: "utilization", color: t.accent, fill: true }],
      opts: { yMin: 0, yMax: 1, fmt: (v) => percent(v, 0) },
      value: (s) => percent(s.last("util")),
      sub: (s, from) => `max ${percent(s.maxSince("util", from), 0)}`,
    },
    {
      key: "callbacks",
      title: "Callbacks/s",
      help: "callbacks run per second",
      cols: ["cbps"],
      series: [{ label: "callbacks/s", color: t.c2, fill: true }],
      opts: { fmt: count },
      value: (s) => rate(s.last("cbps")),
      sub: (s, from) => `peak ${rate(s.maxSince("cbps", from))}`,
    },
    {
      key: "lag",
      title: "Loop lag",
      help: "ready → run delay (asyncio.eventloop.delay): p50, p99, max per interval",
      cols: ["lag50", "lag99", "lagmax"],
      series: [
        { label: "p50", color: t.p50 },
        { label: "p99", color: t.p99 },
        { label: "max", color: t.max, width: 1 },
      ],
      opts: { log: true, fmt: ms },
      value: (s) => `p99 ${ms(s.last("lag99"))}`,
      sub: (s) => `p50 ${ms(s.last("lag50"))} · max ${ms(s.last("lagmax"))}`,
    },
    {
      key: "ready",
      title: "Ready queue",
      help: "handles ready to run at the interval's end, and the deepest in it",
      cols: ["ready", "readymax"],
      series: [
        { label: "depth", color: t.accent, fill: true },
        { label: "max in interval", color: t.muted, width: 1, dash: [3, 3] },
      ],
      opts: { fmt: count },
      value: (s) => count(s.last("ready")),
      sub: (s) => `max ${count(s.last("readymax"))} in the interval`,
    },
    {
      key: "timers",
      title: "Timers pending",
      help: "timers scheduled and not yet run or cancelled",
      cols: ["timers"],
      series: [{ label: "timers", color: t.c3, fill: true }],
      opts: { fmt: count },
      value: (s) => count(s.last("timers")),
      sub: (s) => `timer lateness p99 ${ms(s.last("timer99"))}`,
    },
    {
      key: "tasks",
      title: "Live tasks",
      help: "tasks not yet done (asyncio.task.active)",
      cols: ["tasks"],
      series: [{ label: "tasks", color: t.c2, fill: true }],
      opts: { fmt: count },
      value: (s) => count(s.last("tasks")),
      sub: (s) => `+${rate(s.last("created"))} −${rate(s.last("finished"))}`,
    },
    {
      key: "transports",
      title: "Open transports",
      help: "transports open; bytes in and out per second",
      cols: ["transports"],
      series: [{ label: "transports", color: t.c3, fill: true }],
      opts: { fmt: count },
      value: (s) => count(s.last("transports")),
      sub: (s) => `in ${byteRate(s.last("bin"))} · out ${byteRate(s.last("bout"))}`,
    },
    {
      key: "slow",
      title: "Slow · stalls (1 min)",
      help: "callbacks over slow_callback_duration, and stalls seen by the watchdog, in the last minute",
      cols: ["slow", "stalls"],
      series: [
        { label: "slow callbacks", color: t.warn, fill: true },
        { label: "stalls", color: t.bad, width: 1.5 },
      ],
      opts: { fmt: count, bars: true },
      value: (s, _from, now) => `${count(s.sumSince("slow", now - 60))} · ${count(s.sumSince("stalls", now - 60))}`,
      sub: (s, from) => `${count(s.sumSince("slow", from))} slow · ${count(s.sumSince("stalls", from))} stalls in range`,
    },
  ];
}

/** Mounts a card for loop `l` into `el`. */
export function loopCard(el, l, { linkTo = true } = {}) {
  const t = theme();
  const defs = tiles(t);
  const state = h("span", { class: "badge" });
  const meta = h("span", { class: "meta" });
  const title = l.info.name || `loop ${l.id}`;
  const card = h(
    "section",
    { class: "card loop-card", dataset: { loop: String(l.id) }, "aria-label": `loop ${title}` },
    h(
      "div",
      { class: "card-head" },
      h("h2", null, linkTo ? link(`/loop/${l.id}`, title) : title, h("span", { class: "id" }, ` #${l.id}`)),
      state,
      meta,
    ),
  );
  const grid = h("div", { class: "tiles" });
  card.append(grid);
  el.append(card);

  const mounted = defs.map((d) => {
    const value = h("div", { class: "tile-value", dataset: { metric: d.key } });
    const sub = h("div", { class: "tile-sub" });
    const plot = h("div", { class: "spark" });
    const tile = h(
      "div",
      { class: "tile", title: d.help },
      h("div", { class: "tile-title" }, d.title),
      value,
      sub,
      plot,
    );
    grid.append(tile);
    const chart = timeChart(plot, { series: d.series, height: 48, sparkline: true, ...d.opts });
    return { d, value, sub, chart };
  });

  let drawn = -1;
  function update(force = false) {
    const s = l.series;
    const st = loopState(l);
    text(state, st === "gone" ? "process gone" : st === "waiting" ? "waiting for data" : st);
    state.className = `badge state-${st}`;
    card.dataset.state = st;
    card.dataset.seq = String(s.lastSeq);
    text(
      meta,
      `thread ${l.info.thread_name || l.info.thread_id} · up ${age(serverNow() - l.info.created_unix_ms)}` +
        (l.row?.samples_dropped ? ` · ${l.row.samples_dropped} samples dropped` : ""),
    );
    if (!force && drawn === s.version) return;
    drawn = s.version;
    const win = windowNow();
    const now = s.lastEnd / 1000 || win[1];
    for (const m of mounted) {
      text(m.value, m.d.value(s, win[0], now));
      text(m.sub, m.d.sub(s, win[0], now));
      m.chart.update(s.data(m.d.cols, win[0]), win);
    }
  }
  update(true);
  return {
    el: card,
    update,
    destroy() {
      for (const m of mounted) m.chart.destroy();
      card.remove();
    },
  };
}
