"""The sidecar against big and odd loops (issue 4, "Bad input and faults"):
100,000 live tasks (paged, bounded, the loop never stalls while the API is
hammered), 2,000 transports, several loops in several threads, a loop that
closes while being inspected, and fork.
"""

import threading
import time

import pytest

from inspectsupport import Inspected, parse_prometheus, one, series, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def _needs_glassloop(glassloop):
    return glassloop


def hammer(s, paths, seconds):
    """GET `paths` round-robin from one thread per path for `seconds`; {status: count}."""
    codes = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run(path):
        while time.monotonic() < stop:
            r = s.get(path, timeout=10)
            with lock:
                codes[r.status] = codes.get(r.status, 0) + 1

    threads = [threading.Thread(target=run, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


# ---------------------------------------------------------------------------
# 100,000 live tasks
# ---------------------------------------------------------------------------

MANY_TASKS_SCRIPT = '''
import gc
N = 100_000

async def parked(ev):
    await ev.wait()

async def main():
    loop = asyncio.get_running_loop()
    ev = asyncio.Event()
    tasks = [loop.create_task(parked(ev), name=f"p{i}") for i in range(N)]
    await asyncio.sleep(0)
    # CPython's own collector would pause the loop walking 100,000 tasks; that
    # is not glassloop's doing, so take it out of the measurement.
    gc.collect()
    gc.freeze()
    state = {"worst": 0.0, "ticks": 0}
    async def probe():
        while True:
            t = loop.time()
            await asyncio.sleep(0.01)
            state["worst"] = max(state["worst"], loop.time() - t - 0.01)
            state["ticks"] += 1
    pt = loop.create_task(probe(), name="probe")
    await asyncio.sleep(0.2)
    state["worst"] = 0.0
    await asyncio.sleep(1.2)       # tables with 100,000 tasks published; the quiet baseline
    baseline = state["worst"]
    state["worst"] = 0.0
    state["ticks"] = 0
    emit("READY", live=loop.stats()["tasks_live"], baseline=baseline)
    await command()
    emit("WORST", **state)
    pt.cancel()
    ev.set()
    await asyncio.gather(*tasks)
    emit("FINISHED", finished=loop.stats()["tasks_finished"])
    await command()

asyncio.run(main())
'''


def test_a_hundred_thousand_live_tasks(tmp_path):
    with Inspected(MANY_TASKS_SCRIPT, tmp_path) as s:
        ready = s.expect("READY", timeout=60)
        assert ready["live"] == 100_002  # the 100,000, main, the probe
        lid = s.only_loop()

        # Hammer the API (fresh tables built by the loop, cached pages, /metrics)
        # while the loop's probe measures how late its 10 ms timer runs.
        codes = hammer(s, [
            f"/api/v1/loops/{lid}/tasks?fresh=true&limit=1000",
            f"/api/v1/loops/{lid}/tasks?limit=1000&offset=1000&sort=name",
            "/metrics",
        ], seconds=2.5)
        s.send()
        worst = s.expect("WORST")
        assert worst["ticks"] > 20, worst
        assert set(codes) <= {200, 503}, codes  # 503 = "loop busy" is allowed, nothing else
        assert codes.get(200, 0) > 10, codes
        # "Never stalls": no worse than half a second, or than 4x what this
        # (noisy, shared) machine showed with nobody asking.
        bound = max(0.5, 4 * ready["baseline"])
        assert worst["worst"] < bound, (
            f"a 10 ms timer ran {worst['worst'] * 1000:.0f} ms late while the API was hammered "
            f"(quiet baseline {ready['baseline'] * 1000:.0f} ms)")

        # Paged and bounded: limit caps at 1000; pages do not overlap; the page
        # says how many tasks the loop has, or that the table was cut.
        p1 = s.json(f"/api/v1/loops/{lid}/tasks?limit=999999")
        assert p1["limit"] == 1000 and len(p1["items"]) == 1000
        p2 = s.json(f"/api/v1/loops/{lid}/tasks?limit=1000&offset=1000")
        assert p2["offset"] == 1000
        ids1 = {r["id"] for r in p1["items"]}
        ids2 = {r["id"] for r in p2["items"]}
        assert not ids1 & ids2
        filtered = s.json(f"/api/v1/loops/{lid}/tasks?name=p9999&limit=1000")
        assert all("p9999" in r["name"] for r in filtered["items"])
        assert p1["total"] >= 100_002 or p1["truncated"] is True, (
            f"the task table says total={p1['total']}, truncated={p1['truncated']} for a loop "
            f"with {ready['live']} live tasks")

        fin = s.expect("FINISHED", timeout=60)
        assert fin["finished"] >= 100_001
        s.send()
        s.finish(timeout=60)


# ---------------------------------------------------------------------------
# 2,000 transports
# ---------------------------------------------------------------------------

MANY_TRANSPORTS_SCRIPT = '''
import resource, socket
PAIRS = 1000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 3 * 2 * PAIRS + 512)), hard))

class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
        self.got = 0
    def data_received(self, d):
        self.got += len(d)

async def main():
    loop = asyncio.get_running_loop()
    state = {"worst": 0.0}
    async def probe():
        while True:
            t = loop.time()
            await asyncio.sleep(0.01)
            state["worst"] = max(state["worst"], loop.time() - t - 0.01)
    loop.create_task(probe(), name="probe")
    protos = []
    for i in range(PAIRS):
        a, b = socket.socketpair()
        ta, pa = await loop.connect_accepted_socket(P, a)
        tb, pb = await loop.connect_accepted_socket(P, b)
        ta.write(b"a" * 10)
        tb.write(b"b" * 20)
        protos += [pa, pb]
    while any(p.got < 10 for p in protos):
        await asyncio.sleep(0.01)
    state["worst"] = 0.0
    await asyncio.sleep(1.2)
    baseline = state["worst"]
    state["worst"] = 0.0
    emit("READY", open=loop.stats()["transports_open"], baseline=baseline)
    await command()
    emit("WORST", **state)
    for p in protos:
        p.t.close()
    await asyncio.sleep(1.2)
    emit("CLOSED", open=loop.stats()["transports_open"])
    await command()

asyncio.run(main())
'''


def test_two_thousand_transports(tmp_path):
    with Inspected(MANY_TRANSPORTS_SCRIPT, tmp_path) as s:
        ready = s.expect("READY", timeout=60)
        assert ready["open"] == 2000
        lid = s.only_loop()
        seen = {}
        for fresh in (False, True):
            seen = {}
            offset = 0
            while True:
                q = f"limit=1000&offset={offset}" + ("&fresh=true" if fresh else "")
                page = s.json(f"/api/v1/loops/{lid}/transports?{q}")
                assert page["total"] == 2000, page["total"]
                if not page["items"]:
                    break
                for t in page["items"]:
                    assert t["id"] not in seen
                    seen[t["id"]] = t
                offset += len(page["items"])
            assert len(seen) == 2000
        ins = sorted(t["bytes_in"] for t in seen.values())
        outs = sorted(t["bytes_out"] for t in seen.values())
        assert ins == [10] * 1000 + [20] * 1000
        assert outs == [10] * 1000 + [20] * 1000
        assert all(t["kind"] == "unix" and t["state"] == "open" for t in seen.values())
        fams = parse_prometheus(s.get("/metrics").text)
        assert one(fams, "asyncio_transport_active", loop=str(lid), type="unix") == 2000

        codes = hammer(s, [f"/api/v1/loops/{lid}/transports?fresh=true&limit=1000",
                           f"/api/v1/loops/{lid}/transports?limit=1000&offset=1000"], seconds=2)
        s.send()
        worst = s.expect("WORST")["worst"]
        assert set(codes) <= {200, 503} and codes.get(200, 0) > 5, codes
        bound = max(0.5, 4 * ready["baseline"])
        assert worst < bound, (f"a 10 ms timer ran {worst * 1000:.0f} ms late while 2000 transports were listed "
                               f"(quiet baseline {ready['baseline'] * 1000:.0f} ms)")

        closed = s.expect("CLOSED", timeout=30)
        assert closed["open"] == 0
        left = [t for t in s.json(f"/api/v1/loops/{lid}/transports?fresh=true&limit=1000")["items"]
                if t["state"] != "closed"]
        assert left == []
        s.send()
        s.finish()


# ---------------------------------------------------------------------------
# Several loops in several threads
# ---------------------------------------------------------------------------

THREADS_SCRIPT = '''
import glassloop, threading
glassloop.start_inspector("127.0.0.1:0")

def quick(i):
    pass

def worker(n, started, stop):
    loop = glassloop.new_event_loop()
    async def main():
        for i in range(n):
            loop.call_soon(quick, i)
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
    loop.run_until_complete(main())
    loop.close()
    del loop

stop = threading.Event()
threads = []
for k in range(3):
    started = threading.Event()
    t = threading.Thread(target=worker, args=(100 * (k + 1), started, stop), name=f"loop-thread-{k}")
    t.start()
    started.wait()
    threads.append(t)

async def main():
    await asyncio.sleep(1.0)
    emit("READY", idents={t.name: t.ident for t in threads})
    await command()
    stop.set()
    for t in threads:
        t.join()
    import gc; gc.collect()
    await asyncio.sleep(0.5)
    emit("JOINED")
    await command()

glassloop.run(main())
'''


def test_several_loops_in_several_threads(tmp_path):
    with Inspected(THREADS_SCRIPT, tmp_path, launcher="plain") as s:
        idents = s.expect("READY")["idents"]
        rows = wait_for(lambda: [r for r in s.loops() if not r["closed"]] if len(s.loops()) >= 4 else None,
                        timeout=10, what="four loops")
        by_thread = {r["info"]["thread_name"]: r for r in rows}
        assert set(by_thread) == {"MainThread", "loop-thread-0", "loop-thread-1", "loop-thread-2"}, by_thread.keys()
        ids = [r["info"]["id"] for r in rows]
        assert len(set(ids)) == 4
        for name, ident in idents.items():
            assert by_thread[name]["info"]["thread_id"] == ident

        # Each loop's own counters: thread k ran 100*(k+1) quick callbacks.
        for k in range(3):
            lid = by_thread[f"loop-thread-{k}"]["info"]["id"]
            sites = s.json(f"/api/v1/loops/{lid}/callback-sites?fresh=true&limit=1000")["items"]
            (q,) = [x for x in sites if x["qualname"] == "quick"]
            assert q["count"] == 100 * (k + 1), (k, q)

        fams = parse_prometheus(s.get("/metrics").text)
        loops_in_metrics = {l["loop"]: l["thread"] for l, _ in series(fams, "asyncio_callbacks_total")}
        assert loops_in_metrics == {str(r["info"]["id"]): r["info"]["thread_name"] for r in rows}

        s.send()
        s.expect("JOINED")
        after = {r["info"]["thread_name"]: r for r in s.loops()}
        for k in range(3):
            assert after[f"loop-thread-{k}"]["closed"] is True, after[f"loop-thread-{k}"]
        assert after["MainThread"]["closed"] is False
        s.send()
        s.finish()


# ---------------------------------------------------------------------------
# A loop that closes while being inspected
# ---------------------------------------------------------------------------

CLOSE_SCRIPT = '''
import glassloop
glassloop.start_inspector("127.0.0.1:0")

def quick(i):
    pass

loop = glassloop.new_event_loop()

async def main():
    for i in range(50):
        loop.call_soon(quick, i)
    for _ in range(8):
        await asyncio.sleep(0.05)

loop.run_until_complete(main())
st = loop.stats()
loop.close()                   # the script keeps its reference to the loop
emit("CLOSED", callbacks=st["callbacks"])
blocking_command()
other = glassloop.new_event_loop()
other.run_until_complete(asyncio.sleep(0.1))
emit("OTHER")
blocking_command()
other.close()
'''


def test_a_loop_that_closes_is_reported_closed(tmp_path):
    with Inspected(CLOSE_SCRIPT, tmp_path, launcher="plain") as s:
        s.expect("CLOSED")
        (row,) = wait_for(s.loops, timeout=5, what="the loop")
        lid = row["info"]["id"]
        # Hammer it while it is closed: nothing crashes.
        codes = hammer(s, [f"/api/v1/loops/{lid}/tasks?fresh=true", f"/api/v1/loops/{lid}/tasks/1/stack",
                           f"/api/v1/loops/{lid}", "/metrics"], seconds=1)
        assert set(codes) <= {200, 404, 410, 503}, codes
        assert s.alive() and s.get("/healthz").status == 200
        s.send()
        s.expect("OTHER")
        rows = {r["info"]["id"]: r for r in s.loops()}
        assert len(rows) == 2, rows  # the new loop has its own id
        row = wait_for(lambda: (r := {x["info"]["id"]: x for x in s.loops()}[lid])["closed"] and r,
                       timeout=3, what=f"loop {lid} to be reported closed after loop.close()")
        assert row["closed_unix_ms"] is not None
        r = s.get(f"/api/v1/loops/{lid}/tasks?fresh=true")
        assert r.status == 410 and r.json()["error"] == "loop closed", r
        s.send()
        s.finish()


CLOSE_FLUSH_SCRIPT = '''
import glassloop, gc
glassloop.start_inspector("127.0.0.1:0")

def quick(i):
    pass

loop = glassloop.new_event_loop()

async def main():
    for _ in range(3):
        await asyncio.sleep(0.1)
    for i in range(500):       # the last callbacks, in the loop's last interval
        loop.call_soon(quick, i)
    await asyncio.sleep(0)

loop.run_until_complete(main())
st = loop.stats()
loop.close()
del loop
gc.collect()
emit("GONE", callbacks=st["callbacks"], iterations=st["iterations"])
blocking_command()
'''


def test_a_closed_loop_is_marked_and_its_totals_are_complete(tmp_path):
    with Inspected(CLOSE_FLUSH_SCRIPT, tmp_path, launcher="plain") as s:
        gone = s.expect("GONE")
        row = wait_for(lambda: (r := s.loops()) and r[0]["closed"] and r[0], timeout=5, what="closed")
        lid = row["info"]["id"]
        assert row["closed_unix_ms"] is not None
        fams = parse_prometheus(s.get("/metrics").text)
        (info_labels, _), = series(fams, "glassloop_loop_info", loop=str(lid))
        assert info_labels["closed"] == "true"
        r = s.get(f"/api/v1/loops/{lid}/tasks?fresh=true")
        assert r.status == 410 and r.json()["error"] == "loop closed"
        # Everything the loop ran is in its totals once it has closed.
        ss = s.json(f"/api/v1/loops/{lid}")["since_start"]
        assert ss["callbacks"] == gone["callbacks"], (ss["callbacks"], gone)
        assert one(fams, "asyncio_callbacks_total", loop=str(lid)) == gone["callbacks"]
        s.send()
        s.finish()


# ---------------------------------------------------------------------------
# fork
# ---------------------------------------------------------------------------

FORK_SCRIPT = '''
import os, json, urllib.request, threading
import glassloop

def quick(i):
    pass

def child_body(k):
    # What a child sees: the inspector URL cached from the parent, and whether
    # anything answers there (the parent's server, which does not know the
    # child's loops). The child's loops must simply run.
    url = glassloop.start_inspector("127.0.0.1:0")
    loop = glassloop.new_event_loop()
    async def work():
        for i in range(100):
            loop.call_soon(quick, i)
        for _ in range(5):
            await asyncio.sleep(0.01)
    loop.run_until_complete(work())
    st = loop.stats()
    loop.close()
    seen = None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/v1/loops", timeout=5) as r:
            seen = [(x["info"]["pid"], x["info"]["id"]) for x in json.load(r)["loops"]]
    except Exception as e:
        seen = repr(e)
    emit("CHILD", k=k, pid=os.getpid(), url=url, callbacks=st["callbacks"], loops_at_url=seen)

async def main():
    loop = asyncio.get_running_loop()
    async def busy():
        while True:
            for i in range(20):
                loop.call_soon(quick, i)
            await asyncio.sleep(0.005)
    loop.create_task(busy(), name="busy")
    await asyncio.sleep(0.6)
    emit("READY", url=glassloop.start_inspector())
    await command()
    statuses = []
    for k in range(8):
        pid = os.fork()
        if pid == 0:
            try:
                child_body(k)
            except BaseException as e:
                emit("CHILD_ERR", k=k, error=repr(e))
                os._exit(3)
            os._exit(0)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                statuses.append(os.waitstatus_to_exitcode(status))
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                statuses.append("hung")
                break
            await asyncio.sleep(0.01)
    emit("FORKED", statuses=statuses, pid=os.getpid())
    await command()

asyncio.run(main())
'''


def test_fork_with_a_running_loop_and_inspector(tmp_path):
    with Inspected(FORK_SCRIPT, tmp_path) as s:
        s.expect("READY")
        lid = s.only_loop()
        stop = threading.Event()
        errors = []

        def keep_asking():
            # Fork while the sidecar is busy answering (its locks may be held).
            while not stop.is_set():
                for p in (f"/api/v1/loops/{lid}/tasks?fresh=true", "/metrics", "/api/v1/stalls"):
                    r = s.get(p, timeout=10)
                    if r.status not in (200, 503):
                        errors.append((p, r.status))

        t = threading.Thread(target=keep_asking)
        t.start()
        try:
            s.send()
            forked = s.expect("FORKED", timeout=80)
        finally:
            stop.set()
            t.join()
        assert forked["statuses"] == [0] * 8, (forked, s.diagnostics())
        children = [l for l in s.stdout_log if l.startswith("CHILD ")]
        assert len(children) == 8, s.diagnostics()
        import json as _json
        for line in children:
            c = _json.loads(line.split(" ", 1)[1])
            assert c["callbacks"] >= 100 and c["pid"] != forked["pid"]
            # Documented here: the child inherits the parent's URL (start_inspector
            # is once per process, and the child is a copy); what answers there is
            # the parent's sidecar, which lists only the parent's loops.
            assert c["url"].rstrip("/") == s.url
            assert c["loops_at_url"] == [[forked["pid"], lid]], c
        assert errors == []
        # The parent and its sidecar are fine.
        assert s.get("/healthz").status == 200
        assert [r["info"]["pid"] for r in s.loops()] == [forked["pid"]]
        s.send()
        s.finish()
