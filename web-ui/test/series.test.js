import { test } from "node:test";
import assert from "node:assert/strict";
import { Series, row, bucketPercentile } from "../src/series.js";
import { rates } from "../src/rates.js";

const hist = (p50, p99, max, count = 10, buckets = [0, 5, 5]) => ({
  count, p50_ns: p50, p90_ns: p99, p99_ns: p99, max_ns: max, buckets,
});

function sample(seq, { start = 1000 + (seq - 1) * 250, end = start + 250, callbacks = 100, util = 0.5 } = {}) {
  return {
    loop_id: 1, seq, start_unix_ms: start, end_unix_ms: end, callbacks, utilization: util,
    slow_callbacks: seq % 2, stalls: 0, exceptions: 0, tasks_created: 1, tasks_finished: 1,
    ready_queue_last: 3, ready_queue_max: 7, timers_pending: 2, tasks_live: 5, transports_open: 1,
    fds_registered: 4, bytes_in: 250, bytes_out: 500, executor_queued: 0, executor_running: 1, executor_done: 0,
    histograms: {
      callback_duration: hist(20_000, 300_000, 1_000_000),
      eventloop_delay: hist(50_000, 500_000, 2_000_000, 10, [1, 2, 3]),
      timer_delay: hist(0, 0, 0, 0),
      task_step_duration: hist(1, 1, 1),
      executor_job_duration: hist(0, 0, 0, 0, [0, 0, 0]),
    },
  };
}

test("a sample becomes per-second rates and millisecond percentiles", () => {
  const r = row(sample(1, { callbacks: 100 }));
  assert.equal(r.cbps, 400);
  assert.equal(r.cb50, 0.02);
  assert.equal(r.lag99, 0.5);
  assert.equal(r.bin, 1000);
  assert.equal(r.ex50, null, "an empty histogram has no percentiles, not zeros");
  assert.equal(r.timer99, null);
});

test("samples are appended once, in order, and bounded", () => {
  const s = new Series(100);
  for (let i = 1; i <= 300; i++) assert.ok(s.push(sample(i)));
  assert.equal(s.push(sample(300)), false, "a repeated seq is ignored");
  assert.equal(s.push(sample(12)), false, "an older seq is ignored");
  assert.ok(s.length <= 110 && s.length >= 100, `length ${s.length}`);
  assert.equal(s.lastSeq, 300);
  assert.equal(s.cols.t.length, s.buckets.callback_duration.length);
  assert.equal(s.seqs.at(-1), 300);
});

test("a pause between samples breaks the lines with a null row", () => {
  const s = new Series();
  s.push(sample(1, { start: 0, end: 250 }));
  s.push(sample(2, { start: 10_000, end: 10_250 }));
  assert.equal(s.length, 3);
  assert.equal(s.cols.util[1], null);
  assert.equal(s.last("util"), 0.5);
});

test("windows, sums and bucket totals", () => {
  const s = new Series();
  for (let i = 1; i <= 8; i++) s.push(sample(i));
  const t4 = s.cols.t[4];
  const d = s.data(["util", "cbps"], t4);
  assert.equal(d.length, 3);
  assert.equal(d[0].length, 4);
  assert.equal(s.sumSince("slow", 0), 4);
  assert.deepEqual(s.bucketsSince("eventloop_delay", t4), [4, 8, 12]);
  assert.equal(s.maxSince("cbps", 0), 400);
});

test("percentiles from fixed buckets", () => {
  const bounds = [10, 20, 30];
  assert.equal(bucketPercentile([5, 4, 1, 0], bounds, 0.5), 10);
  assert.equal(bucketPercentile([5, 4, 1, 0], bounds, 0.95), 30);
  assert.equal(bucketPercentile([0, 0, 0, 2], bounds, 0.5), Infinity);
  assert.equal(bucketPercentile([0, 0, 0, 0], bounds, 0.5), null);
});

test("transfer rates from two table readings", () => {
  let seen = rates(new Map(), [{ id: 1, bytes_in: 1000, bytes_out: 0 }], 1000);
  assert.equal(seen.get(1).rin, null, "one reading has no rate yet");
  seen = rates(seen, [{ id: 1, bytes_in: 3000, bytes_out: 500 }], 3000);
  assert.equal(seen.get(1).rin, 1000);
  assert.equal(seen.get(1).rout, 250);
  const same = rates(seen, [{ id: 1, bytes_in: 3000, bytes_out: 500 }], 3000);
  assert.equal(same.get(1).rin, 1000, "the same tables again keep the last rate");
});
