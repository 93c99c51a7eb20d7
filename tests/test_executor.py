"""run_in_executor, set_default_executor, shutdown_default_executor."""

import asyncio
import concurrent.futures
import sys
import threading
import time

import pytest

from loopsupport import PY313


def _in_thread_pool_worker():
    """True when called from a concurrent.futures.ThreadPoolExecutor worker."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if (code.co_name == "_worker"
                and code.co_filename.replace("\\", "/").endswith(
                    "concurrent/futures/thread.py")):
            return True
        frame = frame.f_back
    return False


def test_run_in_executor_default_result(loop, run):
    def work(a, b):
        return a + b, threading.get_ident()

    fut = loop.run_in_executor(None, work, 40, 2)
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    value, ident = run(fut)
    assert value == 42
    assert ident != threading.get_ident()


def test_default_executor_is_a_thread_pool(loop, run):
    assert run(loop.run_in_executor(None, _in_thread_pool_worker)) is True


def test_default_executor_is_reused(loop, run):
    def ident():
        time.sleep(0.01)
        return threading.current_thread()

    async def main():
        first = await loop.run_in_executor(None, ident)
        again = []
        for _ in range(3):
            # The worker marks itself idle just after it hands back the
            # result; give it that moment, or the pool starts a new thread.
            await asyncio.sleep(0.05)
            again.append(await loop.run_in_executor(None, ident))
        return first, again

    first, again = run(main())
    # A pool, not a thread per call: the same worker is used when idle.
    assert all(t is first for t in again)


def test_run_in_executor_exception(loop, run):
    class WorkError(Exception):
        pass

    err = WorkError("failed in executor")

    def work():
        raise err

    with pytest.raises(WorkError) as ei:
        run(loop.run_in_executor(None, work))
    assert ei.value is err


def test_run_in_executor_explicit_executor(loop, run):
    with concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="explicit-pool") as ex:
        name = run(loop.run_in_executor(
            ex, lambda: threading.current_thread().name))
    assert name.startswith("explicit-pool")


def test_run_in_executor_concurrent(loop, run):
    barrier = threading.Barrier(3)

    def work(i):
        barrier.wait(5)  # all three must run at the same time
        return i

    async def main():
        return await asyncio.gather(
            *[loop.run_in_executor(None, work, i) for i in range(3)])

    assert run(main()) == [0, 1, 2]


def test_run_in_executor_does_not_block_loop(loop, run):
    async def main():
        fut = loop.run_in_executor(None, time.sleep, 0.1)
        ticks = 0
        while not fut.done():
            await asyncio.sleep(0.005)
            ticks += 1
        await fut
        return ticks

    assert run(main()) >= 5


def test_set_default_executor(loop, run):
    ex = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="my-default")
    try:
        loop.set_default_executor(ex)
        name = run(loop.run_in_executor(
            None, lambda: threading.current_thread().name))
        assert name.startswith("my-default")
    finally:
        ex.shutdown(wait=True)


@pytest.mark.parametrize("bad", ["process_pool", "object"])
def test_set_default_executor_rejects_non_thread_pool(loop, bad):
    if bad == "process_pool":
        executor = concurrent.futures.ProcessPoolExecutor(max_workers=1)
    else:
        executor = object()
    try:
        with pytest.raises(TypeError) as ei:
            loop.set_default_executor(executor)
        assert str(ei.value) == "executor must be ThreadPoolExecutor instance"
    finally:
        if bad == "process_pool":
            executor.shutdown(wait=True)


def test_run_in_executor_debug_rejects_coroutine_function(loop):
    async def coro_fn():
        pass

    loop.set_debug(True)
    with pytest.raises(TypeError) as ei:
        loop.run_in_executor(None, coro_fn)
    assert str(ei.value) == "coroutines cannot be used with run_in_executor()"


def test_shutdown_default_executor_waits_for_work(loop, run):
    finished = []

    def slow():
        time.sleep(0.1)
        finished.append(threading.current_thread())

    async def main():
        fut = loop.run_in_executor(None, slow)
        await asyncio.sleep(0.01)
        await loop.shutdown_default_executor()
        # All work finished, all workers joined.
        assert len(finished) == 1
        assert not finished[0].is_alive()
        await fut

    run(main())


def test_shutdown_default_executor_then_run_in_executor_raises(loop, run):
    async def main():
        await loop.run_in_executor(None, lambda: None)
        await loop.shutdown_default_executor()
        with pytest.raises(RuntimeError) as ei:
            await loop.run_in_executor(None, lambda: None)
        return str(ei.value)

    assert run(main()) == "Executor shutdown has been called"


def test_shutdown_default_executor_without_executor(loop, run):
    t0 = time.monotonic()
    assert run(loop.shutdown_default_executor()) is None
    assert time.monotonic() - t0 < 2


def test_shutdown_default_executor_explicit_executor_still_usable(loop, run):
    async def main():
        await loop.shutdown_default_executor()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ex:
            return await loop.run_in_executor(ex, lambda: "explicit ok")

    assert run(main()) == "explicit ok"


@pytest.mark.skipif(
    not PY313, reason="timeout= is new in 3.12, but 3.12 only applies it after "
                      "the executor finished (fixed in 3.13)")
def test_shutdown_default_executor_timeout(loop, run):
    release = threading.Event()

    def stuck():
        release.wait(10)

    async def main():
        fut = loop.run_in_executor(None, stuck)
        await asyncio.sleep(0.01)
        t0 = loop.time()
        with pytest.warns(RuntimeWarning, match="did not finish"):
            await loop.shutdown_default_executor(timeout=0.1)
        elapsed = loop.time() - t0
        release.set()
        await fut
        return elapsed

    elapsed = run(main())
    assert 0.1 <= elapsed < 5


def test_close_then_run_in_executor_raises(loop_factory):
    lp = loop_factory()
    lp.close()
    with pytest.raises(RuntimeError) as ei:
        lp.run_in_executor(None, lambda: None)
    assert str(ei.value) == "Event loop is closed"


def test_run_in_executor_job_cancelled_while_queued_never_runs(loop, run):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    gate = threading.Event()
    ran = []

    async def main():
        first = loop.run_in_executor(pool, gate.wait, 10)
        second = loop.run_in_executor(pool, ran.append, 1)
        second.cancel()
        await asyncio.sleep(0.01)
        gate.set()
        assert await first is True
        with pytest.raises(asyncio.CancelledError):
            await second

    run(main())
    pool.shutdown(wait=True)
    assert ran == []


def test_run_in_executor_on_a_shut_down_pool_raises(loop):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        loop.run_in_executor(pool, print)
    if hasattr(loop, "stats"):  # glassloop: the job never entered the queue
        assert loop.stats()["executor"]["queued"] == 0
