"""call_soon_threadsafe and loops used from several threads."""

import asyncio
import contextvars
import threading
import time

import pytest

from loopsupport import run_one_iteration


def noop(*args):
    pass


def test_call_soon_threadsafe_from_loop_thread(loop):
    got = []
    h = loop.call_soon_threadsafe(got.append, 1)
    assert h.cancelled() is False
    run_one_iteration(loop)
    assert got == [1]


def test_call_soon_threadsafe_before_run(loop):
    got = []
    t = threading.Thread(target=loop.call_soon_threadsafe, args=(got.append, "x"))
    t.start()
    t.join()
    run_one_iteration(loop)
    assert got == ["x"]


def test_call_soon_threadsafe_handle_cancel(loop):
    got = []
    box = []
    t = threading.Thread(
        target=lambda: box.append(loop.call_soon_threadsafe(got.append, 1)))
    t.start()
    t.join()
    box[0].cancel()
    run_one_iteration(loop)
    assert got == []
    assert box[0].cancelled()


def test_call_soon_threadsafe_wakes_sleeping_loop(loop):
    """The loop sleeps (only a far timer pending); a thread's call_soon_threadsafe
    must wake it at once, not when the timer is due."""
    loop.call_later(3600, noop)
    safety = loop.call_later(10, loop.stop)
    started = threading.Event()
    latency = []

    def cb(sent):
        latency.append(time.monotonic() - sent)
        loop.stop()

    def thread_main():
        started.wait(5)
        time.sleep(0.2)  # let the loop go to sleep in its poll
        loop.call_soon_threadsafe(cb, time.monotonic())

    t = threading.Thread(target=thread_main)
    t.start()
    loop.call_soon(started.set)
    loop.run_forever()
    t.join()
    safety.cancel()
    assert len(latency) == 1
    assert latency[0] < 0.5, "woke after {:.3f}s".format(latency[0])


def test_call_soon_threadsafe_wakes_loop_repeatedly(loop):
    """Each of several wake-ups from a thread is prompt (the wake-up channel
    is re-armed after each use)."""
    loop.call_later(3600, noop)
    latencies = []
    done = threading.Event()
    ack = threading.Event()

    def cb(sent):
        latencies.append(time.monotonic() - sent)
        ack.set()

    def thread_main():
        for _ in range(5):
            time.sleep(0.05)
            ack.clear()
            loop.call_soon_threadsafe(cb, time.monotonic())
            ack.wait(5)
        loop.call_soon_threadsafe(loop.stop)
        done.set()

    t = threading.Thread(target=thread_main)
    t.start()
    safety = loop.call_later(20, loop.stop)
    loop.run_forever()
    t.join()
    safety.cancel()
    assert len(latencies) == 5
    assert max(latencies) < 0.5, latencies


def test_call_soon_threadsafe_many_threads(loop):
    n_threads = 8
    per_thread = 5000
    got = []
    finished = []
    barrier = threading.Barrier(n_threads)

    def on_finished(k):
        finished.append(k)
        if len(finished) == n_threads:
            loop.stop()

    def worker(k):
        barrier.wait()
        for i in range(per_thread):
            loop.call_soon_threadsafe(got.append, (k, i))
        loop.call_soon_threadsafe(on_finished, k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    safety = loop.call_later(30, loop.stop)
    loop.run_forever()
    for t in threads:
        t.join()
    safety.cancel()
    assert sorted(finished) == list(range(n_threads))
    assert len(got) == n_threads * per_thread
    for k in range(n_threads):
        mine = [i for (kk, i) in got if kk == k]
        assert mine == list(range(per_thread)), "thread {}'s order".format(k)


def test_call_soon_threadsafe_context_is_callers(loop):
    var = contextvars.ContextVar("var", default="default")
    seen = []

    def thread_main():
        var.set("thread value")
        loop.call_soon_threadsafe(lambda: seen.append(var.get()))
        ctx = contextvars.Context()
        ctx.run(var.set, "explicit")
        loop.call_soon_threadsafe(lambda: seen.append(var.get()), context=ctx)

    t = threading.Thread(target=thread_main)
    t.start()
    t.join()
    run_one_iteration(loop)
    assert seen == ["thread value", "explicit"]


def test_call_soon_threadsafe_racing_close(loop_factory):
    """Threads hammer call_soon_threadsafe while the loop runs, stops and closes:
    the only error they may see is RuntimeError('Event loop is closed'), and
    they all see it once the loop is closed."""
    for _ in range(20):
        lp = loop_factory()
        unexpected = []
        closed_seen = []
        go = threading.Event()

        def hammer():
            go.wait(5)
            i = 0
            while True:
                i += 1
                if i % 64 == 0:
                    time.sleep(0)  # let the loop thread have the GIL too
                try:
                    lp.call_soon_threadsafe(noop)
                except RuntimeError as exc:
                    if str(exc) == "Event loop is closed":
                        closed_seen.append(exc)
                    else:
                        unexpected.append(exc)
                    return
                except BaseException as exc:
                    unexpected.append(exc)
                    return

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        go.set()
        lp.call_later(0.01, lp.stop)
        lp.run_forever()
        lp.close()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads), \
            "call_soon_threadsafe kept succeeding on a closed loop"
        assert unexpected == []
        assert len(closed_seen) == 4


