"""N callbacks scheduled at once with ``call_soon``, then one run until all ran.

Measures handle creation plus draining a long ready queue in one iteration;
also checks the queue is FIFO, as asyncio guarantees.
"""

from time import perf_counter

from . import check

UNIT = "callbacks/s"
N = 1_000_000
QUICK_N = 20_000


def run(loop, n):
    ran = 0
    out_of_order = 0

    def callback(i):
        nonlocal ran, out_of_order
        if i != ran:
            out_of_order += 1
        ran += 1

    start = perf_counter()
    for i in range(n):
        loop.call_soon(callback, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    elapsed = perf_counter() - start
    check(ran == n, f"{ran} callbacks ran, expected {n}")
    check(out_of_order == 0, f"{out_of_order} callbacks ran out of call_soon order")
    return {"ops": ran, "elapsed_s": elapsed}
