// Starts what the dashboard is tested against, and the browser.
//
// Target (GLASSLOOP_TARGET):
//   synthetic (default) - the inspector's example `synthetic` (fake loops, a real TCP
//                         echo server; a line "block <ms>" on it blocks the main loop
//                         in the echo handler's site), built by cargo if needed.
//   demo                - the real loop: `python3 -m glassloop --inspect 127.0.0.1:0
//                         tests/browser/demo_app.py` (examples/demo.py plus the same
//                         "block <ms>" hook in its echo handler); needs glassloop
//                         installed, built after web-ui/dist so that it embeds it.
//   auto                - demo when glassloop can serve the inspector, else synthetic.
// GLASSLOOP_SYNTHETIC_BIN runs a prebuilt synthetic binary instead of `cargo run`.
// CHROMIUM overrides /usr/bin/chromium.

import { spawn, spawnSync } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  // Every page counts as shown (the dashboard pauses itself in hidden tabs).
  "--disable-background-timer-throttling",
  "--disable-backgrounding-occluded-windows",
  "--disable-renderer-backgrounding",
];

export function launchBrowser() {
  return chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: CHROMIUM_ARGS });
}

/** Whether the installed glassloop can serve the inspector (the real demo works). */
export function glassloopServes() {
  const r = spawnSync(
    "python3",
    ["-c", "import asyncio, glassloop; glassloop.run(asyncio.sleep(0), inspect='127.0.0.1:0')"],
    { cwd: ROOT, timeout: 30_000, encoding: "utf8" },
  );
  return r.status === 0;
}

function chooseTarget() {
  const want = process.env.GLASSLOOP_TARGET || "synthetic";
  if (want === "auto") return glassloopServes() ? "demo" : "synthetic";
  return want;
}

/**
 * Starts the target; resolves with {kind, url, echo: {host, port}, pid, stop(), output()}.
 * `url` is the inspector's base URL (ends with "/").
 */
export async function startTarget({ timeoutMs = 15 * 60_000 } = {}) {
  const kind = chooseTarget();
  let cmd;
  let args;
  if (kind === "demo") {
    cmd = "python3";
    args = ["-u", "-m", "glassloop", "--inspect", "127.0.0.1:0", "tests/browser/demo_app.py", "--seconds", "600"];
  } else if (process.env.GLASSLOOP_SYNTHETIC_BIN) {
    cmd = process.env.GLASSLOOP_SYNTHETIC_BIN;
    args = ["--port", "0", "--block-every", "4"];
  } else {
    // Through cargo, which rebuilds when web-ui/dist (embedded by build.rs) changed.
    cmd = "cargo";
    args = ["run", "--quiet", "--release", "-p", "glassloop-inspector", "--example", "synthetic", "--", "--port", "0", "--block-every", "4"];
  }
  const child = spawn(cmd, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], detached: false });
  let out = "";
  const found = {};
  const done = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${kind}: no inspector URL within ${timeoutMs} ms:\n${out}`)), timeoutMs);
    const scan = (chunk) => {
      out += chunk;
      if (out.length > 200_000) out = out.slice(-100_000);
      const u = /(http:\/\/127\.0\.0\.1:\d+)\/?/.exec(out);
      if (u) found.url = u[1] + "/";
      const e = /echo server on (127\.0\.0\.1):(\d+)/.exec(out);
      if (e) found.echo = { host: e[1], port: Number(e[2]) };
      if (found.url && found.echo) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout.setEncoding("utf8").on("data", scan);
    child.stderr.setEncoding("utf8").on("data", scan);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${kind} exited (${code}) before serving:\n${out}`));
    });
  });
  await done;
  // cargo run: the server is cargo's child; find its pid for /proc measurements.
  const pid = kind === "synthetic" && !process.env.GLASSLOOP_SYNTHETIC_BIN ? childPid(child.pid, "synthetic") : child.pid;
  return {
    kind,
    /** Where the echo handler that the "block" line blocks is defined. */
    blockSite: kind === "demo" ? /echo\s+\S*demo_app\.py:\d+/ : /echo\s+synthetic\/app\.py:14/,
    url: found.url,
    echo: found.echo,
    pid,
    output: () => out,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode != null) return resolve();
        child.once("exit", () => resolve());
        if (pid !== child.pid) {
          try {
            process.kill(pid, "SIGTERM");
          } catch {
            /* already gone */
          }
        }
        child.kill("SIGTERM");
        setTimeout(() => child.exitCode == null && child.kill("SIGKILL"), 3000).unref();
      }),
  };
}

/** The pid of `parent`'s child whose command name starts with `name` (else `parent`). */
function childPid(parent, name) {
  const r = spawnSync("ps", ["-o", "pid=,comm=", "--ppid", String(parent)], { encoding: "utf8" });
  for (const line of (r.stdout || "").split("\n")) {
    const [pid, comm] = line.trim().split(/\s+/);
    if (comm && comm.startsWith(name)) return Number(pid);
  }
  return parent;
}

/** GET a JSON endpoint of the inspector. */
export async function api(base, p) {
  const r = await fetch(new URL(p, base));
  if (!r.ok) throw new Error(`GET ${p}: ${r.status} ${await r.text()}`);
  return r.json();
}

/** Opens a TCP connection; resolves with the socket once connected. */
export function connect(host, port) {
  return new Promise((resolve, reject) => {
    const s = net.createConnection({ host, port }, () => resolve(s));
    s.once("error", reject);
  });
}

/** Sends a line and resolves when it comes back (the echo server echoes it). */
export function roundTrip(sock, line, timeoutMs = 20_000) {
  return new Promise((resolve, reject) => {
    let got = "";
    const timer = setTimeout(() => {
      sock.off("data", onData);
      reject(new Error(`no echo of ${JSON.stringify(line)} within ${timeoutMs} ms`));
    }, timeoutMs);
    const onData = (d) => {
      got += d.toString("utf8");
      if (got.includes(line)) {
        clearTimeout(timer);
        sock.off("data", onData);
        resolve(got);
      }
    };
    sock.on("data", onData);
    sock.write(line + "\n");
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

