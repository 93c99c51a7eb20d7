// Formatting for people: durations, sizes, rates, ages. Pure functions (unit-tested).

const DASH = "–";

/** A duration in nanoseconds: "850 ns", "12.3 µs", "4.56 ms", "1.20 s", "3 min 5 s". */
export function duration(ns) {
  if (ns == null || !Number.isFinite(ns)) return DASH;
  const a = Math.abs(ns);
  if (a < 1e3) return `${Math.round(ns)} ns`;
  if (a < 1e6) return `${sig(ns / 1e3)} µs`;
  if (a < 1e9) return `${sig(ns / 1e6)} ms`;
  if (a < 60e9) return `${sig(ns / 1e9)} s`;
  return age(ns / 1e6);
}

/** A duration in milliseconds (chart values). */
export function ms(v) {
  return v == null ? DASH : duration(v * 1e6);
}

/** Three significant digits, without trailing noise: 1.23, 12.3, 123. */
export function sig(x) {
  const a = Math.abs(x);
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

/** A count: 1234 → "1,234"; 1.2e6 → "1.2 M". */
export function count(n) {
  if (n == null || !Number.isFinite(n)) return DASH;
  const a = Math.abs(n);
  if (a >= 1e9) return `${sig(n / 1e9)} G`;
  if (a >= 1e6) return `${sig(n / 1e6)} M`;
  if (a >= 1e4) return `${sig(n / 1e3)} k`;
  return Number.isInteger(n) ? n.toLocaleString("en-US") : sig(n);
}

/** A rate per second, like count with "/s". */
export function rate(n) {
  return n == null || !Number.isFinite(n) ? DASH : `${count(n)}/s`;
}

/** Bytes: "512 B", "1.5 KiB", "3.20 MiB". */
export function bytes(n) {
  if (n == null || !Number.isFinite(n)) return DASH;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${Math.round(v)} B` : `${sig(v)} ${units[i]}`;
}

/** Bytes per second. */
export function byteRate(n) {
  return n == null || !Number.isFinite(n) ? DASH : `${bytes(n)}/s`;
}

/** A fraction 0..1 as a percentage. */
export function percent(f, digits = 1) {
  return f == null || !Number.isFinite(f) ? DASH : `${(f * 100).toFixed(digits)} %`;
}

/** An age in milliseconds: "850 ms", "12 s", "3 min 5 s", "2 h 4 min", "3 d 2 h". */
export function age(msv) {
  if (msv == null || !Number.isFinite(msv)) return DASH;
  if (msv < 0) msv = 0;
  if (msv < 1000) return `${Math.round(msv)} ms`;
  const s = Math.floor(msv / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

/** Wall-clock time of a Unix-ms instant, local: "14:03:05". */
export function clock(unixMs) {
  if (!unixMs) return DASH;
  const d = new Date(unixMs);
  return d.toLocaleTimeString("en-GB", { hour12: false });
}

/** Short bucket-bound label for a duration histogram axis: "10µs", "2.5ms", "1s". */
export function boundLabel(ns) {
  if (ns == null) return "+Inf";
  if (ns < 1e6) return `${trim(ns / 1e3)}µs`;
  if (ns < 1e9) return `${trim(ns / 1e6)}ms`;
  return `${trim(ns / 1e9)}s`;
}

function trim(x) {
  return String(Number(x.toPrecision(3)));
}

/** Splits `qualname (file:line)` into its parts; anything else is all qualname. */
export function splitSite(label) {
  const m = /^(.*) \((.*):(\d+)\)$/.exec(label || "");
  if (!m) return { qualname: label || "", file: "", line: null };
  return { qualname: m[1], file: m[2], line: Number(m[3]) };
}

/** The last path segments of a file, for narrow cells: "/a/b/c/d.py" → "c/d.py". */
export function shortFile(file, segments = 2) {
  if (!file) return "";
  const parts = file.split("/");
  return parts.length <= segments ? file : `…/${parts.slice(-segments).join("/")}`;
}
