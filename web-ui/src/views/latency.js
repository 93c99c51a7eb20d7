// Latency: callback duration and loop lag as percentile lines over time, as heatmaps
// of the fixed buckets, and the last minute's distribution; since-start figures from
// the loop's detail.

import { h, text, fill } from "../dom.js";
import { timeChart, heatmapChart, histogramChart, theme } from "../charts.js";
import { bounds } from "../store.js";
import { get, loopPath } from "../api.js";
import { windowNow } from "../ui.js";
import { ms, duration, count } from "../format.js";
import { bucketPercentile } from "../series.js";
import { poller } from "./common.js";

export function latencyTab(el, l) {
  const t = theme();
  const b = bounds();
  const pcts = (prefix) => [
    { label: "p50", color: t.p50 },
    { label: "p90", color: t.p90 },
    { label: "p99", color: t.p99 },
    { label: "max", color: t.max, width: 1 },
  ].map((s) => ({ ...s, col: prefix + (s.label === "max" ? "max" : s.label.slice(1)) }));

  const panels = [];
  function panel(title, help, grid = "") {
    const body = h("div", { class: "chart" });
    const foot = h("div", { class: "chart-foot" });
    const p = h("section", { class: `card panel ${grid}` }, h("h3", null, title, h("span", { class: "help" }, help)), body, foot);
    panels.push(p);
    return { p, body, foot };
  }

  const cbLines = panel("Callback duration", "asyncio.callback.duration per interval");
  const lagLines = panel("Loop lag", "ready → run delay (asyncio.eventloop.delay) per interval");
  const cbHeat = panel("Callback duration heatmap", "values per bucket per interval");
  const lagHeat = panel("Loop lag heatmap", "values per bucket per interval");
  const cbHist = panel("Callback duration, last minute", "values per bucket");
  const lagHist = panel("Loop lag, last minute", "values per bucket");
  const other = panel("Timers and task steps", "timer lateness and task step duration, p99 per interval", "wide");
  const sinceEl = h("div", { class: "since" });
  el.append(h("div", { class: "grid2" }, panels), h("section", { class: "card" }, h("h3", null, "Since the loop started"), sinceEl));

  const cbS = pcts("cb");
  const lagS = pcts("lag");
  const charts = {
    cb: timeChart(cbLines.body, { series: cbS, height: 200, log: true, fmt: ms }),
    lag: timeChart(lagLines.body, { series: lagS, height: 200, log: true, fmt: ms }),
    cbHeat: heatmapChart(cbHeat.body, { bounds: b, height: 180 }),
    lagHeat: heatmapChart(lagHeat.body, { bounds: b, height: 180 }),
    cbHist: histogramChart(cbHist.body, { bounds: b, color: t.p50, label: "callbacks" }),
    lagHist: histogramChart(lagHist.body, { bounds: b, color: t.p90, label: "handles" }),
    other: timeChart(other.body, {
      series: [
        { label: "timer lateness p99", color: t.c3, col: "timer99" },
        { label: "task step p99", color: t.c2, col: "step99" },
      ],
      height: 160,
      log: true,
      fmt: ms,
    }),
  };

  function histFoot(footEl, buckets) {
    if (!buckets) return text(footEl, "no values in the last minute");
    const n = buckets.reduce((a, c) => a + c, 0);
    const p = (q) => {
      const v = bucketPercentile(buckets, b, q);
      return v === Infinity ? `> ${duration(b[b.length - 1])}` : `≤ ${duration(v)}`;
    };
    text(footEl, `${count(n)} values · p50 ${p(0.5)} · p99 ${p(0.99)}`);
  }

  let drawn = -1;
  function draw(force) {
    const s = l.series;
    if (!force && drawn === s.version) return;
    drawn = s.version;
    const win = windowNow();
    charts.cb.update(s.data(cbS.map((x) => x.col), win[0]), win);
    charts.lag.update(s.data(lagS.map((x) => x.col), win[0]), win);
    charts.other.update(s.data(["timer99", "step99"], win[0]), win);
    const i = s.indexAt(win[0]);
    const xs = s.cols.t.slice(i);
    charts.cbHeat.update(xs, s.buckets.callback_duration.slice(i), win);
    charts.lagHeat.update(xs, s.buckets.eventloop_delay.slice(i), win);
    const minute = (s.lastEnd || Date.now()) / 1000 - 60;
    const cbB = s.bucketsSince("callback_duration", minute);
    const lagB = s.bucketsSince("eventloop_delay", minute);
    charts.cbHist.update(cbB);
    charts.lagHist.update(lagB);
    histFoot(cbHist.foot, cbB);
    histFoot(lagHist.foot, lagB);
    text(cbLines.foot, `now: p50 ${ms(s.last("cb50"))} · p99 ${ms(s.last("cb99"))} · max ${ms(s.last("cbmax"))}`);
    text(lagLines.foot, `now: p50 ${ms(s.last("lag50"))} · p99 ${ms(s.last("lag99"))} · max ${ms(s.last("lagmax"))}`);
  }

  const since = poller(async () => {
    const d = await get(loopPath(l.id));
    const hs = d.since_start?.histograms ?? {};
    const row = (name, label) => {
      const x = hs[name];
      if (!x || !x.count) return h("tr", null, h("th", { scope: "row" }, label), h("td", { colspan: 6, class: "muted" }, "no values"));
      return h(
        "tr",
        null,
        h("th", { scope: "row" }, label),
        [x.count, x.p50_ns, x.p90_ns, x.p99_ns, x.p999_ns, x.max_ns].map((v, i) => h("td", { class: "n" }, i ? duration(v) : count(v))),
      );
    };
    fill(
      sinceEl,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          null,
          h("thead", null, h("tr", null, ["", "count", "p50", "p90", "p99", "p99.9", "max"].map((x, i) => h("th", { class: i ? "n" : null }, x)))),
          h(
            "tbody",
            null,
            row("callback_duration", "callback duration"),
            row("eventloop_delay", "loop lag"),
            row("timer_delay", "timer lateness"),
            row("task_step_duration", "task step"),
            row("executor_job_duration", "executor job"),
          ),
        ),
      ),
      h(
        "p",
        { class: "muted" },
        `${count(d.since_start?.samples)} samples received, ${count(d.loop?.samples_dropped)} dropped by the loop, ` +
          `${count(d.since_start?.samples_missing)} missing; history keeps ${count(d.history?.capacity)} samples.`,
      ),
    );
  }, 5000);

  draw(true);
  return {
    update(kind) {
      if (kind === "sample" || kind === "range") draw(kind === "range");
    },
    destroy() {
      since.stop();
      for (const c of Object.values(charts)) c.destroy();
    },
  };
}

