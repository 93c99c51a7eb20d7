"""Network benchmarks: event loops side by side under the Rust load generator (echo)
or wrk (HTTP).

    python3 benches/net_compare.py --quick
    python3 benches/net_compare.py --workloads protocol,streams,sock --sizes 1KiB,64KiB \
        --conns 10,100 --reps 3 --duration 3 --warmup 1 --markdown benches/results/net.md

For each cell (workload, message size, connections) and each repetition, every loop
runs in turn (A B C D A B C D ...), each measurement with a fresh server process
pinned to one CPU and the load generator (benches/loadgen, built on first use)
pinned to another. The pure-Rust echo server (echo-ceiling) runs in the same
rotation as the reference ceiling. Prints a Markdown table: requests/s (median and
min-max), ratios against asyncio and the better of uvloop/rloop, % of the ceiling,
p99 latency, server CPU per request, and the load generator's own CPU use.
The ``http`` workload (aiohttp hello-world, benches/servers/http_hello.py) is driven
by wrk instead (benches/wrk.py): one cell per connection count, sizes do not apply,
durations rounded to whole seconds; the Rust ceiling does not speak HTTP.
Exit status 1 if any measurement failed (errors, mismatched bytes, a dead server).
"""

import argparse
import json
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import loopspec
import report
import wrk

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVERS = HERE / "servers"
CRATE = HERE / "loadgen"
CEILING = "rust-ceiling"
DEFAULT_LOOPS = ("asyncio:new_event_loop,uvloop:new_event_loop,rloop:new_event_loop,"
                 "glassloop:new_event_loop,glassloop:new_event_loop?record=false")
FAST_PEERS = report.FAST_PEERS
MAX_UDP = 65_507

#: workload -> (server script, transport)
WORKLOADS = {
    "protocol": ("protocol_echo.py", "tcp"),
    "buffered": ("buffered_echo.py", "tcp"),
    "streams": ("streams_echo.py", "tcp"),
    "sock": ("sock_echo.py", "tcp"),
    "unix": ("protocol_echo.py", "unix"),
    "udp": ("udp_echo.py", "udp"),
    "tls": ("tls_echo.py", "tls"),
    "buffered-unix": ("buffered_echo.py", "unix"),
    "streams-unix": ("streams_echo.py", "unix"),
    "sock-unix": ("sock_echo.py", "unix"),
    "http": ("http_hello.py", "http"),
}
#: Workloads with a fixed request (no --sizes): driven by wrk, one cell per conns.
SIZELESS = {"http"}
#: What http_hello.py answers to GET /.
HTTP_BODY = b"Hello, World!"
DEFAULT_WORKLOADS = "protocol,buffered,streams,sock,unix,udp,tls"
#: Neighbours using more than this many CPUs during a measurement make it "noisy".
NOISY_OTHER_CPUS = 0.25
#: ... or the server or load generator waited for its CPU this fraction of the time.
NOISY_WAIT = 0.05
NOISE_LIMITS = argparse.Namespace(max_other=NOISY_OTHER_CPUS, max_wait=NOISY_WAIT)


def parse_size(text):
    match = re.fullmatch(r"\s*(\d+)\s*(B|KiB|K|k|KB|MiB|M)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 100, 1KiB, 64KiB)")
    scale = {None: 1, "B": 1, "K": 1024, "k": 1024, "KB": 1024, "KiB": 1024, "M": 1 << 20,
             "MiB": 1 << 20}[match.group(2)]
    return int(match.group(1)) * scale


