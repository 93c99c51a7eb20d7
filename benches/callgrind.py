"""Instructions per operation, counted by callgrind, with startup cancelled out.

    python3 benches/callgrind.py --loop uvloop:new_event_loop --workload call_soon_chain

Runs the workload under ``valgrind --tool=callgrind`` at two sizes N1 < N2 and
reports (Ir(N2) - Ir(N1)) / (N2 - N1): interpreter startup, imports and loop
creation cost the same at both sizes and drop out. What does scale with N is
counted whole, including a workload's untimed setup and checks (timers draws its
random delays, tasks_gather builds its result list); that is the same for every
loop, so comparisons between loops hold. The pair is measured ``--runs``
times (default 2); the exit status is 1 when the runs differ by more than
``--tolerance``. Instruction counts barely depend on machine noise, so this is
the figure to watch for small regressions. Workloads that depend on wall-clock
time (timers: how many are due per iteration) or on thread scheduling
(threadsafe) are noisier, and valgrind runs one thread at a time.
"""

import argparse
import statistics
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import workloads

RUNNER = Path(__file__).resolve().parent / "runner.py"


def instructions(python, loop, workload, n, workdir):
    """Total Ir of one runner process at size ``n``."""
    out = Path(workdir) / f"callgrind.{workload}.{n}.out"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
               python, str(RUNNER), "--loop", loop, "--workload", workload,
               "--n", str(n), "--timeout", "3600"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"run failed (exit {done.returncode}): {' '.join(command)}\n"
                 f"{done.stdout}{done.stderr[-3000:]}")
    try:
        return dump_events(out)["Ir"]
    except (AttributeError, KeyError):
        sys.exit(f"no instruction total in {out}")


def dump_events(path):
    """{event: total} of a callgrind dump (Ir, and with --cache-sim the miss counts)."""
    text = Path(path).read_text()
    names = re.search(r"^events: (.+)$", text, re.MULTILINE).group(1).split()
    totals = re.search(r"^(?:summary|totals): (.+)$", text, re.MULTILINE).group(1).split()
    return dict(zip(names, map(int, totals)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", required=True, help="factory path, e.g. uvloop:new_event_loop")
    parser.add_argument("--workload", required=True, choices=workloads.NAMES)
    parser.add_argument("--n1", type=int, help="smaller size (default: a quarter of --n2)")
    parser.add_argument("--n2", type=int, help="larger size (default: the workload's quick N)")
    parser.add_argument("--runs", type=int, default=2, help="repeat the pair (default 2)")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest relative difference between runs (default 0.02)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter binary (not a shim script: valgrind would "
                             "measure the shell)")
    args = parser.parse_args(argv)
    module = workloads.load(args.workload)
    n2 = args.n2 or module.QUICK_N
    n1 = args.n1 or n2 // 4
    if not 1 <= n1 < n2:
        parser.error("need 1 <= N1 < N2")
    unit = module.UNIT.removesuffix("/s").removesuffix("s")

    results = []
    with tempfile.TemporaryDirectory(prefix="glassloop-callgrind-") as workdir:
        for run in range(1, args.runs + 1):
            low = instructions(args.python, args.loop, args.workload, n1, workdir)
            high = instructions(args.python, args.loop, args.workload, n2, workdir)
            per_op = (high - low) / (n2 - n1)
            results.append(per_op)
            print(f"run {run}: Ir(N={n1:,}) = {low:,}  Ir(N={n2:,}) = {high:,}  "
                  f"-> {per_op:,.0f} instructions per {unit}", flush=True)

    spread = (max(results) - min(results)) / min(results)
    print(f"{args.loop} {args.workload}: {statistics.median(results):,.0f} "
          f"instructions per {unit}; runs differ by {spread:.2%}")
    if spread > args.tolerance:
        print(f"UNSTABLE: runs differ by more than {args.tolerance:.0%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