def test_call_soon_threadsafe_racing_close_of_idle_loop(loop_factory):
    """Same race, the loop never ran: close() while threads schedule."""
    for _ in range(20):
        lp = loop_factory()
        unexpected = []
        go = threading.Event()

        def hammer():
            go.wait(5)
            i = 0
            while True:
                i += 1
                if i % 64 == 0:
                    time.sleep(0)
                try:
                    lp.call_soon_threadsafe(noop)
                except RuntimeError as exc:
                    if str(exc) != "Event loop is closed":
                        unexpected.append(exc)
                    return
                except BaseException as exc:
                    unexpected.append(exc)
                    return

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        go.set()
        time.sleep(0.005)
        lp.close()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
        assert unexpected == []


def test_stop_from_other_thread(loop):
    def thread_main():
        time.sleep(0.05)
        loop.call_soon_threadsafe(loop.stop)

    loop.call_later(3600, noop)
    t = threading.Thread(target=thread_main)
    t.start()
    t0 = time.monotonic()
    safety = loop.call_later(10, loop.stop)
    loop.run_forever()
    t.join()
    safety.cancel()
    assert time.monotonic() - t0 < 5


def test_run_coroutine_threadsafe(loop):
    results = []

    async def work(x):
        await asyncio.sleep(0.01)
        return x + 1

    def thread_main():
        fut = asyncio.run_coroutine_threadsafe(work(41), loop)
        results.append(fut.result(timeout=10))
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=thread_main)
    t.start()
    safety = loop.call_later(20, loop.stop)
    loop.run_forever()
    t.join()
    safety.cancel()
    assert results == [42]


def test_loops_run_in_several_threads(loop_factory):
    """One loop per thread, all running at the same time."""
    n = 4
    results = {}
    errors = []
    barrier = threading.Barrier(n)

    def thread_main(k):
        try:
            lp = loop_factory()
            try:
                async def main():
                    barrier.wait(10)
                    assert asyncio.get_running_loop() is lp
                    total = 0
                    for i in range(200):
                        await asyncio.sleep(0)
                        total += i
                    await asyncio.sleep(0.01)
                    return (k, total, asyncio.get_running_loop() is lp)

                results[k] = lp.run_until_complete(main())
            finally:
                lp.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=thread_main, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert results == {k: (k, sum(range(200)), True) for k in range(n)}


def test_loop_in_thread_stopped_and_closed_from_main(loop_factory):
    lp = loop_factory()
    ran = threading.Event()
    stopped = threading.Event()

    def thread_main():
        asyncio.set_event_loop(lp)
        lp.call_soon(ran.set)
        lp.run_forever()
        stopped.set()

    t = threading.Thread(target=thread_main)
    t.start()
    try:
        assert ran.wait(5)
        assert lp.is_running()
        lp.call_soon_threadsafe(lp.stop)
        assert stopped.wait(5)
        t.join(5)
        assert not lp.is_running()
    finally:
        if stopped.is_set():
            lp.close()
    assert lp.is_closed()


@pytest.mark.parametrize("debug", [False, True])
def test_call_soon_threadsafe_allowed_from_other_thread_in_any_mode(loop, debug):
    loop.set_debug(debug)
    got = []
    errors = []

    def thread_main():
        try:
            loop.call_soon_threadsafe(got.append, "from thread")
            loop.call_soon_threadsafe(loop.stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=thread_main)
    loop.call_soon(thread.start)
    safety = loop.call_later(10, loop.stop)
    loop.run_forever()
    thread.join()
    safety.cancel()
    assert errors == []
    assert got == ["from thread"]


def test_close_from_other_thread_while_running_raises(loop_factory):
    lp = loop_factory()
    running = threading.Event()
    errors = []

    def thread_main():
        lp.call_soon(running.set)
        lp.run_forever()

    t = threading.Thread(target=thread_main)
    t.start()
    try:
        assert running.wait(5)
        try:
            lp.close()
        except RuntimeError as exc:
            errors.append(exc)
        assert not lp.is_closed()
    finally:
        lp.call_soon_threadsafe(lp.stop)
        t.join(5)
        lp.close()
    assert [str(e) for e in errors] == ["Cannot close a running event loop"]
