"""The inspector's JSON API (inspector/API.md) against workloads with known answers.

Each test runs a script in a subprocess under the sidecar (`python -m glassloop
--inspect 127.0.0.1:0 script.py`, or `glassloop.start_inspector()` in the
script), waits for the script to reach a known state (it prints `TAG {json}`
lines; the test answers on its stdin) and checks what /api/v1 says about it.

Scripts that need samples to keep flowing run a heartbeat task (a timer every
50 ms): a loop publishes a sample at the end of an iteration, so the heartbeat
guarantees iterations. test_idle_loop_keeps_publishing_samples checks the case
without one.
"""

import json
import os
import sys
import time

import pytest

from inspectsupport import (
    BUCKET_BOUNDS_NS, Inspected, SSEClient, bucket_index, parse_prometheus, one, wait_for,
)

pytestmark = pytest.mark.timeout(60)

HEARTBEAT = '''
async def heartbeat(period=0.05):
    while True:
        await asyncio.sleep(period)

def start_heartbeat(period=0.05):
    return asyncio.get_running_loop().create_task(heartbeat(period), name="heartbeat")
'''


@pytest.fixture(autouse=True)
def _needs_glassloop(glassloop):
    """Every test here needs glassloop installed for sys.executable."""
    return glassloop


def since_start(s, lid):
    return s.json(f"/api/v1/loops/{lid}")["since_start"]


def wait_samples(s, lid, n, timeout=15.0):
    """Wait until the hub has received at least n samples from the loop."""
    return wait_for(lambda: (r := s.json(f"/api/v1/loops/{lid}"))["loop"]["samples_received"] >= n and r,
                    timeout, what=f"{n} samples")


def line_of(path, needle):
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if needle in line:
                return i
    raise AssertionError(f"{needle!r} not in {path}")


# ---------------------------------------------------------------------------
# Stalls: reported while the callback still runs, with its stack
# ---------------------------------------------------------------------------

STALL_SCRIPT = HEARTBEAT + '''
def quick_block():
    time.sleep(0.05)

def block_forever_ish():
    emit("BLOCKING")
    time.sleep(1.5)  # THE SLEEPING LINE
    emit("UNBLOCKED")

async def main():
    loop = asyncio.get_running_loop()
    start_heartbeat()
    loop.call_soon(quick_block)
    await asyncio.sleep(0.3)
    emit("READY")
    await command()
    loop.call_soon(block_forever_ish)
    await asyncio.sleep(1.8)
    emit("AFTER")
    await command()

asyncio.run(main())
'''


def test_stall_is_reported_while_the_callback_runs(tmp_path):
    with Inspected(STALL_SCRIPT, tmp_path) as s:
        s.expect("READY")
        lid = s.only_loop()
        index = s.json("/api/v1")
        assert index["stall_threshold_ns"] == 100_000_000
        # The 50 ms callback is under the default threshold: no stall.
        assert s.json("/api/v1/stalls")["stalls"] == []

        stream = SSEClient(s.host, s.port, f"/api/v1/stream?loop={lid}")
        assert stream.status == 200
        s.send()
        s.expect("BLOCKING")
        sleeping_line = line_of(s.path, "# THE SLEEPING LINE")

        def ongoing_with_stack():
            st = s.json("/api/v1/stalls?ongoing=true")["stalls"]
            return [x for x in st if x["stack_status"] == "captured"]

        (stall,) = wait_for(ongoing_with_stack, timeout=1.2, interval=0.02, what="an ongoing stall with its stack")
        # Still running: the callback has not printed UNBLOCKED yet.
        assert not any(l.startswith("UNBLOCKED") for l in s.stdout_log), s.stdout_log
        assert stall["ongoing"] is True and stall["loop_id"] == lid
        assert stall["duration_ns"] >= 100_000_000
        # The callback runs for the first time: its site was named before it ran.
        site = f"block_forever_ish ({s.path}:{line_of(s.path, 'def block_forever_ish')})"
        assert stall["site"] == site, stall
        frames = stall["stack"].splitlines()
        assert f"block_forever_ish ({s.path}:{sleeping_line})" in frames[-1], stall["stack"]
        assert any("main" in f for f in frames) or any("run_forever" in f for f in frames), frames
        assert s.json("/api/v1")["stalls_ongoing"] == 1
        per_loop = s.json(f"/api/v1/loops/{lid}/stalls?ongoing=true")
        assert [x["id"] for x in per_loop["stalls"]] == [stall["id"]]
        assert per_loop["threshold_ns"] == 100_000_000

        s.expect("AFTER")
        done = s.json("/api/v1/stalls")
        assert done["total"] == 1
        (closed,) = done["stalls"]
        assert closed["id"] == stall["id"] and closed["ongoing"] is False
        assert closed["site"] == site
        assert 1_400_000_000 <= closed["duration_ns"] <= 5_000_000_000, closed
        assert s.json("/api/v1")["stalls_ongoing"] == 0
        assert s.json(f"/api/v1/loops/{lid}")["loop"]["stalls_total"] == 1

        # The live stream pushed the stall as it opened and as it closed.
        stalls = [d for ev, d in stream.events(timeout=5, stop=lambda e, d: e == "stall" and not d["ongoing"])
                  if ev == "stall"]
        stream.close()
        assert stalls and stalls[0]["ongoing"] is True and stalls[-1]["ongoing"] is False, stalls
        assert {d["site"] for d in stalls} == {site}, "named in every event, the first included"
        assert {d["id"] for d in stalls} == {stall["id"]}
        s.send()
        s.finish()


BUSY_SCRIPT = '''
async def main():
    loop = asyncio.get_running_loop()
    end = time.monotonic() + 60

    def spin():
        # Short callbacks back to back: the heartbeat always shows one running.
        x = 0
        for i in range(200):
            x += i
        if time.monotonic() < end:
            loop.call_soon(spin)

    loop.call_soon(spin)
    await asyncio.sleep(0.3)
    emit("BUSY")
    await command()
    end = 0

asyncio.run(main())
'''


