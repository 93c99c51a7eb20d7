// Callback sites: the always-on profile, top sites by total time, count or max.

import { h, fill, text } from "../dom.js";
import { get, loopPath, url } from "../api.js";
import { count, duration, shortFile } from "../format.js";
import { asOf, errorNote, headerRow, poller } from "./common.js";

const COLS = [
  { key: "site", label: "site" },
  { key: "count", label: "count", sort: "count", num: true },
  { key: "total", label: "total time", sort: "total", num: true },
  { key: "share", label: "share", num: true },
  { key: "mean", label: "mean", num: true },
  { key: "max", label: "max", sort: "max", num: true },
];

export function sitesTab(el, l) {
  let sort = "total";
  let limit = 50;
  const note = h("span", { class: "muted" });
  const limitSel = h(
    "select",
    { "aria-label": "rows", onchange: () => ((limit = Number(limitSel.value)), p.now()) },
    [25, 50, 200, 1000].map((n) => h("option", { value: String(n), selected: n === limit }, `top ${n}`)),
  );
  const err = h("div");
  const thead = h("thead");
  const tbody = h("tbody");
  el.append(
    h(
      "section",
      { class: "card" },
      h("div", { class: "toolbar" }, h("h3", null, "Where the loop spends its time"), h("span", { class: "spacer" }), note, limitSel),
      err,
      h("div", { class: "table-wrap" }, h("table", { class: "sites" }, thead, tbody)),
      h("p", { class: "muted" }, "Task steps are attributed to the coroutine's own code; plain callbacks to their function. Totals since the loop started."),
    ),
  );

  async function load() {
    try {
      const body = await get(url(loopPath(l.id, "/callback-sites"), { sort, limit }));
      fill(err);
      fill(thead, headerRow(COLS, sort, "desc", (s) => ((sort = s), p.now())));
      text(note, asOf(body.tables_unix_ms));
      const sum = body.items.reduce((a, r) => a + r.total_ns, 0) || 1;
      if (!body.items.length) {
        fill(tbody, h("tr", null, h("td", { colspan: COLS.length, class: "empty" }, "No callback sites recorded yet.")));
        return;
      }
      fill(
        tbody,
        body.items.map((r) =>
          h(
            "tr",
            { dataset: { site: String(r.id) } },
            h("td", null, h("code", null, r.qualname), h("div", { class: "loc", title: `${r.file}:${r.line}` }, `${shortFile(r.file, 3)}:${r.line}`)),
            h("td", { class: "n" }, count(r.count)),
            h("td", { class: "n" }, duration(r.total_ns)),
            h(
              "td",
              { class: "n share" },
              `${((100 * r.total_ns) / sum).toFixed(1)} %`,
              h("span", { class: "track", "aria-hidden": "true" }, h("span", { class: "fill", style: { width: `${Math.round((100 * r.total_ns) / sum)}%` } })),
            ),
            h("td", { class: "n" }, duration(r.count ? r.total_ns / r.count : null)),
            h("td", { class: "n" }, duration(r.max_ns)),
          ),
        ),
      );
    } catch (e) {
      fill(err, errorNote(e));
    }
  }

  const p = poller(load, 2000);
  return { destroy: () => p.stop() };
}
