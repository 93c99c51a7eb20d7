import { test } from "node:test";
import assert from "node:assert/strict";
import { age, boundLabel, bytes, count, duration, percent, shortFile, splitSite } from "../src/format.js";

test("durations pick a unit and three significant digits", () => {
  assert.equal(duration(850), "850 ns");
  assert.equal(duration(12_345), "12.3 µs");
  assert.equal(duration(4_560_000), "4.56 ms");
  assert.equal(duration(150_000_000), "150 ms");
  assert.equal(duration(1_200_000_000), "1.20 s");
  assert.equal(duration(185e9), "3 min 5 s");
  assert.equal(duration(null), "–");
});

test("counts, bytes, percentages", () => {
  assert.equal(count(1234), "1,234");
  assert.equal(count(12_345), "12.3 k");
  assert.equal(count(1_500_000), "1.50 M");
  assert.equal(bytes(512), "512 B");
  assert.equal(bytes(1536), "1.50 KiB");
  assert.equal(bytes(3 * 1024 * 1024), "3.00 MiB");
  assert.equal(percent(0.4567), "45.7 %");
  assert.equal(percent(undefined), "–");
});

test("ages read like a person would say them", () => {
  assert.equal(age(400), "400 ms");
  assert.equal(age(12_000), "12 s");
  assert.equal(age(185_000), "3 min 5 s");
  assert.equal(age(2 * 3600_000 + 4 * 60_000), "2 h 4 min");
  assert.equal(age(-5), "0 ms");
});

test("bucket labels and site labels", () => {
  assert.equal(boundLabel(10_000), "10µs");
  assert.equal(boundLabel(2_500_000), "2.5ms");
  assert.equal(boundLabel(1e9), "1s");
  assert.equal(boundLabel(undefined), "+Inf");
  assert.deepEqual(splitSite("Foo.bar (app/x.py:42)"), { qualname: "Foo.bar", file: "app/x.py", line: 42 });
  assert.deepEqual(splitSite("weird"), { qualname: "weird", file: "", line: null });
  assert.equal(shortFile("/usr/lib/python3.13/asyncio/streams.py"), "…/asyncio/streams.py");
  assert.equal(shortFile("app.py"), "app.py");
});
