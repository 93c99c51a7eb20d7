"""What one request costs an echo server, counted rather than timed: user-space
instructions (callgrind) and syscalls (strace) per request, per loop and cell.

    python3 benches/server_cost.py --workloads protocol,streams,sock --sizes 1KiB,64KiB --conns 10,100

Where the load generator is the bottleneck (net_compare.py's "loadgen CPU" near
100%), the server's CPU per request is mostly kernel time, and that moves by
±20% between runs with the machine's state while the server does the same work.
These two counts do not move with it:

- **instructions per request**: the server runs under ``valgrind --tool=callgrind``
  (all threads; the kernel is not counted) while the load generator drives it; the
  counters are zeroed when the load generator's warm-up ends and dumped when it
  stops, and the total is divided by the requests it completed in that window.
  With ``--cache-sim`` callgrind also simulates the caches (L1 and last-level
  misses per request). Under callgrind the server is ~50× slower, so it always has
  many connections ready per wake-up: per-wake-up costs weigh less than at full speed.
- **syscalls per request**: ``strace -c -f`` attached to the server at full speed
  for one load generator run, each syscall's count divided by the requests
  completed (warm-up included, as strace sees it whole). strace slows every
  syscall, so requests/s under it mean nothing; the counts per request do.

Exit status 1 if a measurement failed.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import callgrind
import loopspec
import net_compare

DEFAULT_LOOPS = "uvloop:new_event_loop,rloop:new_event_loop,glassloop:new_event_loop"
#: strace -c names the syscall in its last column; these rows are its own totals.
STRACE_SKIP = {"total", "syscall"}


def start_server(command, transport, tmpdir, timeout):
    """Starts an echo server command (plus its address arguments): (process, address)."""
    sock_path = os.path.join(tmpdir, "echo.sock")
    command = command + (["--unix", sock_path] if transport == "unix" else ["--addr", "127.0.0.1:0"])
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            cwd=net_compare.SERVERS, env={**os.environ, "PYTHONHASHSEED": "0"})
    address = net_compare.read_line(proc, timeout)
    if address is None:
        net_compare.stop(proc)
        raise RuntimeError(f"server did not start: {' '.join(command)}")
    return proc, address


def last_json(text):
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError("the load generator printed no result")
    return json.loads(lines[-1])


def callgrind_run(python, loadgen, script, spec_text, transport, size, conns, workdir,
                  seconds=6.0, warmup=3.0, cache_sim=False):
    """Runs `script` under callgrind while the load generator drives it; returns the
    load generator's result and the path of the dump covering its measured window."""
    out = Path(workdir) / f"callgrind.{script}.{abs(hash((spec_text, size, conns)))}.out"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
               *(["--cache-sim=yes"] if cache_sim else []),
               python, str(net_compare.SERVERS / script), "--loop", spec_text]
    server, address = start_server(command, transport, workdir, 300)
    try:
        lg = subprocess.Popen(net_compare.loadgen_command(loadgen, transport, address, size, conns, seconds, warmup),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(warmup)
        subprocess.run(["callgrind_control", "-z", str(server.pid)], capture_output=True, check=True)
        time.sleep(seconds)
        subprocess.run(["callgrind_control", "-d", str(server.pid)], capture_output=True, check=True)
        result = last_json(lg.communicate(timeout=120)[0])
    finally:
        net_compare.stop(server)
    dumps = sorted(Path(workdir).glob(out.name + ".*"), key=lambda f: f.stat().st_mtime)
    if not dumps or not result.get("requests"):
        raise RuntimeError(f"no callgrind dump or no requests ({spec_text})")
    return result, dumps[-1]


def strace_run(python, loadgen, script, spec_text, transport, size, conns, workdir, seconds=3.0):
    """Syscalls per request of `script` at full speed: ({name: per request}, result)."""
    server, address = start_server([python, str(net_compare.SERVERS / script), "--loop", spec_text],
                                   transport, workdir, 30)
    counts = Path(workdir) / "strace.txt"
    try:
        tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(server.pid), "-o", str(counts)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached to every thread before the first connection
        done = subprocess.run(net_compare.loadgen_command(loadgen, transport, address, size, conns, seconds, 0.5),
                              capture_output=True, text=True, timeout=seconds + 60)
        tracer.send_signal(signal.SIGINT)  # strace detaches and writes its table
        tracer.wait(30)
    finally:
        net_compare.stop(server)
    result = last_json(done.stdout)
    requests = result["requests"] + result.get("warmup_requests", 0)
    if not requests:
        raise RuntimeError(f"no requests under strace ({spec_text})")
    return {name: calls / requests for name, calls in strace_counts(counts.read_text()).items()}, result


def strace_counts(text):
    """{syscall: calls} from the table `strace -c` writes (errors are counted in calls)."""
    counts = {}
    for line in text.splitlines():
        parts = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] not in STRACE_SKIP:
            counts[parts[-1]] = int(parts[3])
    return counts


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", default=DEFAULT_LOOPS, help=f"comma-separated (default {DEFAULT_LOOPS})")
    parser.add_argument("--workloads", default="protocol,streams,sock",
                        help="echo workloads of net_compare.py (tcp and unix ones)")
    parser.add_argument("--sizes", default="1KiB,64KiB")
    parser.add_argument("--conns", default="10,100")
    parser.add_argument("--seconds", type=float, default=6.0, help="callgrind window (default 6)")
    parser.add_argument("--cache-sim", action="store_true", help="callgrind also simulates the caches")
    parser.add_argument("--no-strace", action="store_true")
    parser.add_argument("--no-callgrind", action="store_true")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter binary (not a shim script: valgrind would measure the shell)")
    parser.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", str(net_compare.REPO / "target")))
    parser.add_argument("--json", metavar="FILE", help="save the raw figures here")
    args = parser.parse_args(argv)
    args.loops = [loopspec.parse(text) for text in net_compare.csv(args.loops)]
    args.workloads = net_compare.csv(args.workloads)
    for workload in args.workloads:
        if net_compare.WORKLOADS.get(workload, ("", ""))[1] not in ("tcp", "unix"):
            parser.error(f"{workload}: only the TCP and Unix echo workloads")
    args.sizes = net_compare.csv(args.sizes, net_compare.parse_size)
    args.conns = net_compare.csv(args.conns, int)
    return args


