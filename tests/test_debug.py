"""Debug mode: set_debug/get_debug, PYTHONASYNCIODEBUG and -X dev, slow
callback warnings, thread checks, source tracebacks."""

import asyncio
import gc
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

from loopsupport import RecordingHandler, run_one_iteration

NON_THREADSAFE = ("Non-thread-safe operation invoked on an event loop other "
                  "than the current one")


def slow_warnings(caplog):
    return [r for r in caplog.records
            if r.name == "asyncio" and r.levelno == logging.WARNING
            and r.getMessage().startswith("Executing ")]


def _env_debug_default():
    return bool(sys.flags.dev_mode or (not sys.flags.ignore_environment
                                       and os.environ.get("PYTHONASYNCIODEBUG")))


# ---------------------------------------------------------------------------
# set_debug / get_debug
# ---------------------------------------------------------------------------

def test_get_debug_default(loop):
    assert loop.get_debug() is _env_debug_default()


def test_set_debug(loop, run):
    loop.set_debug(True)
    assert loop.get_debug() is True

    async def inside():
        return asyncio.get_running_loop().get_debug()

    assert run(inside()) is True
    loop.set_debug(False)
    assert loop.get_debug() is False
    assert run(inside()) is False


def test_set_debug_while_running(loop, run):
    async def main():
        loop.set_debug(True)
        await asyncio.sleep(0)
        return loop.get_debug()

    assert run(main()) is True


def test_runner_debug_true(loop_factory):
    with asyncio.Runner(debug=True, loop_factory=loop_factory) as runner:
        async def main():
            return asyncio.get_running_loop().get_debug()

        assert runner.run(main()) is True
        assert runner.get_loop().get_debug() is True


def test_slow_callback_duration_attribute(loop):
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 0.25
    assert loop.slow_callback_duration == 0.25


_SUBPROCESS_SCRIPT = textwrap.dedent("""
    import asyncio, sys, time
    kind = sys.argv[1]
    if kind == "glassloop":
        import glassloop
        loop = glassloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    print("initial", loop.get_debug())

    async def main():
        return asyncio.get_running_loop().get_debug()

    print("running", loop.run_until_complete(main()))
    def slow_cb():
        time.sleep(0.15)
    loop.call_soon(slow_cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()
""")


def _run_script(loop_name, env_extra=None, args=()):
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, *args, "-c", _SUBPROCESS_SCRIPT, loop_name],
        env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_debug_env_variable(loop_name):
    """PYTHONASYNCIODEBUG=1 turns debug mode on (slow callbacks logged)."""
    proc = _run_script(loop_name, {"PYTHONASYNCIODEBUG": "1"})
    assert proc.stdout.split("\n")[:2] == ["initial True", "running True"]
    assert re.search(r"Executing <.*slow_cb.*> took \d+\.\d{3} seconds",
                     proc.stderr), proc.stderr


def test_dev_mode_enables_debug(loop_name):
    proc = _run_script(loop_name, args=("-X", "dev"))
    assert proc.stdout.split("\n")[:2] == ["initial True", "running True"]


def test_no_debug_without_env(loop_name):
    proc = _run_script(loop_name)
    assert proc.stdout.split("\n")[:2] == ["initial False", "running False"]
    assert "Executing" not in proc.stderr


# ---------------------------------------------------------------------------
# Slow callbacks
# ---------------------------------------------------------------------------

