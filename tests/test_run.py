"""Running and stopping: run_forever, run_until_complete, stop, close,
is_running, is_closed, and the errors asyncio raises around them."""

import asyncio
import concurrent.futures
import gc
import signal
import threading
import time
import warnings
import weakref

import pytest

from loopsupport import RecordingHandler, run_one_iteration


# ---------------------------------------------------------------------------
# run_until_complete
# ---------------------------------------------------------------------------

def test_run_until_complete_coroutine(loop, run):
    async def main(x):
        await asyncio.sleep(0)
        return x * 2

    assert run(main(21)) == 42
    assert not loop.is_running()


def test_run_until_complete_future(loop, run):
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, "done")
    assert run(fut) == "done"
    assert fut.done()


def test_run_until_complete_task(loop, run):
    async def main():
        await asyncio.sleep(0.01)
        return "task result"

    task = loop.create_task(main())
    assert run(task) == "task result"
    assert task.done()


def test_run_until_complete_already_done_future(loop, run):
    fut = loop.create_future()
    fut.set_result(7)
    assert run(fut) == 7


def test_run_until_complete_awaitable_object(loop, run):
    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    assert run(Awaitable()) == "awaited"


def test_run_until_complete_not_awaitable(loop, run):
    with pytest.raises(TypeError) as ei:
        run(42)
    assert str(ei.value) == (
        "An asyncio.Future, a coroutine or an awaitable is required")


def test_run_until_complete_propagates_exception(loop, run):
    class Boom(Exception):
        pass

    async def main():
        await asyncio.sleep(0)
        raise Boom("boom")

    with pytest.raises(Boom, match="boom"):
        run(main())
    assert not loop.is_running()
    # The loop is still usable afterwards.
    assert run(asyncio.sleep(0, "again")) == "again"


def test_run_until_complete_future_exception(loop, run):
    fut = loop.create_future()
    loop.call_soon(fut.set_exception, ValueError("from future"))
    with pytest.raises(ValueError, match="from future"):
        run(fut)


def test_run_until_complete_cancelled_future(loop, run):
    fut = loop.create_future()
    loop.call_soon(fut.cancel)
    with pytest.raises(asyncio.CancelledError):
        run(fut)


def test_run_until_complete_base_exception_propagates(loop, run):
    async def main():
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(main())
    assert not loop.is_running()
    assert run(asyncio.sleep(0, 5)) == 5


def test_run_until_complete_stopped_before_done(loop, run):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError) as ei:
        run(fut)
    assert str(ei.value) == "Event loop stopped before Future completed."
    assert not fut.done()
    fut.cancel()


def test_run_until_complete_future_of_other_loop(loop, loop_factory, run):
    other = loop_factory()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError) as ei:
            run(fut)
        assert str(ei.value) == (
            "The future belongs to a different loop than the one specified "
            "as the loop argument")
    finally:
        other.close()


def test_run_until_complete_future_of_aio_loop(loop, run):
    """A future of an asyncio loop is refused by the loop under test (and the
    other way round, for the asyncio run)."""
    other = asyncio.new_event_loop()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError) as ei:
            run(fut)
        assert str(ei.value) == (
            "The future belongs to a different loop than the one specified "
            "as the loop argument")
    finally:
        other.close()


def test_run_until_complete_nested_raises(loop):
    errors = []

    def cb():
        fut = loop.create_future()
        try:
            loop.run_until_complete(fut)
        except RuntimeError as exc:
            errors.append(exc)
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert [type(e) for e in errors] == [RuntimeError, RuntimeError]
    assert [str(e) for e in errors] == ["This event loop is already running"] * 2


def test_run_until_complete_nested_from_task(loop, run):
    async def inner():
        return 1

    async def main():
        coro = inner()
        try:
            with pytest.raises(RuntimeError) as ei:
                loop.run_until_complete(coro)
        finally:
            coro.close()
        return str(ei.value)

    assert run(main()) == "This event loop is already running"


@pytest.mark.parametrize("inner_kind", ["same", "aio"])
def test_run_other_loop_while_running(loop, loop_factory, inner_kind):
    other = loop_factory() if inner_kind == "same" else asyncio.new_event_loop()
    errors = []

    def cb():
        fut = other.create_future()
        try:
            other.run_until_complete(fut)
        except RuntimeError as exc:
            errors.append(exc)
        try:
            other.run_forever()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    try:
        loop.call_soon(cb)
        loop.run_forever()
    finally:
        other.close()
    assert [str(e) for e in errors] == [
        "Cannot run the event loop while another loop is running"] * 2


