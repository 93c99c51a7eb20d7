// What the dashboard knows, kept live: the loops, their samples (as columns), the
// stalls. One SSE stream (`api/v1/stream`) feeds it; the history comes from
// `api/v1/loops/{id}/samples` on load and after every reconnect. The stream is closed
// while the tab is hidden (no cost to the inspector then) and resumed, with the
// missed samples fetched, when it shows again. If the stream is refused (too many
// clients) the store polls the samples instead.

import { get, loopPath, streamUrl, token, url } from "./api.js";
import { Series } from "./series.js";

/** A loop with no sample for this long (while the process answers) is shown busy. */
export const SILENT_MS = 2000;
const MAX_PAGE = 3600;
const RETRY_MS = [1000, 2000, 3000, 5000];
const POLL_MS = 1000;
const STALLS_KEPT = 256;

const listeners = new Set();

export const store = {
  /** `GET /api/v1`: bucket bounds, stall threshold, version. */
  index: null,
  /** id → Loop (see `addLoop`). */
  loops: new Map(),
  /** stall id → StallEvent (all loops), newest kept. */
  stalls: new Map(),
  /**
   * The link to the process: "connecting" | "live" | "polling" (stream refused, polling
   * samples) | "reconnecting" | "gone" (nothing answers) | "paused" (tab hidden) |
   * "locked" (the inspector wants a token: GLASSLOOP_TOKEN).
   */
  conn: "connecting",
  /** When the process stopped answering (Date.now()), while "gone". */
  goneSince: null,
  /** Date.now() of the last thing heard from the process. */
  lastHeard: 0,
  /** Why the stream is not live, for the banner. */
  connDetail: "",
  /** This browser's clock minus the inspector's (ms), from live samples' end times. */
  skewMs: 0,
};

/** The inspector's clock now (Unix ms), so chart windows line up with sample times. */
export function serverNow() {
  return Date.now() - store.skewMs;
}

