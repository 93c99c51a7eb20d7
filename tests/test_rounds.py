"""benches/rounds.py: per-round ratios against each peer, rounds disturbed by
other processes left out, which figure decides a cell, and whether its verdict
stands out of the noise."""

import os
import statistics
import sys

BENCHES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benches")
sys.path.append(BENCHES)

import rounds  # noqa: E402  (benches/rounds.py)


def run(label, rep, rps, cpu_us, loadgen=0.6, other=0.0, workload="protocol", size=1024, conns=10):
    return {"ok": True, "label": label, "rep": rep, "workload": workload, "size": size, "conns": conns,
            "rps": rps, "cpu_us": cpu_us, "loadgen_util": loadgen, "other_cpus": other}


def test_each_round_is_judged_against_each_peer_and_the_best_of_the_round():
    doc = {"runs": [
        run("uvloop", 1, 100, 10), run("rloop", 1, 200, 8), run("glassloop", 1, 220, 9),
        run("uvloop", 2, 300, 5), run("rloop", 2, 100, 9), run("glassloop", 2, 270, 6),
        run("uvloop", 3, 100, 10), run("rloop", 3, 100, 10), run("glassloop", 3, 150, 7),
    ]}
    found, dropped = rounds.collect([doc], "glassloop", ["uvloop", "rloop"], 0.1)
    assert dropped == {}
    cell = found[("protocol", 1024, 10)]
    assert sorted(r[0] for r in cell["uvloop"]) == [0.9, 1.5, 2.2]
    assert sorted(r[0] for r in cell["rloop"]) == [1.1, 1.5, 2.7]
    assert sorted(r[0] for r in cell[rounds.BEST]) == [0.9, 1.1, 1.5]  # 270/300 (uvloop's round), 220/200, 150/100
    (row,) = rounds.verdicts(found, 0.9)
    assert row["against"]["uvloop"]["rate"] == 1.5 and row["against"][rounds.BEST]["rate"] == 1.1
    assert row["against"]["rloop"]["decides"] == "rate" and row["ahead"]


def test_behind_one_peer_is_behind():
    doc = {"runs": [run("uvloop", r, 100, 10) for r in (1, 2, 3)] + [run("rloop", r, 130, 10) for r in (1, 2, 3)]
           + [run("glassloop", r, 120, 10) for r in (1, 2, 3)]}
    (row,) = rounds.verdicts(rounds.collect([doc], "glassloop", ["uvloop", "rloop"], 0.1)[0], 0.9)
    assert row["against"]["uvloop"]["ahead"] and not row["against"]["rloop"]["ahead"]
    assert not row["ahead"]
    table = rounds.markdown([row], {}, "glassloop", ["uvloop", "rloop"])
    assert ("| protocol 1 KiB ×10 | 3 (0) | 60% | rate 1.20 (1.20–1.20) [1.20, 1.20] "
            "| rate 0.92 (0.92–0.92) [0.92, 0.92] | rate 0.92 (0.92–0.92) |") in table
    assert table.endswith("| behind |")  # every round says so: beyond noise


def test_disturbed_rounds_are_left_out_and_counted():
    doc = {"runs": [
        run("rloop", 1, 100, 10), run("glassloop", 1, 50, 20, other=0.4),
        run("rloop", 2, 100, 10, other=0.3), run("glassloop", 2, 50, 20),
        run("rloop", 3, 100, 10), run("glassloop", 3, 120, 8),
    ]}
    found, dropped = rounds.collect([doc], "glassloop", ["rloop"], 0.1)
    assert dropped == {("protocol", 1024, 10): 2}
    assert found[("protocol", 1024, 10)]["rloop"] == [(1.2, 0.8, 0.6)]


def test_cpu_decides_where_the_load_generator_is_the_bottleneck():
    # Faster but dearer per request: ahead on rate, behind where CPU decides.
    doc = {"runs": [run("rloop", 1, 100, 10, loadgen=0.95), run("glassloop", 1, 110, 11, loadgen=0.95)]}
    found, _ = rounds.collect([doc], "glassloop", ["rloop"], 0.1)
    (row,) = rounds.verdicts(found, 0.9)
    assert row["against"]["rloop"]["decides"] == "CPU" and not row["ahead"]
    (row,) = rounds.verdicts(found, 0.99)
    assert row["against"]["rloop"]["decides"] == "rate" and row["ahead"]


def test_rounds_pool_across_files_and_skip_failed_runs():
    one = {"runs": [run("rloop", 1, 100, 10), run("glassloop", 1, 90, 10)]}
    two = {"runs": [run("rloop", 1, 100, 10), {**run("glassloop", 1, 500, 1), "ok": False},
                    run("rloop", 2, 100, 10), run("glassloop", 2, 130, 10)]}
    found, _ = rounds.collect([one, two], "glassloop", ["rloop"], 0.1)
    assert sorted(r[0] for r in found[("protocol", 1024, 10)]["rloop"]) == [0.9, 1.3]
    assert rounds.cell_name(("streams", 65536, 100)) == "streams 64 KiB ×100"


def test_the_median_interval_holds_the_median_and_narrows_with_rounds():
    values = [0.8, 0.9, 1.0, 1.1, 1.2, 0.95, 1.05]
    low, high = rounds.median_interval(values)
    assert low <= statistics.median(values) <= high and low >= min(values) and high <= max(values)
    assert rounds.median_interval(values) == (low, high)  # fixed seed: the same table from the same files
    low4, high4 = rounds.median_interval(values * 4)
    assert high4 - low4 < high - low


def test_a_verdict_the_rounds_do_not_settle_is_within_noise():
    # Ahead of uvloop in every round; ahead of rloop by the median, but rounds on both sides.
    rates = [(100, 90), (100, 115), (100, 104), (100, 96), (100, 108)]
    doc = {"runs": [r for rep, (uv, rl) in enumerate(rates, 1)
                    for r in (run("uvloop", rep, 80, 10), run("rloop", rep, rl, 10), run("glassloop", rep, uv, 10))]}
    (row,) = rounds.verdicts(rounds.collect([doc], "glassloop", ["uvloop", "rloop"], 0.1)[0], 0.9)
    assert row["ahead"] is False  # 100/104 is the median against rloop
    assert row["noise"] == ["rloop"] and row["against"]["uvloop"]["beyond_noise"]
    assert rounds.markdown([row], {}, "glassloop", ["uvloop", "rloop"]).endswith("| behind, within noise of rloop |")
