"""OTLP export, end to end: real OTLP protobuf messages decoded by test receivers.

Two receivers run in this process: an HTTP one (``POST /v1/traces``,
``/v1/metrics`` with ``application/x-protobuf`` bodies, as the OTel Collector's
``otlphttp`` receiver) and a gRPC one (``grpcio`` serving the OTLP
``TraceService``/``MetricsService``), each also over TLS with a test CA
(``certsupport``). Messages are decoded with the ``opentelemetry-proto`` package.

What is exported comes from ``inspector/examples/otlp_feed.rs`` (a fake loop that
publishes known samples and tables into the inspector's hub and exports with
``inspector::otlp::start``), and, once ``glassloop.run(..., otlp=...)`` exists,
from a real glassloop workload. Each run checks the spans (count, parents,
attributes) and the metric points (histogram counts, sums and buckets equal to the
JSON API's since-start histograms) for both protocols; another kills the receiver
mid-run and checks that nothing crashes, memory stays flat, the loop keeps its pace
and the drops are counted.
"""

from __future__ import annotations

import inspect as pyinspect
import json
import os
import queue
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from certsupport import make_server_certs

pb_trace = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
pb_metrics = pytest.importorskip("opentelemetry.proto.collector.metrics.v1.metrics_service_pb2")
grpc = pytest.importorskip("grpc")
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FEED = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "debug" / "examples" / "otlp_feed"
PROTOCOLS = ("http/protobuf", "grpc")


# ---------------------------------------------------------------------------
# Receivers
# ---------------------------------------------------------------------------


