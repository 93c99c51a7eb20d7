"""What recording and a live inspector cost: glassloop inspected vs record=False.

    python3 benches/overhead.py                       # chain + echo, 5 reps, callgrind
    python3 benches/overhead.py --reps 7 --markdown benches/results/overhead.md
    python3 benches/overhead.py --quick               # smoke test

Two modes, interleaved (A B A B ...), a fresh process for every measurement:

- **inspected**: ``glassloop.new_event_loop(inspect="127.0.0.1:PORT")`` —
  recording on, the inspector sidecar serving, and a live-stream client
  connected to ``/api/v1/stream`` (a thread of this process that reads every
  event as it comes, so the sidecar really serializes and sends them);
- **record=false**: ``glassloop.new_event_loop(record=False)``, no inspector.

Workloads: the ``call_soon_chain`` (callbacks/s; the child waits until the stream
client is connected before the timed part starts) and the TCP echo of
net_compare.py (protocol workload, 1 KiB, 10 connections, the Rust load
generator; requests/s and the server's CPU per request, all of its threads).
Prints a Markdown table of medians and ratios (inspected over record=false: the
cost is 1 − rate ratio, or CPU ratio − 1; the chain's CPU per callback and the
echo server's CPU per request count every thread of the process, the sidecar's
included, and are the steadier figures on a shared machine), then the callgrind
instructions per callback of the chain in both modes (the inspected run under
callgrind has the sidecar serving but no stream client: valgrind runs threads one
at a time and ~50× slower, so a client would be fed 50× more samples per callback
than in real time).
"""

import argparse
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import callgrind  # noqa: E402
import loopspec  # noqa: E402
import net_compare  # noqa: E402
import report  # noqa: E402
import server_cost  # noqa: E402

INSPECTED = "inspected"
OFF = "record=false"
MODES = (INSPECTED, OFF)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spec_text(mode, port):
    if mode == INSPECTED:
        return f"glassloop:new_event_loop?inspect=127.0.0.1:{port}"
    return "glassloop:new_event_loop?record=false"


