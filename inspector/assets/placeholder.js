// Lists the loops through the JSON API. Kept in its own file so the page's
// Content-Security-Policy can forbid inline scripts.
"use strict";
const token = new URLSearchParams(location.search).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};

function ms(ns) { return (ns / 1e6).toFixed(2) + " ms"; }

function cell(row, text, numeric) {
  const td = row.insertCell();
  td.textContent = text;
  if (numeric) td.className = "n";
}

async function refresh() {
  try {
    const r = await fetch("api/v1/loops", { headers });
    if (!r.ok) throw new Error(r.status + " " + (await r.text()));
    const body = await r.json();
    const tbody = document.getElementById("loops");
    tbody.replaceChildren();
    for (const l of body.loops) {
      const s = l.latest;
      const secs = s ? Math.max((s.end_unix_ms - s.start_unix_ms) / 1000, 0.001) : 1;
      const row = tbody.insertRow();
      if (l.closed) row.className = "closed";
      cell(row, l.info.id, true);
      cell(row, l.info.name);
      cell(row, l.info.thread_name);
      cell(row, s ? (100 * s.utilization).toFixed(1) + " %" : "–", true);
      cell(row, s ? Math.round(s.callbacks / secs) : "–", true);
      cell(row, s ? ms(s.histograms.callback_duration.p99_ns) : "–", true);
      cell(row, s ? ms(s.histograms.eventloop_delay.p99_ns) : "–", true);
      cell(row, s ? s.tasks_live : "–", true);
      cell(row, l.stalls_total, true);
      cell(row, l.closed ? "closed" : "running");
    }
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "cannot read the API: " + e.message;
  }
}

refresh();
setInterval(refresh, 1000);
