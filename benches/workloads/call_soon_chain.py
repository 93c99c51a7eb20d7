"""One callback that re-schedules itself with ``call_soon`` until it has run N times.

Only one handle is ever ready, so each callback costs a full loop iteration
(ready-queue pop, a zero-timeout poll, timer check): this is the loop's
per-iteration overhead.
"""

from time import perf_counter

from . import check

UNIT = "callbacks/s"
N = 1_000_000
QUICK_N = 20_000


def run(loop, n):
    ran = 0

    def step(i):
        nonlocal ran
        ran += 1
        if i + 1 < n:
            loop.call_soon(step, i + 1)
        else:
            loop.stop()

    start = perf_counter()
    loop.call_soon(step, 0)
    loop.run_forever()
    elapsed = perf_counter() - start
    check(ran == n, f"{ran} callbacks ran, expected {n}")
    return {"ops": ran, "elapsed_s": elapsed}
