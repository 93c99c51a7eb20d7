// The inspector's JSON API (inspector/API.md), relative to the page so the dashboard
// works under any path prefix. The token (`/?token=…`) is kept for the tab's life
// and sent as a Bearer header (as `?token=` on the stream, which cannot send headers).

const TOKEN_KEY = "glassloop-token";

function readToken() {
  const fromUrl = new URLSearchParams(location.search).get("token");
  try {
    if (fromUrl) sessionStorage.setItem(TOKEN_KEY, fromUrl);
    return fromUrl || sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return fromUrl; // storage refused (privacy mode): the URL's token still works
  }
}

export const token = readToken();

/** An API error with the inspector's `error` kind ("loop busy", "not found", …). */
export class ApiError extends Error {
  constructor(status, body, path) {
    super(body?.detail ? `${body.error}: ${body.detail}` : `HTTP ${status} for ${path}`);
    this.status = status;
    this.kind = body?.error ?? (status === 0 ? "unreachable" : `http ${status}`);
    this.body = body;
    this.path = path;
  }
  /** The loop did not answer a deep query in time: itself a finding. */
  get busy() {
    return this.kind === "loop busy";
  }
  /** Nothing answered at all (process gone, network down). */
  get unreachable() {
    return this.status === 0;
  }
}

/** GET `path` (relative, e.g. "api/v1/loops") as JSON; throws ApiError. */
export async function get(path, { timeout = 8000, signal } = {}) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeout);
  const onAbort = () => ctl.abort();
  signal?.addEventListener("abort", onAbort);
  let res;
  try {
    res = await fetch(path, {
      headers: token ? { Authorization: `Bearer ${token}` } : {},
      signal: ctl.signal,
      cache: "no-store",
    });
  } catch (e) {
    if (signal?.aborted) throw e;
    throw new ApiError(0, { error: "unreachable", detail: "the inspector does not answer" }, path);
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON: keep null */
  }
  if (!res.ok) throw new ApiError(res.status, body, path);
  return body;
}

/** A URL with query parameters (undefined/null/"" left out). */
export function url(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/** The live stream's URL (the token goes in the query: EventSource sends no headers). */
export function streamUrl() {
  return url("api/v1/stream", { token });
}

export const loopPath = (id, rest = "") => `api/v1/loops/${encodeURIComponent(id)}${rest}`;

/** Keeps `value` as the token for this tab (then the page reloads to use it). */
export function setToken(value) {
  try {
    sessionStorage.setItem(TOKEN_KEY, value);
  } catch {
    /* no storage: the URL carries it below */
  }
  const u = new URL(location.href);
  u.searchParams.set("token", value);
  location.replace(u.href);
}
