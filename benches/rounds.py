"""Per-round verdicts from one or more net_compare.py --json files: in each round
(one measurement of every loop in turn), a loop's requests/s and server CPU per
request over the best peer of that same round, then medians over all the rounds
of every file.

    python3 benches/rounds.py --me glassloop --peers uvloop,rloop --max-other 0.1 run1.json run2.json

A ratio of two measurements taken seconds apart cancels most of the machine's
slow drift; the median over rounds does the rest. A round is left out if any of
its measurements ran while other processes used more than ``--max-other`` CPUs:
on a virtual machine that is mostly steal (the host running someone else on our
CPUs), which takes CPU from the server at random and says nothing of the loop.
Where the load generator used at least ``--loadgen-bound`` of its core, the server
is not the bottleneck and CPU/request decides; elsewhere requests/s does.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict

WORKLOAD_ORDER = ("protocol", "buffered", "streams", "sock", "unix", "udp", "tls", "http")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="net_compare.py --json outputs")
    parser.add_argument("--me", default="glassloop", help="the loop to judge (its label)")
    parser.add_argument("--peers", default="uvloop,rloop", help="labels of the loops to beat")
    parser.add_argument("--max-other", type=float, default=0.1, metavar="CPUS",
                        help="leave out rounds where other processes (steal included) used more")
    parser.add_argument("--loadgen-bound", type=float, default=0.9, metavar="UTIL",
                        help="load generator CPU from which CPU/request decides (default 0.9)")
    return parser.parse_args(argv)


def collect(docs, me, peers, max_other):
    """{cell: [(rate ratio, CPU ratio, loadgen util)]} and {cell: rounds left out}."""
    rounds, dropped = defaultdict(list), defaultdict(int)
    for doc in docs:
        by_round = defaultdict(dict)
        for run in doc["runs"]:
            if run.get("ok"):
                by_round[(run["workload"], run["size"], run["conns"], run["rep"])][run["label"]] = run
        for (workload, size, conns, _), runs in by_round.items():
            others = [runs[p] for p in peers if p in runs]
            if me not in runs or not others:
                continue
            cell = (workload, size, conns)
            if any((r.get("other_cpus") or 0) > max_other for r in [runs[me], *others]):
                dropped[cell] += 1
                continue
            mine = runs[me]
            rounds[cell].append((mine["rps"] / max(r["rps"] for r in others),
                                 mine["cpu_us"] / min(r["cpu_us"] for r in others),
                                 mine["loadgen_util"]))
    return rounds, dropped


def verdicts(rounds, loadgen_bound):
    """One row per cell: rounds, medians and ranges, what decides, ahead or not."""
    rows = []
    for cell, values in rounds.items():
        rate, cpu = [v[0] for v in values], [v[1] for v in values]
        loadgen = statistics.median(v[2] for v in values)
        by_cpu = loadgen >= loadgen_bound
        decisive = statistics.median(cpu) if by_cpu else statistics.median(rate)
        rows.append({"cell": cell, "rounds": len(values), "loadgen": loadgen,
                     "rate": statistics.median(rate), "rate_range": (min(rate), max(rate)),
                     "cpu": statistics.median(cpu), "cpu_range": (min(cpu), max(cpu)),
                     "decides": "CPU" if by_cpu else "rate",
                     "ahead": decisive < 1 if by_cpu else decisive > 1})
    order = {w: i for i, w in enumerate(WORKLOAD_ORDER)}
    rows.sort(key=lambda r: (order.get(r["cell"][0], len(order)), r["cell"][0], r["cell"][1] or 0, r["cell"][2]))
    return rows


def cell_name(cell):
    workload, size, conns = cell
    if size is None:
        return f"{workload} ×{conns}"
    shown = f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"
    return f"{workload} {shown} ×{conns}"


def markdown(rows, dropped, me):
    lines = [f"| cell | rounds (left out) | loadgen CPU | {me} rate × best peer: median (range) "
             f"| CPU/req × best peer: median (range) | decides | verdict |",
             "|---|---:|---:|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {cell_name(r['cell'])} | {r['rounds']} ({dropped.get(r['cell'], 0)}) | {100 * r['loadgen']:.0f}% "
            f"| {r['rate']:.2f} ({r['rate_range'][0]:.2f}–{r['rate_range'][1]:.2f}) "
            f"| {r['cpu']:.2f} ({r['cpu_range'][0]:.2f}–{r['cpu_range'][1]:.2f}) "
            f"| {r['decides']} | {'ahead' if r['ahead'] else 'behind'} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    docs = []
    for name in args.files:
        with open(name) as f:
            docs.append(json.load(f))
    rounds, dropped = collect(docs, args.me, args.peers.split(","), args.max_other)
    if not rounds:
        print(f"no round has {args.me} and a peer", file=sys.stderr)
        return 1
    rows = verdicts(rounds, args.loadgen_bound)
    print(markdown(rows, dropped, args.me))
    ahead = sum(r["ahead"] for r in rows)
    print(f"\n{args.me}: ahead of the best of {args.peers} in {ahead} of {len(rows)} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
