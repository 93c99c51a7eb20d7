// The dashboard in headless Chromium (Debian's package) against a live inspector:
// charts draw and update, a slow callback the test triggers shows in the log with
// its site (and as a stall with its stack), a task's await stack opens, the
// transports table shows the test's own connection, the tab pauses when hidden,
// the layout holds at 1280x800 and 375 px in light and dark, and "loop busy" and
// "process gone" are shown. Screenshots go to tests/browser/screenshots/.
//
//   cd web-ui && npm ci && npm run build      # the dashboard the inspector embeds
//   cd tests/browser && npm ci && npm test    # builds and runs the synthetic target
//
// See harness.mjs for GLASSLOOP_TARGET (synthetic | demo | auto).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { api, connect, launchBrowser, roundTrip, sleep, startTarget } from "./harness.mjs";

const SHOTS = path.join(path.dirname(fileURLToPath(import.meta.url)), "screenshots");
mkdirSync(SHOTS, { recursive: true });

let target;
let browser;
let mainLoop; // id of the loop that runs the echo server
let sock; // the test's own TCP connection to the echo server

before(async () => {
  target = await startTarget();
  const index = await api(target.url, "api/v1");
  assert.ok(
    index.dashboard_embedded,
    "the inspector serves the placeholder: build the dashboard (cd web-ui && npm ci && npm run build), then rebuild the inspector",
  );
  // The loop serving the echo server: "main" in the synthetic target, the only one in the demo.
  for (let i = 0; i < 50 && !mainLoop; i++) {
    const { loops } = await api(target.url, "api/v1/loops");
    mainLoop = (loops.find((l) => l.info.name === "main") ?? loops[0])?.info.id;
    if (!mainLoop) await sleep(100);
  }
  assert.ok(mainLoop, "a loop registered");
  sock = await connect(target.echo.host, target.echo.port);
  browser = await launchBrowser();
});

after(async () => {
  sock?.destroy();
  await browser?.close();
  await target?.stop();
});

async function open(route = "", { width = 1280, height = 800, scheme = "light" } = {}) {
  const ctx = await browser.newContext({ viewport: { width, height }, colorScheme: scheme, deviceScaleFactor: 1 });
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(new URL(route ? `#${route}` : "", target.url).href);
  page.errors = errors;
  return page;
}

/** Per uPlot canvas: pixels with ink, and a hash of them. */
function canvases(page, scope) {
  return page.$$eval(`${scope} .uplot canvas`, (list) =>
    list.map((c) => {
      const { data } = c.getContext("2d").getImageData(0, 0, c.width, c.height);
      let ink = 0;
      let hash = 0;
      for (let i = 3; i < data.length; i += 4) {
        if (data[i] > 0) ink++;
        hash = (Math.imul(hash, 31) + data[i] + data[i - 2] * 7) | 0;
      }
      return { ink, hash, area: c.width * c.height };
    }),
  );
}

async function noOverflow(page, what) {
  const r = await page.evaluate(() => {
    const vw = document.documentElement.clientWidth;
    const wide = [...document.querySelectorAll(".card, .tile, .banner, header .bar, .tabs")]
      .filter((el) => el.getBoundingClientRect().right > vw + 1)
      .map((el) => `${el.className} right=${Math.round(el.getBoundingClientRect().right)}`);
    return { scroll: document.documentElement.scrollWidth, vw, wide };
  });
  assert.ok(r.scroll <= r.vw, `${what}: page is ${r.scroll} px wide in a ${r.vw} px viewport`);
  assert.deepEqual(r.wide, [], `${what}: elements past the right edge`);
}

