// Transports and servers: kind, addresses, bytes in/out with rates (from successive
// tables), write buffer, paused state, age, protocol; servers with their counts.

import { h, fill, text } from "../dom.js";
import { get, loopPath, url } from "../api.js";
import { age, byteRate, bytes, count, duration } from "../format.js";
import { serverNow } from "../store.js";
import { asOf, errorNote, pager, poller } from "./common.js";
import { rates } from "../rates.js";

const LIMIT = 100;
const SERVER_HEAD = ["kind", "addresses", "protocol", "state", "accepted", "open", "refused", "age"];
const KINDS = ["tcp", "unix", "udp", "pipe_read", "pipe_write", "subprocess", "tls"];

export function transportsTab(el, l) {
  let kind = "";
  let offset = 0;
  let seen = new Map();
  const kindSel = h(
    "select",
    { "aria-label": "kind", onchange: () => ((kind = kindSel.value), (offset = 0), p.now()) },
    h("option", { value: "" }, "all kinds"),
    KINDS.map((k) => h("option", { value: k }, k)),
  );
  const note = h("span", { class: "muted" });
  const err = h("div");
  const tbody = h("tbody");
  const pagerEl = h("div");
  const srvBody = h("tbody");
  const head = ["kind", "local", "peer", "protocol", "state", "in", "out", "write buffer", "paused", "age"];
  el.append(
    h(
      "section",
      { class: "card" },
      h("div", { class: "toolbar" }, h("h3", null, "Transports"), kindSel, h("span", { class: "spacer" }), note),
      err,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "transports" },
          h("thead", null, h("tr", null, head.map((x) => h("th", { class: ["in", "out", "write buffer", "age"].includes(x) ? "n" : null }, x)))),
          tbody,
        ),
      ),
      pagerEl,
    ),
    h(
      "section",
      { class: "card" },
      h("h3", null, "Servers"),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "servers" },
          h("thead", null, h("tr", null, SERVER_HEAD.map((x, i) => h("th", { class: i > 3 && i < 7 ? "n" : null }, x)))),
          srvBody,
        ),
      ),
    ),
  );

  function paused(r) {
    const parts = [];
    if (r.reading_paused) parts.push("reading");
    if (r.writing_paused) parts.push("writing");
    const total = r.paused_reading_ns + r.paused_writing_ns;
    return h(
      "span",
      { class: parts.length ? "warn-text" : "muted" },
      parts.length ? `${parts.join(" + ")} paused` : "no",
      total ? h("div", { class: "loc" }, `total ${duration(total)}`) : "",
    );
  }

  async function load() {
    try {
      const [tb, sb] = await Promise.all([
        get(url(loopPath(l.id, "/transports"), { kind, offset, limit: LIMIT })),
        get(url(loopPath(l.id, "/servers"), { limit: 100 })),
      ]);
      fill(err);
      seen = rates(seen, tb.items, tb.tables_unix_ms);
      text(note, `${asOf(tb.tables_unix_ms)}${tb.truncated ? " · truncated" : ""}`);
      fill(
        tbody,
        tb.items.length
          ? tb.items.map((r) => {
              const rt = seen.get(r.id);
              // Until two readings give a rate, the average since the transport opened.
              const lived = Math.max(1, tb.tables_unix_ms - r.created_unix_ms) / 1000;
              const rin = rt?.rin ?? r.bytes_in / lived;
              const rout = rt?.rout ?? r.bytes_out / lived;
              return h(
                "tr",
                { dataset: { transport: String(r.id), peer: r.peer, local: r.local } },
                h("td", null, h("span", { class: "badge" }, r.kind)),
                h("td", null, h("code", null, r.local || "–")),
                h("td", null, h("code", null, r.peer || "–")),
                h("td", null, r.protocol),
                h("td", null, h("span", { class: `badge ${r.state === "open" ? "state-running" : "state-closed"}` }, r.state)),
                h("td", { class: "n" }, bytes(r.bytes_in), h("div", { class: "loc" }, `${byteRate(rin)} · ${count(r.calls_in)} calls`)),
                h("td", { class: "n" }, bytes(r.bytes_out), h("div", { class: "loc" }, `${byteRate(rout)} · ${count(r.calls_out)} calls`)),
                h("td", { class: "n" }, bytes(r.write_buffer), h("div", { class: "loc" }, `high ${bytes(r.write_buffer_high_water)}`)),
                h("td", null, paused(r)),
                h("td", { class: "n" }, age(serverNow() - r.created_unix_ms)),
              );
            })
          : h("tr", null, h("td", { colspan: head.length, class: "empty" }, "No transports.")),
      );
      fill(pagerEl, tb.total > LIMIT ? pager(offset, LIMIT, tb.total, (o) => ((offset = o), p.now())) : null);
      fill(
        srvBody,
        sb.items.length
          ? sb.items.map((s) =>
              h(
                "tr",
                { dataset: { server: String(s.id) } },
                h("td", null, h("span", { class: "badge" }, s.tls ? `${s.kind} + tls` : s.kind)),
                h("td", null, s.addresses.map((a) => h("code", { class: "addr" }, a))),
                h("td", null, s.protocol_factory || "–"),
                h("td", null, h("span", { class: `badge ${s.serving ? "state-running" : "state-closed"}` }, s.state || (s.serving ? "serving" : "not serving"))),
                h("td", { class: "n" }, count(s.accepted)),
                h("td", { class: "n" }, count(s.open)),
                h("td", { class: s.refused ? "n warn-text" : "n" }, count(s.refused)),
                h("td", { class: "n" }, s.created_unix_ms ? age(serverNow() - s.created_unix_ms) : "–"),
              ),
            )
          : h("tr", null, h("td", { colspan: SERVER_HEAD.length, class: "empty" }, "No servers.")),
      );
    } catch (e) {
      fill(err, errorNote(e));
    }
  }

  const p = poller(load, 2000);
  return { destroy: () => p.stop() };
}
