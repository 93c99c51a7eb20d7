"""Futures and tasks on the loop: create_future, create_task, task factories,
cancellation, fairness, and the high-level helpers users rely on."""

import asyncio
import contextvars
import gc
import threading
import time

import pytest

from loopsupport import PY311, PY312, RecordingHandler, run_one_iteration


# ---------------------------------------------------------------------------
# create_future
# ---------------------------------------------------------------------------

def test_create_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    assert not fut.done()
    fut.cancel()


def test_future_done_callbacks_run_on_loop_later(loop):
    fut = loop.create_future()
    got = []
    fut.add_done_callback(lambda f: got.append(f.result()))
    fut.set_result(5)
    assert got == []  # not synchronous: scheduled with call_soon
    run_one_iteration(loop)
    assert got == [5]


def test_await_future_resolved_by_timer(loop, run):
    async def main():
        fut = loop.create_future()
        loop.call_later(0.01, fut.set_result, "late")
        return await fut

    assert run(main()) == "late"


# ---------------------------------------------------------------------------
# create_task
# ---------------------------------------------------------------------------

async def _return(value):
    await asyncio.sleep(0)
    return value


def test_create_task(loop, run):
    task = loop.create_task(_return(3))
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert run(task) == 3


def test_create_task_name(loop, run):
    task = loop.create_task(_return(1), name="my-task")
    assert task.get_name() == "my-task"
    unnamed = loop.create_task(_return(2))
    assert unnamed.get_name().startswith("Task-")
    assert run(asyncio.gather(task, unnamed)) == [1, 2]


def test_create_task_not_a_coroutine(loop):
    with pytest.raises(TypeError) as ei:
        loop.create_task(1)
    assert str(ei.value) == "a coroutine was expected, got 1"


@pytest.mark.skipif(not PY311, reason="create_task(context=) is new in 3.11")
def test_create_task_context(loop, run):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")

    async def main():
        before = var.get()
        var.set("changed by task")
        return before

    assert run(loop.create_task(main(), context=ctx)) == "in ctx"
    assert ctx[var] == "changed by task"
    assert var.get() == "default"


def test_current_task_and_all_tasks(loop, run):
    async def main():
        me = asyncio.current_task()
        assert me is asyncio.current_task(loop)
        return me, asyncio.all_tasks()

    task = loop.create_task(main())
    me, all_tasks = run(task)
    assert me is task
    assert task in all_tasks


# ---------------------------------------------------------------------------
# Task factories
# ---------------------------------------------------------------------------

def test_task_factory(loop, run):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    task = loop.create_task(_return(7))
    assert run(task) == 7
    assert calls == [(loop, {})]  # called as factory(loop, coro)

    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    assert run(loop.create_task(_return(8))) == 8
    assert len(calls) == 1


def test_task_factory_used_by_ensure_future_and_run(loop, run):
    made = []

    def factory(lp, coro, **kwargs):
        task = asyncio.Task(coro, loop=lp, **kwargs)
        made.append(task)
        return task

    loop.set_task_factory(factory)
    assert run(_return("x")) == "x"  # run_until_complete wraps in a task
    assert len(made) == 1

    async def main():
        return await asyncio.ensure_future(_return("y"))

    assert run(main()) == "y"
    assert len(made) == 3


def test_task_factory_name_applied(loop, run):
    loop.set_task_factory(lambda lp, coro, **kw: asyncio.Task(coro, loop=lp, **kw))
    task = loop.create_task(_return(1), name="named-by-loop")
    assert task.get_name() == "named-by-loop"
    run(task)


@pytest.mark.skipif(not PY311, reason="create_task(context=) is new in 3.11")
def test_task_factory_receives_context(loop, run):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append(kwargs)
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    ctx = contextvars.copy_context()
    run(loop.create_task(_return(1), context=ctx))
    assert calls == [{"context": ctx}]


