"""N ``call_later`` timers with random delays in [0, 10 ms]; every second one is
cancelled; the loop runs until the rest fired.

Rate counts timers scheduled plus timers fired, per second, over scheduling,
cancelling and firing. Checks: no cancelled timer fires, every other timer fires
exactly once, and none fires before its ``when()`` by the loop's own clock
(asyncio itself treats a deadline within one clock resolution as due, so that much
is allowed). Scheduling 100,000 timers takes longer than 10 ms, so most are overdue
when the loop starts; an untimed second round of a few hundred timers, scheduled
within a fraction of a millisecond, makes the early-firing check bite.

uvloop returns a plain ``Handle``, without ``when()``, for delays that round to
0 ms; those are counted as ``immediate`` and only checked for firing.
"""

import random
import time
from time import perf_counter

from . import check

UNIT = "timers/s"
N = 100_000
QUICK_N = 5_000
CHECK_N = 400
MAX_DELAY = 0.010
SEED = 12345


def schedule_and_run(loop, delays):
    """Schedule, cancel odd ones, run until the even ones fired; check; return stats."""
    n = len(delays)
    expected = n - n // 2
    tolerance = time.get_clock_info("monotonic").resolution
    fired = [0] * n
    handles = []
    stats = {"fired": 0, "early": 0, "max_early": 0.0, "immediate": 0}

    def fire(i):
        when = getattr(handles[i], "when", None)
        if when is None:
            stats["immediate"] += 1
        else:
            ahead = when() - loop.time()
            if ahead > tolerance:
                stats["early"] += 1
                stats["max_early"] = max(stats["max_early"], ahead)
        fired[i] += 1
        stats["fired"] += 1
        if stats["fired"] == expected:
            loop.stop()

    start = perf_counter()
    handles.extend(loop.call_later(delay, fire, i) for i, delay in enumerate(delays))
    for handle in handles[1::2]:
        handle.cancel()
    loop.run_forever()
    elapsed = perf_counter() - start

    check(not any(fired[1::2]), f"{sum(fired[1::2])} cancelled timers fired")
    check(all(x == 1 for x in fired[0::2]), "a live timer fired zero or several times")
    check(stats["early"] == 0, f"{stats['early']} timers fired before when(), "
                               f"up to {stats['max_early'] * 1e3:.3f} ms early")
    return elapsed, stats


def run(loop, n):
    rng = random.Random(SEED)
    elapsed, stats = schedule_and_run(loop, [rng.uniform(0.0, MAX_DELAY) for _ in range(n)])
    schedule_and_run(loop, [rng.uniform(0.0, MAX_DELAY) for _ in range(CHECK_N)])
    return {"ops": n + stats["fired"], "elapsed_s": elapsed, "scheduled": n,
            "fired": stats["fired"], "immediate": stats["immediate"]}
