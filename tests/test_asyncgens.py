"""Asynchronous generators: the loop's asyncgen hooks and shutdown_asyncgens."""

import asyncio
import gc
import sys
import warnings

import pytest

from loopsupport import RecordingHandler


def _firstiter(agen):
    pass


def _finalizer(agen):
    pass


@pytest.fixture
def outer_hooks():
    """Custom hooks installed outside the loop; restored after the test."""
    saved = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=_firstiter, finalizer=_finalizer)
    try:
        yield
    finally:
        sys.set_asyncgen_hooks(*saved)


def test_asyncgen_hooks_installed_while_running(loop, run, outer_hooks):
    seen = []

    async def main():
        seen.append(sys.get_asyncgen_hooks())

    run(main())
    inside = seen[0]
    assert inside.firstiter is not None and inside.firstiter is not _firstiter
    assert inside.finalizer is not None and inside.finalizer is not _finalizer
    # Restored when the loop stops.
    after = sys.get_asyncgen_hooks()
    assert after.firstiter is _firstiter
    assert after.finalizer is _finalizer


def test_asyncgen_hooks_restored_after_exception(loop, run, outer_hooks):
    async def main():
        raise ValueError

    with pytest.raises(ValueError):
        run(main())
    after = sys.get_asyncgen_hooks()
    assert after.firstiter is _firstiter
    assert after.finalizer is _finalizer


def test_asyncgen_hooks_are_the_loops(loop_factory, outer_hooks):
    """Two loops install hooks that are told apart: a generator first iterated
    in loop A is finalized by loop A's shutdown_asyncgens, not B's."""
    a, b = loop_factory(), loop_factory()
    closed = []

    async def agen(tag):
        try:
            yield 1
            yield 2
        finally:
            closed.append(tag)

    keep = []

    async def start(tag):
        g = agen(tag)
        await g.__anext__()
        keep.append(g)

    try:
        a.run_until_complete(start("a"))
        b.run_until_complete(start("b"))
        b.run_until_complete(b.shutdown_asyncgens())
        assert closed == ["b"]
        a.run_until_complete(a.shutdown_asyncgens())
        assert closed == ["b", "a"]
    finally:
        a.close()
        b.close()


def test_shutdown_asyncgens_finalizes_suspended_generators(loop, run):
    events = []
    keep = []

    async def agen(tag):
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)  # the finally block may await
            events.append(tag)

    async def main():
        for tag in ("one", "two"):
            g = agen(tag)
            assert await g.__anext__() == 1
            keep.append(g)

    run(main())
    assert events == []
    run(loop.shutdown_asyncgens())
    assert sorted(events) == ["one", "two"]


def test_shutdown_asyncgens_ignores_finished_generators(loop, run):
    events = []

    async def agen():
        try:
            yield 1
        finally:
            events.append("finally")

    async def main():
        return [x async for x in agen()]

    assert run(main()) == [1]
    assert events == ["finally"]
    run(loop.shutdown_asyncgens())
    assert events == ["finally"]


def test_shutdown_asyncgens_without_generators(loop, run):
    assert run(loop.shutdown_asyncgens()) is None


def test_shutdown_asyncgens_error_goes_to_handler(loop, run):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)
    keep = []

    async def bad_agen():
        try:
            yield 1
        finally:
            raise ZeroDivisionError("in finally")

    async def main():
        g = bad_agen()
        await g.__anext__()
        keep.append(g)

    run(main())
    run(loop.shutdown_asyncgens())
    assert len(handler.contexts) == 1
    ctx = handler.contexts[0]
    assert ctx["message"].startswith(
        "an error occurred during closing of asynchronous generator")
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["asyncgen"] is keep[0]


def test_firstiter_after_shutdown_asyncgens_warns(loop, run):
    async def agen():
        yield 1

    async def main():
        g = agen()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await g.__anext__()
        await g.aclose()
        return caught

    run(loop.shutdown_asyncgens())
    caught = run(main())
    assert any(issubclass(w.category, ResourceWarning)
               and "shutdown_asyncgens" in str(w.message) for w in caught), \
        [str(w.message) for w in caught]


def test_dropped_suspended_asyncgen_finalized_on_loop(loop, run):
    """The loop's finalizer hook closes a generator dropped while suspended:
    its finally block runs in a task on the loop."""
    events = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append(("finally", asyncio.get_running_loop() is loop))

    async def main():
        g = agen()
        await g.__anext__()
        del g
        gc.collect()
        for _ in range(10):
            await asyncio.sleep(0)

    run(main())
    assert events == [("finally", True)]


def test_asyncgen_iteration(loop, run):
    async def agen(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async def main():
        return [x async for x in agen(5)]

    assert run(main()) == [0, 1, 2, 3, 4]