class Received:
    """What a receiver decoded, thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.traces: list = []  # ExportTraceServiceRequest
        self.metrics: list = []  # ExportMetricsServiceRequest
        self.headers: list[dict] = []
        self.delay = 0.0

    def add(self, kind, message, headers):
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            (self.traces if kind == "traces" else self.metrics).append(message)
            self.headers.append({k.lower(): v for k, v in headers})

    def spans(self):
        """[(resource attrs dict, scope name, span)] of everything received."""
        out = []
        with self.lock:
            for req in self.traces:
                for rs in req.resource_spans:
                    res = attrs(rs.resource.attributes)
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            out.append((res, ss.scope.name, span))
        return out

    def last_metrics(self):
        with self.lock:
            return self.metrics[-1] if self.metrics else None


class HttpReceiver(Received):
    def __init__(self, certs=None):
        super().__init__()
        received = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/traces":
                    req, resp, kind = pb_trace.ExportTraceServiceRequest(), pb_trace.ExportTraceServiceResponse(), "traces"
                elif self.path == "/v1/metrics":
                    req, resp, kind = (
                        pb_metrics.ExportMetricsServiceRequest(),
                        pb_metrics.ExportMetricsServiceResponse(),
                        "metrics",
                    )
                else:
                    self.send_error(404)
                    return
                assert self.headers.get("Content-Type") == "application/x-protobuf", self.headers
                req.ParseFromString(body)
                received.add(kind, req, self.headers.items())
                out = resp.SerializeToString()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-protobuf")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the exporter gave up waiting (the slow-collector test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if certs is not None:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certs.cert, certs.key)
            # The handshake runs in the handler's thread, not in accept().
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
            # A client that refuses our certificate is a test case, not an error to print.
            self.server.handle_error = lambda request, address: None
            scheme = "https"
        self.endpoint = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class GrpcReceiver(Received):
    def __init__(self, certs=None):
        super().__init__()
        received = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                received.add("traces", request, context.invocation_metadata())
                return pb_trace.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):
                received.add("metrics", request, context.invocation_metadata())
                return pb_metrics.ExportMetricsServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self.server)
        if certs is None:
            port = self.server.add_insecure_port("127.0.0.1:0")
            scheme = "http"
        else:
            creds = grpc.ssl_server_credentials([(certs.key.read_bytes(), certs.cert.read_bytes())])
            port = self.server.add_secure_port("127.0.0.1:0", creds)
            scheme = "https"
        self.server.start()
        self.endpoint = f"{scheme}://127.0.0.1:{port}"

    def stop(self):
        self.server.stop(grace=None).wait()


def receiver(protocol, certs=None):
    return HttpReceiver(certs) if protocol == "http/protobuf" else GrpcReceiver(certs)


# ---------------------------------------------------------------------------
# Decoding helpers
# ---------------------------------------------------------------------------


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def metric(req, name):
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    return m
    raise AssertionError(f"no metric {name}")


def number(point):
    return getattr(point, point.WhichOneof("value"))


def get_json(url, path):
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=10) as r:
        return json.loads(r.read())


def get_text(url, path):
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=10) as r:
        return r.read().decode()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------
# The feed process
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def feed_binary():
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("cargo not found: the OTLP feed is a Rust example")
    build = subprocess.run(
        [cargo, "build", "--quiet", "-p", "glassloop-inspector", "--example", "otlp_feed"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    assert FEED.exists()
    return FEED


class Feed:
    """A running otlp_feed: its output lines by tag, its inspector URL."""

    def __init__(self, binary, env, *args):
        self.proc = subprocess.Popen(
            [str(binary), *args],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        self.ticks: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.expect("inspector on")
        self.loop_id = int(self.expect("loop"))
        self.info = json.loads(self.expect("otlp"))

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("otlp_feed: tick "):
                self.ticks.append({**json.loads(line[len("otlp_feed: tick "):]), "at": time.monotonic()})
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, tag, timeout=60.0):
        deadline = time.monotonic() + timeout
        prefix = f"otlp_feed: {tag} "
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {tag!r} line within {timeout} s") from None
            if line is None:
                raise AssertionError(f"otlp_feed exited ({self.proc.wait()}) before {tag!r}: {self.proc.stderr.read()}")
            if line.startswith(prefix):
                return line[len(prefix):]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def otel_env(protocol, endpoint, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_EXPORTER_OTLP_HEADERS="x-tenant=t%201",
        OTEL_SERVICE_NAME="otlp-feed-test",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test,service.version=1.2.3",
        OTEL_METRIC_EXPORT_INTERVAL="500",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    env.update(extra)
    return env


# ---------------------------------------------------------------------------
# Checks shared by the feed and the real workload
# ---------------------------------------------------------------------------


def task_spans(received):
    return [s for _, _, s in received.spans() if s.name.startswith("asyncio coro-")]


def check_task_tree(spans):
    """Every task span once; parents are the creating task's span, in one trace."""
    by_task = {}
    for s in spans:
        a = attrs(s.attributes)
        tid = a["asyncio.task.id"]
        assert tid not in by_task, f"task {tid} exported twice"
        by_task[tid] = (s, a)
    span_ids = {s.span_id for s, _ in by_task.values()}
    assert len(span_ids) == len(by_task), "span ids are unique"
    for s, a in by_task.values():
        parent_task = a.get("asyncio.task.parent_id")
        if parent_task is None:
            assert s.parent_span_id == b"", a
        elif parent_task in by_task:
            parent = by_task[parent_task][0]
            assert s.parent_span_id == parent.span_id, (a, attrs(parent.attributes))
            assert s.trace_id == parent.trace_id
            assert parent.start_time_unix_nano <= s.start_time_unix_nano
        assert s.end_time_unix_nano >= s.start_time_unix_nano
        assert a["asyncio.task.state"] in ("finished", "cancelled", "exception", "timeout")
        assert isinstance(a["asyncio.task.steps"], int)
        assert isinstance(a["asyncio.task.busy_time"], float)
        assert a["asyncio.task.coroutine"] and a["asyncio.task.name"]
        if a["asyncio.task.state"] == "exception":
            assert s.status.code == s.status.STATUS_CODE_ERROR
            assert a["exception.type"]
            assert [e.name for e in s.events] == ["exception"]
        else:
            assert s.status.code == s.status.STATUS_CODE_UNSET
    return by_task


