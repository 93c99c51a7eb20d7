"""call_later, call_at, time() and TimerHandle."""

import gc
import random
import sys
import time

import pytest

from loopsupport import rss_bytes, run_one_iteration


def noop(*args):
    pass


# ---------------------------------------------------------------------------
# time()
# ---------------------------------------------------------------------------

def test_time_is_monotonic_float(loop):
    values = [loop.time() for _ in range(1000)]
    assert all(isinstance(v, float) for v in values)
    assert values == sorted(values)


def test_time_is_time_monotonic(loop):
    """asyncio's loop.time() is time.monotonic(): code mixes the two."""
    for _ in range(5):
        before = time.monotonic()
        t = loop.time()
        after = time.monotonic()
        assert before - 0.001 <= t <= after + 0.001


def test_time_advances_like_time_monotonic(loop):
    t0, m0 = loop.time(), time.monotonic()
    time.sleep(0.1)
    t1, m1 = loop.time(), time.monotonic()
    assert abs((t1 - t0) - (m1 - m0)) < 0.005


def test_time_advances_inside_callbacks(loop):
    """time() is read live, not cached once per iteration."""
    seen = []

    def cb():
        seen.append(loop.time())
        time.sleep(0.02)
        seen.append(loop.time())

    loop.call_soon(cb)
    run_one_iteration(loop)
    assert seen[1] - seen[0] >= 0.019


# ---------------------------------------------------------------------------
# call_later / call_at
# ---------------------------------------------------------------------------

def test_call_later_fires_after_delay(loop):
    fired = []
    start = loop.time()
    loop.call_later(0.05, lambda: fired.append(loop.time()))
    loop.call_later(0.1, loop.stop)
    loop.run_forever()
    assert len(fired) == 1
    assert fired[0] - start >= 0.05
    assert fired[0] - start < 1.0


def test_call_later_when(loop):
    before = loop.time()
    h = loop.call_later(10, noop)
    after = loop.time()
    assert before + 10 <= h.when() <= after + 10
    h.cancel()


def test_call_at_when_is_given_when(loop):
    when = loop.time() + 123.25
    h = loop.call_at(when, noop)
    assert h.when() == when
    h.cancel()


def test_call_later_args(loop):
    got = []
    loop.call_later(0.001, lambda *a: got.append(a), 1, "x")
    loop.call_at(loop.time() + 0.001, lambda *a: got.append(a), 2, "y")
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert sorted(got) == [(1, "x"), (2, "y")]


@pytest.mark.parametrize("delay", [0, 0.0, -1, -0.5])
def test_call_later_zero_or_negative_delay_fires(loop, delay):
    fired = []
    loop.call_later(delay, fired.append, delay)
    loop.call_later(0.02, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert fired == [delay]
    assert time.monotonic() - t0 < 1.0


def test_call_at_in_the_past_fires(loop):
    fired = []
    loop.call_at(loop.time() - 100, fired.append, "past")
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert fired == ["past"]


def test_call_later_int_delay(loop):
    h = loop.call_later(1, noop)
    assert isinstance(h.when(), float)
    h.cancel()


def test_huge_delay_does_not_overflow(loop):
    h1 = loop.call_later(1e9, noop)
    h2 = loop.call_at(loop.time() + 1e12, noop)
    loop.call_soon(loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 1.0
    assert not h1.cancelled() and not h2.cancelled()
    h1.cancel()
    h2.cancel()


def test_timer_never_fires_early(loop):
    rnd = random.Random(1234)
    records = []

    def cb(handle_box):
        records.append((loop.time(), handle_box[0].when()))

    for _ in range(200):
        box = []
        box.append(loop.call_later(rnd.uniform(0, 0.05), cb, box))
    loop.call_later(0.08, loop.stop)
    loop.run_forever()
    assert len(records) == 200
    early = [(fired, when) for fired, when in records if fired < when]
    assert early == [], "timers fired before their when()"


def test_timers_fire_in_when_order(loop):
    rnd = random.Random(99)
    base = loop.time() + 0.01
    offsets = [i * 0.0001 for i in range(300)]  # distinct whens
    rnd.shuffle(offsets)
    fired = []
    for off in offsets:
        loop.call_at(base + off, fired.append, off)
    loop.call_at(base + 0.1, loop.stop)
    loop.run_forever()
    assert fired == sorted(offsets)


def test_equal_when_timers_all_fire_between_earlier_and_later(loop):
    base = loop.time() + 0.01
    fired = []
    loop.call_at(base - 0.005, fired.append, ("early", 0))
    for i in range(100):
        loop.call_at(base, fired.append, ("tie", i))
    loop.call_at(base + 0.005, fired.append, ("late", 0))
    loop.call_at(base + 0.05, loop.stop)
    loop.run_forever()
    assert fired[0] == ("early", 0)
    assert fired[-1] == ("late", 0)
    assert sorted(fired[1:-1]) == [("tie", i) for i in range(100)]


def test_equal_when_timers_fire_in_scheduling_order(loop, loop_name, request):
    """glassloop keeps ties in scheduling order.

    asyncio does not promise it (its heapq is not stable; the docs say the order
    of callbacks scheduled for the same time is undefined), so the asyncio run
    is an expected failure that shows the test can fail.
    """
    if loop_name == "asyncio":
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="asyncio's timer heap does not keep ties in "
                                "scheduling order (documented as undefined)"))
    base = loop.time() + 0.01
    fired = []
    for i in range(1000):
        loop.call_at(base, fired.append, i)
    loop.call_at(base + 0.05, loop.stop)
    loop.run_forever()
    assert fired == list(range(1000))