class StreamClient(threading.Thread):
    """Connects to the inspector's SSE stream (retrying until it listens) and
    reads everything it sends until stopped. ``connected`` is set once the
    stream's ``hello`` event arrived."""

    def __init__(self, port, deadline=30.0):
        super().__init__(daemon=True)
        self.port = port
        self.deadline = time.monotonic() + deadline
        self.connected = threading.Event()
        self.stopped = threading.Event()
        self.events = 0
        self.bytes = 0
        self.error = None

    def run(self):
        sock = None
        while sock is None and not self.stopped.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            except OSError:
                if time.monotonic() > self.deadline:
                    self.error = "the inspector never listened"
                    return
                time.sleep(0.02)
        if sock is None:
            return
        with sock:
            sock.sendall(b"GET /api/v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
            sock.setblocking(False)
            buf = b""
            while not self.stopped.is_set():
                ready, _, _ = select.select([sock], [], [], 0.1)
                if not ready:
                    continue
                chunk = sock.recv(65536)
                if not chunk:
                    break
                self.bytes += len(chunk)
                buf = (buf + chunk)[-65536:]
                self.events += chunk.count(b"\nevent: ") + chunk.startswith(b"event: ")
                if b"event: hello" in buf:
                    self.connected.set()

    def stop(self):
        self.stopped.set()
        self.join(5)


# ---------------------------------------------------------------- call_soon chain

CHILD = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
import loopspec, workloads
spec = loopspec.parse(sys.argv[2])
loop = spec.new_loop()
print("READY", flush=True)
sys.stdin.readline()                      # the stream client is connected
cpu = time.process_time()                 # every thread of the process: the sidecar's too
result = workloads.load("call_soon_chain").run(loop, int(sys.argv[3]))
cpu = time.process_time() - cpu
print(json.dumps({"value": result["ops"] / result["elapsed_s"], "cpu_ns": 1e9 * cpu / result["ops"], **result}),
      flush=True)
loop.close()
'''


def chain_once(python, mode, n):
    port = free_port()
    proc = subprocess.Popen([python, "-c", CHILD, str(HERE), spec_text(mode, port), str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = None
    try:
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"child did not start: {line!r} {proc.stderr.read()[-2000:]}")
        if mode == INSPECTED:
            client = StreamClient(port)
            client.start()
            if not client.connected.wait(30):
                raise RuntimeError(f"stream client did not connect: {client.error}")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = proc.stdout.readline()
        proc.wait(60)
        if not out.startswith("{"):
            raise RuntimeError(f"child failed: {out!r} {proc.stderr.read()[-2000:]}")
        record = json.loads(out)
        if client is not None:
            record["stream_events"] = client.events
        return record
    finally:
        if client is not None:
            client.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- TCP echo

def echo_once(args, loadgen, ceiling, mode, tmpdir):
    port = free_port()
    spec = loopspec.parse(spec_text(mode, port))
    client = StreamClient(port) if mode == INSPECTED else None
    if client is not None:
        client.start()  # connects while the server warms up
    try:
        record = net_compare.measure(args, loadgen, ceiling, mode, spec, "protocol", args.size, args.conns, tmpdir)
    finally:
        if client is not None:
            client.stop()
    if client is not None:
        record["stream_events"] = client.events
        if not client.connected.is_set() and record.get("ok"):
            record.update(ok=False, error=f"stream client never connected ({client.error})")
    return record


def loop_thread_ir(path):
    """Instructions inside the loop's `run_forever` less those of its sample and
    table publishing (inclusive costs from callgrind_annotate)."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(path)],
                         capture_output=True, text=True, check=True).stdout

    def inclusive(marker):
        total = 0
        for line in out.splitlines():
            if marker in line and "=>" not in line:
                total = max(total, int(line.split()[0].replace(",", "")))
        return total

    return inclusive("__pymethod__run_forever_inner__ [") - inclusive(">::publish [")


def echo_instructions(args, loadgen, spec_text_, workdir):
    """Instructions per request of the protocol echo server under callgrind, over the
    load generator's measured window (server_cost.py): (all threads, loop thread less
    sample and table publishing)."""
    result, dump = server_cost.callgrind_run(args.python, loadgen, "protocol_echo.py", spec_text_, "tcp",
                                             args.size, args.conns, workdir)
    total = callgrind.dump_events(dump)["Ir"]
    return total / result["requests"], loop_thread_ir(dump) / result["requests"]


# ---------------------------------------------------------------- summary

def med(values):
    return statistics.median(values) if values else None


def row(name, unit, a, b, higher_is_better=True):
    ma, mb = med(a), med(b)
    if ma is None or mb is None:
        return f"| {name} | {unit} | – | – | – | – | – |"
    r = ma / mb
    cost = (1 - r) if higher_is_better else (r - 1)
    # Interference from other processes only ever slows a run down: the best runs
    # of each mode are the least disturbed comparison.
    best = max(a) / max(b) if higher_is_better else min(a) / min(b)
    best_cost = (1 - best) if higher_is_better else (best - 1)
    fmt = report.human if unit.endswith("/s") else (lambda v: f"{v:.3g}")
    return (f"| {name} | {unit} | {fmt(ma)} ({fmt(min(a))}–{fmt(max(a))}) "
            f"| {fmt(mb)} ({fmt(min(b))}–{fmt(max(b))}) | {r:.3f} | {100 * cost:+.1f}% | {100 * best_cost:+.1f}% |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--chain-n", type=int, default=2_000_000, help="callbacks per chain run (default 2M)")
    parser.add_argument("--duration", type=float, default=3.0, help="echo: measured seconds (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="echo: warm-up seconds (default 1)")
    parser.add_argument("--size", type=net_compare.parse_size, default=1024, help="echo message size (1KiB)")
    parser.add_argument("--conns", type=int, default=10, help="echo connections (10)")
    parser.add_argument("--no-chain", action="store_true")
    parser.add_argument("--no-echo", action="store_true")
    parser.add_argument("--no-callgrind", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 reps, small sizes, no callgrind")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--markdown", metavar="FILE", help="also write the report here")
    parser.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", str(HERE.parent / "target")))
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.chain_n, args.duration, args.warmup, args.no_callgrind = 2, 100_000, 0.5, 0.3, True
    cpus = sorted(os.sched_getaffinity(0))
    args.server_cpu, args.loadgen_cpu = cpus[0], (cpus[1] if len(cpus) > 1 else None)

    chain = {m: [] for m in MODES}
    chain_cpu = {m: [] for m in MODES}
    chain_by_rep = {m: {} for m in MODES}
    echo = {m: {"rps": [], "cpu_us": [], "loadgen": [], "by_rep": {}} for m in MODES}
    failures = []
    loadgen = ceiling = None
    if not args.no_echo:
        loadgen, ceiling = net_compare.binaries(args.target_dir)
    with tempfile.TemporaryDirectory(prefix="overhead.") as tmpdir:
        for rep in range(1, args.reps + 1):
            # A B, then B A: a machine that gets busier or quieter during the run
            # weighs on both modes alike.
            for mode in (MODES if rep % 2 else MODES[::-1]):
                if not args.no_chain:
                    r = chain_once(args.python, mode, args.chain_n)
                    chain[mode].append(r["value"])
                    chain_cpu[mode].append(r["cpu_ns"])
                    chain_by_rep[mode][rep] = r
                    extra = f"  ({r['stream_events']} stream events)" if "stream_events" in r else ""
                    print(f"[rep {rep}] chain {mode:13} {r['value']:>12,.0f} callbacks/s  "
                          f"cpu {r['cpu_ns']:.0f} ns/callback{extra}", file=sys.stderr, flush=True)
                if not args.no_echo:
                    r = echo_once(args, loadgen, ceiling, mode, tmpdir)
                    if not r.get("ok"):
                        failures.append(f"echo {mode} rep {rep}: {r.get('error')}")
                        print(f"[rep {rep}] echo  {mode:13} FAILED: {r.get('error')}", file=sys.stderr, flush=True)
                        continue
                    echo[mode]["rps"].append(r["rps"])
                    echo[mode]["by_rep"][rep] = r
                    if r.get("cpu_us"):
                        echo[mode]["cpu_us"].append(r["cpu_us"])
                    echo[mode]["loadgen"].append(r["loadgen_util"])
                    print(f"[rep {rep}] echo  {mode:13} {r['rps']:>12,.0f} req/s  cpu {r.get('cpu_us')} µs/req  "
                          f"loadgen {100 * r['loadgen_util']:.0f}%  ({r.get('stream_events', 0)} stream events)",
                          file=sys.stderr, flush=True)

    lines = [
        "| workload | unit | inspected + stream client (median, min–max) | record=false (median, min–max) "
        "| ratio of medians | cost (medians) | cost (best runs) | cost (paired: median, quartiles) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def paired(by_rep, key, higher_is_better=True):
        # Each round measured both modes back to back: the ratio within a round
        # cancels the machine's load at that moment better than any ratio of
        # medians taken over the whole run.
        costs = []
        for rep, a in by_rep[INSPECTED].items():
            b = by_rep[OFF].get(rep)
            if b and a.get(key) and b.get(key):
                r = a[key] / b[key]
                costs.append((1 - r) if higher_is_better else (r - 1))
        if not costs:
            return " – |"
        q = statistics.quantiles(costs, n=4) if len(costs) > 1 else [costs[0]] * 3
        return f" {100 * statistics.median(costs):+.1f}% ({100 * q[0]:+.1f}% – {100 * q[2]:+.1f}%, {len(costs)} pairs) |"

    if not args.no_chain:
        lines.append(row("call_soon_chain", "callbacks/s", chain[INSPECTED], chain[OFF])
                     + paired(chain_by_rep, "value"))
        lines.append(row("call_soon_chain", "process CPU ns/callback", chain_cpu[INSPECTED], chain_cpu[OFF],
                         higher_is_better=False) + paired(chain_by_rep, "cpu_ns", higher_is_better=False))
    if not args.no_echo:
        name = f"echo protocol {net_compare.size_name(args.size)} ×{args.conns}"
        by_rep = {m: echo[m]["by_rep"] for m in MODES}
        lines.append(row(name, "req/s", echo[INSPECTED]["rps"], echo[OFF]["rps"]) + paired(by_rep, "rps"))
        lines.append(row(name, "server CPU µs/req", echo[INSPECTED]["cpu_us"], echo[OFF]["cpu_us"],
                         higher_is_better=False) + paired(by_rep, "cpu_us", higher_is_better=False))
        lg = [f"{m}: {100 * med(echo[m]['loadgen']):.0f}%" for m in MODES if echo[m]["loadgen"]]
        lines.append("")
        lines.append(f"Load generator CPU (median): {', '.join(lg)} — near 100% means it, not the server, "
                     "limited the rate: read the CPU/request row then.")
    lines.append("")
    lines.append(f"{args.reps} interleaved rounds (A B, B A, ...), a fresh process per measurement; medians. "
                 "Cost: 1 − rate ratio, or CPU ratio − 1; \"best runs\" compares each mode's best "
                 "measurement (the highest rate, the lowest CPU), which other processes disturbed least; "
                 "\"paired\" takes the ratio within each round (both modes back to back) and gives the "
                 "median and quartiles of those. CPU is the measured process's user+system "
                 "time, every thread (the sidecar's included), over the timed part: on a shared machine "
                 "it is the steadier figure, since wall-clock rates also count the time the process "
                 "waited for a CPU.")
    if not args.no_callgrind and not args.no_chain:
        lines += ["", "", ""]
        n2 = 20_000
        with tempfile.TemporaryDirectory(prefix="overhead-callgrind.") as workdir:
            per, hot = {}, {}
            n1 = n2 // 4
            for mode, text in ((INSPECTED, "glassloop:new_event_loop?inspect=127.0.0.1:0"),
                               ("recording, not inspected", "glassloop:new_event_loop"),
                               (OFF, "glassloop:new_event_loop?record=false")):
                low = callgrind.instructions(args.python, text, "call_soon_chain", n1, workdir)
                loop_low = loop_thread_ir(Path(workdir) / f"callgrind.call_soon_chain.{n1}.out")
                high = callgrind.instructions(args.python, text, "call_soon_chain", n2, workdir)
                loop_high = loop_thread_ir(Path(workdir) / f"callgrind.call_soon_chain.{n2}.out")
                per[mode] = (high - low) / (n2 - n1)
                hot[mode] = (loop_high - loop_low) / (n2 - n1)
            lines[-2:] = ["| call_soon_chain under callgrind | instructions per callback | of which the loop "
                          "thread, sample and table publishing left out |", "|---|---:|---:|"]
            for mode, text in ((INSPECTED, "inspect=127.0.0.1:0"), ("recording, not inspected", ""),
                               (OFF, "record=false")):
                lines.append(f"| {mode} (`glassloop:new_event_loop{'?' + text if text else ''}`) "
                             f"| {per[mode]:,.0f} | {hot[mode]:,.0f} |")
            for mode in (INSPECTED, "recording, not inspected"):
                lines.append(f"| {mode} − record=false | {per[mode] - per[OFF]:+,.0f} "
                             f"({100 * (per[mode] / per[OFF] - 1):+.1f}%) | {hot[mode] - hot[OFF]:+,.0f} "
                             f"({100 * (hot[mode] / hot[OFF] - 1):+.1f}%) |")
            if not args.no_echo:
                lines += ["", f"| echo protocol {net_compare.size_name(args.size)} ×{args.conns}, server under callgrind "
                          "| instructions per request | of which the loop thread, sample and table publishing left out |",
                          "|---|---:|---:|"]
                echo_ir = {}
                for mode, text in ((INSPECTED, "glassloop:new_event_loop?inspect=127.0.0.1:0"),
                                   ("recording, not inspected", "glassloop:new_event_loop"),
                                   (OFF, "glassloop:new_event_loop?record=false")):
                    echo_ir[mode] = echo_instructions(args, loadgen, text, workdir)
                    lines.append(f"| {mode} | {echo_ir[mode][0]:,.0f} | {echo_ir[mode][1]:,.0f} |")
                for mode in (INSPECTED, "recording, not inspected"):
                    (a, b), (c, d) = echo_ir[mode], echo_ir[OFF]
                    lines.append(f"| {mode} − record=false | {a - c:+,.0f} ({100 * (a / c - 1):+.1f}%) "
                                 f"| {b - d:+,.0f} ({100 * (b / d - 1):+.1f}%) |")
            lines.append("")
            lines.append("Under callgrind the process runs ~50× slower, so the inspected run cuts ~50× more "
                         "samples per callback than in real time (each cut walks the cumulative histograms, "
                         "4 times a second): the first column's inspected difference overstates the real "
                         "cost. The second column counts the loop thread's `run_forever` less its sample "
                         "and table publishing: the per-callback cost that does not depend on the clock.")
    if failures:
        lines += [""] + [f"- FAILED {f}" for f in failures]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        meta = report.machine()
        head = (f"# Recording overhead\n\n- Date: {meta['date']}\n- Machine: {meta['cpu']}, {meta['cores']} cores\n"
                f"- Python: {sys.version.split()[0]}\n- Command: `python3 benches/overhead.py "
                f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n")
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(head + "\n" + text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