def size_name(size):
    if size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def csv(text, convert=str):
    return [convert(part.strip()) for part in text.split(",") if part.strip()]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", default=DEFAULT_LOOPS,
                        help="comma-separated factory paths, module:callable[?k=v&...]")
    parser.add_argument("--workloads", default=None,
                        help=f"comma-separated, from: {', '.join(WORKLOADS)} (default: {DEFAULT_WORKLOADS})")
    parser.add_argument("--sizes", default=None, help="message sizes (default 100,1KiB,64KiB)")
    parser.add_argument("--conns", default=None, help="connection counts (default 1,10,100)")
    parser.add_argument("--reps", type=int, default=None, help="rounds (default 3)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per run (default 3)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per run (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: every workload at 1 KiB x 10 conns, 1 round of 0.4 s")
    parser.add_argument("--max-other", type=float, default=0.5, metavar="CPUS",
                        help="redo a measurement during which other processes used more than "
                             "this many CPUs (default 0.5)")
    parser.add_argument("--max-wait", type=float, default=0.1, metavar="FRACTION",
                        help="redo a measurement during which the server or the load generator "
                             "spent more than this fraction of the time runnable but waiting for "
                             "a CPU (default 0.1)")
    parser.add_argument("--retries", type=int, default=None,
                        help="at most this many redos per measurement (default 2; 0 with --quick)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the pure-Rust server")
    parser.add_argument("--server-cpu", type=int, default=None, help="CPU for the server (default: first)")
    parser.add_argument("--loadgen-cpu", type=int, default=None,
                        help="CPU for the load generator (default: second)")
    parser.add_argument("--json", metavar="FILE", help="save raw results here")
    parser.add_argument("--markdown", metavar="FILE", help="save the table with a header")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the servers")
    parser.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", str(REPO / "target")),
                        help="cargo target directory holding release/loadgen and release/echo-ceiling")
    args = parser.parse_args(argv)

    quick = args.quick
    args.workloads = csv(args.workloads or DEFAULT_WORKLOADS)
    for name in args.workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    try:
        args.sizes = csv(args.sizes or ("1KiB" if quick else "100,1KiB,64KiB"), parse_size)
        args.conns = csv(args.conns or ("10" if quick else "1,10,100"), int)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))
    args.reps = args.reps or (1 if quick else 3)
    if args.retries is None:
        args.retries = 0 if quick else 2
    args.duration = args.duration or (0.4 if quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (0.1 if quick else 1.0)
    if args.reps < 1 or min(args.sizes) < 1 or min(args.conns) < 1 or args.duration <= 0:
        parser.error("--reps, --sizes, --conns and --duration must be positive")
    args.specs = [loopspec.parse(text) for text in csv(args.loops)]
    args.wrk = None
    if SIZELESS & set(args.workloads):
        args.wrk = wrk.available()
        if args.wrk is None:
            parser.error("the http workload needs wrk on PATH (Debian: apt-get install wrk)")

    cpus = sorted(os.sched_getaffinity(0))
    if args.server_cpu is None:
        args.server_cpu = cpus[0]
    if args.loadgen_cpu is None:
        others = [c for c in cpus if c != args.server_cpu]
        args.loadgen_cpu = others[0] if others else None
    if args.loadgen_cpu == args.server_cpu:
        print("warning: server and load generator share one CPU", file=sys.stderr)
    return args


# ---------------------------------------------------------------- the Rust binaries

def binaries(target_dir):
    """Paths of loadgen and echo-ceiling, building them first if missing or stale."""
    release = Path(target_dir) / "release"
    loadgen, ceiling = release / "loadgen", release / "echo-ceiling"
    sources = [CRATE / "Cargo.toml", *(CRATE / "src").rglob("*.rs")]
    newest = max(p.stat().st_mtime for p in sources)
    if not all(b.exists() and b.stat().st_mtime >= newest for b in (loadgen, ceiling)):
        print("building the load generator: cargo build --release -p glassloop-loadgen",
              file=sys.stderr, flush=True)
        env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
        subprocess.run(["cargo", "build", "--release", "-p", "glassloop-loadgen"],
                       cwd=REPO, env=env, check=True)
    return loadgen, ceiling


# ---------------------------------------------------------------- one measurement

def read_line(proc, timeout):
    """The server's first stdout line, or None if it exits or says nothing in time."""
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            data += chunk
    return data.split(b"\n", 1)[0].decode().strip()


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def busy_cpus(interval=0.5):
    """CPUs in use on the whole machine over ``interval`` seconds (from /proc/stat)."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
        return ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    before = sample()
    time.sleep(interval)
    return (sample() - before) / os.sysconf("SC_CLK_TCK") / interval


def disturbed(record, args):
    """Why this measurement says more about the neighbours than the loop, or ''."""
    if (record.get("other_cpus") or 0) > args.max_other:
        return f"other processes used {record['other_cpus']:.2f} CPU"
    if (record.get("runq_wait") or 0) > args.max_wait:
        return f"waited for a CPU {100 * record['runq_wait']:.0f}% of the time"
    return ""


def wait_quiet(limit, max_wait):
    """Wait (at most ``max_wait`` s) until other processes use at most ``limit`` CPUs."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        if busy_cpus() <= limit:
            return


def tail(text, lines=3):
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


TIMED_OUT = "load generator did not finish"


def loadgen_command(loadgen, transport, address, size, conns, duration, warmup):
    """The benches/loadgen command line for one run against ``address`` (JSON output)."""
    flag = {"tcp": "--addr", "tls": "--addr", "unix": "--unix", "udp": "--udp"}[transport]
    return [str(loadgen), flag, address, *(["--tls"] if transport == "tls" else []),
            "--conns", str(conns), "--size", str(size),
            "--duration", str(duration), "--warmup", str(warmup), "--json"]


def run_loadgen(args, loadgen, transport, address, size, conns, server_pid):
    """benches/loadgen against ``address``: (its JSON result, '') or (None, why not)."""
    lg = loadgen_command(loadgen, transport, address, size, conns, args.duration, args.warmup)
    lg += ["--server-pid", str(server_pid)]
    if args.loadgen_cpu is not None:
        lg += ["--pin-cpu", str(args.loadgen_cpu)]
    try:
        done = subprocess.run(lg, capture_output=True, text=True,
                              timeout=args.duration + args.warmup + 60)
    except subprocess.TimeoutExpired:
        return None, TIMED_OUT
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return None, f"load generator: {tail(done.stderr) or f'exit {done.returncode}'}"
    return json.loads(lines[-1]), ""


def measure(args, loadgen, ceiling, label, spec, workload, size, conns, tmpdir):
    script, transport = WORKLOADS[workload]
    if transport == "udp":
        size = min(size, MAX_UDP)
    sock_path = os.path.join(tmpdir, "echo.sock")
    if spec is None and transport in ("tls", "http"):
        return {"label": label, "workload": workload, "size": size, "conns": conns, "ok": False,
                "unsupported": True, "error": f"the pure-Rust ceiling has no {transport.upper()}"}
    if spec is None:  # the pure-Rust ceiling
        command = [str(ceiling)]
        command += {"tcp": ["--addr", "127.0.0.1:0"], "unix": ["--unix", sock_path],
                    "udp": ["--udp", "127.0.0.1:0"]}[transport]
    else:
        command = [args.python, str(SERVERS / script), "--loop", spec.text]
        command += ["--unix", sock_path] if transport == "unix" else ["--addr", "127.0.0.1:0"]
    cpu = args.server_cpu
    record = {"label": label, "workload": workload, "size": size, "conns": conns, "ok": False}
    with tempfile.TemporaryFile(mode="w+") as errfile:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errfile, cwd=SERVERS,
                                preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
        try:
            address = read_line(proc, 30)
            if address is None:
                stop(proc)
                errfile.seek(0)
                err = errfile.read()
                record["server_stderr"] = err[-4000:]
                if "NotImplementedError" in err:
                    record.update(unsupported=True, error=f"not supported by this loop: {tail(err, 2)}")
                else:
                    record["error"] = f"server did not start: {tail(err) or f'exit {proc.returncode}'}"
                return record
            if transport == "http":
                host, _, port = address.rpartition(":")
                result, why = wrk.run(host.strip("[]"), int(port), conns, args.duration, args.warmup,
                                      args.loadgen_cpu, proc.pid, HTTP_BODY)
            else:
                result, why = run_loadgen(args, loadgen, transport, address, size, conns, proc.pid)
                if why == TIMED_OUT:
                    record["error"] = why
                    return record
            alive = proc.poll() is None
        finally:
            stop(proc)
        errfile.seek(0)
        err = errfile.read()
    if result is None:
        # wrk only sees symptoms (a refused request, a timeout): add the server's side.
        server_side = f"; server stderr: {tail(err, 2)}" if transport == "http" and err.strip() else ""
        record["error"] = why + server_side
        return record
    elapsed = result["duration_s"] or 1
    waits = [(result.get("server") or {}).get("runq_wait_s"), result["loadgen_cpu"].get("runq_wait_s")]
    record["runq_wait"] = max((w or 0) for w in waits) / elapsed
    record.update(result=result, rps=result["rps"],
                  p50=(result.get("latency_us") or {}).get("p50"),
                  p99=(result.get("latency_us") or {}).get("p99"),
                  cpu_us=(result.get("server") or {}).get("cpu_us_per_req"),
                  loadgen_util=result["loadgen_cpu"]["util"],
                  other_cpus=(result.get("machine") or {}).get("other_cpus"))
    if err.strip():
        record["server_stderr"] = err[-4000:]
    if not alive:
        record["error"] = f"server died during the run: {tail(err) or 'no output'}"
    elif result["errors"]:
        record["error"] = f"{result['errors']} error(s) {result['error_kinds']}: {result['first_error']}"
    elif result["stalled"]:
        record["error"] = f"{result['stalled']} connection(s) stalled (still waiting at the end, for over 1 s and twice the slowest echo)"
    elif result["requests"] == 0:
        record["error"] = "no request completed"
    else:
        record["ok"] = True
    return record


# ---------------------------------------------------------------- summary and table

def summarize(runs, cells, labels):
    table = {}
    for cell in cells:
        for label in labels:
            mine = [r for r in runs if (r["workload"], r["size_asked"], r["conns"]) == cell
                    and r["label"] == label]
            good = [r for r in mine if r.get("ok")]
            row = {"values": [r["rps"] for r in good], "failed": len(mine) - len(good),
                   "unsupported": bool(mine) and all(r.get("unsupported") for r in mine)}
            if good:
                values = row["values"]
                row.update(median=statistics.median(values), min=min(values), max=max(values))
                for key in ("p50", "p99", "cpu_us", "loadgen_util", "other_cpus"):
                    xs = [r[key] for r in good if r.get(key) is not None]
                    row[key] = statistics.median(xs) if xs else None
            table[cell, label] = row
    return table


def fmt(value, digits=3):
    return "–" if value is None else f"{value:.{digits}g}"


def over(a, b, digits=2):
    return "–" if a is None or not b else f"{a / b:.{digits}f}"


def cell_name(cell):
    workload, size, conns = cell
    if size is None:
        return f"{workload} ×{conns}"
    shown = min(size, MAX_UDP) if WORKLOADS[workload][1] == "udp" else size
    text = size_name(shown) if shown == size else f"{shown} B"
    return f"{workload} {text} ×{conns}"


def table_markdown(table, cells, labels, args):
    lines = [
        "| cell | loop | req/s | min–max | × asyncio | × best peer | % ceiling | p99 µs "
        "| p99 × best | server CPU µs/req | CPU/req × best | loadgen CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        rows = {label: table[cell, label] for label in labels}
        peers = [p for p in FAST_PEERS if "median" in rows.get(p, {})]
        best = max(peers, key=lambda p: rows[p]["median"]) if peers else None
        lean = [p for p in peers if rows[p].get("cpu_us")]
        leanest = min(lean, key=lambda p: rows[p]["cpu_us"]) if lean else None
        ceiling = rows.get(CEILING, {}).get("median")
        for label, row in rows.items():
            name = cell_name(cell)
            if "median" not in row:
                state = "unsupported" if row["unsupported"] else "FAILED"
                lines.append(f"| {name} | {label} | {state} |" + " |" * 10)
                continue
            failed = f" ({row['failed']} failed)" if row["failed"] else ""
            best_cell = f"{report.ratio(row, rows[best])} ({best})" if best else "–"
            p99_best = f"{over(row['p99'], rows[best]['p99'])} ({best})" if best else "–"
            cpu_best = (f"{over(row['cpu_us'], rows[leanest]['cpu_us'])} ({leanest})"
                        if leanest and row.get("cpu_us") else "–")
            pct = f"{100 * row['median'] / ceiling:.0f}%" if ceiling else "–"
            lg = f"{100 * row['loadgen_util']:.0f}%" if row.get("loadgen_util") is not None else "–"
            lines.append(
                f"| {name} | {label} | {report.human(row['median'])}{failed} "
                f"| {report.human(row['min'])}–{report.human(row['max'])} "
                f"| {report.ratio(row, rows.get('asyncio'))} | {best_cell} | {pct} "
                f"| {fmt(row['p99'])} | {p99_best} | {fmt(row['cpu_us'])} | {cpu_best} | {lg} |"
            )
    lines += [
        "",
        f"Each cell: {args.reps} run(s) of {args.duration:g} s after {args.warmup:g} s of warm-up, "
        "a fresh server each, loops interleaved (each round starts one loop later); medians shown. "
        f"Server pinned to CPU {args.server_cpu}, load generator to CPU {args.loadgen_cpu}. "
        "× best peer: req/s over the better of uvloop/rloop (≈: min–max ranges overlap, not "
        "distinguishable from noise). p99 × best: lower is better, against the same peer. "
        "Server CPU µs/req: the server process's user+sys time (all threads, /proc/PID/stat, "
        "10 ms ticks) over the measured interval divided by requests; CPU/req × best is against "
        "the peer with the lower figure (lower is better). Loadgen CPU near 100% means the load "
        "generator, not the server, limited the rate: compare CPU/req there. "
        f"{CEILING} is the same echo in pure Rust on mio (benches/loadgen/src/bin/echo_ceiling.rs).",
    ]
    if any(cell[0] in SIZELESS for cell in cells):
        lines[-1] += (
            f" http cells: aiohttp's hello-world (benches/servers/http_hello.py) under "
            f"`wrk -t1 -cN -d{wrk.seconds(args.duration)}s --latency` ({args.wrk})"
            + (f" after a {wrk.seconds(args.warmup)} s wrk warm-up run" if args.warmup > 0 else "")
            + ", wrk's own req/s and percentiles, pinned like the load generator; "
            "wrk's socket errors and non-2xx answers count as failures."
        )
    return "\n".join(lines)


def latency_markdown(runs, cells, labels):
    """wrk's latency distribution for the http cells: medians over the good runs."""
    keys = ("p50", "p75", "p90", "p99", "max")
    lines = ["| cell | loop | p50 µs | p75 µs | p90 µs | p99 µs | max µs |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for cell in cells:
        if cell[0] not in SIZELESS:
            continue
        for label in labels:
            good = [r for r in runs if r.get("ok") and r["label"] == label
                    and (r["workload"], r["size_asked"], r["conns"]) == cell]
            if not good:
                continue
            shown = []
            for key in keys:
                xs = [r["result"]["latency_us"][key] for r in good if key in r["result"]["latency_us"]]
                shown.append(fmt(statistics.median(xs)) if xs else "–")
            lines.append(f"| {cell_name(cell)} | {label} | " + " | ".join(shown) + " |")
    if len(lines) == 2:
        return ""
    return "\n".join(["wrk's latency distribution (medians over the runs):", "", *lines])


def problems_markdown(probes, runs):
    lines = []
    for text, probe in probes.items():
        if not probe.get("available"):
            lines.append(f"- `{text}` unavailable: {probe.get('error', 'unknown error')}")
    for run in runs:
        where = f"`{run['label']}` {cell_name((run['workload'], run['size_asked'], run['conns']))} rep {run['rep']}"
        if run.get("unsupported"):
            continue
        if not run.get("ok"):
            noise = f" (while {disturbed(run, NOISE_LIMITS)})" if disturbed(run, NOISE_LIMITS) else ""
            lines.append(f"- {where} FAILED: {run.get('error', 'no output')}{noise}")
        elif run.get("server_stderr"):
            lines.append(f"- {where}: the server wrote to stderr: {tail(run['server_stderr'], 2)}")
    unsupported = sorted({(r["label"], r["workload"]) for r in runs if r.get("unsupported")})
    for label, workload in unsupported:
        lines.append(f"- `{label}` does not support workload {workload}")
    redone = sum(r.get("redone", 0) for r in runs)
    if redone:
        lines.append(f"- {redone} measurement(s) were redone because other processes were busy")
    noisy = [r for r in runs if r.get("ok") and (r.get("other_cpus") or 0) > NOISY_OTHER_CPUS]
    if noisy:
        worst = max(noisy, key=lambda r: r["other_cpus"])
        lines.append(f"- {len(noisy)} of {len(runs)} measurements ran while other processes used more "
                     f"than {NOISY_OTHER_CPUS} CPU (worst {worst['other_cpus']:.2f} CPU): "
                     "expect a wider min–max there")
    waited = [r for r in runs if r.get("ok") and (r.get("runq_wait") or 0) > NOISY_WAIT]
    if waited:
        worst = max(waited, key=lambda r: r["runq_wait"])
        lines.append(f"- in {len(waited)} of {len(runs)} measurements the server or the load generator "
                     f"waited for its CPU more than {100 * NOISY_WAIT:.0f}% of the time "
                     f"(worst {100 * worst['runq_wait']:.0f}%)")
    return "\n".join(lines)


def probe_loops(args):
    """Which loops can be imported here, and their versions (all probed at once)."""
    procs = {spec.text: subprocess.Popen([args.python, str(HERE / "runner.py"), "--probe", spec.text],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for spec in args.specs}
    probes = {}
    for text, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            probes[text] = {"available": False, "error": "probe timed out"}
            continue
        lines = [line for line in out.splitlines() if line.startswith("{")]
        probes[text] = json.loads(lines[-1]) if lines else {
            "available": False, "error": tail(err) or f"exit {proc.returncode}"}
    return probes


def main(argv=None):
    args = parse_args(argv)
    meta = report.machine()
    # wrk drives the sizeless workloads; the Rust binaries (built on first use) the rest.
    needs_rust = any(w not in SIZELESS for w in args.workloads)
    loadgen, ceiling = binaries(args.target_dir) if needs_rust else (None, None)
    probes = probe_loops(args)
    for text, probe in probes.items():
        state = probe.get("version") if probe.get("available") else f"unavailable ({probe.get('error')})"
        print(f"{text}: {state}", file=sys.stderr)
    python = next((p["python"] for p in probes.values() if p.get("python")), "unknown")
    contenders = [] if args.no_ceiling else [(CEILING, None)]
    contenders += [(s.label, s) for s in args.specs if probes[s.text].get("available")]
    if not args.no_ceiling:
        probes = {CEILING: {"available": True, "version": "(pure Rust, mio)"}, **probes}
    labels = [label for label, _ in contenders]

    cells = [(w, s, c) for w in args.workloads
             for s in ([None] if w in SIZELESS else args.sizes) for c in args.conns]
    runs = []
    total = len(cells) * args.reps * len(contenders)
    with tempfile.TemporaryDirectory(prefix="net_compare.") as tmpdir:
        for cell in cells:
            workload, size, conns = cell
            for rep in range(1, args.reps + 1):
                # Each round starts one loop later, so every loop runs in every
                # position (first after the previous cell, last before the next)
                # equally often, and no loop always follows the same one.
                turn = (rep - 1) % len(contenders)
                for position, (label, spec) in enumerate(contenders[turn:] + contenders[:turn]):
                    for attempt in range(args.retries + 1):
                        record = measure(args, loadgen, ceiling, label, spec, workload, size, conns, tmpdir)
                        if not disturbed(record, args) or attempt == args.retries:
                            break
                        print(f"    {disturbed(record, args)}: measuring again", file=sys.stderr, flush=True)
                        wait_quiet(args.max_other, 10)
                    record.update(rep=rep, position=position, loop=spec.text if spec else CEILING,
                                  size_asked=size, redone=attempt)
                    runs.append(record)
                    if record.get("ok"):
                        shown = (f"{record['rps']:>9,.0f} req/s  p99 {fmt(record['p99']):>6} µs  "
                                 f"cpu {fmt(record['cpu_us']):>5} µs/req  "
                                 f"loadgen {100 * record['loadgen_util']:.0f}%")
                    else:
                        shown = ("unsupported" if record.get("unsupported")
                                 else f"FAILED: {record.get('error')}")
                    print(f"[{len(runs)}/{total}] {cell_name(cell):22} rep {rep} {label:24} {shown}",
                          file=sys.stderr, flush=True)

    meta["loadavg_end"] = os.getloadavg()[0]
    table = summarize(runs, cells, labels)
    body = table_markdown(table, cells, labels, args)
    latency = latency_markdown(runs, cells, labels)
    if latency:
        body += "\n\n" + latency
    problems = problems_markdown({k: v for k, v in probes.items() if k != CEILING}, runs)
    print(body + ("\n\n" + problems if problems else ""))

    if args.markdown:
        header = report.header_markdown(meta, probes, python).replace(
            "# Event loop comparison", "# Network echo comparison", 1)
        if args.wrk:
            header += f"\n- HTTP load generator: {args.wrk}"
        text = "\n\n".join(part for part in (header, body, problems) if part) + "\n"
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        # What wrk really ran: it takes whole seconds, not --duration/--warmup as given.
        http_meta = {"wrk": args.wrk, "wrk_duration_s": wrk.seconds(args.duration),
                     "wrk_warmup_s": wrk.seconds(args.warmup) if args.warmup > 0 else 0} if args.wrk else {}
        summary = [{"workload": w, "size": s, "conns": c, "loop": label, **row}
                   for (w, s, c), label in ((cell, label) for cell in cells for label in labels)
                   for row in [table[(w, s, c), label]]]
        Path(args.json).write_text(json.dumps(
            {"meta": {**meta, "python": python, **http_meta, "server_cpu": args.server_cpu,
                      "loadgen_cpu": args.loadgen_cpu, "duration_s": args.duration,
                      "warmup_s": args.warmup},
             "loops": probes, "runs": runs, "summary": summary}, indent=1) + "\n")
    failed = [r for r in runs if not r.get("ok") and not r.get("unsupported")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