test("overview charts draw, then update with new samples", async () => {
  const page = await open();
  const card = `.loop-card[data-loop="${mainLoop}"]`;
  await page.waitForFunction((sel) => Number(document.querySelector(sel)?.dataset.seq) > 4, card, { timeout: 20_000 });
  const first = await canvases(page, card);
  assert.equal(first.length, 8, "eight tiles, each with a chart");
  for (const [i, c] of first.entries()) assert.ok(c.ink > 50, `tile ${i} chart has ink (${c.ink} px)`);
  const values1 = await page.$$eval(`${card} .tile-value`, (els) => els.map((e) => e.textContent));
  const seq1 = Number(await page.getAttribute(card, "data-seq"));
  await sleep(1500);
  const seq2 = Number(await page.getAttribute(card, "data-seq"));
  assert.ok(seq2 >= seq1 + 3, `samples keep coming at the sample rate (seq ${seq1} → ${seq2})`);
  const second = await canvases(page, card);
  const redrawn = second.filter((c, i) => c.hash !== first[i].hash).length;
  assert.ok(redrawn >= 4, `charts redraw as samples arrive (${redrawn} of 8 changed)`);
  const values2 = await page.$$eval(`${card} .tile-value`, (els) => els.map((e) => e.textContent));
  assert.notDeepEqual(values2, values1, "the numbers change between samples");
  assert.equal(await page.textContent("#conn"), "live");
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("latency charts and heatmaps draw", async () => {
  const page = await open(`/loop/${mainLoop}/latency`);
  await page.waitForSelector(".grid2 .uplot canvas");
  await sleep(1000);
  const cs = await canvases(page, ".grid2");
  assert.equal(cs.length, 7);
  for (const [i, c] of cs.entries()) assert.ok(c.ink > 100, `latency chart ${i} has ink (${c.ink})`);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("a slow callback the test triggers appears in the log with its site, and as a stall with its stack", async () => {
  const page = await open(`/loop/${mainLoop}/slow`);
  await page.waitForSelector("#slow-log");
  const before = Date.now();
  await roundTrip(sock, "block 180"); // the loop blocks 180 ms in the echo handler
  // The newest entry naming the echo handler's site (the demo's own blocking
  // callback, sometimes_blocks, has another site).
  const slow = page.locator(".entry.kind-slow").filter({ hasText: target.blockSite }).first();
  await slow.waitFor({ timeout: 10_000 });
  const t = await slow.textContent();
  assert.match(t, target.blockSite, "the site: qualname, file and line");
  assert.match(t, /1[6-9]\d ms|2\d\d ms/, `a duration near 180 ms: ${t}`);
  const at = Number(await slow.getAttribute("data-unix"));
  assert.ok(Math.abs(at - before) < 15_000, "the entry is the one just triggered");
  const stall = page.locator(".entry.kind-stall").filter({ hasText: target.blockSite }).first();
  await stall.waitFor({ timeout: 10_000 });
  await stall.locator("summary").click();
  await page.waitForFunction(
    () => [...document.querySelectorAll(".entry.kind-stall[open] pre.stack")].some((p) => /\becho\b/.test(p.textContent)),
    null,
    { timeout: 10_000 },
  );
  assert.ok(Date.now() - before < 20_000);
  await page.screenshot({ path: path.join(SHOTS, "slow-log-1280-light.png") });
  await page.context().close();
});

test("a task's await stack opens", async () => {
  const page = await open(`/loop/${mainLoop}/tasks?state=pending&sort=busy&order=desc`);
  const row = page.locator("table.tasks tbody tr[data-task]").first();
  await row.waitFor({ timeout: 10_000 });
  const coro = (await row.locator("td:nth-child(2) code").textContent()).trim();
  await row.locator("td:first-child a").click();
  await page.waitForURL(/#\/loop\/\d+\/task\/\d+/);
  await page.waitForFunction(() => {
    const el = document.querySelector(".await-stack");
    return el && !el.hidden && el.textContent.length > 20 && !el.textContent.startsWith("asking");
  }, null, { timeout: 10_000 });
  const stack = await page.textContent(".await-stack");
  assert.ok(stack.includes(coro), `the stack shows the task's coroutine ${coro}:\n${stack}`);
  assert.match(stack, /[\w.]+:\d+|line \d+/, "frames with file and line");
  assert.match(stack, /Future|future/, "down to the awaited future");
  await page.waitForSelector(".task-card dd");
  await page.screenshot({ path: path.join(SHOTS, "task-1280-light.png") });
  await page.context().close();
});

test("the transports table shows the connection the test opened", async () => {
  await roundTrip(sock, "hello from the browser test");
  const peer = `${sock.localAddress}:${sock.localPort}`;
  const page = await open(`/loop/${mainLoop}/transports`, { scheme: "dark" });
  const row = page.locator(`table.transports tr[data-peer="${peer}"]`);
  await row.waitFor({ timeout: 10_000 });
  const t = await row.textContent();
  assert.match(t, /tcp/);
  assert.match(t, /open/);
  assert.ok(!/^\s*0 B/.test(await row.locator("td").nth(5).textContent()), "bytes in counted");
  await page.waitForSelector("table.servers tbody tr"); // rows, or "No servers."
  await page.screenshot({ path: path.join(SHOTS, "transports-1280-dark.png") });
  await page.context().close();
});

test("a hidden tab closes its stream and catches up when shown", async () => {
  const page = await open();
  await page.waitForFunction(() => document.querySelector("#conn")?.textContent === "live");
  const clients = async () => (await api(target.url, "api/v1")).stream.clients;
  const shown = await clients();
  const setHidden = (hidden) =>
    page.evaluate((h) => {
      Object.defineProperty(document, "hidden", { configurable: true, get: () => h });
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => (h ? "hidden" : "visible") });
      document.dispatchEvent(new Event("visibilitychange"));
    }, hidden);
  await setHidden(true);
  await sleep(500);
  assert.equal(await page.textContent("#conn"), "paused");
  assert.equal(await clients(), shown - 1, "the stream is closed while hidden");
  const seqHidden = Number(await page.getAttribute(`.loop-card[data-loop="${mainLoop}"]`, "data-seq"));
  await sleep(1500);
  await setHidden(false);
  await page.waitForFunction(() => document.querySelector("#conn")?.textContent === "live");
  await page.waitForFunction(
    ([sel, s]) => Number(document.querySelector(sel)?.dataset.seq) >= s + 6,
    [`.loop-card[data-loop="${mainLoop}"]`, seqHidden],
    { timeout: 5000 },
  );
  await page.context().close();
});

test("1280x800 and 375 px, light and dark, render without overflow", async () => {
  const routes = [
    ["home", ""],
    ["latency", `/loop/${mainLoop}/latency`],
    ["tasks", `/loop/${mainLoop}/tasks`],
    ["transports", `/loop/${mainLoop}/transports`],
    ["slow", `/loop/${mainLoop}/slow`],
  ];
  const sizes = [
    ["1280", 1280, 800],
    ["375", 375, 812],
  ];
  const backgrounds = {};
  for (const scheme of ["light", "dark"]) {
    for (const [label, width, height] of sizes) {
      const page = await open("", { width, height, scheme });
      await page.waitForFunction(() => document.querySelector(".loop-card")?.dataset.seq > 0, null, { timeout: 15_000 });
      for (const [name, route] of routes) {
        await page.goto(new URL(route ? `#${route}` : "#/", target.url).href);
        await page.waitForSelector(name === "home" ? ".loop-card .uplot" : ".tab-body .card");
        await sleep(name === "home" ? 800 : 1500);
        await noOverflow(page, `${name} at ${label} px, ${scheme}`);
        if (name === "home" || (label === "375" && name === "tasks") || (scheme === "dark" && name === "latency"))
          await page.screenshot({ path: path.join(SHOTS, `${name}-${label}-${scheme}.png`) });
      }
      backgrounds[scheme] = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
      assert.deepEqual(page.errors, [], `${label} ${scheme}: no page errors`);
      await page.context().close();
    }
  }
  assert.notEqual(backgrounds.light, backgrounds.dark, "dark follows prefers-color-scheme");
});

test("a blocked loop is shown busy, and a deep query to it says \"loop busy\"", async () => {
  const page = await open();
  await page.waitForFunction(() => document.querySelector("#conn")?.textContent === "live");
  const task = await page.evaluate(async (id) => {
    const r = await fetch(`api/v1/loops/${id}/tasks?state=pending&limit=1`);
    return (await r.json()).items[0].id;
  }, mainLoop);
  const blocked = roundTrip(sock, "block 3000");
  const banner = page.locator(`.banner.busy[data-loop="${mainLoop}"]`);
  await banner.waitFor({ timeout: 5000 });
  assert.match(await banner.textContent(), /Loop busy/);
  assert.equal(await page.getAttribute(`.loop-card[data-loop="${mainLoop}"]`, "data-state"), "busy");
  await page.screenshot({ path: path.join(SHOTS, "busy-1280-light.png") });
  // The task page asks the loop for the await stack: it cannot answer while blocked.
  await page.goto(new URL(`#/loop/${mainLoop}/task/${task}`, target.url).href);
  const note = page.locator(".busy-note");
  await note.waitFor({ timeout: 5000 });
  assert.match(await note.textContent(), /Loop busy: the loop did not answer within \d+ ms/);
  await blocked;
  await banner.waitFor({ state: "detached", timeout: 5000 });
  await page.click("text=Refresh stack");
  await page.waitForFunction(() => !document.querySelector(".busy-note") && document.querySelector(".await-stack")?.textContent.length > 20);
  await page.context().close();
});

test("when the process goes away the page says so", async () => {
  const page = await open("", { width: 375, height: 812 });
  await page.waitForFunction(() => document.querySelector("#conn")?.textContent === "live");
  await page.waitForFunction((sel) => Number(document.querySelector(sel)?.dataset.seq) > 4, `.loop-card[data-loop="${mainLoop}"]`);
  await sleep(300);
  await target.stop();
  await page.waitForSelector("#banner-gone", { timeout: 15_000 });
  assert.equal(await page.textContent("#conn"), "process gone");
  // The last data stays on screen.
  assert.ok((await canvases(page, ".loop-card")).some((c) => c.ink > 50));
  await page.screenshot({ path: path.join(SHOTS, "gone-375-light.png") });
  await page.context().close();
});
