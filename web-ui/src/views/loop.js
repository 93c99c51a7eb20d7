// One loop: a summary strip, then tabs (latency, tasks, callback sites, slow
// callbacks and stalls, transports and servers, executor). Tabs are hash routes.

import { h, text, link } from "../dom.js";
import { store, loopState, serverNow } from "../store.js";
import { percent, rate, ms, count, age } from "../format.js";
import { latencyTab } from "./latency.js";
import { tasksTab } from "./tasks.js";
import { taskPage } from "./task.js";
import { sitesTab } from "./sites.js";
import { slowTab } from "./slow.js";
import { transportsTab } from "./transports.js";
import { executorTab } from "./executor.js";

const TABS = [
  ["latency", "Latency", latencyTab],
  ["tasks", "Tasks", tasksTab],
  ["sites", "Callback sites", sitesTab],
  ["slow", "Slow & stalls", slowTab],
  ["transports", "Transports", transportsTab],
  ["executor", "Executor", executorTab],
];

export function loopView(el, { id, tab, sub, query }) {
  let tabView = null;
  let strip = null;
  const waiting = h("p", { class: "empty" }, `Waiting for loop #${id}…`);
  el.append(waiting);

  function mount() {
    const l = store.loops.get(id);
    if (!l) return false;
    waiting.remove();
    strip = summary(l);
    const nav = h(
      "nav",
      { class: "tabs", "aria-label": "loop sections" },
      TABS.map(([key, label]) =>
        h("a", { href: `#/loop/${id}/${key}`, class: tab === key || (key === "tasks" && tab === "task") ? "on" : null }, label),
      ),
    );
    const body = h("div", { class: "tab-body" });
    el.append(
      h("div", { class: "crumbs" }, link("/", "Loops"), " / ", h("span", null, l.info.name || `loop ${id}`)),
      strip.el,
      nav,
      body,
    );
    if (tab === "task" && sub) tabView = taskPage(body, l, Number(sub));
    else {
      const make = (TABS.find(([k]) => k === tab) ?? TABS[0])[2];
      tabView = make(body, l, query);
    }
    return true;
  }

  let ready = mount();
  return {
    update(kind) {
      if (!ready) {
        if (kind === "loops" || kind === "sample") ready = mount();
        if (!ready && store.conn === "gone") text(waiting, `Loop #${id} is not known, and the process is gone.`);
        return;
      }
      strip.update();
      tabView?.update?.(kind);
    },
    query(q) {
      tabView?.query?.(q);
    },
    destroy() {
      tabView?.destroy?.();
    },
  };
}

/** The loop's headline numbers in one line (the charts are on the overview and tabs). */
function summary(l) {
  const items = [
    ["utilization", (s) => percent(s.last("util"))],
    ["callbacks", (s) => rate(s.last("cbps"))],
    ["lag p99", (s) => ms(s.last("lag99"))],
    ["callback p99", (s) => ms(s.last("cb99"))],
    ["ready queue", (s) => count(s.last("ready"))],
    ["tasks", (s) => count(s.last("tasks"))],
    ["transports", (s) => count(s.last("transports"))],
    [
      "slow · stalls (1 min)",
      (s) => {
        const now = s.lastEnd / 1000;
        return `${count(s.sumSince("slow", now - 60))} · ${count(s.sumSince("stalls", now - 60))}`;
      },
    ],
  ];
  const state = h("span", { class: "badge" });
  const meta = h("span", { class: "meta" });
  const values = items.map(() => h("span", { class: "v" }));
  const el = h(
    "section",
    { class: "card strip", dataset: { loop: String(l.id) } },
    h("div", { class: "card-head" }, h("h1", null, l.info.name || `loop ${l.id}`, h("span", { class: "id" }, ` #${l.id}`)), state, meta),
    h(
      "dl",
      { class: "kv" },
      items.map(([label], i) => h("div", null, h("dt", null, label), h("dd", null, values[i]))),
    ),
  );
  function update() {
    const st = loopState(l);
    text(state, st === "gone" ? "process gone" : st === "waiting" ? "waiting for data" : st);
    state.className = `badge state-${st}`;
    text(
      meta,
      `thread ${l.info.thread_name || l.info.thread_id} · pid ${l.info.pid} · up ${age(serverNow() - l.info.created_unix_ms)}`,
    );
    items.forEach(([, f], i) => text(values[i], f(l.series)));
  }
  update();
  return { el, update };
}
