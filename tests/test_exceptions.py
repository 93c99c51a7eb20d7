"""Error handling: call_exception_handler, set/get_exception_handler and
default_exception_handler (logged exactly as asyncio logs it)."""

import contextvars
import logging

import pytest

from loopsupport import PY312, RecordingHandler, run_one_iteration


def asyncio_errors(caplog):
    return [r for r in caplog.records
            if r.name == "asyncio" and r.levelno >= logging.ERROR]


def test_get_exception_handler_default_is_none(loop_factory):
    lp = loop_factory()
    try:
        assert lp.get_exception_handler() is None
    finally:
        lp.close()


def test_set_and_get_exception_handler(loop):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


@pytest.mark.parametrize("bad", [1, "handler", object()])
def test_set_exception_handler_rejects_non_callable(loop, bad):
    with pytest.raises(TypeError) as ei:
        loop.set_exception_handler(bad)
    assert str(ei.value) == (
        "A callable object or None is expected, got {!r}".format(bad))


def test_call_exception_handler_calls_custom_handler(loop):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)
    exc = ValueError("x")
    context = {"message": "custom", "exception": exc, "extra": 1}
    loop.call_exception_handler(context)
    assert handler.loops == [loop]
    assert handler.contexts == [context]
    assert handler.contexts[0]["exception"] is exc


def test_call_exception_handler_default_logs(loop, caplog):
    loop.set_exception_handler(None)
    exc = ValueError("the error")
    loop.call_exception_handler({"message": "Something failed",
                                 "exception": exc, "foo": 1})
    records = asyncio_errors(caplog)
    assert len(records) == 1
    rec = records[0]
    assert rec.getMessage() == "Something failed\nfoo: 1"
    assert rec.exc_info[0] is ValueError
    assert rec.exc_info[1] is exc


def test_default_exception_handler_format(loop, caplog):
    exc = KeyError("k")
    loop.default_exception_handler({
        "message": "Main message",
        "exception": exc,
        "zeta": "last",
        "alpha": [1, 2],
        "future": None,
    })
    records = asyncio_errors(caplog)
    assert len(records) == 1
    # message first, then every other key sorted, value repr'd.
    assert records[0].getMessage() == (
        "Main message\nalpha: [1, 2]\nfuture: None\nzeta: 'last'")
    assert records[0].exc_info[1] is exc


def test_default_exception_handler_without_message(loop, caplog):
    loop.default_exception_handler({"other": 3})
    records = asyncio_errors(caplog)
    assert len(records) == 1
    assert records[0].getMessage() == (
        "Unhandled exception in event loop\nother: 3")
    assert not records[0].exc_info


def test_callback_exception_logged_by_default_handler(loop, caplog):
    loop.set_exception_handler(None)

    def failing_callback():
        raise ZeroDivisionError("in callback")

    loop.call_soon(failing_callback)
    loop.call_soon(loop.stop)
    loop.run_forever()
    records = asyncio_errors(caplog)
    assert len(records) == 1
    msg = records[0].getMessage()
    lines = msg.splitlines()
    assert lines[0].startswith("Exception in callback ")
    assert "failing_callback" in lines[0]
    assert any(line.startswith("handle: ") and "failing_callback" in line
               for line in lines[1:])
    assert records[0].exc_info[0] is ZeroDivisionError


def test_handler_calling_default_handler(loop, caplog):
    calls = []

    def handler(lp, context):
        calls.append(context["message"])
        lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
    loop.call_exception_handler({"message": "passed on"})
    assert calls == ["passed on"]
    records = asyncio_errors(caplog)
    assert [r.getMessage() for r in records] == ["passed on"]


def test_error_in_custom_handler_is_logged(loop, caplog):
    handler_error = RuntimeError("handler is broken")

    def handler(lp, context):
        raise handler_error

    loop.set_exception_handler(handler)
    loop.call_exception_handler({"message": "original"})
    records = asyncio_errors(caplog)
    assert len(records) == 1
    msg = records[0].getMessage()
    assert msg.startswith("Unhandled error in exception handler\n")
    assert "context: {'message': 'original'}" in msg
    assert records[0].exc_info[1] is handler_error


def test_error_in_handler_for_callback_keeps_loop_running(loop, caplog):
    def handler(lp, context):
        raise RuntimeError("handler is broken")

    loop.set_exception_handler(handler)
    order = []

    def failing():
        raise ValueError("cb")

    loop.call_soon(failing)
    loop.call_soon(order.append, "after")
    run_one_iteration(loop)
    assert order == ["after"]
    assert any(r.getMessage().startswith("Unhandled error in exception handler")
               for r in asyncio_errors(caplog))


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboardinterrupt_in_handler_propagates(loop, exc_type):
    def handler(lp, context):
        raise exc_type

    loop.set_exception_handler(handler)
    with pytest.raises(exc_type):
        loop.call_exception_handler({"message": "x"})


@pytest.mark.skipif(not PY312,
                    reason="3.12+ runs the custom handler in the handle's context")
def test_custom_handler_runs_in_callback_context(loop):
    var = contextvars.ContextVar("var", default="outside")
    seen = []

    def handler(lp, context):
        seen.append(var.get())

    def failing():
        var.set("inside callback")
        raise ValueError

    loop.set_exception_handler(handler)
    ctx = contextvars.copy_context()
    loop.call_soon(failing, context=ctx)
    run_one_iteration(loop)
    assert seen == ["inside callback"]