def check_metrics_match_api(req, url, loop_id):
    """The last metrics export equals the JSON API's since-start numbers."""
    api = get_json(url, f"/api/v1/loops/{loop_id}")["since_start"]
    bounds = get_json(url, "/api/v1")["bucket_bounds_ns"]
    names = {
        "asyncio.eventloop.delay": "eventloop_delay",
        "asyncio.callback.duration": "callback_duration",
        "asyncio.timer.delay": "timer_delay",
        "asyncio.task.step.duration": "task_step_duration",
        "asyncio.executor.job.duration": "executor_job_duration",
    }
    for otel, api_name in names.items():
        m = metric(req, otel)
        assert m.unit == "s"
        assert m.histogram.aggregation_temporality == 2  # cumulative
        points = [p for p in m.histogram.data_points if attrs(p.attributes)["loop"] == str(loop_id)]
        assert len(points) == 1, otel
        p, h = points[0], api["histograms"][api_name]
        assert p.count == h["count"], (otel, p.count, h["count"])
        assert abs(p.sum - h["sum_ns"] / 1e9) < 1e-9, (otel, p.sum, h["sum_ns"])
        assert list(p.bucket_counts) == h["buckets"], otel
        assert list(p.explicit_bounds) == [b / 1e9 for b in bounds]
        assert attrs(p.attributes)["thread"]
    cb = metric(req, "asyncio.callbacks")
    assert cb.sum.is_monotonic
    assert [number(p) for p in cb.sum.data_points if attrs(p.attributes)["loop"] == str(loop_id)] == [api["callbacks"]]
    it = metric(req, "asyncio.eventloop.iterations")
    assert [number(p) for p in it.sum.data_points if attrs(p.attributes)["loop"] == str(loop_id)] == [api["iterations"]]
    t = metric(req, "asyncio.eventloop.time")
    by_state = {attrs(p.attributes)["state"]: number(p) for p in t.sum.data_points if attrs(p.attributes)["loop"] == str(loop_id)}
    assert abs(by_state["active"] - api["busy_seconds"]) < 1e-9 and abs(by_state["idle"] - api["idle_seconds"]) < 1e-9
    b = metric(req, "asyncio.transport.bytes")
    by_dir = {attrs(p.attributes)["direction"]: number(p) for p in b.sum.data_points if attrs(p.attributes)["loop"] == str(loop_id)}
    assert by_dir == {"in": api["bytes_in"], "out": api["bytes_out"]}
    conns = metric(req, "asyncio.connections")
    assert conns.sum.is_monotonic and conns.unit == "{connection}"
    assert [number(p) for p in conns.sum.data_points if attrs(p.attributes)["loop"] == str(loop_id)] == [api["connections"]]
    assert metric(req, "asyncio.eventloop.utilization").gauge.data_points
    assert not metric(req, "asyncio.task.active").sum.is_monotonic


