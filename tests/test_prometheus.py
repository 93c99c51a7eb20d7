"""/metrics: the Prometheus text exposition of every loop.

1. A strict parser (inspectsupport.parse_prometheus), itself tested on bad input.
2. The sidecar's exposition, parsed strictly, against a known workload: every
   family of inspector/API.md with its type and labels, histogram _count equal to
   the callbacks counted, counters that never go down.
3. A real Prometheus (Debian's `prometheus` package) scraping /metrics every
   second; its query API must return the loop's series.
"""

import math
import os
import shutil
import subprocess
import time
import urllib.parse

import pytest

from inspectsupport import (
    BUCKET_BOUNDS_NS, Inspected, PromFormatError, free_port, histogram_buckets, http_get, one,
    parse_prometheus, series, wait_for,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def _needs_glassloop(glassloop):
    return glassloop


# Every family API.md lists: name -> (type, extra label names beyond loop/thread).
FAMILIES = {
    "asyncio_eventloop_delay_seconds": ("histogram", set()),
    "asyncio_callback_duration_seconds": ("histogram", set()),
    "asyncio_timer_delay_seconds": ("histogram", set()),
    "asyncio_task_step_duration_seconds": ("histogram", set()),
    "asyncio_executor_job_duration_seconds": ("histogram", set()),
    "asyncio_eventloop_utilization": ("gauge", set()),
    "asyncio_eventloop_time_seconds_total": ("counter", {"state"}),
    "asyncio_eventloop_iterations_total": ("counter", set()),
    "asyncio_callbacks_total": ("counter", set()),
    "asyncio_callback_exceptions_total": ("counter", set()),
    "asyncio_slow_callbacks_total": ("counter", set()),
    "asyncio_eventloop_stalls_total": ("counter", set()),
    "asyncio_eventloop_ready_queue": ("gauge", set()),
    "asyncio_eventloop_ready_queue_max": ("gauge", set()),
    "asyncio_eventloop_timers": ("gauge", set()),
    "asyncio_eventloop_fds": ("gauge", set()),
    "asyncio_task_active": ("gauge", set()),
    "asyncio_task_created_total": ("counter", set()),
    "asyncio_task_finished_total": ("counter", set()),
    "asyncio_task_steps_total": ("counter", set()),
    "asyncio_transport_active": ("gauge", {"type"}),
    "asyncio_transport_bytes_total": ("counter", {"direction"}),
    "asyncio_connections_total": ("counter", set()),
    "asyncio_executor_jobs": ("gauge", {"state"}),
    "asyncio_executor_jobs_done_total": ("counter", set()),
    "glassloop_samples_total": ("counter", set()),
    "glassloop_samples_dropped_total": ("counter", set()),
    "glassloop_loop_info": ("gauge", {"name", "pid", "python", "version", "closed"}),
    "glassloop_server_connections_accepted_total": ("counter", {"server", "kind", "address"}),
    "glassloop_server_connections_refused_total": ("counter", {"server", "kind", "address"}),
    "glassloop_server_connections_open": ("gauge", {"server", "kind", "address"}),
    "glassloop_server_serving": ("gauge", {"server", "kind", "address"}),
}
PROCESS_FAMILIES = {
    "glassloop_stream_clients": "gauge",
    "glassloop_stream_clients_cut_total": "counter",
    # OTLP export (process-wide; `signal="traces|metrics"` where it applies).
    "glassloop_otlp_enabled": "gauge",
    "glassloop_otlp_exported_total": "counter",
    "glassloop_otlp_dropped_total": "counter",
    "glassloop_otlp_export_failures_total": "counter",
    "glassloop_otlp_queue": "gauge",
    "glassloop_otlp_spans_sampled_out_total": "counter",
    "glassloop_otlp_tasks_unseen_total": "counter",
}
LABEL_VALUES = {
    "state": {"asyncio_eventloop_time_seconds_total": {"active", "idle"}, "asyncio_executor_jobs": {"queued", "running"}},
    "direction": {"asyncio_transport_bytes_total": {"in", "out"}},
    "type": {"asyncio_transport_active": {"tcp", "unix", "udp", "pipe_read", "pipe_write", "subprocess", "tls"}},
}


# ---------------------------------------------------------------------------
# The parser is strict
# ---------------------------------------------------------------------------

GOOD = """\
# HELP a_total A counter.
# TYPE a_total counter
a_total{loop="1",thread="Main \\"x\\" \\\\ \\n"} 3
# TYPE h histogram
h_bucket{le="0.1"} 1
h_bucket{le="+Inf"} 2
h_sum 0.5
h_count 2
# TYPE g gauge
g NaN
g{x="y"} -1.5e-3 1700000000000
"""


def test_parser_accepts_valid_text():
    fams = parse_prometheus(GOOD)
    assert fams["a_total"].type == "counter" and fams["a_total"].help == "A counter."
    (lab, v), = series(fams, "a_total")
    assert lab == {"loop": "1", "thread": 'Main "x" \\ \n'} and v == 3
    assert histogram_buckets(fams, "h") == [(0.1, 1), (math.inf, 2)]
    gs = series(fams, "g")
    assert math.isnan(gs[0][1]) and gs[1] == ({"x": "y"}, -1.5e-3)


@pytest.mark.parametrize("bad", [
    GOOD.rstrip("\n"),                                              # no final newline
    GOOD + "a_total{loop=\"1\",thread=\"Main \\\"x\\\" \\\\ \\n\"} 4\n",  # duplicate series
    GOOD.replace('h_bucket{le="+Inf"} 2', 'h_bucket{le="+Inf"} 0'),   # buckets decrease
    GOOD.replace('h_count 2', 'h_count 3'),                          # +Inf != count
    GOOD.replace('h_bucket{le="+Inf"} 2\n', ''),                      # no +Inf
    GOOD.replace('h_sum 0.5\n', ''),                                  # no _sum
    GOOD.replace('# TYPE g gauge\n', ''),                             # sample without TYPE
    GOOD + "# TYPE a_total counter\n",                               # TYPE twice / after samples
    GOOD + 'a_total{loop="2"} 1\n',                                   # family not contiguous
    GOOD.replace('{x="y"}', '{x="y\\q"}'),                            # bad escape
    GOOD.replace('{x="y"}', '{x=y}'),                                 # unquoted value
    GOOD.replace('{x="y"}', '{0x="y"}'),                              # bad label name
    GOOD.replace('{x="y"}', '{x="y",x="z"}'),                         # duplicate label
    GOOD.replace(' 3\n', ' three\n'),                                 # bad value
    GOOD.replace(' 3\n', ' -3\n'),                                    # negative counter
    GOOD.replace('a_total{', 'a-total{'),                             # bad metric name
    GOOD.replace('# TYPE g gauge', '# TYPE g gaug'),                  # bad type
    GOOD.replace('g NaN', 'g  NaN'),                                  # two spaces
])
def test_parser_rejects_bad_text(bad):
    with pytest.raises(PromFormatError):
        parse_prometheus(bad)


# ---------------------------------------------------------------------------
# The sidecar's exposition
# ---------------------------------------------------------------------------

METRICS_SCRIPT = '''
import socket

def sleeper():
    time.sleep(0.05)

def raiser():
    raise ZeroDivisionError("on purpose")

def quick(i):
    pass

async def stepper(k):
    for _ in range(k):
        await asyncio.sleep(0)

async def heartbeat():
    while True:
        await asyncio.sleep(0.05)

async def main():
    loop = asyncio.get_running_loop()
    loop.slow_callback_duration = 0.03
    loop.set_exception_handler(lambda loop, ctx: None)
    hb = loop.create_task(heartbeat(), name="heartbeat")
    for i in range(100):
        loop.call_soon(quick, i)
    loop.call_soon(raiser)
    loop.call_soon(raiser)
    loop.call_soon(sleeper)
    await asyncio.gather(*(loop.create_task(stepper(3), name=f"s{i}") for i in range(7)))
    a, b = socket.socketpair()
    ta, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
    tb, _ = await loop.connect_accepted_socket(asyncio.Protocol, b)
    srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    cr, cw = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
    await asyncio.sleep(1.3)     # samples and tables are published
    emit("READY", stats=loop.stats())
    while True:                  # keep working: counters move between scrapes
        cmd = await command()
        if cmd == "stop":
            break
    ta.close(); tb.close()

asyncio.run(main())
'''


def _loop_series(fams):
    """Every sample that belongs to a loop family."""
    for name, fam in fams.items():
        if name in PROCESS_FAMILIES:
            continue
        for sname, labels, value in fam.samples:
            yield name, sname, labels, value


def test_metrics_exposition_is_strict_and_complete(tmp_path):
    with Inspected(METRICS_SCRIPT, tmp_path) as s:
        s.expect("READY")
        lid = str(s.only_loop())
        r = s.get("/metrics")
        assert r.status == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        fams = parse_prometheus(r.text)

        for name, (typ, extra) in FAMILIES.items():
            assert name in fams, f"{name} missing from /metrics"
            assert fams[name].type == typ, (name, fams[name].type)
            assert fams[name].help, name
            assert fams[name].samples, f"{name} has no series for loop {lid}"
        for name, typ in PROCESS_FAMILIES.items():
            assert fams[name].type == typ
            for _, labels, _ in fams[name].samples:
                assert set(labels) <= ({"signal"} if name.startswith("glassloop_otlp_") else set()), (name, labels)
        unknown = set(fams) - set(FAMILIES) - set(PROCESS_FAMILIES)
        assert not unknown, f"families not in API.md: {unknown}"

        for name, sname, labels, value in _loop_series(fams):
            typ, extra = FAMILIES[name]
            want = {"loop", "thread"} | extra | ({"le"} if sname.endswith("_bucket") else set())
            assert set(labels) == want, (sname, labels)
            assert labels["loop"] == lid and labels["thread"] == "MainThread"
            for lname, per_family in LABEL_VALUES.items():
                if lname in labels and name in per_family:
                    assert labels[lname] in per_family[name], (sname, labels)
            if typ == "counter":
                assert value >= 0, (sname, value)
                if name != "asyncio_eventloop_time_seconds_total":
                    assert value == int(value), (sname, value)

        # Label sets complete: both states, both directions, every transport type.
        assert {l["state"] for l, _ in series(fams, "asyncio_eventloop_time_seconds_total")} == {"active", "idle"}
        assert {l["direction"] for l, _ in series(fams, "asyncio_transport_bytes_total")} == {"in", "out"}
        assert {l["state"] for l, _ in series(fams, "asyncio_executor_jobs")} == {"queued", "running"}
        assert {l["type"] for l, _ in series(fams, "asyncio_transport_active")} == LABEL_VALUES["type"]["asyncio_transport_active"]
        assert one(fams, "asyncio_transport_active", type="unix") == 2

        # Histogram bounds are API.md's, in seconds.
        want_le = [b / 1e9 for b in BUCKET_BOUNDS_NS] + [math.inf]
        for name, (typ, _) in FAMILIES.items():
            if typ == "histogram":
                les = [le for le, _ in histogram_buckets(fams, name, loop=lid)]
                assert les == pytest.approx(want_le), (name, les)

        # Exact relations inside one scrape (both sides are sums of the same samples).
        callbacks = one(fams, "asyncio_callbacks_total", loop=lid)
        assert one(fams, "asyncio_callback_duration_seconds_count", loop=lid) == callbacks > 100
        assert one(fams, "asyncio_eventloop_delay_seconds_count", loop=lid) == callbacks
        assert one(fams, "asyncio_task_step_duration_seconds_count", loop=lid) == one(fams, "asyncio_task_steps_total", loop=lid)
        assert one(fams, "asyncio_task_steps_total", loop=lid) >= 7 * 4
        assert one(fams, "glassloop_samples_total", loop=lid) >= 4
        assert one(fams, "glassloop_samples_dropped_total", loop=lid) == 0

        # The known workload.
        assert one(fams, "asyncio_callback_exceptions_total", loop=lid) == 2
        assert one(fams, "asyncio_slow_callbacks_total", loop=lid) == 1
        assert one(fams, "asyncio_eventloop_stalls_total", loop=lid) == 0
        assert one(fams, "asyncio_task_active", loop=lid) == 2
        # Two connect_accepted_socket, then the client and the server end of open_connection.
        assert one(fams, "asyncio_connections_total", loop=lid) == 4
        # The server: one connection accepted and open, listening on 127.0.0.1.
        (labels, _), = series(fams, "glassloop_server_serving")
        assert labels["kind"] == "tcp" and labels["address"].startswith("127.0.0.1:"), labels
        assert one(fams, "glassloop_server_serving", loop=lid) == 1
        assert one(fams, "glassloop_server_connections_accepted_total", loop=lid) == 1
        assert one(fams, "glassloop_server_connections_open", loop=lid) == 1
        assert one(fams, "glassloop_server_connections_refused_total", loop=lid) == 0
        cum = dict(histogram_buckets(fams, "asyncio_callback_duration_seconds", loop=lid))
        # The 50 ms sleeper is the one callback above 25 ms; it is at most 100 ms.
        assert callbacks - cum[0.025] == 1, cum
        assert cum[0.1] == callbacks
        total = one(fams, "asyncio_callback_duration_seconds_sum", loop=lid)
        assert 0.05 <= total < 0.05 + callbacks * 0.01
        util = one(fams, "asyncio_eventloop_utilization", loop=lid)
        assert 0.0 <= util <= 1.0
        (info_labels, info), = series(fams, "glassloop_loop_info", loop=lid)
        assert info == 1 and info_labels["pid"] == str(s.proc.pid) and info_labels["closed"] == "false"

        # The JSON API says the same (one sample may have arrived in between).
        ss = s.json(f"/api/v1/loops/{lid}")["since_start"]
        assert ss["callbacks"] >= callbacks
        # Tasks: main, heartbeat and 7 steppers were created; the steppers finished;
        # so did create_server's getaddrinfo task and the server's accept task.
        assert one(fams, "asyncio_task_created_total", loop=lid) == 9 + 2
        assert one(fams, "asyncio_task_finished_total", loop=lid) == 7 + 2
        s.send("stop")
        s.finish()


def test_metrics_counters_never_go_down(tmp_path):
    with Inspected(METRICS_SCRIPT, tmp_path) as s:
        s.expect("READY")
        lid = str(s.only_loop())
        scrapes = []
        for _ in range(8):
            scrapes.append(parse_prometheus(s.get("/metrics").text))
            time.sleep(0.3)

        def monotonic_values(fams):
            out = {}
            for name, fam in fams.items():
                if fam.type not in ("counter", "histogram"):
                    continue
                for sname, labels, value in fam.samples:
                    out[(sname, tuple(sorted(labels.items())))] = value
            return out

        prev = monotonic_values(scrapes[0])
        for fams in scrapes[1:]:
            cur = monotonic_values(fams)
            assert set(prev) <= set(cur), set(prev) - set(cur)
            for key, v in prev.items():
                assert cur[key] >= v, (key, v, cur[key])
            prev = cur
        first = one(scrapes[0], "asyncio_callbacks_total", loop=lid)
        last = one(scrapes[-1], "asyncio_callbacks_total", loop=lid)
        assert last > first, "the heartbeat runs: the counter must move"
        assert one(scrapes[-1], "asyncio_eventloop_iterations_total", loop=lid) > one(scrapes[0], "asyncio_eventloop_iterations_total", loop=lid)
        s.send("stop")
        s.finish()


def test_head_and_other_methods_on_metrics(tmp_path):
    with Inspected(METRICS_SCRIPT, tmp_path) as s:
        s.expect("READY")
        h = s.get("/metrics", method="HEAD")
        assert h.status == 200 and h.body == b""
        p = s.get("/metrics", method="POST")
        assert p.status == 405 and p.headers.get("allow", p.headers.get("Allow")) == "GET, HEAD"
        s.send("stop")
        s.finish()


# ---------------------------------------------------------------------------
# A real Prometheus
# ---------------------------------------------------------------------------

def _prometheus_binary():
    return shutil.which("prometheus") or ("/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)


DEMO_SCRIPT = '''
async def main():
    loop = asyncio.get_running_loop()
    def quick(i):
        pass
    async def work():
        i = 0
        while True:
            for _ in range(10):
                loop.call_soon(quick, i)
            i += 1
            await asyncio.sleep(0.05)
    t = loop.create_task(work(), name="demo-work")
    await asyncio.sleep(0.5)
    emit("READY")
    await command()
    t.cancel()

asyncio.run(main())
'''


def test_real_prometheus_scrapes_the_loop(tmp_path):
    binary = _prometheus_binary()
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install prometheus)")
    with Inspected(DEMO_SCRIPT, tmp_path) as s:
        s.expect("READY")
        lid = str(s.only_loop())
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: glassloop\n"
            "    scrape_interval: 1s\n"
            "    scrape_timeout: 1s\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['{s.host}:{s.port}']\n"
        )
        data = tmp_path / "tsdb"
        log = open(tmp_path / "prometheus.log", "wb")
        prom = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
        )
        base = f"http://127.0.0.1:{port}"

        def query(q):
            r = http_get(f"{base}/api/v1/query?query={urllib.parse.quote(q)}", timeout=5)
            if r.status != 200:
                return None
            body = r.json()
            assert body["status"] == "success", body
            return body["data"]["result"]

        try:
            wait_for(lambda: prom.poll() is None and http_get(f"{base}/-/ready", timeout=2).status == 200,
                     timeout=30, interval=0.2, what="prometheus to be ready")
            result = wait_for(lambda: query("asyncio_callbacks_total"), timeout=30, interval=0.5,
                              what="asyncio_callbacks_total in prometheus")
            (row,) = result
            m = row["metric"]
            assert m["__name__"] == "asyncio_callbacks_total"
            assert m["loop"] == lid and m["thread"] == "MainThread" and m["job"] == "glassloop"
            assert m["instance"] == f"{s.host}:{s.port}"
            assert float(row["value"][1]) > 0

            # The target is healthy, and histograms arrive as histograms.
            targets = http_get(f"{base}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            assert [t["health"] for t in targets] == ["up"], targets
            buckets = wait_for(lambda: query('asyncio_callback_duration_seconds_bucket{le="+Inf"}'), timeout=10,
                               what="callback duration buckets")
            assert float(buckets[0]["value"][1]) > 0
            q = wait_for(lambda: query("histogram_quantile(0.99, rate(asyncio_callback_duration_seconds_bucket[5s]))"),
                         timeout=15, interval=0.5, what="a quantile over the scraped buckets")
            v = float(q[0]["value"][1])
            assert math.isnan(v) or 0 <= v <= 10
            # A counter that Prometheus sees growing.
            inc = wait_for(lambda: (r := query("increase(asyncio_callbacks_total[5s])")) and float(r[0]["value"][1]) > 0 and r,
                           timeout=15, interval=0.5, what="asyncio_callbacks_total growing")
            assert float(inc[0]["value"][1]) > 0
        finally:
            prom.terminate()
            try:
                prom.wait(10)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait(5)
            log.close()
        s.send()
        s.finish()
