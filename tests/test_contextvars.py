"""Context variables across callbacks and tasks."""

import asyncio
import contextvars

import pytest

from loopsupport import run_one_iteration

var = contextvars.ContextVar("glassloop_test_var", default="default")


@pytest.fixture(autouse=True)
def _reset_var():
    token = var.set("default")
    try:
        yield
    finally:
        var.reset(token)


def _schedule(loop, method, cb, *args, context=None):
    if method == "call_soon":
        return loop.call_soon(cb, *args, context=context)
    if method == "call_later":
        return loop.call_later(0, cb, *args, context=context)
    if method == "call_at":
        return loop.call_at(loop.time(), cb, *args, context=context)
    if method == "call_soon_threadsafe":
        return loop.call_soon_threadsafe(cb, *args, context=context)
    raise ValueError(method)


METHODS = ["call_soon", "call_later", "call_at", "call_soon_threadsafe"]


def _run_briefly(loop):
    loop.call_later(0.01, loop.stop)
    loop.run_forever()


@pytest.mark.parametrize("method", METHODS)
def test_callback_sees_context_at_scheduling(loop, method):
    seen = []
    var.set("at scheduling")
    _schedule(loop, method, lambda: seen.append(var.get()))
    var.set("changed after scheduling")
    _run_briefly(loop)
    assert seen == ["at scheduling"]


@pytest.mark.parametrize("method", METHODS)
def test_callback_changes_do_not_leak(loop, method):
    seen = []

    def writer():
        var.set("set in callback")
        seen.append(("writer", var.get()))

    def reader():
        seen.append(("reader", var.get()))

    var.set("outer")
    _schedule(loop, method, writer)
    _schedule(loop, method, reader)
    _run_briefly(loop)
    assert sorted(seen) == [("reader", "outer"), ("writer", "set in callback")]
    assert var.get() == "outer"


@pytest.mark.parametrize("method", METHODS)
def test_explicit_context_is_used(loop, method):
    seen = []
    ctx = contextvars.Context()
    ctx.run(var.set, "in explicit ctx")

    def cb():
        seen.append(var.get())
        var.set("written by callback")

    var.set("current")
    _schedule(loop, method, cb, context=ctx)
    _run_briefly(loop)
    assert seen == ["in explicit ctx"]
    # The callback ran in ctx itself, not in a copy of it.
    assert ctx[var] == "written by callback"
    assert var.get() == "current"


def test_explicit_context_shared_by_callbacks(loop):
    ctx = contextvars.copy_context()
    seen = []

    def first():
        var.set("from first")

    def second():
        seen.append(var.get())

    loop.call_soon(first, context=ctx)
    loop.call_soon(second, context=ctx)
    run_one_iteration(loop)
    assert seen == ["from first"]


def test_copy_context_inside_callback(loop):
    seen = []
    var.set("visible")
    loop.call_soon(lambda: seen.append(contextvars.copy_context()[var]))
    run_one_iteration(loop)
    assert seen == ["visible"]


def test_task_runs_in_copy_of_creator_context(loop, run):
    async def child():
        before = var.get()
        var.set("child wrote")
        await asyncio.sleep(0)
        return before, var.get()

    async def parent():
        var.set("parent value")
        task = asyncio.get_running_loop().create_task(child())
        var.set("parent changed after create_task")
        result = await task
        return result, var.get()

    (child_before, child_after), parent_after = run(parent())
    assert child_before == "parent value"
    assert child_after == "child wrote"
    assert parent_after == "parent changed after create_task"
    assert var.get() == "default"


def test_context_kept_across_awaits(loop, run):
    async def main():
        var.set("kept")
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        fut = loop.create_future()
        loop.call_soon(fut.set_result, None)
        await fut
        return var.get()

    assert run(main()) == "kept"


def test_future_done_callback_context(loop):
    fut = loop.create_future()
    seen = []
    ctx = contextvars.Context()
    ctx.run(var.set, "done-callback ctx")
    var.set("at add_done_callback")
    fut.add_done_callback(lambda f: seen.append(("implicit", var.get())))
    fut.add_done_callback(lambda f: seen.append(("explicit", var.get())),
                          context=ctx)
    var.set("later")
    fut.set_result(None)
    run_one_iteration(loop)
    assert seen == [("implicit", "at add_done_callback"),
                    ("explicit", "done-callback ctx")]


def test_timer_callbacks_isolated_from_each_other(loop):
    seen = []

    def make(tag):
        def cb():
            seen.append((tag, var.get()))
            var.set(tag)
        return cb

    var.set("base")
    for i in range(5):
        loop.call_later(0.001 * i, make("t{}".format(i)))
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert [v for _, v in seen] == ["base"] * 5


def test_context_none_means_current(loop):
    seen = []
    var.set("current")
    loop.call_soon(lambda: seen.append(var.get()), context=None)
    loop.call_later(0, lambda: seen.append(var.get()), context=None)
    _run_briefly(loop)
    assert seen == ["current", "current"]