/** Subscribes to changes: fn(kind, loopId?) with kind "loops" | "sample" | "stall" | "conn" | "tick". */
export function on(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function emit(kind, id) {
  for (const fn of listeners) {
    try {
      fn(kind, id);
    } catch (e) {
      console.error(e);
    }
  }
}

function setConn(conn, detail = "") {
  if (conn === "gone" && store.conn !== "gone") store.goneSince = Date.now();
  if (conn !== "gone") store.goneSince = null;
  if (store.conn === conn && store.connDetail === detail) return;
  store.conn = conn;
  store.connDetail = detail;
  emit("conn");
}

function heard() {
  store.lastHeard = Date.now();
}

/** A loop as the dashboard keeps it. */
function addLoop(info, closed = false, closedUnixMs = null) {
  let l = store.loops.get(info.id);
  if (!l) {
    l = {
      id: info.id,
      info,
      closed,
      closedUnixMs,
      series: new Series(3600),
      /** performance.now() of the last sample received. */
      sampleAt: performance.now(),
      catching: false,
      queued: [],
      row: null, // the LoopRow from /loops (samples_dropped, stalls_total, …)
    };
    store.loops.set(info.id, l);
  } else {
    l.info = info;
    if (closed) {
      l.closed = true;
      l.closedUnixMs = closedUnixMs;
    }
  }
  return l;
}

/**
 * Whether stall `s` is still going on. Besides its `ongoing` flag (whose "closed"
 * event may be lost when a stream is cut), a sample of its loop that ended after
 * the stall began proves the callback returned: a blocked loop cuts no sample.
 */
export function stallOngoing(s) {
  if (!s.ongoing) return false;
  const latest = store.loops.get(s.loop_id)?.series.latest;
  return !(latest && latest.end_unix_ms > s.started_unix_ms + 20);
}

/** Whether loop `l` is busy now, and why (null when not). */
export function busyReason(l, now = performance.now()) {
  if (l.closed || store.conn === "gone") return null;
  for (const s of store.stalls.values()) {
    if (s.loop_id === l.id && stallOngoing(s)) {
      const ran = Math.max(s.duration_ns / 1e6, Date.now() - s.started_unix_ms);
      return { kind: "stall", ms: ran, site: s.site, stall: s };
    }
  }
  if (store.conn !== "live" && store.conn !== "polling") return null;
  const silent = now - l.sampleAt;
  if (l.series.length && silent > SILENT_MS) return { kind: "silent", ms: silent };
  return null;
}

let es = null;
let retryTimer = null;
let pollTimer = null;
let attempt = 0;
let streamFailures = 0;
let knownPids = null;
let uptime = null;
let started = false;

/** Starts the live link (once). */
export function start() {
  if (started) return;
  started = true;
  document.addEventListener("visibilitychange", () => (document.hidden ? pause() : connect()));
  // Ages, "busy for N s" and "gone since" move on even when nothing arrives.
  setInterval(() => document.hidden || emit("tick"), 500);
  connect();
}

function pause() {
  stopLink();
  setConn("paused", "the tab is hidden: updates resume when it shows");
}

/** Bumped whenever the link is torn down, so a connect still in flight gives up. */
let linkGen = 0;

function stopLink() {
  linkGen++;
  if (es) {
    es.close();
    es = null;
  }
  clearTimeout(retryTimer);
  clearInterval(pollTimer);
  retryTimer = pollTimer = null;
}

function scheduleRetry() {
  clearTimeout(retryTimer);
  if (document.hidden) return;
  const wait = RETRY_MS[Math.min(attempt, RETRY_MS.length - 1)];
  attempt++;
  retryTimer = setTimeout(connect, wait);
}

/** (Re)connects: reads the index and loops, then opens the stream (or polls). */
async function connect() {
  stopLink();
  const gen = linkGen;
  if (document.hidden) return pause();
  if (store.conn !== "gone") setConn(store.conn === "connecting" ? "connecting" : "reconnecting");
  try {
    const [index, list] = await Promise.all([get("api/v1"), get("api/v1/loops")]);
    if (gen !== linkGen) return; // paused or reconnected meanwhile
    heard();
    resetIfRestarted(index, list);
    store.index = index;
    syncLoops(list);
  } catch (e) {
    if (gen !== linkGen) return;
    if (e.status === 401) return setConn("locked", token ? "the token was refused" : "this inspector needs its token");
    if (e.unreachable) setConn("gone", "nothing answers at " + location.host);
    else setConn("reconnecting", e.message);
    return scheduleRetry();
  }
  attempt = 0;
  if (streamFailures >= 2) return startPolling("the live stream was refused; polling every second instead");
  openStream();
}

/** A new process behind the same address (restarted): forget the old one's data. */
function resetIfRestarted(index, list) {
  const pids = new Set(list.loops.map((l) => l.info.pid));
  const restarted =
    (uptime != null && index.uptime_seconds < uptime) ||
    (knownPids && pids.size && ![...pids].some((p) => knownPids.has(p)));
  uptime = index.uptime_seconds;
  if (pids.size) knownPids = pids;
  if (restarted) {
    store.loops.clear();
    store.stalls.clear();
    emit("reset");
  }
}

function syncLoops(list) {
  const fresh = [];
  for (const row of list.loops) {
    const known = store.loops.has(row.info.id);
    const l = addLoop(row.info, row.closed, row.closed_unix_ms);
    l.row = row;
    if (!known) fresh.push(l);
  }
  emit("loops");
  for (const l of store.loops.values()) catchUp(l);
  // Stalls that opened or closed while we were not listening.
  if (fresh.length || !store.stalls.size || store.conn !== "live") loadStalls();
}

async function loadStalls() {
  try {
    const body = await get(url("api/v1/stalls", { limit: 100 }));
    heard();
    for (const s of body.stalls) putStall(s);
    emit("stall");
  } catch {
    /* the stream brings new ones */
  }
}

function putStall(s) {
  const old = store.stalls.get(s.id);
  // A snapshot fetched before the stream's "closed" event must not reopen it.
  if (old && !old.ongoing && s.ongoing) return;
  if (old?.stack && !s.stack) s = { ...s, stack: old.stack, stack_status: old.stack_status };
  store.stalls.set(s.id, s);
  if (store.stalls.size > STALLS_KEPT) {
    const oldest = Math.min(...store.stalls.keys());
    store.stalls.delete(oldest);
  }
}

/**
 * Fetches the samples a loop is missing (all of them the first time). Stream samples
 * arriving meanwhile are queued; if they do not follow on from what the fetch
 * returned (the stream started after the fetch was answered), fetch again.
 */
async function catchUp(l, attempt = 0) {
  if (l.catching) return;
  l.catching = true;
  let gap = false;
  try {
    if (!l.series.length && !l.detail) {
      try {
        const d = await get(loopPath(l.id));
        l.series.capacity = d.history?.capacity || l.series.capacity;
        l.detail = d;
      } catch {
        /* keep the default capacity */
      }
    }
    for (let pages = 0; pages < 10; pages++) {
      const body = await get(url(loopPath(l.id, "/samples"), { since: l.series.lastSeq, limit: MAX_PAGE }));
      heard();
      for (const s of body.samples) l.series.push(s);
      if (body.samples.length) l.sampleAt = performance.now();
      if (body.samples.length < body.limit) break;
    }
  } catch (e) {
    if (e.status === 404) {
      // Forgotten by the inspector (closed long ago): keep what we have, marked closed.
      l.closed = true;
    }
  } finally {
    l.catching = false;
    gap = l.queued.length > 0 && l.queued[0].seq > l.series.lastSeq + 1;
    if (!gap || attempt >= 2) {
      // attempt ≥ 2: the missing samples were dropped by the loop; none will come.
      for (const s of l.queued) l.series.push(s);
      l.queued = [];
    }
    emit("sample", l.id);
  }
  if (gap && attempt < 2) await catchUp(l, attempt + 1);
}

function openStream() {
  let helloSeen = false;
  const source = new EventSource(streamUrl());
  es = source;
  source.addEventListener("hello", (ev) => {
    helloSeen = true;
    streamFailures = 0;
    heard();
    setConn("live");
    try {
      const hello = JSON.parse(ev.data);
      // Loops registered between our list and the stream: learn them.
      if (hello.loops.some((id) => !store.loops.has(id))) refreshLoops();
    } catch {
      /* ignore a malformed hello */
    }
    for (const l of store.loops.values()) catchUp(l);
  });
  source.addEventListener("sample", (ev) => {
    heard();
    const s = JSON.parse(ev.data);
    const l = store.loops.get(s.loop_id);
    if (!l) return refreshLoops();
    l.sampleAt = performance.now();
    // Samples are sent as they end, so the smallest lag seen is the clock offset.
    const skew = Date.now() - s.end_unix_ms;
    if (skew < store.skewMs || Math.abs(skew - store.skewMs) > 5000) store.skewMs = skew;
    else store.skewMs += (skew - store.skewMs) * 0.01;
    if (l.catching) l.queued.push(s);
    else if (l.series.push(s)) emit("sample", l.id);
  });
  source.addEventListener("loop", (ev) => {
    heard();
    const d = JSON.parse(ev.data);
    const known = store.loops.has(d.info.id);
    const l = addLoop(d.info, d.closed, d.closed_unix_ms);
    emit("loops");
    if (!known) catchUp(l);
  });
  source.addEventListener("stall", (ev) => {
    heard();
    putStall(JSON.parse(ev.data));
    emit("stall");
  });
  source.onerror = async () => {
    // The stream ended (cut for falling behind, process gone, or refused).
    source.close();
    if (es !== source) return; // already replaced or paused
    es = null;
    const gen = linkGen;
    if (!helloSeen) streamFailures++;
    try {
      await get("healthz", { timeout: 3000 });
      if (gen !== linkGen) return;
      setConn("reconnecting", helloSeen ? "the live stream ended; reconnecting" : "the live stream was refused");
    } catch {
      if (gen !== linkGen) return;
      setConn("gone", "nothing answers at " + location.host);
    }
    scheduleRetry();
  };
}

let refreshing = false;
async function refreshLoops() {
  if (refreshing) return;
  refreshing = true;
  try {
    syncLoops(await get("api/v1/loops"));
    heard();
  } catch {
    /* next event retries */
  } finally {
    refreshing = false;
  }
}

/** Fallback when the stream is refused: poll samples and stalls every second. */
function startPolling(detail) {
  setConn("polling", detail);
  let rounds = 0;
  pollTimer = setInterval(async () => {
    rounds++;
    try {
      if (rounds % 5 === 0) syncLoops(await get("api/v1/loops"));
      else for (const l of store.loops.values()) if (!l.closed) catchUp(l);
      const st = await get(url("api/v1/stalls", { limit: 20 }));
      for (const s of st.stalls) putStall(s);
      emit("stall");
      heard();
      if (rounds % 15 === 0) {
        // Try the stream again now and then.
        streamFailures = 0;
        connect();
      }
    } catch (e) {
      if (e.unreachable) {
        setConn("gone", "nothing answers at " + location.host);
        stopLink();
        scheduleRetry();
      }
    }
  }, POLL_MS);
}

/** Sorted loops: open ones first, then by id. */
export function loopList() {
  return [...store.loops.values()].sort((a, b) => a.closed - b.closed || a.id - b.id);
}

/** Bucket upper bounds (ns) from the index (the documented defaults until it loads). */
export function bounds() {
  return (
    store.index?.bucket_bounds_ns ?? [
      1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 2.5e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2.5e9, 5e9, 1e10,
    ]
  );
}

/** A loop's state in one word: running | busy | closed | gone | waiting. */
export function loopState(l) {
  if (l.closed) return "closed";
  if (store.conn === "gone") return "gone";
  if (busyReason(l)) return "busy";
  return l.series.length ? "running" : "waiting";
}