def _thread_switches(pid, name):
    """Voluntary context switches (one per sleep) of the process's thread `name`."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/comm") as f:
            if f.read().strip() != name[:15]:
                continue
        with open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    raise AssertionError(f"no thread {name!r} in process {pid}")


def test_stall_watchdog_sleeps_until_a_stall_could_begin(tmp_path):
    """With short callbacks running back to back and no stall, the watchdog wakes
    about once per threshold (100 ms), not once per 10 ms interval: on a small
    machine each wake-up takes a core from the busy loop."""
    with Inspected(BUSY_SCRIPT, tmp_path) as s:
        s.expect("BUSY")
        before = _thread_switches(s.proc.pid, "glassloop-watchdog")
        time.sleep(2.0)
        woke = _thread_switches(s.proc.pid, "glassloop-watchdog") - before
        assert s.json("/api/v1/stalls")["stalls"] == []
        s.send()
        s.finish()
    # ~20 at one look per 100 ms; a 10 ms tick would be ~200.
    assert 5 <= woke <= 60, woke


THRESHOLD_SCRIPT = '''
import glassloop
glassloop.start_inspector("127.0.0.1:0", stall_threshold=0.03)

def block(t):
    time.sleep(t)

async def main():
    loop = asyncio.get_running_loop()
    loop.call_soon(block, 0.001)      # the site becomes known to the inspector
    loop.call_soon(block, 0.01)       # under the threshold
    for _ in range(30):               # > 1 s: the tables carrying the site are published
        await asyncio.sleep(0.05)
    loop.call_soon(block, 0.08)
    for _ in range(10):
        await asyncio.sleep(0.05)
    emit("DONE")
    await command()

glassloop.run(main())
'''


def test_stall_threshold_is_configurable_and_a_known_site_is_named(tmp_path):
    with Inspected(THRESHOLD_SCRIPT, tmp_path, launcher="plain") as s:
        s.expect("DONE", timeout=30)
        assert s.json("/api/v1")["stall_threshold_ns"] == 30_000_000
        d = s.json("/api/v1/stalls")
        assert d["threshold_ns"] == 30_000_000
        line = line_of(s.path, "def block(t):")
        # At 30 ms a noisy machine may add a stall of its own (a descheduled
        # callback); the 80 ms block is the one that must be there.
        ours = [x for x in d["stalls"] if x["duration_ns"] >= 70_000_000 and x["stack"]
                and f"block ({s.path}:" in x["stack"].splitlines()[-1]]
        assert len(ours) == 1, [(x["duration_ns"], x["site"], (x["stack"] or "").splitlines()[-1:]) for x in d["stalls"]]
        (stall,) = ours
        assert stall["site"] == f"block ({s.path}:{line})", stall
        assert 70_000_000 <= stall["duration_ns"] <= 3_000_000_000, stall
        assert stall["stack_status"] == "captured"
        assert f"block ({s.path}:{line + 1})" in stall["stack"].splitlines()[-1]
        s.send()
        s.finish()


FIRST_SITES_SCRIPT = '''
import glassloop
glassloop.start_inspector("127.0.0.1:0")

async def fresh_coroutine():
    time.sleep(0.5)  # A TASK STEP

class SlowProtocol(asyncio.Protocol):
    def data_received(self, data):
        time.sleep(0.5)  # IN DATA_RECEIVED

async def main():
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.3)
    # Each stall below is the first run of its site, within a second of the last tables.
    await loop.create_task(fresh_coroutine())
    server = await loop.create_server(SlowProtocol, "127.0.0.1", 0)
    r, w = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    w.write(b"x")
    await asyncio.sleep(0.8)
    emit("DONE")
    await command()
    w.close()
    server.close()

glassloop.run(main())
'''


def test_a_stall_in_a_new_task_or_in_data_received_names_its_site(tmp_path):
    with Inspected(FIRST_SITES_SCRIPT, tmp_path, launcher="plain") as s:
        s.expect("DONE", timeout=30)
        stalls = s.json("/api/v1/stalls")["stalls"]

        def stall_at(marker):
            line = line_of(s.path, marker)
            found = [x for x in stalls if x["stack"] and f":{line})" in x["stack"].splitlines()[-1]]
            assert len(found) == 1, (marker, stalls)
            return found[0]

        task = stall_at("# A TASK STEP")
        assert task["site"] == f"fresh_coroutine ({s.path}:{line_of(s.path, 'async def fresh_coroutine')})", task
        io = stall_at("# IN DATA_RECEIVED")
        want = f"SlowProtocol.data_received ({s.path}:{line_of(s.path, 'def data_received')})"
        assert io["site"] == want, io
        s.send()
        s.finish()


# ---------------------------------------------------------------------------
# Callback duration histogram, slow callbacks, since_start vs loop.stats()
# ---------------------------------------------------------------------------

HISTO_SCRIPT = '''
def sleeper(out):
    t0 = time.perf_counter_ns()
    time.sleep(0.05)
    out.append(time.perf_counter_ns() - t0)

def quick(i):
    pass

async def main():
    loop = asyncio.get_running_loop()
    loop.slow_callback_duration = 0.03
    await command()          # start the stdin reader before measuring
    took = []
    for i in range(200):
        loop.call_soon(quick, i)
    loop.call_soon(sleeper, took)
    for _ in range(8):
        await asyncio.sleep(0.05)
    # One iteration more than 250 ms after the last sample: the next sample
    # covers everything so far; then the loop idles (no timers), publishing nothing.
    await asyncio.sleep(0.3)
    emit("DONE", took_ns=took[0], stats=loop.stats())
    await command()

asyncio.run(main())
'''


def test_callback_histogram_and_slow_callback_over_http(tmp_path):
    with Inspected(HISTO_SCRIPT, tmp_path) as s:
        s.send()
        done = s.expect("DONE")
        lid = s.only_loop()
        took_ns, stats = done["took_ns"], done["stats"]
        # An idle inspected loop still cuts a sample every 250 ms: wait for one that
        # covers everything the loop had run when it printed DONE.
        detail = wait_for(
            lambda: (r := s.json(f"/api/v1/loops/{lid}"))["since_start"]["callbacks"] >= stats["callbacks"] and r,
            15.0, what="a sample covering DONE")
        ss = detail["since_start"]
        cd = ss["histograms"]["callback_duration"]

        # Exact: the histogram counts every callback the samples counted.
        assert cd["count"] == ss["callbacks"] > 200
        assert sum(cd["buckets"]) == cd["count"]
        assert len(cd["buckets"]) == len(BUCKET_BOUNDS_NS) + 1
        # The 50 ms callback lands in the bucket of its own measured time: the
        # recorded value is that time plus the loop's microseconds around it, at
        # 2 significant digits (a value within 1 % of a bound may go either side).
        lo, hi = bucket_index(took_ns * 0.99), bucket_index(took_ns * 1.01 + 1_000_000)
        assert sum(cd["buckets"][lo:hi + 1]) >= 1, (took_ns, cd)
        assert took_ns >= 50_000_000 and lo >= bucket_index(49_500_000)  # (25 ms, 50 ms] or above
        assert sum(cd["buckets"][bucket_index(25_000_000) + 1:]) >= 1, cd
        assert cd["max_ns"] >= took_ns * 0.98, (took_ns, cd)
        assert cd["count"] < 1000  # so p99.9 is the maximum
        assert took_ns * 0.98 <= cd["p999_ns"] <= cd["max_ns"] * 1.01, cd
        assert cd["min_ns"] <= cd["p50_ns"] <= cd["p90_ns"] <= cd["p99_ns"] <= cd["p999_ns"] <= cd["max_ns"] * 1.01

        # The samples cover everything the loop had run when it printed DONE.
        # ...and nothing more than the DONE step and the stdin reader since.
        assert stats["callbacks"] <= ss["callbacks"] <= stats["callbacks"] + 3, (ss["callbacks"], stats["callbacks"])
        assert ss["slow_callbacks"] == stats["slow_callbacks"] == 1
        assert ss["exceptions"] == 0
        assert abs(ss["iterations"] - stats["iterations"]) <= 1

        # 201 callbacks were queued at once: the ready queue was at least that deep.
        samples = s.json(f"/api/v1/loops/{lid}/samples?limit=3600")["samples"]
        assert max(x["ready_queue_max"] for x in samples) >= 201, [x["ready_queue_max"] for x in samples]

        # The same histogram through its own endpoint, and as a heatmap series.
        h = s.json(f"/api/v1/loops/{lid}/histograms/callback_duration")
        assert h["unit"] == "ns" and h["bucket_bounds_ns"] == BUCKET_BOUNDS_NS
        assert h["since_start"] == cd
        assert sum(p["count"] for p in h["series"]) == cd["count"]
        summed = [sum(col) for col in zip(*(p["buckets"] for p in h["series"]))]
        assert summed == cd["buckets"]

        # The slow callback, with its site.
        line = line_of(s.path, "def sleeper(out):")
        slow = s.tables(lid, "slow-callbacks")
        assert slow["total"] == 1, slow
        (ev,) = slow["items"]
        assert ev["site"] == f"sleeper ({s.path}:{line})", ev
        assert took_ns * 0.999 <= ev["duration_ns"] <= took_ns + 500_000_000
        assert ev["task_id"] is None and ev["traceback"] is None
        s.send()
        s.finish()


# ---------------------------------------------------------------------------
# Samples: paging, consistency, utilization
# ---------------------------------------------------------------------------

UTIL_SCRIPT = HEARTBEAT + '''
def burn(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass

async def main():
    loop = asyncio.get_running_loop()
    start_heartbeat()
    await asyncio.sleep(1.0)                 # idle: a timer every 50 ms
    emit("IDLE_DONE", unix_ms=time.time() * 1000)
    done = loop.create_future()
    end = time.perf_counter() + 1.2
    def step():
        burn(0.001)
        if time.perf_counter() < end:
            loop.call_soon(step)
        else:
            done.set_result(None)
    t0 = time.time() * 1000
    loop.call_soon(step)
    await done
    emit("BUSY_DONE", start_ms=t0, end_ms=time.time() * 1000)
    await asyncio.sleep(0.6)
    emit("DONE", stats=loop.stats())
    await command()

asyncio.run(main())
'''


def test_samples_pages_and_utilization(tmp_path):
    with Inspected(UTIL_SCRIPT, tmp_path) as s:
        idle_end = s.expect("IDLE_DONE")["unix_ms"]
        busy = s.expect("BUSY_DONE")
        s.expect("DONE")
        lid = s.only_loop()

        # Page through every sample, two at a time.
        samples, since = [], 0
        while True:
            page = s.json(f"/api/v1/loops/{lid}/samples?since={since}&limit=2")
            assert page["limit"] == 2 and page["since"] == since
            if not page["samples"]:
                break
            assert len(page["samples"]) <= 2
            samples += page["samples"]
            assert page["next_since"] == page["samples"][-1]["seq"]
            since = page["next_since"]
        seqs = [x["seq"] for x in samples]
        assert seqs == list(range(1, len(seqs) + 1)), seqs  # no gaps, oldest first
        detail = s.json(f"/api/v1/loops/{lid}")
        assert detail["loop"]["samples_missing"] == 0
        assert detail["since_start"]["callbacks"] == sum(x["callbacks"] for x in samples)

        for x in samples:
            assert x["loop_id"] == lid
            assert x["start_unix_ms"] <= x["end_unix_ms"]
            b, i = x["busy_seconds"], x["idle_seconds"]
            assert 0.0 <= x["utilization"] <= 1.0
            if b + i > 0:
                assert x["utilization"] == pytest.approx(b / (b + i), abs=1e-6)
            for name, hs in x["histograms"].items():
                assert sum(hs["buckets"]) == hs["count"], (name, hs)
            assert x["histograms"]["callback_duration"]["count"] == x["callbacks"]
            assert x["ready_queue_max"] >= x["ready_queue_last"]
        for a, b in zip(samples, samples[1:]):
            assert a["end_unix_ms"] <= b["start_unix_ms"] + 1

        idle = [x for x in samples if x["end_unix_ms"] <= idle_end and x["seq"] > 1]
        hot = [x for x in samples if x["start_unix_ms"] >= busy["start_ms"] + 1 and x["end_unix_ms"] <= busy["end_ms"]]
        assert idle and hot, (idle_end, busy, [(x["start_unix_ms"], x["end_unix_ms"]) for x in samples])
        assert max(x["utilization"] for x in idle) < 0.2, [x["utilization"] for x in idle]
        assert min(x["utilization"] for x in hot) > 0.8, [x["utilization"] for x in hot]
        # Samples are cut every 250 ms: the idle second has its ~4.
        assert len(idle) >= 2
        s.send()
        s.finish()


IDLE_SCRIPT = '''
async def main():
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.1)
    emit("IDLE")
    await command()          # no timers, nothing ready: the loop waits in the poll
    emit("WOKE")
    await command()

asyncio.run(main())
'''


def test_idle_loop_keeps_publishing_samples(tmp_path):
    # API.md: a Sample is "one interval of one loop (default 250 ms)". A loop
    # waiting for I/O with no timer is still a loop to watch: its utilization
    # is 0 and the dashboard must not see it frozen.
    with Inspected(IDLE_SCRIPT, tmp_path) as s:
        s.expect("IDLE")
        lid = s.only_loop()
        time.sleep(0.3)
        first = s.json(f"/api/v1/loops/{lid}")["loop"]["samples_received"]
        time.sleep(1.5)
        row = s.json(f"/api/v1/loops/{lid}")["loop"]
        got = row["samples_received"] - first
        s.send()
        s.expect("WOKE")
        assert got >= 3, f"{got} samples in 1.5 s from an idle loop (expected ~6); latest: {row['latest']}"
        assert row["latest"]["utilization"] < 0.1
        s.send()
        s.finish()


# ---------------------------------------------------------------------------
# Tasks: table, filters, paging, await stacks
# ---------------------------------------------------------------------------

TASKS_SCRIPT = HEARTBEAT + '''
def burn(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass

async def ok():
    await asyncio.sleep(0)

async def bad():
    await asyncio.sleep(0)
    raise KeyError("on purpose")

async def forever():
    await asyncio.sleep(3600)

async def stepper(k):
    for _ in range(k):
        await asyncio.sleep(0)

async def burner():
    await asyncio.sleep(0)
    burn(0.03)

async def inner(fut):
    await fut

async def outer(fut):
    await inner(fut)

async def spawner(n, fut):
    me = asyncio.current_task()
    lp = asyncio.get_running_loop()
    made = [lp.create_task(stepper(i), name=f"worker-{i}") for i in range(n)]
    made.append(lp.create_task(ok(), name="t-ok"))
    made.append(lp.create_task(bad(), name="t-bad"))
    c = lp.create_task(forever(), name="t-cancel")
    made.append(c)
    made.append(lp.create_task(burner(), name="t-burn"))
    parked = lp.create_task(outer(fut), name="t-parked")
    await asyncio.sleep(0)
    c.cancel()
    await asyncio.gather(*made, return_exceptions=True)
    return parked

async def main():
    loop = asyncio.get_running_loop()
    start_heartbeat()
    fut = loop.create_future()
    sp = loop.create_task(spawner(12, fut), name="spawner")
    parked = await sp
    await asyncio.sleep(0.1)
    emit("READY")
    await command()
    fut.set_result(None)
    await parked
    await command()

asyncio.run(main())
'''


def test_tasks_endpoint_records_filters_pages_and_stacks(tmp_path):
    with Inspected(TASKS_SCRIPT, tmp_path) as s:
        s.expect("READY")
        lid = s.only_loop()
        page = s.tables(lid, "tasks", "limit=1000")
        assert page["loop_id"] == lid and page["offset"] == 0
        rows = {r["name"]: r for r in page["items"]}
        assert page["total"] == len(page["items"])
        sp = rows["spawner"]
        names = [f"worker-{i}" for i in range(12)] + ["t-ok", "t-bad", "t-cancel", "t-burn", "t-parked"]
        for n in names:
            assert rows[n]["parent_id"] == sp["id"], rows[n]
        for i in range(12):
            assert rows[f"worker-{i}"]["steps"] == i + 1, rows[f"worker-{i}"]
            assert rows[f"worker-{i}"]["coro"] == "stepper"
            assert rows[f"worker-{i}"]["state"] == "done"
        assert (rows["t-bad"]["state"], rows["t-bad"]["exception_type"]) == ("failed", "KeyError")
        assert (rows["t-cancel"]["state"], rows["t-cancel"]["exception_type"]) == ("cancelled", None)
        assert (rows["t-ok"]["state"], rows["t-ok"]["exception_type"]) == ("done", None)
        assert rows["t-burn"]["busy_ns"] >= 30_000_000 and rows["t-burn"]["longest_step_ns"] >= 30_000_000
        assert rows["t-parked"]["state"] == "pending" and rows["t-parked"]["finished_unix_ms"] is None
        line = line_of(s.path, "async def stepper(k):")
        assert rows["worker-3"]["defined_at"] == f"{s.path}:{line}"
        for r in rows.values():
            assert r["busy_ns"] >= r["longest_step_ns"] >= 0
            if r["finished_unix_ms"] is not None:
                assert r["created_unix_ms"] <= r["finished_unix_ms"]

        # Filters, sorting and paging.
        failed = s.tables(lid, "tasks", "state=failed")
        assert [r["name"] for r in failed["items"]] == ["t-bad"] and failed["total"] == 1
        cancelled = s.tables(lid, "tasks", "state=cancelled")
        assert [r["name"] for r in cancelled["items"]] == ["t-cancel"]
        workers = s.tables(lid, "tasks", "name=worker-&sort=steps&order=desc")
        assert workers["total"] == 12
        assert [r["steps"] for r in workers["items"]] == list(range(12, 0, -1))
        by_coro = s.tables(lid, "tasks", "name=stepper")  # substring of the coroutine
        assert by_coro["total"] == 12
        ids = []
        for off in range(0, page["total"], 4):
            p = s.tables(lid, "tasks", f"offset={off}&limit=4")
            assert p["offset"] == off and p["limit"] == 4 and len(p["items"]) <= 4
            ids += [r["id"] for r in p["items"]]
        assert ids == sorted(ids) == sorted(r["id"] for r in rows.values())

        # The parked task's await stack, and 404 for a finished task.
        st = s.json(f"/api/v1/loops/{lid}/tasks/{rows['t-parked']['id']}/stack")
        assert st["loop_id"] == lid and st["task_id"] == rows["t-parked"]["id"]
        lines = st["stack"].splitlines()
        assert lines[0].startswith(f"coroutine outer ({s.path}:"), lines
        assert lines[1].startswith(f"coroutine inner ({s.path}:"), lines
        assert lines[-1].startswith("future <Future pending"), lines
        r = s.get(f"/api/v1/loops/{lid}/tasks/{rows['t-ok']['id']}/stack")
        assert r.status == 404 and r.json()["error"] == "not found"
        s.send()
        s.send()
        s.finish()


# ---------------------------------------------------------------------------
# Callback sites
# ---------------------------------------------------------------------------

SITES_SCRIPT = HEARTBEAT + '''
import functools

def counted(i=None):
    pass

class C:
    def meth(self):
        pass

async def main():
    loop = asyncio.get_running_loop()
    start_heartbeat()
    for i in range(37):
        loop.call_soon(counted, i)
    for i in range(11):
        loop.call_soon(functools.partial(counted, i))
    objs = [C(), C()]
    for i in range(13):
        loop.call_soon(objs[i % 2].meth)
    await asyncio.sleep(0.1)
    emit("READY")
    await command()

asyncio.run(main())
'''


def test_callback_sites_endpoint(tmp_path):
    with Inspected(SITES_SCRIPT, tmp_path) as s:
        s.expect("READY")
        lid = s.only_loop()
        page = s.tables(lid, "callback-sites", "sort=count&limit=1000")
        sites = {(x["qualname"], x["file"]): x for x in page["items"]}
        c = sites[("counted", s.path)]
        assert c["line"] == line_of(s.path, "def counted(i=None):")
        assert c["count"] == 48
        m = sites[("C.meth", s.path)]
        assert m["line"] == line_of(s.path, "def meth(self):")
        assert m["count"] == 13
        for x in page["items"]:
            assert 0 <= x["max_ns"] <= x["total_ns"]
        counts = [x["count"] for x in page["items"]]
        assert counts == sorted(counts, reverse=True)
        top1 = s.tables(lid, "callback-sites", "sort=max&limit=1")
        assert len(top1["items"]) == 1 and top1["limit"] == 1
        assert top1["items"][0]["max_ns"] == max(x["max_ns"] for x in page["items"])
        s.send()
        s.finish()


# ---------------------------------------------------------------------------
# Transports
# ---------------------------------------------------------------------------

TCP_SCRIPT = HEARTBEAT + '''
N = 300_000

async def main():
    loop = asyncio.get_running_loop()
    start_heartbeat()
    received = loop.create_future()

    async def handle(reader, writer):
        data = await reader.readexactly(N)
        writer.write(data)
        await writer.drain()
        received.set_result(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x" * N)
    await writer.drain()
    echoed = await reader.readexactly(N)
    assert len(echoed) == N
    server_writer = await received
    await asyncio.sleep(0.6)
    emit("MOVED", port=port, client=writer.get_extra_info("sockname"), stats=loop.stats())
    await command()
    writer.close()
    server_writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.3)
    emit("CLOSED")
    await command()

asyncio.run(main())
'''


def test_tcp_transport_reports_the_bytes_it_moved(tmp_path):
    N = 300_000
    with Inspected(TCP_SCRIPT, tmp_path) as s:
        moved = s.expect("MOVED")
        lid = s.only_loop()
        port = moved["port"]
        client_addr = f"{moved['client'][0]}:{moved['client'][1]}"
        server_addr = f"127.0.0.1:{port}"
        page = s.tables(lid, "transports", "kind=tcp")
        tcp = page["items"]
        assert page["total"] == len(tcp) == 2, tcp
        by_local = {t["local"]: t for t in tcp}
        assert set(by_local) == {client_addr, server_addr}, tcp
        client, server = by_local[client_addr], by_local[server_addr]
        assert client["peer"] == server_addr and server["peer"] == client_addr
        for t in (client, server):
            assert t["kind"] == "tcp" and t["state"] == "open"
            assert t["bytes_in"] == N and t["bytes_out"] == N, t
            assert t["calls_in"] >= 1 and t["calls_out"] >= 1
            assert t["write_buffer"] == 0
            assert t["protocol"] == "StreamReaderProtocol"
            assert t["reading_paused"] is False and t["writing_paused"] is False
        assert moved["stats"]["transports_open"] == 2
        assert s.tables(lid, "transports", "kind=udp")["total"] == 0

        s.send()
        s.expect("CLOSED")
        left = [t for t in s.tables(lid, "transports", "kind=tcp")["items"] if t["state"] != "closed"]
        assert left == [], left
        s.send()
        s.finish()


def test_samples_count_transport_bytes(tmp_path):
    # Sample.bytes_in/bytes_out (and so since_start and asyncio_transport_bytes_total)
    # count what the loop's transports moved: here N each way on two transports.
    N = 300_000
    with Inspected(TCP_SCRIPT, tmp_path) as s:
        s.expect("MOVED")
        lid = s.only_loop()
        ss = wait_samples(s, lid, 3)["since_start"]
        assert (ss["bytes_in"], ss["bytes_out"]) == (2 * N, 2 * N), {k: ss[k] for k in ("bytes_in", "bytes_out")}
        fams = parse_prometheus(s.get("/metrics").text)
        assert one(fams, "asyncio_transport_bytes_total", loop=str(lid), direction="in") == 2 * N
        assert one(fams, "asyncio_transport_bytes_total", loop=str(lid), direction="out") == 2 * N
        s.send()
        s.send()
        s.finish()


TLS_SCRIPT = HEARTBEAT + '''
import datetime, os, socket, ssl, tempfile
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

N = 100_000

def cert_file():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    path = os.path.join(tempfile.mkdtemp(), "cert.pem")
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return path

class Upgraded(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t

async def main():
    loop = asyncio.get_running_loop()
    start_heartbeat()
    cert = cert_file()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert)
    cctx = ssl.create_default_context(cafile=cert)
    received = loop.create_future()

    async def handle(reader, writer):
        writer.write(await reader.readexactly(N))
        await writer.drain()
        received.set_result(writer)

    # ssl= over TCP: both ends are TLS transports carrying StreamReaderProtocol.
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx, server_hostname="localhost")
    writer.write(b"x" * N)
    await writer.drain()
    assert len(await reader.readexactly(N)) == N
    server_writer = await received

    # start_tls over a Unix socketpair: TLS transports carrying Upgraded.
    a, b = socket.socketpair()
    ta, _ = await loop.connect_accepted_socket(Upgraded, a)
    tb, _ = await loop.connect_accepted_socket(Upgraded, b)
    ua, ub = await asyncio.gather(
        loop.start_tls(ta, ta.get_protocol(), sctx, server_side=True),
        loop.start_tls(tb, tb.get_protocol(), cctx, server_hostname="localhost"))
    await asyncio.sleep(0.6)
    emit("UP", port=port, client=writer.get_extra_info("sockname"))
    await command()
    for w in (writer, server_writer):
        w.close()
    ua.close()
    ub.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.3)
    emit("CLOSED")
    await command()

asyncio.run(main())
'''


def test_tls_transports_are_kind_tls_with_the_application_protocol(tmp_path):
    """ssl= and start_tls connections are listed as kind "tls" (not tcp or unix),
    with the application's protocol class rather than asyncio's SSLProtocol, and
    their wire bytes; /metrics counts them under type="tls"."""
    N = 100_000
    with Inspected(TLS_SCRIPT, tmp_path) as s:
        up = s.expect("UP")
        lid = s.only_loop()
        items = s.tables(lid, "transports")["items"]
        assert sorted(t["kind"] for t in items) == ["tls"] * 4, items
        assert s.tables(lid, "transports", "kind=tcp")["total"] == 0
        assert s.tables(lid, "transports", "kind=unix")["total"] == 0
        client_addr = f"{up['client'][0]}:{up['client'][1]}"
        server_addr = f"127.0.0.1:{up['port']}"
        by_local = {t["local"]: t for t in items}
        streams = [by_local[client_addr], by_local[server_addr]]
        upgraded = [t for t in items if t not in streams]
        for t in streams:
            assert t["protocol"] == "StreamReaderProtocol", t
            # Ciphertext on the wire: the payload plus the records' overhead and the handshake.
            assert N < t["bytes_in"] < 2 * N and N < t["bytes_out"] < 2 * N, t
            assert t["state"] == "open"
        assert [t["protocol"] for t in upgraded] == ["Upgraded", "Upgraded"], upgraded
        fams = parse_prometheus(s.get("/metrics").text)
        assert one(fams, "asyncio_transport_active", loop=str(lid), type="tls") == 4
        assert one(fams, "asyncio_transport_active", loop=str(lid), type="tcp") == 0

        s.send()
        s.expect("CLOSED")
        left = [t for t in s.tables(lid, "transports")["items"] if t["state"] != "closed"]
        assert left == [], left
        s.send()
        s.finish()


CONNECTIONS_SCRIPT = HEARTBEAT + '''
import pathlib, socket, ssl, sys, tempfile
sys.path.insert(0, TESTS)
from certsupport import make_server_certs

async def main():
    loop = asyncio.get_running_loop()
    start_heartbeat()
    certs = make_server_certs(pathlib.Path(tempfile.mkdtemp()))

    async def handle(reader, writer):
        writer.write(b"hi")
        await writer.drain()
        writer.close()

    async def visit(open_, *args, **kwargs):
        reader, writer = await open_(*args, **kwargs)
        assert await reader.read() == b"hi"
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass  # TLS: the server may leave without a close_notify

    tcp = await asyncio.start_server(handle, "127.0.0.1", 0)
    for _ in range(2):  # 4: 2 made, 2 accepted
        await visit(asyncio.open_connection, *tcp.sockets[0].getsockname()[:2])
    path = tempfile.mktemp(suffix=".sock")
    unix = await asyncio.start_unix_server(handle, path)
    await visit(asyncio.open_unix_connection, path)  # 2
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.cert, certs.key)
    client_ctx = ssl.create_default_context(cafile=str(certs.ca))
    tls = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    await visit(asyncio.open_connection, *tls.sockets[0].getsockname()[:2], ssl=client_ctx)  # 2
    a, b = socket.socketpair()
    ta, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)  # 1
    try:
        await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1)  # refused: no connection
    except OSError:
        pass
    for s in (tcp, unix, tls):
        s.close()
        await s.wait_closed()
    await asyncio.sleep(0.6)
    emit("OPENED", stats=loop.stats())
    await command()
    ta.close()
    b.close()

asyncio.run(main())
'''


def test_connections_are_counted(tmp_path):
    # Connections opened: accepted by servers and made by create_connection, plain,
    # Unix and TLS, and connect_accepted_socket; a refused connect is none.
    with Inspected(CONNECTIONS_SCRIPT.replace("TESTS", repr(os.path.dirname(__file__))), tmp_path) as s:
        opened = s.expect("OPENED")
        lid = s.only_loop()
        assert opened["stats"]["connections"] == 9
        r = wait_for(lambda: (r := s.json(f"/api/v1/loops/{lid}"))["since_start"]["connections"] == 9 and r,
                     15, what="since_start connections")
        samples = s.json(f"/api/v1/loops/{lid}/samples")["samples"]
        assert sum(x["connections"] for x in samples) == 9
        assert r["loop"]["latest"]["connections"] >= 0
        fams = parse_prometheus(s.get("/metrics").text)
        assert one(fams, "asyncio_connections_total", loop=str(lid)) == 9
        s.send()
        s.finish()


UDP_SCRIPT = HEARTBEAT + '''
SIZES = [100, 2000, 65000, 7, 1]

class Echo(asyncio.DatagramProtocol):
    def connection_made(self, t):
        self.t = t
    def datagram_received(self, data, addr):
        self.t.sendto(data, addr)

class Client(asyncio.DatagramProtocol):
    def __init__(self):
        self.got = asyncio.Queue()
    def datagram_received(self, data, addr):
        self.got.put_nowait(data)

async def main():
    loop = asyncio.get_running_loop()
    start_heartbeat()
    st, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    server = st.get_extra_info("sockname")
    ct, cp = await loop.create_datagram_endpoint(Client, remote_addr=server)
    for n in SIZES:
        ct.sendto(b"u" * n)
        assert len(await cp.got.get()) == n
    await asyncio.sleep(0.6)
    emit("MOVED", server=server, client=ct.get_extra_info("sockname"), stats=loop.stats())
    await command()
    ct.close()
    st.close()
    await asyncio.sleep(0.3)
    emit("CLOSED", stats=loop.stats())
    await command()

asyncio.run(main())
'''


def test_udp_transport_reports_the_bytes_it_moved(tmp_path):
    total, count = 100 + 2000 + 65000 + 7 + 1, 5
    with Inspected(UDP_SCRIPT, tmp_path) as s:
        moved = s.expect("MOVED")
        lid = s.only_loop()
        server_addr = "{}:{}".format(*moved["server"])
        client_addr = "{}:{}".format(*moved["client"])
        page = s.tables(lid, "transports", "kind=udp")
        udp = page["items"]
        assert page["total"] == len(udp) == 2, udp
        by_local = {t["local"]: t for t in udp}
        assert set(by_local) == {client_addr, server_addr}, udp
        client, server = by_local[client_addr], by_local[server_addr]
        assert client["peer"] == server_addr and server["peer"] == ""
        assert client["protocol"] == "Client" and server["protocol"] == "Echo"
        for t in (client, server):
            assert t["kind"] == "udp" and t["state"] == "open"
            assert (t["bytes_in"], t["bytes_out"]) == (total, total), t
            assert (t["calls_in"], t["calls_out"]) == (count, count), t
            assert t["write_buffer"] == 0 and t["write_buffer_high_water"] == 0
            assert t["reading_paused"] is False and t["writing_paused"] is False
        assert moved["stats"]["transports_open"] == 2
        assert s.tables(lid, "transports", "kind=tcp")["total"] == 0
        ss = wait_samples(s, lid, 3)["since_start"]
        assert (ss["bytes_in"], ss["bytes_out"]) == (2 * total, 2 * total), ss

        s.send()
        closed = s.expect("CLOSED")
        assert closed["stats"]["transports_open"] == 0
        left = [t for t in s.tables(lid, "transports", "kind=udp")["items"] if t["state"] != "closed"]
        assert left == [], left
        # Closed endpoints' bytes stay in the loop's totals.
        ss = wait_for(lambda: (x := since_start(s, lid))["bytes_in"] == 2 * total and x, what="totals after close")
        assert ss["bytes_out"] == 2 * total
        s.send()
        s.finish()


PAUSE_SCRIPT = HEARTBEAT + '''
import socket

class Sink(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
        self.got = 0
    def data_received(self, d):
        self.got += len(d)
    def pause_writing(self):
        self.paused = True

async def main():
    loop = asyncio.get_running_loop()
    start_heartbeat()
    a, b = socket.socketpair()
    ta, pa = await loop.connect_accepted_socket(Sink, a)
    tb, pb = await loop.connect_accepted_socket(Sink, b)
    ta.write(b"x" * 1000)
    tb.write(b"y" * 2000)
    while pa.got < 2000 or pb.got < 1000:
        await asyncio.sleep(0.01)
    tb.pause_reading()                     # b stops reading ...
    ta.set_write_buffer_limits(high=4096)
    ta.write(b"z" * 8_000_000)            # ... so a's writes back up
    await asyncio.sleep(0.4)
    emit("PAUSED", buffered=ta.get_write_buffer_size(), a_out=8_000_000 + 1000 - ta.get_write_buffer_size())
    await command()
    tb.resume_reading()
    while pb.got < 8_001_000:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    emit("DRAINED")
    await command()

asyncio.run(main())
'''


def test_transport_paused_flags_and_write_buffer(tmp_path):
    with Inspected(PAUSE_SCRIPT, tmp_path) as s:
        paused = s.expect("PAUSED")
        lid = s.only_loop()
        items = s.tables(lid, "transports")["items"]
        assert len(items) == 2, items
        a = [t for t in items if t["write_buffer"] > 0]
        b = [t for t in items if t["reading_paused"]]
        assert len(a) == 1 and len(b) == 1 and a[0]["id"] != b[0]["id"], items
        a, b = a[0], b[0]
        assert a["kind"] == b["kind"] == "unix"
        assert a["protocol"] == "Sink"
        assert a["writing_paused"] is True and a["reading_paused"] is False
        assert a["write_buffer"] == paused["buffered"] > 4096
        assert a["write_buffer_high_water"] >= a["write_buffer"]
        assert a["bytes_out"] == paused["a_out"], (a, paused)
        assert a["bytes_in"] == 2000
        assert b["bytes_out"] == 2000 and b["writing_paused"] is False
        assert b["paused_reading_ns"] >= 300_000_000, b
        assert a["paused_writing_ns"] >= 300_000_000, a

        s.send()
        s.expect("DRAINED")
        items = {t["id"]: t for t in s.tables(lid, "transports")["items"]}
        a2, b2 = items[a["id"]], items[b["id"]]
        assert a2["writing_paused"] is False and a2["write_buffer"] == 0
        assert a2["bytes_out"] == 8_001_000 and b2["bytes_in"] == 8_001_000
        assert a2["write_buffer_high_water"] >= a["write_buffer"]
        assert b2["reading_paused"] is False
        # Paused time stops growing once resumed.
        assert b2["paused_reading_ns"] >= b["paused_reading_ns"]
        s.send()
        s.finish()


# ---------------------------------------------------------------------------
# Executor, loops, record=False, the environment variable
# ---------------------------------------------------------------------------

EXECUTOR_SCRIPT = HEARTBEAT + '''
async def main():
    loop = asyncio.get_running_loop()
    start_heartbeat()
    await asyncio.gather(*(loop.run_in_executor(None, time.sleep, 0.02) for _ in range(5)))
    await asyncio.sleep(0.6)
    emit("DONE")
    await command()

asyncio.run(main())
'''


def test_executor_jobs_are_counted(tmp_path):
    # Issue 4: "Executor: jobs queued, running, done, and job duration histogram".
    with Inspected(EXECUTOR_SCRIPT, tmp_path) as s:
        s.expect("DONE")
        lid = s.only_loop()
        ss = wait_samples(s, lid, 3)["since_start"]
        ej = ss["histograms"]["executor_job_duration"]
        assert ss["executor_done"] == 5, ss["executor_done"]
        assert ej["count"] == 5 and ej["min_ns"] >= 19_000_000, ej
        s.send()
        s.finish()


LOOPINFO_SCRIPT = HEARTBEAT + '''
import os, platform, threading, glassloop
async def main():
    start_heartbeat()
    await asyncio.sleep(0.1)
    emit("INFO", pid=os.getpid(), python=platform.python_version(), version=glassloop.__version__,
         thread_id=threading.get_ident())
    await command()

asyncio.run(main())
'''


def test_loops_endpoint_describes_the_loop(tmp_path):
    with Inspected(LOOPINFO_SCRIPT, tmp_path) as s:
        info = s.expect("INFO")
        lid = s.only_loop()
        (row,) = s.loops()
        i = row["info"]
        assert i["id"] == lid
        assert i["pid"] == info["pid"] == s.proc.pid
        assert i["python"] == info["python"]
        assert i["glassloop_version"] == info["version"]
        assert i["thread_id"] == info["thread_id"] and i["thread_name"] == "MainThread"
        assert row["closed"] is False and row["closed_unix_ms"] is None
        assert abs(i["created_unix_ms"] - time.time() * 1000) < 60_000
        detail = s.json(f"/api/v1/loops/{lid}")
        assert detail["loop"]["info"] == i
        assert detail["history"]["capacity"] == 3600
        r = s.get("/api/v1/loops/999")
        assert r.status == 404 and r.json()["error"] == "not found"
        s.send()
        s.finish()


RECORD_OFF_SCRIPT = HEARTBEAT + '''
import glassloop
glassloop.start_inspector("127.0.0.1:0")

def quick(i):
    pass

async def main():
    loop = asyncio.get_running_loop()
    start_heartbeat()
    for i in range(100):
        loop.call_soon(quick, i)
    await asyncio.sleep(0.8)
    emit("DONE", stats=loop.stats())
    await command()

loop = glassloop.new_event_loop(record=False)
loop.run_until_complete(main())
'''


def test_record_false_counts_but_keeps_no_histograms(tmp_path):
    with Inspected(RECORD_OFF_SCRIPT, tmp_path, launcher="plain") as s:
        st = s.expect("DONE")["stats"]
        lid = s.only_loop()
        ss = wait_samples(s, lid, 2)["since_start"]
        assert ss["callbacks"] > 100 and ss["iterations"] > 0
        assert st["callback_duration"]["count"] == 0
        for name, h in ss["histograms"].items():
            assert h["count"] == 0 and sum(h["buckets"]) == 0, (name, h)
        s.send()
        s.finish()


ENV_SCRIPT = '''
import glassloop
async def main():
    await asyncio.sleep(0.2)
    emit("RAN")
    await command()
glassloop.run(main())
'''


def test_glassloop_inspect_environment_variable(tmp_path):
    with Inspected(ENV_SCRIPT, tmp_path, launcher="plain", env={"GLASSLOOP_INSPECT": "127.0.0.1:0"}) as s:
        s.expect("RAN")
        lid = s.only_loop()
        assert s.json("/healthz") == {"status": "ok"}
        assert s.json(f"/api/v1/loops/{lid}")["loop"]["info"]["pid"] == s.proc.pid
        s.send()
        s.finish()


TASKCOUNT_SCRIPT = HEARTBEAT + '''
async def quick():
    await asyncio.sleep(0)

async def main():
    loop = asyncio.get_running_loop()
    start_heartbeat()
    await asyncio.gather(*(loop.create_task(quick(), name=f"q{i}") for i in range(5)))
    await asyncio.sleep(1.3)     # several samples after the tasks finished
    emit("DONE", stats=loop.stats())
    await command()

asyncio.run(main())
'''


def test_task_counters_in_samples_are_per_interval(tmp_path):
    # Sample.tasks_created / tasks_finished are interval counters (API.md), so
    # since_start sums them to the loop's totals: 7 created (main, heartbeat,
    # 5 quick), 5 finished, however many samples were cut.
    with Inspected(TASKCOUNT_SCRIPT, tmp_path) as s:
        st = s.expect("DONE")["stats"]
        lid = s.only_loop()
        assert (st["tasks_created"], st["tasks_finished"], st["tasks_live"]) == (7, 5, 2)
        detail = wait_samples(s, lid, 4)
        ss = detail["since_start"]
        samples = s.json(f"/api/v1/loops/{lid}/samples?limit=3600")["samples"]
        assert detail["loop"]["latest"]["tasks_live"] == 2
        assert sum(x["tasks_created"] for x in samples) == ss["tasks_created"]
        assert (ss["tasks_created"], ss["tasks_finished"]) == (7, 5), (
            {k: ss[k] for k in ("tasks_created", "tasks_finished")},
            [(x["seq"], x["tasks_created"], x["tasks_finished"]) for x in samples])
        s.send()
        s.finish()