def test_running_loop_is_set_while_running(loop, run):
    seen = {}

    def cb():
        seen["running"] = asyncio.get_running_loop()
        seen["get_event_loop"] = asyncio.get_event_loop()
        seen["_get_running_loop"] = asyncio._get_running_loop()
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert seen["running"] is loop
    assert seen["get_event_loop"] is loop
    assert seen["_get_running_loop"] is loop
    assert asyncio._get_running_loop() is None
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio.get_running_loop()


# ---------------------------------------------------------------------------
# run_forever / stop
# ---------------------------------------------------------------------------

def test_run_forever_until_stop_from_timer(loop):
    ran = []
    loop.call_soon(ran.append, "soon")
    loop.call_later(0.02, ran.append, "later")
    loop.call_later(0.05, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert ran == ["soon", "later"]
    assert time.monotonic() - t0 >= 0.04
    assert not loop.is_running()


def test_run_forever_returns_none(loop):
    loop.call_soon(loop.stop)
    assert loop.run_forever() is None


def test_stop_inside_callback_runs_rest_of_iteration(loop):
    order = []

    def a():
        order.append("a")
        loop.stop()
        loop.call_soon(c)

    def b():
        order.append("b")
        loop.call_soon(d)

    def c():
        order.append("c")

    def d():
        order.append("d")

    loop.call_soon(a)
    loop.call_soon(b)
    loop.run_forever()
    # b was already scheduled in the iteration in which a called stop().
    assert order == ["a", "b"]
    # What a and b scheduled runs on the next run_forever (stopped right away,
    # so exactly one iteration).
    loop.stop()
    loop.run_forever()
    assert order == ["a", "b", "c", "d"]


def test_stop_before_run_forever_runs_one_iteration(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(second)

    def second():
        order.append("second")

    loop.call_soon(first)
    loop.call_later(3600, order.append, "far timer")
    loop.stop()
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 1.0
    assert order == ["first"]
    assert not loop.is_running()
    # The stop request was consumed: the next one-iteration run runs second.
    run_one_iteration(loop)
    assert order == ["first", "second"]


def test_stop_before_run_forever_with_nothing_scheduled_returns(loop):
    loop.call_later(3600, lambda: None)
    loop.stop()
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 1.0


def test_stop_is_consumed_by_run_forever(loop):
    """After a run_forever ended by stop(), a new run_forever runs until the
    next stop() instead of returning at once."""
    loop.call_soon(loop.stop)
    loop.run_forever()
    ran = []
    loop.call_later(0.05, ran.append, 1)
    loop.call_later(0.06, loop.stop)
    loop.run_forever()
    assert ran == [1]


def test_stop_from_timer_callback_runs_ready_callbacks_of_iteration(loop):
    order = []

    def timer_cb():
        order.append("timer")
        loop.stop()

    when = loop.time() + 0.01
    loop.call_at(when, timer_cb)
    loop.call_at(when, order.append, "timer2")
    loop.run_forever()
    # Both timers were due in the same iteration (same when); their order is
    # not defined by asyncio.
    assert sorted(order) == ["timer", "timer2"]


# ---------------------------------------------------------------------------
# is_running / is_closed / close
# ---------------------------------------------------------------------------

def test_is_running(loop, run):
    assert loop.is_running() is False
    seen = []

    async def main():
        seen.append(loop.is_running())

    run(main())
    assert seen == [True]
    assert loop.is_running() is False


def test_is_running_false_after_exception(loop):
    def boom():
        raise KeyboardInterrupt

    loop.call_soon(boom)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert loop.is_running() is False


def test_is_closed_and_close_idempotent(loop_factory):
    lp = loop_factory()
    assert lp.is_closed() is False
    lp.close()
    assert lp.is_closed() is True
    lp.close()
    assert lp.is_closed() is True


def test_close_while_running_raises(loop):
    errors = []

    def cb():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert [str(e) for e in errors] == ["Cannot close a running event loop"]
    assert not loop.is_closed()


def _closed_ops(loop):
    def noop():
        pass

    async def coro():
        pass

    def run_until_complete_coro():
        c = coro()
        try:
            loop.run_until_complete(c)
        finally:
            c.close()

    def create_task():
        c = coro()
        try:
            loop.create_task(c)
        finally:
            c.close()

    return {
        "run_forever": lambda: loop.run_forever(),
        "run_until_complete_coro": run_until_complete_coro,
        "call_soon": lambda: loop.call_soon(noop),
        "call_later": lambda: loop.call_later(1, noop),
        "call_at": lambda: loop.call_at(loop.time() + 1, noop),
        "call_soon_threadsafe": lambda: loop.call_soon_threadsafe(noop),
        "create_task": create_task,
        "run_in_executor": lambda: loop.run_in_executor(None, noop),
    }


@pytest.mark.parametrize("op", sorted(_closed_ops(None).keys()))
def test_operations_on_closed_loop_raise(loop, op):
    loop.close()
    with pytest.raises(RuntimeError) as ei:
        _closed_ops(loop)[op]()
    assert str(ei.value) == "Event loop is closed"


def test_run_until_complete_future_on_closed_loop(loop_factory):
    lp = loop_factory()
    fut = lp.create_future()
    lp.close()
    with pytest.raises(RuntimeError) as ei:
        lp.run_until_complete(fut)
    assert str(ei.value) == "Event loop is closed"


def test_close_shuts_down_default_executor(loop, run):
    worker = run(loop.run_in_executor(None, threading.current_thread))
    assert worker is not threading.current_thread()
    assert worker.is_alive()
    loop.close()
    worker.join(5)
    assert not worker.is_alive(), "default executor's thread survived close()"


def test_close_shuts_down_set_default_executor(loop, run):
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(executor)
    assert run(loop.run_in_executor(None, lambda: 3)) == 3
    loop.close()
    with pytest.raises(RuntimeError):
        executor.submit(lambda: None)
    executor.shutdown(wait=True)


def test_close_releases_pending_callbacks(loop_factory):
    class Payload:
        pass

    lp = loop_factory()
    ran = []
    payload = Payload()
    ref = weakref.ref(payload)
    lp.call_soon(ran.append, payload)
    lp.call_later(3600, ran.append, payload)
    lp.call_at(lp.time(), ran.append, payload)
    del payload
    lp.close()
    gc.collect()
    assert ran == []
    assert ref() is None, "close() kept references to pending callbacks"


def test_exception_handler_unaffected_by_errors_in_run_until_complete(loop, run):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)

    async def main():
        raise ValueError("returned to caller")

    with pytest.raises(ValueError):
        run(main())
    # The error went to the caller, not to the exception handler.
    assert handler.contexts == []


@pytest.mark.parametrize("pending", [False, True], ids=["idle", "pending"])
@pytest.mark.parametrize("close_first", [True, False], ids=["closed", "unclosed"])
def test_dropped_loop_is_garbage_collected(loop_factory, close_first, pending):
    lp = loop_factory()
    lp.run_until_complete(asyncio.sleep(0.001))
    if pending:
        # Callbacks referring back to the loop: reference cycles through the
        # loop's queues, which the garbage collector must be able to see.
        lp.call_soon(lp.stop)
        lp.call_later(3600, lp.stop)
        lp.call_at(lp.time() + 1, lp.call_soon, lp.stop)
    if close_first:
        lp.close()
    ref = weakref.ref(lp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del lp
        gc.collect()
    assert ref() is None, "the loop outlived its last reference"


def test_sigint_interrupts_sleeping_loop(loop):
    """Ctrl-C while the loop waits for a far timer: KeyboardInterrupt comes out
    of run_forever promptly (the wait does not block signal handling)."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    loop.call_later(3600, lambda: None)
    safety = loop.call_later(5, loop.stop)
    sent = []

    def send():
        time.sleep(0.2)
        sent.append(time.monotonic())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    t = threading.Thread(target=send)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        t.start()
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        latency = time.monotonic() - sent[0]
    finally:
        t.join()
        signal.signal(signal.SIGINT, old)
        safety.cancel()
    assert not loop.is_running()
    assert latency < 1.0, "KeyboardInterrupt after {:.3f}s".format(latency)
