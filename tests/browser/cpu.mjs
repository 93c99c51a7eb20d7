// The page's own cost: the inspector's CPU with N dashboards open (default 10
// headless pages on the overview) over 30 s, against the same 30 s with none, read
// from /proc/PID/stat (the whole process) and /proc/PID/task/TID/stat (the
// inspector's own threads: glassloop-inspector, -watchdog, -stack).
//
//   node cpu.mjs [--pages 10] [--seconds 30] [--route "#/"]
//
// Prints one line per measurement and a JSON summary. Target as in harness.mjs.

import { readFileSync, readdirSync } from "node:fs";
import { api, launchBrowser, sleep, startTarget } from "./harness.mjs";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const PAGES = Number(args.pages ?? 10);
const SECONDS = Number(args.seconds ?? 30);
const ROUTE = args.route ?? "#/";
const TICK = 100; // USER_HZ on Linux

/** utime+stime ticks of the process and of each of its threads, by thread name. */
function cpu(pid) {
  const parse = (s) => {
    const rest = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return Number(rest[11]) + Number(rest[12]); // fields 14, 15: utime, stime
  };
  const proc = parse(readFileSync(`/proc/${pid}/stat`, "utf8"));
  const threads = {};
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const name = readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim();
      threads[name] = (threads[name] ?? 0) + parse(readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8"));
    } catch {
      /* thread exited */
    }
  }
  return { proc, threads };
}

async function measure(pid, seconds) {
  const a = cpu(pid);
  const t0 = performance.now();
  await sleep(seconds * 1000);
  const b = cpu(pid);
  const wall = (performance.now() - t0) / 1000;
  const pct = (ticks) => (100 * ticks) / TICK / wall;
  const inspector = Object.keys(b.threads)
    .filter((n) => n.startsWith("glassloop-"))
    .reduce((sum, n) => sum + (b.threads[n] - (a.threads[n] ?? 0)), 0);
  const byThread = Object.fromEntries(
    Object.keys(b.threads).map((n) => [n, Number(pct(b.threads[n] - (a.threads[n] ?? 0)).toFixed(2))]),
  );
  return { wall, process: pct(b.proc - a.proc), inspector: pct(inspector), byThread };
}

const target = await startTarget();
const browser = await launchBrowser();
try {
  await sleep(3000); // let start-up settle
  const idle = await measure(target.pid, SECONDS);
  console.log(`no dashboards: process ${idle.process.toFixed(2)} %, inspector threads ${idle.inspector.toFixed(2)} % of one core`);

  const pages = [];
  for (let i = 0; i < PAGES; i++) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    await page.goto(new URL(ROUTE, target.url).href);
    pages.push(page);
  }
  for (const p of pages) await p.waitForFunction(() => document.querySelector("#conn")?.textContent === "live", null, { timeout: 30_000 });
  await sleep(5000); // initial history loads done
  const visible = await Promise.all(pages.map((p) => p.evaluate(() => document.visibilityState)));
  const streams = (await api(target.url, "api/v1")).stream.clients;
  const open = await measure(target.pid, SECONDS);
  const stillLive = await Promise.all(pages.map((p) => p.evaluate(() => document.querySelector("#conn")?.textContent)));
  console.log(
    `${PAGES} dashboards (${ROUTE}, ${visible.filter((v) => v === "visible").length} visible, ${streams} stream clients): ` +
      `process ${open.process.toFixed(2)} %, inspector threads ${open.inspector.toFixed(2)} % of one core`,
  );
  console.log(
    JSON.stringify(
      {
        target: target.kind,
        pages: PAGES,
        route: ROUTE,
        seconds: SECONDS,
        stream_clients: streams,
        pages_live: stillLive.filter((s) => s === "live").length,
        idle,
        open,
        added_by_dashboards: {
          process: Number((open.process - idle.process).toFixed(2)),
          inspector: Number((open.inspector - idle.inspector).toFixed(2)),
        },
      },
      null,
      1,
    ),
  );
} finally {
  await browser.close();
  await target.stop();
}
