"""glassloop's Python face: new_event_loop, EventLoopPolicy, install, run and
asyncio's Runner/run with a loop factory.

These tests are about glassloop itself, so they run on glassloop only (they
fail, never skip, when glassloop cannot be imported).
"""

import asyncio
import sys

import pytest

from loopsupport import PY312


def _loop_type(glassloop):
    probe = glassloop.new_event_loop()
    try:
        return type(probe)
    finally:
        probe.close()


async def _whoami():
    loop = asyncio.get_running_loop()
    return loop, type(loop)


def test_glassloop_new_event_loop(glassloop):
    a = glassloop.new_event_loop()
    b = glassloop.new_event_loop()
    try:
        assert isinstance(a, asyncio.AbstractEventLoop)
        assert a is not b
        assert not a.is_running() and not a.is_closed()
        assert a.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        a.close()
        b.close()


def test_glassloop_loop_is_not_the_default_loop(glassloop):
    lp = glassloop.new_event_loop()
    ref = asyncio.new_event_loop()
    try:
        assert type(lp) is not type(ref)
    finally:
        lp.close()
        ref.close()


def test_glassloop_policy_class(glassloop):
    assert issubclass(glassloop.EventLoopPolicy, asyncio.DefaultEventLoopPolicy)
    assert issubclass(glassloop.EventLoopPolicy,
                      asyncio.AbstractEventLoopPolicy)


def test_glassloop_policy_new_event_loop(glassloop):
    policy = glassloop.EventLoopPolicy()
    lp = policy.new_event_loop()
    try:
        assert type(lp) is _loop_type(glassloop)
    finally:
        lp.close()


def test_glassloop_install(glassloop, restore_policy):
    glassloop.install()
    policy = asyncio.get_event_loop_policy()
    assert isinstance(policy, glassloop.EventLoopPolicy)
    lp = asyncio.new_event_loop()
    try:
        assert type(lp) is _loop_type(glassloop)
    finally:
        lp.close()


def test_glassloop_install_then_run(glassloop, restore_policy):
    glassloop.install()
    loop, loop_type = asyncio.run(_whoami())
    assert loop_type is _loop_type(glassloop)
    assert loop.is_closed()


def test_glassloop_policy_get_event_loop(glassloop, restore_policy):
    glassloop.install()
    lp = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(lp)
        assert asyncio.get_event_loop() is lp
        assert asyncio.get_event_loop_policy().get_event_loop() is lp
    finally:
        asyncio.set_event_loop(None)
        lp.close()


def test_glassloop_run_returns_result(glassloop):
    async def main(x):
        await asyncio.sleep(0.001)
        return x * 3

    assert glassloop.run(main(14)) == 42


def test_glassloop_run_uses_a_glassloop_loop(glassloop):
    loop, loop_type = glassloop.run(_whoami())
    assert loop_type is _loop_type(glassloop)
    assert loop.is_closed()
    assert not loop.is_running()


def test_glassloop_run_propagates_exception(glassloop):
    async def main():
        await asyncio.sleep(0)
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        glassloop.run(main())


def test_glassloop_run_debug(glassloop):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert glassloop.run(main(), debug=True) is True
    assert glassloop.run(main(), debug=False) is False


def test_glassloop_run_cancels_leftover_tasks_and_closes_asyncgens(glassloop):
    events = []

    async def leftover():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("leftover cancelled")
            raise

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append("agen closed")

    keep = []

    async def main():
        asyncio.get_running_loop().create_task(leftover())
        g = agen()
        await g.__anext__()
        keep.append(g)
        await asyncio.sleep(0)
        return "done"

    assert glassloop.run(main()) == "done"
    assert sorted(events) == ["agen closed", "leftover cancelled"]


def test_glassloop_run_inside_running_loop_raises(glassloop):
    async def inner():
        return 1

    async def outer():
        coro = inner()
        try:
            with pytest.raises(RuntimeError) as ei:
                glassloop.run(coro)
        finally:
            coro.close()
        return str(ei.value)

    msg = glassloop.run(outer())
    assert "cannot be called from a running event loop" in msg


def test_runner_with_glassloop_factory(glassloop):
    with asyncio.Runner(loop_factory=glassloop.new_event_loop) as runner:
        loop, loop_type = runner.run(_whoami())
        assert loop_type is _loop_type(glassloop)
        assert runner.get_loop() is loop
        # The same loop runs several coroutines.
        again, _ = runner.run(_whoami())
        assert again is loop
    assert loop.is_closed()


@pytest.mark.skipif(not PY312, reason="asyncio.run(loop_factory=) is new in 3.12")
def test_run_with_glassloop_loop_factory(glassloop):
    loop, loop_type = asyncio.run(_whoami(), loop_factory=glassloop.new_event_loop)
    assert loop_type is _loop_type(glassloop)
    assert loop.is_closed()


def test_glassloop_exports(glassloop):
    for name in ("new_event_loop", "EventLoopPolicy", "install", "run"):
        assert hasattr(glassloop, name), name
    assert "glassloop" in sys.modules