def test_set_task_factory_rejects_non_callable(loop):
    with pytest.raises(TypeError) as ei:
        loop.set_task_factory(1)
    assert str(ei.value) == "task factory must be a callable or None"


@pytest.mark.skipif(not PY312, reason="eager_task_factory is new in 3.12")
def test_eager_task_factory(loop, run):
    loop.set_task_factory(asyncio.eager_task_factory)
    steps = []

    async def child():
        steps.append("child started")
        await asyncio.sleep(0)
        return "child"

    async def main():
        task = asyncio.get_running_loop().create_task(child())
        steps.append("after create_task")
        return await task

    assert run(main()) == "child"
    assert steps == ["child started", "after create_task"]


# ---------------------------------------------------------------------------
# Cancellation
# ---------------------------------------------------------------------------

def test_cancel_sleeping_task(loop, run):
    seen = []

    async def sleeper():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled inside")
            raise

    async def main():
        task = loop.create_task(sleeper())
        await asyncio.sleep(0)
        assert task.cancel() is True
        with pytest.raises(asyncio.CancelledError):
            await task
        return task

    t0 = time.monotonic()
    task = run(main())
    assert time.monotonic() - t0 < 5
    assert task.cancelled()
    assert seen == ["cancelled inside"]


def test_cancel_with_message(loop, run):
    async def main():
        task = loop.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        task.cancel("the reason")
        try:
            await task
        except asyncio.CancelledError as exc:
            return exc.args

    assert run(main()) == ("the reason",)


def test_cancel_caught_task_returns_value(loop, run):
    async def stubborn():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "swallowed"

    async def main():
        task = loop.create_task(stubborn())
        await asyncio.sleep(0)
        task.cancel()
        return await task, task.cancelled()

    assert run(main()) == ("swallowed", False)


def test_cancel_before_first_step(loop, run):
    body_ran = []

    async def body():
        body_ran.append(True)

    task = loop.create_task(body())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        run(task)
    assert task.cancelled()
    assert body_ran == []


def test_cancel_done_task_returns_false(loop, run):
    task = loop.create_task(_return(1))
    run(task)
    assert task.cancel() is False
    assert not task.cancelled()


@pytest.mark.skipif(not PY311, reason="cancelling/uncancel are new in 3.11")
def test_cancelling_and_uncancel(loop, run):
    async def main():
        task = loop.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        task.cancel()
        task.cancel()
        counts = [task.cancelling()]
        counts.append(task.uncancel())
        with pytest.raises(asyncio.CancelledError):
            await task
        return counts

    assert run(main()) == [2, 1]


def test_cancel_propagates_to_awaited_future(loop, run):
    async def main():
        fut = loop.create_future()

        async def waiter():
            return await fut

        task = loop.create_task(waiter())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return fut.cancelled()

    assert run(main()) is True


def test_task_exception_never_retrieved_reported(loop, run):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)

    async def fails():
        raise ValueError("nobody looks at me")

    async def main():
        loop.create_task(fails())
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    run(main())
    gc.collect()
    msgs = [c.get("message") for c in handler.contexts]
    assert "Task exception was never retrieved" in msgs
    ctx = handler.contexts[msgs.index("Task exception was never retrieved")]
    assert isinstance(ctx["exception"], ValueError)


# ---------------------------------------------------------------------------
# Fairness and high-level helpers
# ---------------------------------------------------------------------------

def test_sleep_zero_fairness(loop, run):
    order = []

    async def worker(name):
        for _ in range(5):
            order.append(name)
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(worker("a"), worker("b"))

    run(main())
    assert order == ["a", "b"] * 5


def test_sleep_zero_lets_callbacks_run(loop, run):
    order = []

    async def main():
        loop.call_soon(order.append, "callback")
        order.append("before sleep(0)")
        await asyncio.sleep(0)
        order.append("after sleep(0)")

    run(main())
    assert order == ["before sleep(0)", "callback", "after sleep(0)"]


