// The dashboard's shell: header (process, link state, time range), banners
// (process gone, loops busy, stalls ongoing), and a hash router over the views.

import "./style.css";
import { h, fill, text, link } from "./dom.js";
import { store, on, start, loopList, busyReason } from "./store.js";
import { age, duration, clock } from "./format.js";
import { ui, setRange, RANGES } from "./ui.js";
import { setToken, token } from "./api.js";
import { homeView } from "./views/home.js";
import { loopView } from "./views/loop.js";

const top = document.getElementById("top");
const banners = document.getElementById("banners");
const viewEl = document.getElementById("view");

// ---- header ----
const connPill = h("span", { class: "pill", id: "conn", role: "status" });
const procInfo = h("span", { class: "proc" });
const rangeBtns = RANGES.map(([secs, label]) =>
  h("button", { type: "button", class: "seg", dataset: { range: String(secs) }, onclick: () => setRange(secs) }, label),
);
fill(
  top,
  h(
    "div",
    { class: "bar" },
    h("a", { class: "brand", href: "#/" }, h("span", { class: "logo", "aria-hidden": "true" }), "glassloop"),
    procInfo,
    h("span", { class: "spacer" }),
    h("span", { class: "segs", role: "group", "aria-label": "time range" }, rangeBtns),
    connPill,
  ),
);

function renderHeader() {
  for (const b of rangeBtns) b.classList.toggle("on", Number(b.dataset.range) === ui.range);
  const c = store.conn;
  const labels = {
    connecting: "connecting…",
    live: "live",
    polling: "polling",
    reconnecting: "reconnecting…",
    gone: "process gone",
    paused: "paused",
    locked: "token needed",
  };
  text(connPill, labels[c] ?? c);
  connPill.className = `pill conn-${c}`;
  connPill.title = store.connDetail || (c === "live" ? "updates stream in at the sample rate" : "");
  const loops = loopList();
  const first = loops[0]?.info;
  const version = store.index?.glassloop_version;
  text(
    procInfo,
    first
      ? `pid ${first.pid} · Python ${first.python || "?"}${version ? ` · glassloop ${version}` : ""} · ${loops.length} loop${loops.length === 1 ? "" : "s"}`
      : "",
  );
}

// ---- banners ----
function renderBanners() {
  const out = [];
  if (store.conn === "gone") {
    out.push(
      h(
        "div",
        { class: "banner bad", id: "banner-gone" },
        h("strong", null, "Process gone. "),
        `Nothing answers at ${location.host} since ${clock(store.goneSince)} (${age(Date.now() - store.goneSince)} ago). `,
        "Showing the last data received; reconnecting on its own.",
      ),
    );
  } else if (store.conn === "locked") {
    if (banners.querySelector("#token-form")) return; // keep what the user is typing
    const input = h("input", { type: "password", name: "token", autocomplete: "off", "aria-label": "token", placeholder: "GLASSLOOP_TOKEN" });
    out.push(
      h(
        "form",
        {
          class: "banner warn",
          id: "token-form",
          onsubmit: (ev) => {
            ev.preventDefault();
            if (input.value.trim()) setToken(input.value.trim());
          },
        },
        h("strong", null, "Token needed. "),
        token
          ? "The token was refused; enter the one the process was started with (GLASSLOOP_TOKEN). "
          : "This inspector was started with a token (GLASSLOOP_TOKEN); enter it to continue. ",
        input,
        " ",
        h("button", { type: "submit" }, "Use token"),
      ),
    );
  } else if (store.conn === "reconnecting" && store.connDetail) {
    out.push(h("div", { class: "banner warn" }, store.connDetail));
  } else if (store.conn === "polling") {
    out.push(h("div", { class: "banner warn" }, store.connDetail));
  }
  for (const l of loopList()) {
    const b = busyReason(l);
    if (!b) continue;
    const name = `loop ${l.info.name || l.id} (#${l.id})`;
    out.push(
      h(
        "div",
        { class: "banner bad busy", dataset: { loop: String(l.id) } },
        h("strong", null, "Loop busy: "),
        b.kind === "stall"
          ? [
              `${name} has been running one callback for ${duration(b.ms * 1e6)}`,
              b.site ? [" in ", h("code", null, b.site)] : "",
              ". ",
              link(`/loop/${l.id}/slow`, "See the stall and its stack"),
            ]
          : `${name} has sent no sample for ${age(b.ms)}: a callback is blocking it, or the loop stopped.`,
      ),
    );
  }
  fill(banners, out);
}

// ---- router ----
let current = null;
let currentKey = "";

function parseRoute() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean);
  return { parts, query: new URLSearchParams(query), key: raw };
}

function route(force = false) {
  const r = parseRoute();
  const viewKey = r.parts.slice(0, 4).join("/");
  if (!force && current && currentKey === viewKey && current.query) {
    current.query(r.query); // same view, new parameters (filters, page)
    return;
  }
  current?.destroy();
  viewEl.replaceChildren();
  currentKey = viewKey;
  if (r.parts[0] === "loop" && r.parts[1]) {
    current = loopView(viewEl, { id: Number(r.parts[1]), tab: r.parts[2] || "latency", sub: r.parts[3], query: r.query });
  } else {
    current = homeView(viewEl);
  }
  window.scrollTo(0, 0);
}

window.addEventListener("hashchange", () => route());
// Light/dark switched: charts read their colors at creation, so rebuild the view.
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => route(true));
ui.onRange = () => {
  renderHeader();
  current?.update?.("range");
};

// One frame per burst of updates: samples of several loops arriving together draw once.
let pending = new Set();
let frame = 0;
on((kind) => {
  pending.add(kind);
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    const kinds = pending;
    pending = new Set();
    renderHeader();
    renderBanners();
    if (kinds.has("reset")) return route(true); // a new process: views hold the old loops
    for (const k of kinds) current?.update?.(k);
  });
});

renderHeader();
route();
start();
