// Executor: the default executor's queue, throughput and job durations
// (asyncio's run_in_executor jobs), from the samples.

import { h, text } from "../dom.js";
import { timeChart, histogramChart, theme } from "../charts.js";
import { bounds } from "../store.js";
import { windowNow } from "../ui.js";
import { count, ms, rate } from "../format.js";

export function executorTab(el, l) {
  const t = theme();
  const grid = h("div", { class: "grid2" });
  el.append(grid);
  const put = (title, help) => {
    const body = h("div", { class: "chart" });
    const foot = h("div", { class: "chart-foot" });
    grid.append(h("section", { class: "card panel" }, h("h3", null, title, h("span", { class: "help" }, help)), body, foot));
    return { body, foot };
  };
  const q = put("Queue", "jobs waiting for a worker, and running, at each interval's end");
  const d = put("Jobs done", "jobs completed per second");
  const j = put("Job duration", "asyncio executor job run time per interval");
  const hi = put("Job duration, last minute", "jobs per bucket");
  const charts = {
    q: timeChart(q.body, {
      series: [
        { label: "queued", color: t.warn, fill: true },
        { label: "running", color: t.accent },
      ],
      height: 170,
      fmt: count,
    }),
    d: timeChart(d.body, { series: [{ label: "done/s", color: t.c2, fill: true }], height: 170, fmt: count, bars: true }),
    j: timeChart(j.body, {
      series: [
        { label: "p50", color: t.p50 },
        { label: "p99", color: t.p99 },
        { label: "max", color: t.max, width: 1 },
      ],
      height: 170,
      log: true,
      fmt: ms,
    }),
    hi: histogramChart(hi.body, { bounds: bounds(), color: t.c3, label: "jobs", height: 170 }),
  };
  let drawn = -1;
  function draw(force) {
    const s = l.series;
    if (!force && drawn === s.version) return;
    drawn = s.version;
    const win = windowNow();
    charts.q.update(s.data(["exq", "exr"], win[0]), win);
    charts.d.update(s.data(["exdone"], win[0]), win);
    charts.j.update(s.data(["ex50", "ex99", "exmax"], win[0]), win);
    const minute = (s.lastEnd || Date.now()) / 1000 - 60;
    const b = s.bucketsSince("executor_job_duration", minute);
    charts.hi.update(b);
    text(q.foot, `now: ${count(s.last("exq"))} queued · ${count(s.last("exr"))} running`);
    text(d.foot, `now: ${rate(s.last("exdone"))} · peak ${rate(s.maxSince("exdone", win[0]))} in range`);
    text(j.foot, `now: p50 ${ms(s.last("ex50"))} · p99 ${ms(s.last("ex99"))} · max ${ms(s.last("exmax"))}`);
    text(hi.foot, b ? `${count(b.reduce((a, c) => a + c, 0))} jobs` : "no jobs in the last minute");
  }
  draw(true);
  return {
    update(kind) {
      if (kind === "sample" || kind === "range") draw(kind === "range");
    },
    destroy() {
      for (const c of Object.values(charts)) c.destroy();
    },
  };
}