def ratio(value, others):
    best = min((o for o in others if o), default=None)
    return f"{value / best:.2f}" if value and best else "–"


def main(argv=None):
    args = parse_args(argv)
    loadgen, _ = net_compare.binaries(args.target_dir)
    labels = [spec.label for spec in args.loops]
    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="glassloop-cost-") as workdir:
        for workload in args.workloads:
            script, transport = net_compare.WORKLOADS[workload]
            for size in args.sizes:
                for conns in args.conns:
                    cell = f"{workload} {net_compare.size_name(size)} ×{conns}"
                    for spec in args.loops:
                        row = {"cell": cell, "workload": workload, "size": size, "conns": conns, "loop": spec.label}
                        try:
                            if not args.no_callgrind:
                                result, dump = callgrind_run(args.python, loadgen, script, spec.text, transport,
                                                             size, conns, workdir, args.seconds, cache_sim=args.cache_sim)
                                events = callgrind.dump_events(dump)
                                row["callgrind_requests"] = result["requests"]
                                row["per_request"] = {k: v / result["requests"] for k, v in events.items()}
                            if not args.no_strace:
                                row["syscalls"], _ = strace_run(args.python, loadgen, script, spec.text,
                                                                transport, size, conns, workdir)
                        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                            row["error"] = str(exc)
                            failed = True
                        rows.append(row)
                        ir = row.get("per_request", {}).get("Ir")
                        calls = sum(row.get("syscalls", {}).values())
                        print(f"{cell:22s} {spec.label:28s} "
                              + (f"{ir:9,.0f} instr/req  " if ir else "")
                              + (f"{calls:5.2f} syscalls/req " if calls else "")
                              + (f"ERROR {row['error']}" if "error" in row else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"loops": labels, "rows": rows}, indent=1))
    print_table(rows, labels, args.cache_sim)
    return 1 if failed else 0


def print_table(rows, labels, cache_sim):
    by_cell = {}
    for row in rows:
        by_cell.setdefault(row["cell"], {})[row["loop"]] = row
    ours = next((l for l in labels if l.startswith("glassloop")), labels[-1])
    peers = [l for l in labels if l != ours and not l.startswith(("asyncio", "glassloop"))]
    head = ["cell"] + [f"{l} instr/req" for l in labels] + [f"{ours} × best peer"]
    if cache_sim:
        head += [f"{l} D1+LL misses/req" for l in labels]
    head += [f"{l} syscalls/req" for l in labels]
    print("\n| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for cell, loops in by_cell.items():
        get = lambda l, k: loops.get(l, {}).get("per_request", {}).get(k)
        misses = lambda l: (sum(get(l, k) or 0 for k in ("D1mr", "D1mw", "DLmr", "DLmw")) or None)
        cols = [cell] + [f"{get(l, 'Ir'):,.0f}" if get(l, "Ir") else "–" for l in labels]
        cols.append(ratio(get(ours, "Ir"), [get(p, "Ir") for p in peers]))
        if cache_sim:
            cols += [f"{misses(l):.0f}" if misses(l) else "–" for l in labels]
        for l in labels:
            calls = loops.get(l, {}).get("syscalls")
            cols.append(" ".join(f"{n} {v:.2f}" for n, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v >= 0.05)
                        if calls else "–")
        print("| " + " | ".join(cols) + " |")
    print("\ninstr/req: user-space instructions per request under callgrind (all threads). "
          "syscalls/req: strace -c -f at full speed, calls per request (≥ 0.05 shown).")


if __name__ == "__main__":
    sys.exit(main())