def test_slow_callback_warning(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05

    def slow_callback():
        time.sleep(0.1)

    loop.call_soon(slow_callback)
    run_one_iteration(loop)
    records = slow_warnings(caplog)
    assert len(records) == 1
    msg = records[0].getMessage()
    m = re.fullmatch(r"Executing (<.*>) took (\d+\.\d{3}) seconds", msg, re.S)
    assert m, msg
    assert "slow_callback" in m.group(1)
    assert float(m.group(2)) >= 0.099


def test_slow_timer_callback_warning(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05

    def slow_timer_cb():
        time.sleep(0.08)

    loop.call_later(0.001, slow_timer_cb)
    loop.call_later(0.2, loop.stop)
    loop.run_forever()
    records = slow_warnings(caplog)
    assert len(records) == 1
    assert "slow_timer_cb" in records[0].getMessage()


def test_slow_task_step_warning(loop, run, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05

    async def slow_coroutine():
        time.sleep(0.08)

    run(slow_coroutine())
    records = slow_warnings(caplog)
    assert len(records) == 1
    m = re.fullmatch(r"Executing (<.*>) took (\d+\.\d{3}) seconds",
                     records[0].getMessage(), re.S)
    assert m
    assert m.group(1).startswith("<Task")
    assert "slow_coroutine" in m.group(1)


def test_no_slow_warning_for_fast_callbacks(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(True)
    for _ in range(100):
        loop.call_soon(lambda: None)
    run_one_iteration(loop)
    assert slow_warnings(caplog) == []


def test_no_slow_warning_without_debug(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(False)
    loop.slow_callback_duration = 0.01

    def slow_callback():
        time.sleep(0.03)

    loop.call_soon(slow_callback)
    run_one_iteration(loop)
    assert slow_warnings(caplog) == []


# ---------------------------------------------------------------------------
# Thread checks
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", [
    "call_soon", "call_later", "call_at",
    # asyncio's Task exists before its __init__ calls call_soon, so it is then
    # destroyed pending, which is reported to the exception handler.
    pytest.param("create_task", marks=pytest.mark.unexpected_errors_ok),
])
def test_debug_non_threadsafe_call_from_other_thread(loop, run, method):
    loop.set_debug(True)

    async def coro():
        pass

    def from_thread():
        try:
            if method == "call_soon":
                loop.call_soon(lambda: None)
            elif method == "call_later":
                loop.call_later(1, lambda: None)
            elif method == "call_at":
                loop.call_at(loop.time() + 1, lambda: None)
            else:
                c = coro()
                try:
                    loop.create_task(c)
                finally:
                    c.close()
        except RuntimeError as exc:
            return exc
        return None

    async def main():
        return await loop.run_in_executor(None, from_thread)

    exc = run(main())
    assert isinstance(exc, RuntimeError)
    assert str(exc) == NON_THREADSAFE


def test_debug_call_soon_from_other_thread_when_not_running(loop):
    """The thread check applies only while the loop runs."""
    import threading

    loop.set_debug(True)
    errors = []
    got = []

    def thread_main():
        try:
            loop.call_soon(got.append, 1)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=thread_main)
    t.start()
    t.join()
    run_one_iteration(loop)
    assert errors == []
    assert got == [1]


# ---------------------------------------------------------------------------
# Source tracebacks and origin tracking
# ---------------------------------------------------------------------------

def test_debug_callback_error_has_source_traceback(loop, caplog):
    loop.set_debug(True)
    handler = RecordingHandler()
    loop.set_exception_handler(handler)

    def failing():
        raise ValueError("x")

    loop.call_soon(failing)  # the source traceback must point here
    run_one_iteration(loop)
    assert len(handler.contexts) == 1
    tb = handler.contexts[0]["source_traceback"]
    assert tb[-1].name == "test_debug_callback_error_has_source_traceback"
    assert tb[-1].filename == __file__

    loop.set_exception_handler(None)
    loop.call_soon(failing)
    run_one_iteration(loop)
    errors = [r for r in caplog.records
              if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "Object created at (most recent call last):" in errors[0].getMessage()


def test_debug_coroutine_origin_tracking(loop, run):
    loop.set_debug(True)
    before = sys.get_coroutine_origin_tracking_depth()

    async def main():
        return sys.get_coroutine_origin_tracking_depth()

    inside = run(main())
    assert inside > 0
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_unclosed_loop_resource_warning(loop_factory):
    lp = loop_factory()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del lp
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning)
               and "unclosed event loop" in str(w.message) for w in caught), \
        [str(w.message) for w in caught]