def test_timer_scheduled_from_timer_with_earlier_when(loop):
    fired = []

    def first():
        fired.append("first")
        loop.call_later(0.001, fired.append, "inner")

    loop.call_later(0.01, first)
    loop.call_later(0.05, fired.append, "outer")
    loop.call_later(0.08, loop.stop)
    loop.run_forever()
    assert fired == ["first", "inner", "outer"]


def test_zero_delay_timer_from_callback_runs_on_a_later_iteration(loop):
    order = []

    def cb():
        order.append("cb")
        loop.call_later(0, order.append, "timer")

    loop.call_soon(cb)
    run_one_iteration(loop)
    assert order == ["cb"]
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert order == ["cb", "timer"]


def test_idle_loop_with_timer_does_not_spin(loop):
    """A loop waiting for a timer sleeps: it uses little CPU."""
    loop.call_later(0.3, loop.stop)
    cpu0, wall0 = time.process_time(), time.monotonic()
    loop.run_forever()
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - wall0
    assert wall >= 0.29
    assert cpu < 0.5 * wall, "loop busy-waited: {:.3f}s CPU in {:.3f}s".format(
        cpu, wall)


# ---------------------------------------------------------------------------
# TimerHandle
# ---------------------------------------------------------------------------

def test_timer_handle_cancel(loop):
    fired = []
    h = loop.call_later(0.01, fired.append, 1)
    assert h.cancelled() is False
    h.cancel()
    assert h.cancelled() is True
    h.cancel()
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert fired == []


def test_timer_handle_not_cancelled_after_firing(loop):
    fired = []
    h = loop.call_later(0, fired.append, 1)
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert fired == [1]
    assert h.cancelled() is False


def test_timer_handle_ordering(loop):
    now = loop.time()
    h1 = loop.call_at(now + 10, noop)
    h2 = loop.call_at(now + 20, noop)
    h1_twin = loop.call_at(now + 10, noop)
    try:
        assert h1 < h2
        assert h1 <= h2
        assert h2 > h1
        assert h2 >= h1
        assert not (h2 < h1)
        assert not (h1 > h2)
        assert h1 <= h1_twin and h1 >= h1_twin
        assert h1 == h1
        assert h1 == h1_twin  # same when, callback and args
        assert not (h1 != h1_twin)
        assert h1 != h2
        assert not (h1 == h2)
        assert sorted([h2, h1]) == [h1, h2]
    finally:
        for h in (h1, h2, h1_twin):
            h.cancel()


def test_timer_handle_equality_needs_same_callback_and_args(loop):
    now = loop.time()
    a = loop.call_at(now + 10, noop, 1)
    b = loop.call_at(now + 10, noop, 2)
    c = loop.call_at(now + 10, sys.exit)
    try:
        assert a != b
        assert a != c
        assert not (a < b) and not (b < a)
    finally:
        for h in (a, b, c):
            h.cancel()


def test_many_call_later_cancel_memory_is_flat(loop):
    """1,000,000 call_later(3600)+cancel in batches: cancelled timers are
    dropped, memory does not grow with the number of timers ever made."""
    batch = 10_000

    def one_batch():
        handles = [loop.call_later(3600, noop) for _ in range(batch)]
        for h in handles:
            h.cancel()
        del handles
        run_one_iteration(loop)

    for _ in range(10):  # warm up allocator pools
        one_batch()
    gc.collect()
    blocks0 = sys.getallocatedblocks()
    rss0 = rss_bytes()
    for _ in range(100):
        one_batch()
    gc.collect()
    blocks1 = sys.getallocatedblocks()
    rss1 = rss_bytes()
    # 1,000,000 leaked handles would be >= 1,000,000 blocks / tens of MB.
    assert blocks1 - blocks0 < 50_000, blocks1 - blocks0
    assert rss1 - rss0 < 25 * 2**20, (rss1 - rss0) / 2**20


def test_timer_handle_when_after_cancel(loop):
    when = loop.time() + 50
    h = loop.call_at(when, noop)
    h.cancel()
    assert h.when() == when


def test_timer_handles_are_hashable(loop):
    now = loop.time()
    h1 = loop.call_at(now + 10, noop)
    h2 = loop.call_at(now + 20, noop)
    assert len({h1, h2}) == 2
    h1.cancel()
    h2.cancel()


def test_timer_cancelled_by_timer_due_in_same_iteration(loop):
    """Both timers are due in one iteration; the first cancels the second,
    which then must not run."""
    fired = []
    handles = {}
    when = loop.time() + 0.01

    def first():
        fired.append("first")
        handles["second"].cancel()

    handles["first"] = loop.call_at(when, first)
    handles["second"] = loop.call_at(when + 1e-6, fired.append, "second")
    loop.call_at(when + 0.03, loop.stop)
    # Let both become due before the loop looks at them.
    time.sleep(0.02)
    loop.run_forever()
    assert fired == ["first"]


def test_many_timers_fire_in_order_and_never_early(loop):
    rnd = random.Random(7)
    n = 100_000
    base = loop.time() + 0.02
    fired = []
    append = fired.append
    whens = [base + rnd.uniform(0, 0.2) for _ in range(n)]
    for i, when in enumerate(whens):
        loop.call_at(when, lambda i=i: append((i, loop.time())))
    loop.call_at(base + 0.3, loop.stop)
    loop.run_forever()
    assert len(fired) == n
    order = [i for i, _ in fired]
    assert [whens[i] for i in order] == sorted(whens)
    assert all(t >= whens[i] for i, t in fired)
