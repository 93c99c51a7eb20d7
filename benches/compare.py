"""Compare event loops side by side: interleaved runs, one fresh process each.

    python3 benches/compare.py --loops asyncio:new_event_loop,uvloop:new_event_loop \
        --workloads call_soon_chain,timers --reps 5 --markdown results/table.md

Each round runs every workload on every loop in turn (A B C D A B C D ...), so a
slow patch of a noisy machine hits all loops alike. Loops that cannot be imported
are reported as unavailable and skipped; a failed run is reported and makes the
exit status 1.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import loopspec
import report
import workloads

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "runner.py"
DEFAULT_LOOPS = "asyncio:new_event_loop,uvloop:new_event_loop,rloop:new_event_loop,glassloop:new_event_loop"


def child(python, args, timeout):
    """Run runner.py with ``args``; return its last JSON line, or a failure record."""
    try:
        done = subprocess.run([python, str(RUNNER), *args], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"no result within {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return {"ok": False, "error": tail[0]}
    return json.loads(lines[-1])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", default=DEFAULT_LOOPS,
                        help="comma-separated factory paths, module:callable[?k=v&...]")
    parser.add_argument("--workloads", default=",".join(workloads.NAMES),
                        help=f"comma-separated, from: {', '.join(workloads.NAMES)}")
    parser.add_argument("--reps", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="small N and 1 round: a smoke test for CI")
    parser.add_argument("--json", metavar="FILE", help="save raw results here")
    parser.add_argument("--markdown", metavar="FILE", help="save the table with a header")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the workloads (default: this one)")
    parser.add_argument("--timeout", type=float, default=300, help="per run, seconds")
    args = parser.parse_args(argv)
    args.specs = [loopspec.parse(text) for text in args.loops.split(",") if text.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for name in args.workloads:
        if name not in workloads.NAMES:
            parser.error(f"unknown workload {name!r}; known: {', '.join(workloads.NAMES)}")
    if args.quick:
        args.reps = 1
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    meta = report.machine()
    probes = {spec.text: child(args.python, ["--probe", spec.text], 60) for spec in args.specs}
    available = [spec for spec in args.specs if probes[spec.text].get("available")]
    for spec in args.specs:
        probe = probes[spec.text]
        state = probe.get("version") if probe.get("available") else f"unavailable ({probe.get('error')})"
        print(f"{spec.text}: {state}", file=sys.stderr)
    python = next((p["python"] for p in probes.values() if p.get("python")), "unknown")

    runs = []
    extra = ["--quick"] if args.quick else []
    for rep in range(1, args.reps + 1):
        for workload in args.workloads:
            for spec in available:
                record = child(args.python, ["--loop", spec.text, "--workload", workload,
                                             "--timeout", str(args.timeout), *extra],
                               args.timeout + 30)
                record.update(loop=spec.text, label=spec.label, workload=workload, rep=rep)
                runs.append(record)
                shown = f"{record['value']:,.0f} {record['unit']}" if record.get("ok") \
                    else f"FAILED: {record.get('error')}"
                print(f"[{rep}/{args.reps}] {workload:16} {spec.label:24} {shown}",
                      file=sys.stderr, flush=True)

    meta["loadavg_end"] = os.getloadavg()[0]
    labels = [spec.label for spec in available]
    table = report.summarize(runs, args.workloads, labels)
    body = report.table_markdown(table, args.workloads, labels, args.reps)
    problems = report.problems_markdown(probes, runs)
    print(body + ("\n\n" + problems if problems else ""))

    if args.markdown:
        header = report.header_markdown(meta, probes, python)
        text = "\n\n".join(part for part in (header, body, problems) if part) + "\n"
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        summary = [{"workload": w, "loop": label, **row} for (w, label), row in table.items()]
        Path(args.json).write_text(json.dumps(
            {"meta": {**meta, "python": python}, "loops": probes, "runs": runs,
             "summary": summary}, indent=1) + "\n")
    return 1 if any(not run.get("ok") for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
