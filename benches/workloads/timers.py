"""N ``call_later`` timers with random delays in [0, 10 ms]; every second one is
cancelled; the loop runs until the rest fired.

Rate counts timers scheduled plus timers fired, per second, over scheduling,
cancelling and firing. Checks: no cancelled timer fires, every other timer fires
exactly once, and none fires before its ``when()`` by the loop's own clock
(asyncio itself treats a deadline within one clock resolution as due, so that much
is allowed).
"""

import random
import time
from time import perf_counter

from . import check

UNIT = "timers/s"
N = 100_000
QUICK_N = 5_000
MAX_DELAY = 0.010
SEED = 12345


def run(loop, n):
    rng = random.Random(SEED)
    delays = [rng.uniform(0.0, MAX_DELAY) for _ in range(n)]
    expected = n - n // 2
    tolerance = time.get_clock_info("monotonic").resolution
    fired = [0] * n
    count = 0
    early = 0
    max_early = 0.0
    handles = []

    def fire(i):
        nonlocal count, early, max_early
        ahead = handles[i].when() - loop.time()
        if ahead > tolerance:
            early += 1
            max_early = max(max_early, ahead)
        fired[i] += 1
        count += 1
        if count == expected:
            loop.stop()

    start = perf_counter()
    handles.extend(loop.call_later(delay, fire, i) for i, delay in enumerate(delays))
    for handle in handles[1::2]:
        handle.cancel()
    loop.run_forever()
    elapsed = perf_counter() - start

    check(not any(fired[1::2]), f"{sum(fired[1::2])} cancelled timers fired")
    check(all(x == 1 for x in fired[0::2]), "a live timer fired zero or several times")
    check(early == 0, f"{early} timers fired before when(), up to {max_early * 1e3:.3f} ms early")
    return {"ops": n + count, "elapsed_s": elapsed, "scheduled": n, "fired": count}
