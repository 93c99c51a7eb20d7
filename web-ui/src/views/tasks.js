// Tasks: sortable, filterable, paged by the API (`/loops/{id}/tasks`); counts per
// state as filter chips; each row links to the task's page (await stack, children).

import { h, fill, text, link, debounce } from "../dom.js";
import { get, loopPath, url } from "../api.js";
import { age, count, duration } from "../format.js";
import { serverNow } from "../store.js";
import { asOf, errorNote, headerRow, pager, poller } from "./common.js";

const LIMIT = 50;
const STATES = ["pending", "done", "cancelled", "failed"];

/** Task records seen, by "loop:task", so a task's page opens without a search. */
export const taskCache = new Map();
const CACHE_MAX = 5000;

export function remember(loopId, rec) {
  taskCache.set(`${loopId}:${rec.id}`, rec);
  if (taskCache.size > CACHE_MAX) taskCache.delete(taskCache.keys().next().value);
}

const COLS = [
  { key: "name", label: "name", sort: "name", defaultOrder: "asc" },
  { key: "coro", label: "coroutine" },
  { key: "state", label: "state" },
  { key: "age", label: "age", sort: "created", defaultOrder: "asc", num: true },
  { key: "steps", label: "steps", sort: "steps", num: true },
  { key: "busy", label: "busy", sort: "busy", num: true },
  { key: "longest", label: "longest step", sort: "longest_step", num: true },
  { key: "delay", label: "sched. delay", sort: "scheduled_delay", num: true },
  { key: "parent", label: "parent" },
];

export function taskState(r) {
  const cls = { pending: "state-running", done: "state-done", cancelled: "warn", failed: "bad" }[r.state] ?? "";
  return h("span", { class: `badge ${cls}` }, r.state === "failed" && r.exception_type ? `failed: ${r.exception_type}` : r.state);
}

export function taskAge(r) {
  const end = r.finished_unix_ms ?? serverNow();
  return r.finished_unix_ms ? `ran ${age(end - r.created_unix_ms)}` : age(end - r.created_unix_ms);
}

export function tasksTab(el, l, query) {
  let q = params(query);
  const stateSel = h(
    "select",
    { "aria-label": "state", onchange: () => go({ state: stateSel.value, offset: 0 }) },
    h("option", { value: "" }, "all states"),
    STATES.map((s) => h("option", { value: s }, s)),
  );
  const nameIn = h("input", {
    type: "search",
    placeholder: "filter by name or coroutine",
    "aria-label": "filter by name or coroutine",
    value: q.name,
    oninput: debounce(() => go({ name: nameIn.value.trim(), offset: 0 }), 300),
  });
  const chips = h("div", { class: "chips" });
  const note = h("span", { class: "muted" });
  const err = h("div");
  const thead = h("thead");
  const tbody = h("tbody");
  const pagerEl = h("div");
  el.append(
    h("section", { class: "card" },
      h("div", { class: "toolbar" }, stateSel, nameIn, chips, h("span", { class: "spacer" }), note),
      err,
      h("div", { class: "table-wrap" }, h("table", { class: "tasks" }, thead, tbody)),
      pagerEl,
    ),
  );

  function go(change) {
    const next = { ...q, ...change };
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(next)) if (v !== "" && v != null && !(k === "offset" && !v)) p.set(k, v);
    const s = p.toString();
    location.hash = `#/loop/${l.id}/tasks${s ? "?" + s : ""}`;
  }

  async function load() {
    try {
      const body = await get(
        url(loopPath(l.id, "/tasks"), { state: q.state, name: q.name, sort: q.sort, order: q.order, offset: q.offset, limit: LIMIT }),
      );
      fill(err);
      render(body);
    } catch (e) {
      fill(err, errorNote(e));
    }
  }

  async function loadCounts() {
    try {
      const counts = await Promise.all(
        STATES.map((s) => get(url(loopPath(l.id, "/tasks"), { state: s, limit: 0 })).then((b) => b.total)),
      );
      fill(
        chips,
        STATES.map((s, i) =>
          h(
            "button",
            { type: "button", class: `chip${q.state === s ? " on" : ""}`, onclick: () => go({ state: q.state === s ? "" : s, offset: 0 }) },
            `${s} ${count(counts[i])}`,
          ),
        ),
      );
    } catch {
      /* the table shows the error */
    }
  }

  function render(body) {
    fill(thead, headerRow(COLS, q.sort, q.order, (sort, order) => go({ sort, order, offset: 0 })));
    text(note, `${asOf(body.tables_unix_ms)}${body.truncated ? " · table truncated by the inspector" : ""}`);
    if (!body.items.length) {
      fill(tbody, h("tr", null, h("td", { colspan: COLS.length, class: "empty" }, q.name || q.state ? "No task matches." : "No tasks.")));
    } else {
      fill(
        tbody,
        body.items.map((r) => {
          remember(l.id, r);
          return h(
            "tr",
            { dataset: { task: String(r.id) } },
            h("td", null, link(`/loop/${l.id}/task/${r.id}`, r.name || `#${r.id}`)),
            h("td", null, h("code", null, r.coro), h("div", { class: "loc" }, r.defined_at)),
            h("td", null, taskState(r)),
            h("td", { class: "n" }, taskAge(r)),
            h("td", { class: "n" }, count(r.steps)),
            h("td", { class: "n" }, duration(r.busy_ns)),
            h("td", { class: "n" }, duration(r.longest_step_ns)),
            h("td", { class: "n" }, duration(r.last_scheduled_delay_ns)),
            h("td", null, r.parent_id != null ? link(`/loop/${l.id}/task/${r.parent_id}`, `#${r.parent_id}`) : h("span", { class: "muted" }, "–")),
          );
        }),
      );
    }
    fill(pagerEl, pager(body.offset, LIMIT, body.total, (offset) => go({ offset })));
  }

  function sync() {
    stateSel.value = q.state;
    if (document.activeElement !== nameIn) nameIn.value = q.name;
  }

  sync();
  const p1 = poller(load, 2000);
  const p2 = poller(loadCounts, 5000);
  return {
    query(newQuery) {
      q = params(newQuery);
      sync();
      p1.now();
      p2.now();
    },
    destroy() {
      p1.stop();
      p2.stop();
    },
  };
}

function params(query) {
  const g = (k, d = "") => query?.get(k) ?? d;
  return {
    state: STATES.includes(g("state")) ? g("state") : "",
    name: g("name").slice(0, 256),
    sort: g("sort", "busy"),
    order: g("order", "desc") === "asc" ? "asc" : "desc",
    offset: Math.max(0, parseInt(g("offset", "0"), 10) || 0),
  };
}
