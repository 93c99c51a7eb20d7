"""The docker-compose stack, checked without a Docker engine.

- ``docker-compose config`` (Debian's docker-compose) validates docker-compose.yml,
  with and without the ``bench`` profile; every file it mounts exists; the demo is
  configured only through standard ``OTEL_*`` variables.
- The Collector, Prometheus and Grafana provisioning files are consistent with each
  other (pipelines name defined components, scrape targets are compose services,
  the dashboard file is where the provider looks).
- The Grafana dashboard is valid JSON, and every metric its queries name exists in
  the live ``/metrics`` of a glassloop demo process started here
  (``python -m glassloop --inspect 127.0.0.1:PORT examples/demo.py``). Where
  Prometheus is installed, it scrapes that demo and every dashboard query (Grafana's
  variables filled in) must parse and return series; ``promtool`` checks
  ``deploy/prometheus/prometheus.yml``.

Without Debian's docker-compose the compose checks skip (set
``GLASSLOOP_REQUIRE_COMPOSE=1`` to make that a failure, as CI should).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "glassloop.json"
METRIC = re.compile(r"\b((?:asyncio|glassloop)_[a-z0-9_]+)\b")


def docker_compose():
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("GLASSLOOP_REQUIRE_COMPOSE") == "1":
            pytest.fail("docker-compose not installed (apt-get install docker-compose)")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    return exe


def load_yaml(path_or_text):
    """YAML → Python, with PyYAML if this interpreter has it, else with the
    interpreter Debian's docker-compose runs on (which always has it)."""
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    try:
        import yaml

        return yaml.safe_load(text)
    except ImportError:
        pass
    exe = docker_compose()
    first = Path(exe).read_text(errors="replace").splitlines()[0]
    if not first.startswith("#!"):
        pytest.skip("no YAML parser available")
    interpreter = first[2:].strip().split()
    out = subprocess.run(
        [*interpreter, "-c", "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def compose(*args, env=None):
    return subprocess.run(
        [docker_compose(), "-f", str(COMPOSE), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_compose_file_validates():
    for args in (["config", "-q"], ["--profile", "bench", "config", "-q"]):
        done = compose(*args)
        assert done.returncode == 0, done.stderr
    services = compose("--profile", "bench", "config", "--services").stdout.split()
    assert set(services) == {"demo", "otel-collector", "jaeger", "prometheus", "grafana", "bench"}


def test_compose_services_are_wired():
    done = compose("--profile", "bench", "config", env={"GLASSLOOP_TOKEN": "t0ken"})
    assert done.returncode == 0, done.stderr
    cfg = load_yaml(done.stdout)
    services = cfg["services"]

    demo = services["demo"]
    env = demo["environment"]
    assert env["GLASSLOOP_TOKEN"] == "t0ken"
    assert services["prometheus"]["environment"]["GLASSLOOP_TOKEN"] == "t0ken"
    otel = {k for k in env if k.startswith("OTEL_")}
    assert {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"} <= otel
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector:")
    assert not {k for k in env if k not in otel and k != "GLASSLOOP_TOKEN"}, "configured only by OTEL_* (and the token)"
    cmd = demo["command"]
    assert cmd[:4] == ["python", "-m", "glassloop", "--inspect"] and "examples/demo.py" in cmd
    assert float(cmd[cmd.index("--seconds") + 1]) >= 86400
    assert demo["build"]["context"] == str(ROOT) or demo["build"]["context"] in (".", "./")
    assert services["bench"]["profiles"] == ["bench"]
    assert "benches/compare.py" in services["bench"]["command"]

    # Every published port is on loopback; every bind mount exists in the repo.
    for name, svc in services.items():
        for port in svc.get("ports", []):
            text = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published')}"
            assert str(text).startswith("127.0.0.1:"), (name, port)
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source")
            # Inputs must exist in the repo; benches/results is where the bench service
            # writes (git-ignored, created by the first run).
            if source and source.startswith(("/", ".")) and not str(source).rstrip("/").endswith("benches/results"):
                assert (ROOT / source).exists() or Path(source).exists(), (name, source)

    # The Dockerfile builds from this repo with maturin and runs the demo.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "maturin build" in dockerfile and "COPY loop-core" in dockerfile and "COPY inspector" in dockerfile
    assert "examples/demo.py" in dockerfile


def test_collector_prometheus_and_grafana_configs_agree(tmp_path):
    col = load_yaml(ROOT / "deploy" / "otel-collector" / "config.yaml")
    for name, pipe in col["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipe.get(kind, []):
                assert component in col[kind], f"pipeline {name} names undefined {kind[:-1]} {component}"
    assert "otlp" in col["service"]["pipelines"]["traces"]["receivers"]
    assert col["exporters"]["otlp/jaeger"]["endpoint"].startswith("jaeger:")
    prom_port = col["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]

    prom = load_yaml(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    targets = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]] for j in prom["scrape_configs"]}
    assert targets["glassloop"] == ["demo:7070"]
    assert targets["otel-collector"] == [f"otel-collector:{prom_port}"]
    glassloop_job = next(j for j in prom["scrape_configs"] if j["job_name"] == "glassloop")
    assert glassloop_job["authorization"]["credentials_file"]

    promtool = shutil.which("promtool")
    if promtool:  # Prometheus's own check, with the token file the container writes
        token = tmp_path / "token"
        token.write_text("t0ken")
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text().replace("/tmp/glassloop-token", str(token)))
        check = subprocess.run([promtool, "check", "config", str(cfg)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr

    ds = load_yaml(ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "datasources.yaml")
    uids = {d["uid"]: d for d in ds["datasources"]}
    assert uids["prometheus"]["url"] == "http://prometheus:9090" and uids["jaeger"]["type"] == "jaeger"
    dash = load_yaml(ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml")
    assert dash["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def dashboard_metrics():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] == "glassloop" and d["panels"]
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(d["panels"])
    for var in d["templating"]["list"]:
        q = var.get("query")
        if isinstance(q, dict):
            exprs.append(q.get("query", ""))
    assert exprs
    for e in exprs:
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e
    names = set()
    for e in exprs:
        names.update(METRIC.findall(e))
    return names, exprs


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grafana_to_promql(expr):
    """A dashboard query as Prometheus would get it from Grafana, for the job "glassloop"
    (a variable's `label_values(SELECTOR, label)` asks for SELECTOR's series)."""
    m = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr.strip())
    if m:
        expr = m.group(1)
    return (
        expr.replace("$__rate_interval", "10s")
        .replace("$__range", "1m")
        .replace('"$job"', '"glassloop"')
        .replace('"$loop"', '".*"')
    )


def evaluate_with_prometheus(port, exprs, tmp_path):
    """Scrape the demo with a real Prometheus (when installed) and run every
    dashboard query: each must be valid PromQL and return series."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        return
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: glassloop\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    web = free_port()
    proc = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        def query(q):
            url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as err:  # 400: the query is not valid PromQL
                return {"status": "error", "http": err.code, "body": err.read().decode(errors="replace")}

        deadline = time.monotonic() + 30
        empty = {}
        while time.monotonic() < deadline:
            empty = {}
            try:
                for e in exprs:
                    res = query(grafana_to_promql(e))
                    assert res["status"] == "success", (grafana_to_promql(e), res)
                    if not res["data"]["result"]:
                        empty[e] = res
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.5)
                continue
            if not empty:
                return
            time.sleep(1)
        raise AssertionError(f"dashboard queries that returned nothing from a scraped demo: {list(empty)}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.timeout(120)
def test_dashboard_queries_name_metrics_a_live_demo_exports(tmp_path):
    names, exprs = dashboard_metrics()
    assert len(names) >= 20, names
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GLASSLOOP_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "glassloop", "--inspect", f"127.0.0.1:{port}", "examples/demo.py", "--seconds", "45"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        series: set[str] = set()
        text = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            series = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
            # Gauges from samples and the transports table appear after the first ones.
            if {"asyncio_eventloop_utilization", "asyncio_transport_active", "asyncio_executor_jobs"} <= series:
                break
            time.sleep(0.3)
        assert series, f"no /metrics from the demo: {proc.stderr.read() if proc.poll() is not None else ''}"
        missing = []
        for name in sorted(names):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in series and not (base != name and f"{base}_bucket" in series):
                missing.append(name)
        assert not missing, f"dashboard queries metrics /metrics does not have: {missing}\n{text[:3000]}"
        evaluate_with_prometheus(port, exprs, tmp_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