def test_sleep_duration(loop, run):
    async def main():
        t0 = loop.time()
        await asyncio.sleep(0.05)
        return loop.time() - t0

    elapsed = run(main())
    assert 0.05 <= elapsed < 1.0


def test_sleep_result(loop, run):
    assert run(asyncio.sleep(0.001, result="r")) == "r"


@pytest.mark.skipif(not PY311, reason="asyncio.timeout is new in 3.11")
def test_timeout_expires(loop, run):
    async def main():
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await asyncio.sleep(3600)
        return loop.time() - t0

    elapsed = run(main())
    assert 0.05 <= elapsed < 2


@pytest.mark.skipif(not PY311, reason="asyncio.timeout is new in 3.11")
def test_timeout_not_reached_and_reschedule(loop, run):
    async def main():
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5) as cm:
                await asyncio.sleep(0.01)
                cm.reschedule(loop.time() + 0.02)
                await asyncio.sleep(3600)
        return loop.time() - t0, cm.expired()

    elapsed, expired = run(main())
    assert 0.03 <= elapsed < 2
    assert expired is True

    async def quick():
        async with asyncio.timeout(5) as cm:
            await asyncio.sleep(0.001)
        return cm.expired()

    assert run(quick()) is False


@pytest.mark.skipif(not PY311, reason="asyncio.timeout is new in 3.11")
def test_timeout_at(loop, run):
    async def main():
        async with asyncio.timeout_at(loop.time() + 0.02) as cm:
            await asyncio.sleep(3600)

    with pytest.raises(TimeoutError):
        run(main())


def test_wait_for(loop, run):
    async def main():
        assert await asyncio.wait_for(_return("in time"), 5) == "in time"
        t0 = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(3600), 0.05)
        return loop.time() - t0

    elapsed = run(main())
    assert 0.05 <= elapsed < 2


def test_wait_for_cancels_inner_task(loop, run):
    cancelled = []

    async def inner():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(inner(), 0.01)

    run(main())
    assert cancelled == [True]


@pytest.mark.skipif(not PY311, reason="TaskGroup is new in 3.11")
def test_task_group(loop, run):
    async def main():
        async with asyncio.TaskGroup() as tg:
            t1 = tg.create_task(_return(1))
            t2 = tg.create_task(_return(2))
        return t1.result(), t2.result()

    assert run(main()) == (1, 2)


@pytest.mark.skipif(not PY311, reason="TaskGroup is new in 3.11")
def test_task_group_failure_cancels_siblings(loop, run):
    cancelled = []

    async def sibling():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def failing():
        await asyncio.sleep(0.01)
        raise ValueError("tg failure")

    async def main():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sibling())
            tg.create_task(failing())

    with pytest.raises(ExceptionGroup) as ei:  # noqa: F821 (3.11+)
        run(main())
    assert [type(e) for e in ei.value.exceptions] == [ValueError]
    assert cancelled == [True]


def test_gather_and_shield(loop, run):
    async def main():
        inner = loop.create_task(_return("shielded"))
        outer = asyncio.shield(inner)
        outer.cancel()
        res = await inner
        return res, outer.cancelled(), await asyncio.gather(
            _return(1), _return(2), return_exceptions=True)

    assert run(main()) == ("shielded", True, [1, 2])


def test_to_thread(loop, run):
    var = contextvars.ContextVar("var", default="default")

    def blocking(x):
        return x * 2, threading.get_ident(), var.get()

    async def main():
        var.set("propagated")
        return await asyncio.to_thread(blocking, 21)

    value, ident, seen = run(main())
    assert value == 42
    assert ident != threading.get_ident()
    assert seen == "propagated"


def test_to_thread_exception(loop, run):
    def blocking():
        raise KeyError("in thread")

    with pytest.raises(KeyError):
        run(asyncio.to_thread(blocking))
