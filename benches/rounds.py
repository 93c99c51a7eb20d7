"""Per-round verdicts from one or more net_compare.py --json files: in each round
(one measurement of every loop in turn), a loop's requests/s and server CPU per
request over each peer's in that same round, then medians over all the rounds
of every file.

    python3 benches/rounds.py --me glassloop --peers uvloop,rloop --max-other 0.1 run1.json run2.json

A ratio of two measurements taken seconds apart cancels most of the machine's
slow drift; the median over rounds does the rest. A round is left out if any of
its measurements ran while other processes used more than ``--max-other`` CPUs:
on a virtual machine that is mostly steal (the host running someone else on our
CPUs), which takes CPU from the server at random and says nothing of the loop.
Where the load generator used at least ``--loadgen-bound`` of its core, the server
is not the bottleneck and CPU/request decides; elsewhere requests/s does.

"Ahead" means ahead of every peer, each judged on its own. Each deciding median
comes with a 95% interval (bootstrap: the median of rounds drawn again with
replacement, 2,000 times, fixed seed); where that interval holds 1, the cell's
verdict says so ("within noise of rloop"): more rounds could turn it. The ratio over the
best peer of each round is shown too, but not used: the better of two noisy
measurements is biased upwards: a loop equal to both peers, with ±10–15% noise
per measurement, reads 0.92–0.95 there (median of x / max(y, z), all three
drawn alike).
"""

import argparse
import json
import random
import statistics
import sys
from collections import defaultdict

from net_compare import cell_name

#: The key of the comparison with the best peer of each round.
BEST = "best"
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
    """{cell: {peer or BEST: [(rate ratio, CPU ratio, loadgen util)]}} and {cell: rounds left out}."""
    rounds, dropped = defaultdict(lambda: defaultdict(list)), defaultdict(int)
    for doc in docs:
        by_round = defaultdict(dict)
        for run in doc["runs"]:
            if run.get("ok"):
                by_round[(run["workload"], run["size"], run["conns"], run["rep"])][run["label"]] = run
        for (workload, size, conns, _), runs in by_round.items():
            others = {p: runs[p] for p in peers if p in runs}
            if me not in runs or not others:
                continue
            cell = (workload, size, conns)
            mine = runs[me]
            if any((r.get("other_cpus") or 0) > max_other for r in [mine, *others.values()]):
                dropped[cell] += 1
                continue
            for peer, theirs in others.items():
                rounds[cell][peer].append((mine["rps"] / theirs["rps"], mine["cpu_us"] / theirs["cpu_us"],
                                           mine["loadgen_util"]))
            rounds[cell][BEST].append((mine["rps"] / max(r["rps"] for r in others.values()),
                                       mine["cpu_us"] / min(r["cpu_us"] for r in others.values()),
                                       mine["loadgen_util"]))
    return rounds, dropped


def median_interval(values, level=0.95, resamples=2000, seed=0):
    """A bootstrap interval of the median: the rounds drawn again with replacement,
    `resamples` times, and the middle `level` of the medians found. A fixed seed
    makes a table reproducible from its files."""
    draw = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(draw.choices(values, k=n)) for _ in range(resamples))
    cut = int(resamples * (1 - level) / 2)
    return medians[cut], medians[resamples - 1 - cut]


def summary(values, loadgen_bound):
    """Medians and ranges of one comparison, what decides it, whether it is won,
    and whether the deciding median's interval leaves out 1 (`beyond_noise`)."""
    rate, cpu = [v[0] for v in values], [v[1] for v in values]
    rate_median, cpu_median = statistics.median(rate), statistics.median(cpu)
    loadgen = statistics.median(v[2] for v in values)
    by_cpu = loadgen >= loadgen_bound
    low, high = median_interval(cpu if by_cpu else rate)
    return {"rounds": len(values), "loadgen": loadgen,
            "rate": rate_median, "rate_range": (min(rate), max(rate)),
            "cpu": cpu_median, "cpu_range": (min(cpu), max(cpu)),
            "decides": "CPU" if by_cpu else "rate", "ahead": cpu_median < 1 if by_cpu else rate_median > 1,
            "interval": (low, high), "beyond_noise": not low <= 1 <= high}


def verdicts(rounds, loadgen_bound):
    """One row per cell: the summary against each peer and against the best of
    each round; ahead if ahead of every peer, and which peers the verdict is
    within noise of."""
    rows = []
    for cell, by_peer in rounds.items():
        against = {peer: summary(values, loadgen_bound) for peer, values in by_peer.items()}
        peers = [p for p in against if p != BEST]
        ahead = all(against[p]["ahead"] for p in peers)
        # Behind: the peers it is behind decide; ahead: every peer does.
        deciding = peers if ahead else [p for p in peers if not against[p]["ahead"]]
        rows.append({"cell": cell, "against": against, "ahead": ahead,
                     "noise": [p for p in deciding if not against[p]["beyond_noise"]]})
    order = {w: i for i, w in enumerate(WORKLOAD_ORDER)}
    rows.sort(key=lambda r: (order.get(r["cell"][0], len(order)), r["cell"][0], r["cell"][1] or 0, r["cell"][2]))
    return rows


def markdown(rows, dropped, me, peers):
    """The verdict table: per peer, the deciding ratio's median, its range over
    the rounds, and its 95% interval."""
    def decisive(c, interval=True):
        key = "cpu" if c["decides"] == "CPU" else "rate"
        text = f"{c['decides']} {c[key]:.2f} ({c[key + '_range'][0]:.2f}–{c[key + '_range'][1]:.2f})"
        return text + (f" [{c['interval'][0]:.2f}, {c['interval'][1]:.2f}]" if interval else "")

    def verdict(r):
        text = "ahead" if r["ahead"] else "behind"
        return text + (f", within noise of {' and '.join(r['noise'])}" if r["noise"] else "")
    head = " | ".join(f"{me} × {p}" for p in peers)
    lines = [f"| cell | rounds (left out) | loadgen CPU | {head} | × best peer of the round | verdict |",
             "|---|---:|---:|" + "---|" * len(peers) + "---|---|"]
    for r in rows:
        best = r["against"][BEST]
        cells = " | ".join(decisive(r["against"][p]) if p in r["against"] else "–" for p in peers)
        lines.append(f"| {cell_name(r['cell'])} | {best['rounds']} ({dropped.get(r['cell'], 0)}) "
                     f"| {100 * best['loadgen']:.0f}% | {cells} | {decisive(best, False)} "
                     f"| {verdict(r)} |")
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
    print(markdown(rows, dropped, args.me, args.peers.split(",")))
    ahead = sum(r["ahead"] for r in rows)
    clear = sum(r["ahead"] and not r["noise"] for r in rows)
    behind = sum(not r["ahead"] and not r["noise"] for r in rows)
    print(f"\n{args.me}: ahead of each of {args.peers} in {ahead} of {len(rows)} cells "
          f"({clear} beyond noise); behind beyond noise in {behind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
