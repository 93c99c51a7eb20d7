"""Another thread calls ``call_soon_threadsafe`` N times as fast as it can; the loop
counts the callbacks and stops at N.

Measures the cross-thread wakeup path (lock, self-pipe/eventfd write) under GIL
contention between the two threads. Checks count and FIFO order.
"""

import threading
from time import perf_counter

from . import check

UNIT = "callbacks/s"
N = 200_000
QUICK_N = 10_000


def run(loop, n):
    ran = 0
    out_of_order = 0

    def callback(i):
        nonlocal ran, out_of_order
        if i != ran:
            out_of_order += 1
        ran += 1
        if ran == n:
            loop.stop()

    def produce():
        call = loop.call_soon_threadsafe
        for i in range(n):
            call(callback, i)

    producer = threading.Thread(target=produce, name="threadsafe-producer")
    start = perf_counter()
    loop.call_soon(producer.start)
    loop.run_forever()
    elapsed = perf_counter() - start
    producer.join()
    check(ran == n, f"{ran} callbacks ran, expected {n}")
    check(out_of_order == 0, f"{out_of_order} callbacks ran out of submission order")
    return {"ops": ran, "elapsed_s": elapsed}