# ---------------------------------------------------------------------------
# Tests with the feed
# ---------------------------------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_feed_spans_and_metrics(feed_binary, protocol):
    rx = receiver(protocol)
    feed = Feed(feed_binary, otel_env(protocol, rx.endpoint), "--seconds", "3", "--linger", "60")
    try:
        assert feed.info["enabled"] is True
        assert feed.info["traces"]["protocol"] == protocol
        done = json.loads(feed.expect("done", timeout=90))
        assert done["flushed"] is True

        # Spans: every task once, the tree intact, attributes as documented.
        spans = task_spans(rx)
        by_task = check_task_tree(spans)
        assert len(by_task) == done["finished"], (len(by_task), done)
        roots = [s for s, a in by_task.values() if "asyncio.task.parent_id" not in a]
        assert len(roots) == 1 and roots[0].name == "asyncio coro-main"
        main = roots[0]
        assert all(s.trace_id == main.trace_id for s, _ in by_task.values()), "one trace for the tree"
        workers = [(s, a) for s, a in by_task.values() if a["asyncio.task.coroutine"] == "worker"]
        leaves = [(s, a) for s, a in by_task.values() if a["asyncio.task.coroutine"] == "leaf"]
        assert workers and len(workers) == len(leaves)
        assert all(s.parent_span_id == main.span_id for s, _ in workers)
        states = {a["asyncio.task.state"] for _, a in by_task.values()}
        assert states == {"finished", "exception", "cancelled"}, states
        s, a = workers[0]
        assert a["asyncio.task.busy_time"] > 0 and a["asyncio.task.steps"] >= 2
        assert a["thread.name"] == "FeedThread" and a["asyncio.eventloop.id"] == feed.loop_id
        assert a["code.file.path"] == "feed.py" and isinstance(a["code.line.number"], int)

        # Slow callback and stall spans, with site and stack.
        others = [s for _, _, s in rx.spans() if not s.name.startswith("asyncio coro-")]
        slow = [s for s in others if s.name == "asyncio slow_callback"]
        assert len(slow) == 1
        assert slow[0].parent_span_id == main.span_id and slow[0].trace_id == main.trace_id
        sa = attrs(slow[0].attributes)
        assert sa["asyncio.callback.site"] == "handler (feed.py:21)" and sa["code.function.name"] == "handler"
        assert abs(sa["asyncio.callback.duration"] - 0.12) < 1e-9
        stalls = [s for s in others if s.name == "asyncio stall"]
        assert len(stalls) == 1
        st = attrs(stalls[0].attributes)
        assert st["asyncio.callback.site"] == "blocker (feed.py:7)"
        assert "in blocker" in st["code.stacktrace"] and st["asyncio.stall.stack_status"] == "captured"
        assert st["asyncio.stall.duration"] >= 0.1
        assert stalls[0].status.code == stalls[0].status.STATUS_CODE_ERROR

        # Resource and scope from the standard variables; headers sent.
        res, scope, _ = rx.spans()[0]
        assert res["service.name"] == "otlp-feed-test"
        assert res["deployment.environment"] == "test" and res["service.version"] == "1.2.3"
        assert res["telemetry.sdk.language"] == "rust"
        assert scope == "glassloop"
        assert all(h.get("x-tenant") == "t 1" for h in rx.headers), rx.headers[:2]

        # Metrics: the last export equals the JSON API (the feed stopped sampling before it).
        req = rx.last_metrics()
        assert req is not None and len(rx.metrics) >= 2, "periodic exports arrived"
        assert attrs(req.resource_metrics[0].resource.attributes)["service.name"] == "otlp-feed-test"
        check_metrics_match_api(req, feed.url, feed.loop_id)
        stalls_metric = metric(req, "asyncio.eventloop.stalls")
        assert [number(p) for p in stalls_metric.sum.data_points] == [1]

        # Nothing dropped; the counts are in the API and /metrics.
        status = get_json(feed.url, "/api/v1/otlp")
        assert status["enabled"] is True
        for sig in ("traces", "metrics"):
            assert status[sig]["dropped"] == 0 and status[sig]["export_failures"] == 0, status
            assert status[sig]["exported"] > 0 and status[sig]["last_error"] is None
        assert status["traces"]["exported"] == len(rx.spans())
        assert status["tasks_unseen"] == 0 and status["spans_sampled_out"] == 0
        text = get_text(feed.url, "/metrics")
        assert 'glassloop_otlp_dropped_total{signal="traces"} 0' in text
        assert "glassloop_otlp_enabled 1" in text
        assert f'glassloop_otlp_exported_total{{signal="traces"}} {len(rx.spans())}' in text
    finally:
        feed.close()
        rx.stop()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_receiver_killed_mid_run(feed_binary, protocol):
    """A collector that goes away: no crash, flat memory, same pace, drops counted."""
    rx = receiver(protocol)
    env = otel_env(
        protocol,
        rx.endpoint,
        OTEL_BSP_MAX_QUEUE_SIZE="256",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="64",
        OTEL_EXPORTER_OTLP_TIMEOUT="1000",
        OTEL_METRIC_EXPORT_INTERVAL="300",
    )
    # 20 ms rounds of 10 workers + 10 leaves: ~1000 tasks/s to export. A control
    # thread does the loop's work without the hub: the loop's pace is measured
    # against it, second by second, so the machine's load cancels out.
    feed = Feed(feed_binary, env, "--seconds", "20", "--round-ms", "20", "--fanout", "10", "--stall-ms", "0",
                "--linger", "60", "--control", "1")
    try:
        # Kill once export is well under way: 100+ spans received and 3 paces measured.
        def paced_before(now):
            return [t for t in feed.ticks if t["at"] < now - 0.5 and t["t"] > 1.5]

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(rx.spans()) <= 100 or len(paced_before(time.monotonic())) < 3):
            time.sleep(0.1)
        assert len(rx.spans()) > 100, "exporting before the kill"
        rx.stop()
        killed = time.monotonic()
        rss = []
        while feed.proc.poll() is None and time.monotonic() - killed < 12.5:
            rss.append((time.monotonic() - killed, rss_kib(feed.proc.pid)))
            time.sleep(0.5)
        done = json.loads(feed.expect("done", timeout=60))
        assert feed.proc.poll() is None, "alive after the collector died"

        status = get_json(feed.url, "/api/v1/otlp")
        tr, me = status["traces"], status["metrics"]
        assert tr["dropped"] > 0 and tr["export_failures"] > 0, tr
        assert me["dropped"] > 0 and me["export_failures"] > 0, me
        assert tr["last_error"] and me["last_error"]
        assert tr["queued"] <= tr["queue_capacity"] == 256
        text = get_text(feed.url, "/metrics")
        dropped = {
            sig: int(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            for sig in ("traces", "metrics")
            if line.startswith(f'glassloop_otlp_dropped_total{{signal="{sig}"}}')
        }
        assert dropped == {"traces": tr["dropped"], "metrics": me["dropped"]}

        # Memory flat: after the queue filled (a few seconds), RSS stops growing.
        late = [kib for t, kib in rss if t >= 6.0]
        settled = [kib for t, kib in rss if 3.0 <= t < 6.0]
        assert late and settled, rss
        growth_kib = max(late) - max(settled)
        assert growth_kib < 8 * 1024, f"RSS grew {growth_kib} KiB after the collector died: {rss}"

        # The loop's pace: its work per second relative to the control thread's in the
        # same second, after the kill vs before (medians).
        def pace(ticks):
            rel = sorted(t["work"] / t["control"] for t in ticks if t["control"] > 0)
            return rel[len(rel) // 2] if rel else None

        before = paced_before(killed)
        after = [t for t in feed.ticks if t["at"] > killed + 1.5]
        assert len(before) >= 3 and len(after) >= 3, feed.ticks
        ratio = pace(after) / pace(before)
        print(f"\n{protocol}: loop pace (relative to the control thread) after/before collector death = {ratio:.3f}; "
              f"dropped spans {tr['dropped']}, metric points {me['dropped']}, tasks unseen {status['tasks_unseen']}; "
              f"RSS growth {growth_kib} KiB; {done}")
        assert 0.7 < ratio, ([(t["work"], t["control"]) for t in before], [(t["work"], t["control"]) for t in after])
    finally:
        feed.close()


@pytest.mark.timeout(120)
def test_slow_collector_times_out_and_is_counted(feed_binary):
    """A collector that accepts but answers late: exports time out, drops counted."""
    rx = HttpReceiver()
    rx.delay = 2.0
    env = otel_env("http/protobuf", rx.endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="300", OTEL_BSP_EXPORT_TIMEOUT="300",
                   OTEL_METRIC_EXPORT_TIMEOUT="300", OTEL_METRIC_EXPORT_INTERVAL="400")
    feed = Feed(feed_binary, env, "--seconds", "4", "--stall-ms", "0", "--linger", "60")
    try:
        feed.expect("done", timeout=60)
        status = get_json(feed.url, "/api/v1/otlp")
        for sig in ("traces", "metrics"):
            assert status[sig]["export_failures"] > 0 and status[sig]["dropped"] > 0, status
            # The error names the failure (a timeout, or the connection given up on it).
            assert status[sig]["last_error"], status[sig]
    finally:
        feed.close()
        rx.stop()


def test_disabled_sdk_starts_nothing(feed_binary):
    env = otel_env("http/protobuf", "http://127.0.0.1:9", OTEL_SDK_DISABLED="true")
    feed = Feed(feed_binary, env, "--seconds", "1", "--stall-ms", "0", "--linger", "30")
    try:
        assert feed.info == {"enabled": False, "traces": {"protocol": "http/protobuf", "endpoint": "http://127.0.0.1:9/v1/traces"},
                             "metrics": {"protocol": "http/protobuf", "endpoint": "http://127.0.0.1:9/v1/metrics"}}
        feed.expect("done")
        assert get_json(feed.url, "/api/v1/otlp")["enabled"] is False
        assert "glassloop_otlp_enabled 0" in get_text(feed.url, "/metrics")
    finally:
        feed.close()


def test_bad_configuration_is_refused_with_the_variable_named(feed_binary):
    env = otel_env("http/json", "http://127.0.0.1:9")
    done = subprocess.run([str(feed_binary), "--seconds", "0.5"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in done.stderr and "http/json" in done.stderr


# ---------------------------------------------------------------------------
# A real glassloop workload (once the Python hook is wired)
# ---------------------------------------------------------------------------

WORKLOAD = textwrap.dedent(
    """
    import asyncio, json, sys, urllib.request
    import glassloop

    async def leaf(i):
        await asyncio.sleep(0.01)
        if i % 3 == 1:
            raise ValueError(i)
        return i

    async def worker(i):
        t = asyncio.create_task(leaf(i), name=f"leaf-{i}")
        try:
            await t
        except ValueError:
            pass
        await asyncio.sleep(0.01)

    async def echo(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    async def main():
        for r in range(5):
            await asyncio.gather(*(asyncio.create_task(worker(r * 10 + i), name=f"worker-{r * 10 + i}") for i in range(4)))
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        for _ in range(2):  # 4 connections: 2 made, 2 accepted
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
            writer.write(b"ping")
            assert await reader.read() == b"ping"
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        c = asyncio.create_task(asyncio.sleep(10), name="cancelled-one")
        await asyncio.sleep(0)
        c.cancel()
        await asyncio.sleep(1.5)  # a table publication after the last task finished

    glassloop.run(main(), otlp=True, inspect="127.0.0.1:0")
    print("WORKLOAD done", flush=True)
    """
)


def glassloop_has_otlp():
    try:
        import glassloop
    except ImportError:
        return False
    return "otlp" in pyinspect.signature(glassloop.run).parameters or "otlp" in pyinspect.signature(
        glassloop.new_event_loop
    ).parameters


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_real_glassloop_workload(tmp_path, protocol):
    if not glassloop_has_otlp():
        pytest.skip("glassloop.run(..., otlp=...) is not wired yet")
    rx = receiver(protocol)
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    env = otel_env(protocol, rx.endpoint, OTEL_METRIC_EXPORT_INTERVAL="300")
    try:
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=90, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-4000:]
        assert "WORKLOAD done" in done.stdout
        spans = task_spans(rx)
        by_task = check_task_tree(spans)
        coros = [a["asyncio.task.coroutine"] for _, a in by_task.values()]
        assert sum(c.endswith("worker") for c in coros) == 20, coros
        assert sum(c.endswith("leaf") for c in coros) == 20
        for s, a in by_task.values():
            if a["asyncio.task.coroutine"].endswith("leaf"):
                parent = by_task[a["asyncio.task.parent_id"]][1]
                assert parent["asyncio.task.coroutine"].endswith("worker")
        states = [a["asyncio.task.state"] for _, a in by_task.values()]
        assert states.count("exception") >= 6 and "cancelled" in states
        assert rx.last_metrics() is not None
        assert metric(rx.last_metrics(), "asyncio.callback.duration").histogram.data_points[0].count > 0
        assert [number(p) for p in metric(rx.last_metrics(), "asyncio.connections").sum.data_points] == [4]
    finally:
        rx.stop()


# ---------------------------------------------------------------------------
# https endpoints
# ---------------------------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_https_endpoint_with_a_custom_ca(feed_binary, protocol, tmp_path):
    """OTEL_EXPORTER_OTLP_ENDPOINT=https://… with OTEL_EXPORTER_OTLP_CERTIFICATE: the
    same spans and points over TLS; a CA the server does not chain to delivers nothing."""
    certs = make_server_certs(tmp_path / "tls")
    rx = receiver(protocol, certs)
    assert rx.endpoint.startswith("https://")
    try:
        env = otel_env(protocol, rx.endpoint, OTEL_EXPORTER_OTLP_CERTIFICATE=str(certs.ca))
        feed = Feed(feed_binary, env, "--seconds", "2", "--stall-ms", "0", "--linger", "60")
        try:
            assert feed.info["traces"]["endpoint"].startswith("https://")
            done = json.loads(feed.expect("done", timeout=90))
            assert done["flushed"] is True
            by_task = check_task_tree(task_spans(rx))
            assert len(by_task) == done["finished"]
            check_metrics_match_api(rx.last_metrics(), feed.url, feed.loop_id)
            status = get_json(feed.url, "/api/v1/otlp")
            for sig in ("traces", "metrics"):
                assert status[sig]["exported"] > 0 and status[sig]["export_failures"] == 0, status
            assert all(h.get("x-tenant") == "t 1" for h in rx.headers)
        finally:
            feed.close()

        # The server's certificate does not chain to this CA: the TLS client refuses it.
        other = make_server_certs(tmp_path / "other", cn="another test CA")
        got = (len(rx.traces), len(rx.metrics))
        env = otel_env(protocol, rx.endpoint, OTEL_EXPORTER_OTLP_CERTIFICATE=str(other.ca), OTEL_EXPORTER_OTLP_TIMEOUT="2000")
        feed = Feed(feed_binary, env, "--seconds", "1.5", "--stall-ms", "0", "--linger", "60")
        try:
            feed.expect("done", timeout=90)
            status = get_json(feed.url, "/api/v1/otlp")
            for sig in ("traces", "metrics"):
                s = status[sig]
                assert s["exported"] == 0 and s["export_failures"] > 0 and s["dropped"] > 0, s
                assert "certificate" in s["last_error"], s  # the cause, not just "network error"
            assert (len(rx.traces), len(rx.metrics)) == got, "nothing reached the receiver"
        finally:
            feed.close()
    finally:
        rx.stop()


def test_unreadable_certificate_is_refused_with_the_variable_named(feed_binary, tmp_path):
    env = otel_env("grpc", "https://127.0.0.1:9", OTEL_EXPORTER_OTLP_CERTIFICATE=str(tmp_path / "missing.pem"))
    done = subprocess.run([str(feed_binary), "--seconds", "0.5"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "OTEL_EXPORTER_OTLP_CERTIFICATE" in done.stderr and "missing.pem" in done.stderr


# ---------------------------------------------------------------------------
# Task spans join the application's OpenTelemetry trace
# ---------------------------------------------------------------------------

APP_TRACE_WORKLOAD = textwrap.dedent(
    """
    import asyncio, contextvars, json
    import glassloop
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    trace.set_tracer_provider(TracerProvider())
    tracer = trace.get_tracer("app")
    unsampling = TracerProvider(sampler=ALWAYS_OFF).get_tracer("app")
    ids = {}

    def ids_of(span):
        c = span.get_span_context()
        return [format(c.trace_id, "032x"), format(c.span_id, "016x")]

    async def leaf():
        await asyncio.sleep(0.01)

    async def handler(i):
        await asyncio.create_task(leaf(), name=f"leaf-{i}")
        with tracer.start_as_current_span(f"db-{i}") as db:
            ids[f"db-{i}"] = ids_of(db)
            await asyncio.create_task(leaf(), name=f"query-{i}")

    async def main():
        loop = asyncio.get_running_loop()
        with tracer.start_as_current_span("request") as request:
            ids["request"] = ids_of(request)
            await asyncio.gather(*(asyncio.create_task(handler(i), name=f"handler-{i}") for i in range(3)))
            inside = contextvars.copy_context()
        await asyncio.create_task(leaf(), name="plain")
        await asyncio.create_task(leaf(), name="given-context", context=inside)
        with unsampling.start_as_current_span("dropped") as dropped:
            ids["dropped"] = ids_of(dropped)
            await asyncio.create_task(leaf(), name="unsampled")
        loop.set_task_factory(lambda loop, coro, **kw: asyncio.Task(coro, loop=loop, **kw))
        with tracer.start_as_current_span("factory") as factory:
            ids["factory"] = ids_of(factory)
            await asyncio.create_task(leaf(), name="from-factory")
        loop.set_task_factory(None)
        ids["rows"] = {r["name"]: [r["trace_id"], r["parent_span_id"], r["trace_flags"]]
                       for r in loop.tasks() if r["name"] in ("handler-0", "plain", "unsampled")}
        await asyncio.sleep(1.5)  # a table publication after the last task finished

    glassloop.run(main(), otlp=True)
    print("IDS " + json.dumps(ids), flush=True)
    """
)


def run_script(tmp_path, source, env, timeout=90):
    script = tmp_path / "workload.py"
    script.write_text(source)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_task_spans_join_the_applications_trace(tmp_path, protocol):
    pytest.importorskip("opentelemetry.sdk.trace")
    if not glassloop_has_otlp():
        pytest.skip("glassloop.run(..., otlp=...) is not wired yet")
    rx = receiver(protocol)
    try:
        out = run_script(tmp_path, APP_TRACE_WORKLOAD, otel_env(protocol, rx.endpoint))
        ids = json.loads(next(l for l in out.splitlines() if l.startswith("IDS "))[4:])
        by_name = {}
        for s in task_spans(rx):
            a = attrs(s.attributes)
            by_name[a["asyncio.task.name"]] = (s, a)
        trace_of = lambda name: by_name[name][0].trace_id.hex()
        parent_of = lambda name: by_name[name][0].parent_span_id.hex()
        span_of = lambda name: by_name[name][0].span_id.hex()
        request_trace, request_span = ids["request"]

        main = next(name for name, (_, a) in by_name.items() if a["asyncio.task.coroutine"].endswith("main"))
        assert parent_of(main) == "", "made outside any application span: a root"
        assert trace_of(main) != request_trace
        for i in range(3):
            # Made inside `request`: its child, linked to the task that made it.
            h = by_name[f"handler-{i}"][0]
            assert (trace_of(f"handler-{i}"), parent_of(f"handler-{i}")) == (request_trace, request_span)
            assert [l.span_id.hex() for l in h.links] == [span_of(main)]
            # Made by the handler with `request` still current: the handler is the narrower parent.
            assert (trace_of(f"leaf-{i}"), parent_of(f"leaf-{i}")) == (request_trace, span_of(f"handler-{i}"))
            # Made inside `db-i`, which the handler opened: db-i's child.
            assert ids[f"db-{i}"][0] == request_trace
            assert (trace_of(f"query-{i}"), parent_of(f"query-{i}")) == tuple(ids[f"db-{i}"])
        # Outside any span: the task tree, in the main task's trace.
        assert (trace_of("plain"), parent_of("plain")) == (trace_of(main), span_of(main))
        # create_task(context=...): the span current in that context.
        assert (trace_of("given-context"), parent_of("given-context")) == (request_trace, request_span)
        # A task factory's task joins too.
        assert (trace_of("from-factory"), parent_of("from-factory")) == tuple(ids["factory"])
        # The application did not sample `dropped`: neither does the default (parent-based) sampler.
        assert "unsampled" not in by_name
        # The task table carries the context (loop.tasks(), as the JSON API's TaskRecord).
        # (trace_flags: W3C, bit 0 = sampled; newer SDKs also set bit 1, a random trace id.)
        trace_id, span_id, flags = ids["rows"]["handler-0"]
        assert [trace_id, span_id, flags & 1] == [request_trace, request_span, 1]
        trace_id, span_id, flags = ids["rows"]["unsampled"]
        assert [trace_id, span_id, flags & 1] == ids["dropped"] + [0]
        assert ids["rows"]["plain"] == [None, None, 0]
    finally:
        rx.stop()


NO_EXPORT_WORKLOAD = textwrap.dedent(
    """
    import asyncio, json, sys
    import glassloop

    async def main():
        loop = asyncio.get_running_loop()
        if sys.argv[1] == "with-otel":
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            trace.set_tracer_provider(TracerProvider())
            with trace.get_tracer("app").start_as_current_span("request"):
                await asyncio.create_task(asyncio.sleep(0), name="child")
        else:
            await asyncio.create_task(asyncio.sleep(0), name="child")
        row = next(r for r in loop.tasks() if r["name"] == "child")
        print("ROW " + json.dumps([row["trace_id"], row["parent_span_id"], "opentelemetry.trace" in sys.modules]))

    glassloop.run(main(), otlp=sys.argv[2] == "on")
    """
)


@pytest.mark.timeout(120)
def test_application_context_is_read_only_when_exporting_and_never_imported(tmp_path):
    pytest.importorskip("opentelemetry.sdk.trace")
    if not glassloop_has_otlp():
        pytest.skip("glassloop.run(..., otlp=...) is not wired yet")
    rx = HttpReceiver()
    try:
        env = otel_env("http/protobuf", rx.endpoint)

        def row(*args):
            script = tmp_path / "no_export.py"
            script.write_text(NO_EXPORT_WORKLOAD)
            done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                                  timeout=90, cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-4000:]
            return json.loads(next(l for l in done.stdout.splitlines() if l.startswith("ROW "))[4:])

        # Exporting, application without OpenTelemetry: glassloop does not import it.
        assert row("without-otel", "on") == [None, None, False]
        # The application uses OpenTelemetry but nothing is exported: nothing is read.
        assert row("with-otel", "off") == [None, None, True]
        # Both: read.
        trace_id, span_id, imported = row("with-otel", "on")
        assert len(trace_id) == 32 and len(span_id) == 16 and imported
    finally:
        rx.stop()
