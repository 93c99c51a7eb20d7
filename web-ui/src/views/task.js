// A task's page: its record, its await stack (a deep query the loop answers), its
// parent and children.

import { h, fill, text, link } from "../dom.js";
import { get, loopPath, url } from "../api.js";
import { clock, count, duration } from "../format.js";
import { errorNote, poller } from "./common.js";
import { remember, taskAge, taskCache, taskState } from "./tasks.js";

/** Pages of 1000 tasks scanned for a task's record and children (the API has no
 * single-task or by-parent query); past this the page says the scan was cut. */
const SCAN_PAGES = 10;
const PAGE = 1000;

export function taskPage(el, l, taskId) {
  const title = h("h2", null, `Task #${taskId}`);
  const facts = h("dl", { class: "facts" });
  const stackEl = h("div", { class: "await-stack", "aria-live": "polite" }, "asking the loop…");
  const stackErr = h("div");
  const stackNote = h("span", { class: "muted" });
  const kids = h("div");
  const refresh = h("button", { type: "button", onclick: () => loadStack() }, "Refresh stack");
  el.append(
    h("section", { class: "card task-card" }, title, facts),
    h(
      "section",
      { class: "card" },
      h("div", { class: "toolbar" }, h("h3", null, "Await stack"), h("span", { class: "spacer" }), stackNote, refresh),
      stackErr,
      stackEl,
    ),
    h("section", { class: "card" }, h("h3", null, "Children"), kids),
  );

  let rec = taskCache.get(`${l.id}:${taskId}`) ?? null;
  if (rec) renderRecord();

  function renderRecord() {
    text(title, `Task ${rec.name || "#" + rec.id}`);
    const row = (k, v) => [h("dt", null, k), h("dd", null, v)];
    fill(
      facts,
      row("id", String(rec.id)),
      row("coroutine", h("span", null, h("code", null, rec.coro), h("span", { class: "loc" }, ` ${rec.defined_at}`))),
      row("state", taskState(rec)),
      row("created", `${clock(rec.created_unix_ms)} (${taskAge(rec)})`),
      rec.finished_unix_ms ? row("finished", clock(rec.finished_unix_ms)) : null,
      row("steps", count(rec.steps)),
      row("busy", duration(rec.busy_ns)),
      row("longest step", duration(rec.longest_step_ns)),
      row("scheduled delay (last)", duration(rec.last_scheduled_delay_ns)),
      row("parent", rec.parent_id != null ? link(`/loop/${l.id}/task/${rec.parent_id}`, `task #${rec.parent_id}`) : "none"),
    );
  }

  async function scan() {
    const children = [];
    let found = null;
    let cut = false;
    for (let page = 0; page < SCAN_PAGES; page++) {
      const body = await get(url(loopPath(l.id, "/tasks"), { sort: "id", offset: page * PAGE, limit: PAGE }));
      for (const r of body.items) {
        if (r.id === taskId) found = r;
        if (r.parent_id === taskId) children.push(r);
        if (r.parent_id === taskId || r.id === taskId) remember(l.id, r);
      }
      if (body.offset + body.items.length >= body.total) break;
      if (page === SCAN_PAGES - 1) cut = true;
    }
    if (found) {
      rec = found;
      renderRecord();
    } else if (!rec) {
      fill(facts, h("p", { class: "muted" }, "This task is not in the loop's table (finished long ago, or not a task of this loop)."));
    }
    fill(
      kids,
      children.length
        ? h(
            "ul",
            { class: "children" },
            children.map((c) =>
              h("li", null, link(`/loop/${l.id}/task/${c.id}`, c.name || `#${c.id}`), " ", h("code", null, c.coro), " ", taskState(c)),
            ),
          )
        : h("p", { class: "muted" }, "No child tasks."),
      cut ? h("p", { class: "muted" }, `Scanned the first ${SCAN_PAGES * PAGE} tasks only.`) : null,
    );
  }

  async function loadStack() {
    refresh.disabled = true;
    text(stackNote, "asking the loop…");
    const t0 = performance.now();
    try {
      const body = await get(loopPath(l.id, `/tasks/${taskId}/stack`));
      fill(stackErr);
      fill(stackEl, awaitStack(body.stack || "(empty)"));
      stackEl.hidden = false;
      text(stackNote, `answered in ${Math.round(performance.now() - t0)} ms, at ${clock(Date.now())}`);
    } catch (e) {
      text(stackNote, "");
      if (e.status === 404) {
        stackEl.hidden = false;
        fill(stackEl, h("p", { class: "muted" }, "The loop has no such task now (it finished and left the table)."));
      } else {
        stackEl.hidden = true;
        fill(stackErr, errorNote(e));
      }
    } finally {
      refresh.disabled = false;
    }
  }

  loadStack();
  const p = poller(scan, 3000);
  return {
    destroy() {
      p.stop();
    },
  };
}

const STEP = /^(coroutine|generator|future|task|awaitable|truncated)\s+(.*)$/;

/**
 * An await stack as the loop formats it, one step per line, outermost first
 * ("coroutine main (app.py:12)", …, "future <Future pending …>"), drawn as a chain;
 * any other text (another formatter's) is shown as it came.
 */
export function awaitStack(textValue) {
  const lines = textValue.split("\n").filter((l) => l.trim());
  const steps = lines.map((l) => STEP.exec(l.trim()));
  if (!steps.length || steps.some((m) => !m)) return h("pre", { class: "stack" }, textValue);
  return h(
    "ol",
    { class: "chain" },
    steps.map(([, kind, rest], i) => {
      const loc = /^(.*) \((.*:\d+)\)$/.exec(rest);
      return h(
        "li",
        { style: { paddingLeft: `${Math.min(i, 12) * 14}px` } },
        i ? h("span", { class: "muted" }, "↳ awaits ") : null,
        h("span", { class: `badge kind-${kind}` }, kind),
        " ",
        loc ? [h("code", null, loc[1]), h("span", { class: "loc" }, ` ${loc[2]}`)] : h("code", null, rest),
      );
    }),
  );
}
