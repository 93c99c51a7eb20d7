"""call_soon and Handle: order, cancellation, re-entrancy, errors in callbacks,
argument checking."""

import asyncio
import contextvars
import functools
import gc
import threading
import time
import warnings
import weakref

import pytest

from loopsupport import PY312, RecordingHandler, run_one_iteration


def named_callback(*args):
    pass


# ---------------------------------------------------------------------------
# call_soon basics
# ---------------------------------------------------------------------------

def test_call_soon_passes_args(loop):
    got = []

    def cb(*args):
        got.append(args)

    loop.call_soon(cb)
    loop.call_soon(cb, 1)
    loop.call_soon(cb, 1, "two", None)
    run_one_iteration(loop)
    assert got == [(), (1,), (1, "two", None)]


def test_call_soon_accepts_any_callable(loop):
    got = []

    class Callable:
        def __call__(self, x):
            got.append(("obj", x))

    class K:
        def meth(self, x):
            got.append(("meth", x))

    loop.call_soon(Callable(), 1)
    loop.call_soon(K().meth, 2)
    loop.call_soon(functools.partial(got.append, ("partial", 3)))
    loop.call_soon(lambda: got.append(("lambda", 4)))
    run_one_iteration(loop)
    assert got == [("obj", 1), ("meth", 2), ("partial", 3), ("lambda", 4)]


def test_call_soon_fifo(loop):
    got = []
    for i in range(1000):
        loop.call_soon(got.append, i)
    run_one_iteration(loop)
    assert got == list(range(1000))


def test_call_soon_returns_handle(loop):
    h = loop.call_soon(named_callback)
    assert h.cancelled() is False
    assert callable(h.cancel)
    run_one_iteration(loop)
    # Running does not mark the handle cancelled.
    assert h.cancelled() is False


def test_call_soon_runs_callback_exactly_once(loop):
    got = []
    loop.call_soon(got.append, 1)
    run_one_iteration(loop)
    run_one_iteration(loop)
    run_one_iteration(loop)
    assert got == [1]


# ---------------------------------------------------------------------------
# Handle
# ---------------------------------------------------------------------------

def test_handle_cancel(loop):
    got = []
    h = loop.call_soon(got.append, 1)
    loop.call_soon(got.append, 2)
    h.cancel()
    assert h.cancelled() is True
    h.cancel()  # idempotent
    assert h.cancelled() is True
    run_one_iteration(loop)
    assert got == [2]


def test_handle_cancel_after_run_is_harmless(loop):
    got = []
    h = loop.call_soon(got.append, 1)
    run_one_iteration(loop)
    h.cancel()
    assert h.cancelled() is True
    run_one_iteration(loop)
    assert got == [1]


def test_handle_repr_contains_callback_name(loop):
    h = loop.call_soon(named_callback, 1)
    assert "named_callback" in repr(h)
    t = loop.call_later(10, named_callback, 1)
    assert "named_callback" in repr(t)
    t.cancel()
    run_one_iteration(loop)


def test_handle_repr_says_cancelled(loop):
    h = loop.call_soon(named_callback)
    h.cancel()
    assert "cancelled" in repr(h)
    t = loop.call_later(10, named_callback)
    t.cancel()
    assert "cancelled" in repr(t)


@pytest.mark.skipif(not PY312, reason="Handle.get_context() is new in 3.12")
def test_handle_get_context(loop):
    var = contextvars.ContextVar("var")
    ctx = contextvars.copy_context()
    h = loop.call_soon(named_callback, context=ctx)
    assert h.get_context() is ctx
    t = loop.call_later(10, named_callback, context=ctx)
    assert t.get_context() is ctx
    t.cancel()

    var.set("at scheduling")
    h2 = loop.call_soon(named_callback)
    got = h2.get_context()
    assert isinstance(got, contextvars.Context)
    assert got[var] == "at scheduling"
    run_one_iteration(loop)


# ---------------------------------------------------------------------------
# Re-entrancy
# ---------------------------------------------------------------------------

def test_callback_scheduled_by_callback_runs_next_iteration(loop):
    order = []

    def a():
        order.append("a")
        loop.call_soon(order.append, "scheduled by a")

    loop.call_soon(a)
    loop.call_soon(order.append, "b")
    run_one_iteration(loop)
    assert order == ["a", "b"]
    run_one_iteration(loop)
    assert order == ["a", "b", "scheduled by a"]


def test_callback_cancels_later_callback_of_same_iteration(loop):
    order = []
    handles = {}

    def a():
        order.append("a")
        handles["b"].cancel()

    loop.call_soon(a)
    handles["b"] = loop.call_soon(order.append, "b")
    loop.call_soon(order.append, "c")
    run_one_iteration(loop)
    assert order == ["a", "c"]
    assert handles["b"].cancelled()


def test_callback_cancels_timer(loop):
    order = []
    timer = loop.call_later(0.02, order.append, "timer")

    def cancel_it():
        order.append("cancel")
        timer.cancel()

    loop.call_later(0.01, cancel_it)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert order == ["cancel"]


def test_callback_cancels_itself(loop):
    order = []
    handles = {}

    def me():
        order.append("me")
        handles["me"].cancel()

    handles["me"] = loop.call_soon(me)
    loop.call_soon(order.append, "next")
    run_one_iteration(loop)
    assert order == ["me", "next"]


def test_callback_chain_runs_one_step_per_iteration(loop):
    order = []

    def step(n):
        order.append(n)
        if n < 4:
            loop.call_soon(step, n + 1)

    loop.call_soon(step, 0)
    for expected in range(5):
        run_one_iteration(loop)
        assert order == list(range(expected + 1))


def test_callback_calls_stop_and_schedules(loop):
    order = []

    def a():
        order.append("a")
        loop.stop()
        loop.call_soon(order.append, "after stop")

    loop.call_soon(a)
    loop.call_soon(order.append, "b")
    loop.run_forever()
    assert order == ["a", "b"]
    run_one_iteration(loop)
    assert order == ["a", "b", "after stop"]


def test_million_call_soon_run_in_one_iteration(loop):
    n = 1_000_000
    out = []
    append = out.append
    later = []

    def first():
        # stop() here: everything already scheduled still runs in this
        # iteration; what is scheduled now waits for the next one.
        loop.stop()
        loop.call_soon(later.append, "next iteration")

    loop.call_soon(first)
    for i in range(n):
        loop.call_soon(append, i)
    loop.run_forever()
    assert len(out) == n
    assert out == list(range(n))
    assert later == []
    del out[:]


# ---------------------------------------------------------------------------
# Exceptions raised by callbacks
# ---------------------------------------------------------------------------

class CallbackError(Exception):
    pass


def raiser(*args):
    raise CallbackError("boom", *args)


def test_exception_in_callback_goes_to_handler(loop):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)
    order = []
    h = loop.call_soon(raiser, 1)
    loop.call_soon(order.append, "after")
    run_one_iteration(loop)
    assert order == ["after"]  # the loop kept running the iteration
    assert len(handler.contexts) == 1
    ctx = handler.contexts[0]
    assert handler.loops == [loop]
    assert {"message", "exception", "handle"} <= set(ctx)
    assert ctx["message"].startswith("Exception in callback ")
    assert "raiser" in ctx["message"]
    assert isinstance(ctx["exception"], CallbackError)
    assert ctx["exception"].args == ("boom", 1)
    assert ctx["handle"] is h


def test_exception_in_timer_callback_goes_to_handler(loop):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)
    t = loop.call_later(0.001, raiser)
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert len(handler.contexts) == 1
    ctx = handler.contexts[0]
    assert ctx["message"].startswith("Exception in callback ")
    assert "raiser" in ctx["message"]
    assert isinstance(ctx["exception"], CallbackError)
    assert ctx["handle"] is t


def test_loop_keeps_running_after_many_callback_errors(loop, run):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)
    for _ in range(10):
        loop.call_soon(raiser)

    async def main():
        await asyncio.sleep(0.01)
        return "still running"

    assert run(main()) == "still running"
    assert len(handler.contexts) == 10


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboardinterrupt_and_systemexit_propagate(loop, exc_type):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)
    order = []

    def cb():
        raise exc_type

    loop.call_soon(cb)
    loop.call_soon(order.append, "after")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert handler.contexts == []
    assert not loop.is_running()
    # The rest of the ready queue is not lost: it runs on the next run.
    run_one_iteration(loop)
    assert order == ["after"]


# ---------------------------------------------------------------------------
# Argument checking (asyncio checks callbacks in debug mode)
# ---------------------------------------------------------------------------

async def coro_function():
    pass


def _schedule(loop, method, callback):
    if method == "call_soon":
        return loop.call_soon(callback)
    if method == "call_later":
        return loop.call_later(10, callback)
    if method == "call_at":
        return loop.call_at(loop.time() + 10, callback)
    if method == "call_soon_threadsafe":
        return loop.call_soon_threadsafe(callback)
    raise ValueError(method)


# asyncio's call_later delegates to call_at, so its messages say call_at().
_NAME_IN_MESSAGE = {
    "call_soon": "call_soon",
    "call_later": "call_(?:later|at)",
    "call_at": "call_at",
    "call_soon_threadsafe": "call_soon_threadsafe",
}

METHODS = ["call_soon", "call_later", "call_at", "call_soon_threadsafe"]


@pytest.mark.parametrize("method", METHODS)
def test_debug_rejects_non_callable(loop, method):
    loop.set_debug(True)
    with pytest.raises(TypeError) as ei:
        _schedule(loop, method, 1)
    assert ei.match(
        r"^a callable object was expected by {}\(\), got 1$".format(
            _NAME_IN_MESSAGE[method]))


@pytest.mark.parametrize("method", METHODS)
def test_debug_rejects_coroutine_function(loop, method):
    loop.set_debug(True)
    with pytest.raises(TypeError) as ei:
        _schedule(loop, method, coro_function)
    assert ei.match(r"^coroutines cannot be used with {}\(\)$".format(
        _NAME_IN_MESSAGE[method]))


@pytest.mark.parametrize("method", METHODS)
def test_debug_rejects_coroutine_object(loop, method):
    loop.set_debug(True)
    coro = coro_function()
    try:
        with pytest.raises(TypeError) as ei:
            _schedule(loop, method, coro)
    finally:
        coro.close()
    assert ei.match(r"^coroutines cannot be used with {}\(\)$".format(
        _NAME_IN_MESSAGE[method]))


def test_call_later_none_delay(loop):
    with pytest.raises(TypeError) as ei:
        loop.call_later(None, named_callback)
    assert str(ei.value) == "delay must not be None"


def test_call_at_none_when(loop):
    with pytest.raises(TypeError) as ei:
        loop.call_at(None, named_callback)
    assert str(ei.value) == "when cannot be None"


# ---------------------------------------------------------------------------
# Queue details a loop in another language can get wrong
# ---------------------------------------------------------------------------

def test_call_soon_and_threadsafe_share_one_fifo(loop):
    """From the loop's thread, call_soon and call_soon_threadsafe append to the
    same queue: order is kept across the two."""
    got = []
    loop.call_soon(got.append, 1)
    loop.call_soon_threadsafe(got.append, 2)
    loop.call_soon(got.append, 3)
    loop.call_soon_threadsafe(got.append, 4)
    run_one_iteration(loop)
    assert got == [1, 2, 3, 4]


class Payload:
    pass


def test_cancel_releases_callback_and_args(loop):
    payload = Payload()
    ref = weakref.ref(payload)
    h = loop.call_later(3600, named_callback, payload)
    s = loop.call_soon(named_callback, payload)
    del payload
    gc.collect()
    assert ref() is not None  # the loop holds it while scheduled
    h.cancel()
    s.cancel()
    run_one_iteration(loop)
    gc.collect()
    assert ref() is None, "cancelled handles kept their callback's arguments"


def test_loop_releases_callbacks_after_running(loop):
    payload = Payload()
    ref = weakref.ref(payload)
    loop.call_soon(named_callback, payload)
    loop.call_later(0, named_callback, payload)
    del payload
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    gc.collect()
    assert ref() is None, "the loop kept references to callbacks it ran"


def test_pending_callback_cycle_freed_when_loop_closes(loop_factory):
    """payload -> handle -> callback args -> payload, with the handle still in the
    ready queue: once close() lets go of the queue, the cycle is garbage."""
    lp = loop_factory()
    payload = Payload()
    ref = weakref.ref(payload)
    payload.handle = lp.call_soon(named_callback, payload)
    del payload
    gc.collect()
    assert ref() is not None  # the loop holds it while scheduled
    lp.close()
    gc.collect()
    assert ref() is None, "a pending handle held elsewhere leaked after close()"


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize("threadsafe", [False, True])
def test_unclosed_loop_with_pending_callbacks_is_collected(loop_factory, threadsafe):
    """loop -> ready queue -> handle -> callback (a bound method of an object that
    holds the loop): an unclosed loop dropped with callbacks still pending is
    freed by the collector, callbacks and all."""
    lp = loop_factory()

    class Owner:
        def __init__(self, lp):
            self.lp = lp

        def method(self):
            pass

    owner = Owner(lp)
    owner_ref, loop_ref = weakref.ref(owner), weakref.ref(lp)
    schedule = lp.call_soon_threadsafe if threadsafe else lp.call_soon
    for _ in range(3):
        schedule(owner.method)
    schedule(named_callback, owner)
    del owner, lp, schedule
    gc.collect()
    assert owner_ref() is None and loop_ref() is None


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_unclosed_loop_in_a_cycle_with_a_held_pending_handle_is_collected(loop_factory):
    """loop -> ready queue -> handle <- owner -> loop, the handle's callback a bound
    method of the owner that also holds the handle: dropped unclosed, the loop is
    still freed and warns."""
    lp = loop_factory()

    class Owner:
        def method(self):
            pass

    owner = Owner()
    owner.lp = lp
    owner.handle = lp.call_soon(owner.method)
    loop_ref = weakref.ref(lp)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del owner, lp
        gc.collect()
    assert loop_ref() is None
    assert any("unclosed event loop" in str(w.message) for w in caught), [str(w.message) for w in caught]


GC_VAR = contextvars.ContextVar("gc_var")
# Enough queued callbacks for a loop to treat its queue as a backlog (glassloop
# then keeps queued handles' contexts out of the collector's lists).
BACKLOG = 200


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize("kind", ["call_soon", "call_soon_threadsafe", "call_later"])
def test_unclosed_loop_in_a_cycle_through_a_pending_callbacks_context_is_collected(loop_factory, kind):
    """loop -> ready queue (or timers) -> handle -> its copy of the context -> a
    context variable's value -> loop: the cycle runs through the context the loop
    copied, which nobody but the handle holds. Dropped unclosed, the loop is freed."""
    lp = loop_factory()

    class Holder:
        pass

    holder = Holder()
    holder.lp = lp

    def schedule():
        GC_VAR.set(holder)
        for _ in range(BACKLOG):
            if kind == "call_later":
                lp.call_later(3600, named_callback)
            else:
                getattr(lp, kind)(named_callback)

    contextvars.copy_context().run(schedule)
    loop_ref = weakref.ref(lp)
    del holder, lp
    gc.collect()
    assert loop_ref() is None


@pytest.mark.parametrize("getter", ["_context"] + (["get_context"] if PY312 else []))  # get_context(): 3.12+
def test_context_taken_from_a_pending_handle_is_collected_in_a_cycle(loop, getter):
    """The context of a queued handle, once someone else holds it, is freed with a
    cycle it is part of (context -> value -> context), after the handle ran."""
    class Holder:
        pass

    for _ in range(BACKLOG):
        loop.call_soon(named_callback)
    handle = loop.call_soon(named_callback)
    ctx = handle.get_context() if getter == "get_context" else handle._context
    holder = Holder()
    ctx.run(GC_VAR.set, holder)
    holder.ctx = ctx
    holder_ref = weakref.ref(holder)
    run_one_iteration(loop)
    del handle, ctx, holder
    gc.collect()
    assert holder_ref() is None


def test_context_set_in_a_callback_stays_in_its_copy(loop):
    """Each call_soon runs in its own copy of the caller's context: what one
    callback sets is not seen by the next one, nor by the caller."""
    seen = []

    def setter(value):
        GC_VAR.set(value)
        seen.append(GC_VAR.get())

    def getter():
        seen.append(GC_VAR.get("unset"))

    for i in range(BACKLOG):
        loop.call_soon(setter, i)
        loop.call_soon(getter)
    gc.collect()
    run_one_iteration(loop)
    assert seen == [x for i in range(BACKLOG) for x in (i, "unset")]
    assert GC_VAR.get("unset") == "unset"


def test_many_pending_callbacks_keep_their_arguments(loop):
    """Arguments of callbacks waiting in the queue survive collections."""
    got = []
    for i in range(5000):
        loop.call_soon(got.append, [i])
    gc.collect()
    run_one_iteration(loop)
    assert got == [[i] for i in range(5000)]


def test_call_soon_rejects_unknown_keyword(loop):
    with pytest.raises(TypeError):
        loop.call_soon(named_callback, x=1)
    with pytest.raises(TypeError):
        loop.call_later(1, named_callback, x=1)


def test_busy_call_soon_chain_does_not_starve_timers(loop):
    """A callback that always reschedules itself keeps the ready queue non-empty;
    timers must still fire (each iteration also looks at timers)."""
    spins = [0]

    def spin():
        spins[0] += 1
        loop.call_soon(spin)

    loop.call_soon(spin)
    loop.call_later(0.05, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 2.0
    assert spins[0] > 10


def test_busy_call_soon_chain_does_not_starve_threadsafe(loop):
    def spin():
        loop.call_soon(spin)

    def thread_main():
        time.sleep(0.05)
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=thread_main)
    loop.call_soon(spin)
    t.start()
    safety = loop.call_later(5, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    t.join()
    safety.cancel()
    assert time.monotonic() - t0 < 2.0


def test_no_current_task_in_plain_callback(loop):
    seen = []
    loop.call_soon(lambda: seen.append(asyncio.current_task()))
    run_one_iteration(loop)
    assert seen == [None]


@pytest.mark.parametrize("kind", ["call_soon", "call_later"])
def test_handle_reference_cycle_is_collected(loop, kind):
    """payload -> handle -> callback args -> payload: once the handle is out of
    the loop's queues, the cycle is garbage the collector can free."""
    payload = Payload()
    ref = weakref.ref(payload)
    if kind == "call_soon":
        payload.handle = loop.call_soon(named_callback, payload)
    else:
        payload.handle = loop.call_later(3600, named_callback, payload)
        payload.handle.cancel()
    del payload
    run_one_iteration(loop)
    gc.collect()
    assert ref() is None


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_collection_while_running_keeps_queued_callbacks_and_frees_them_after(loop_factory):
    """A full collection inside a callback, with a backlog of queued callbacks each
    in a cycle through its own context, frees none of them: they all run. Once
    the loop has stopped and is dropped unclosed with a second backlog queued in
    a cycle through it, the collector frees the loop (a running loop is not the
    collector's to free; a stopped one is again)."""
    lp = loop_factory()
    ran = []

    class Node:
        def __init__(self):
            self.me = self  # a cycle of its own, held otherwise only by the queue

        def callback(self):
            ran.append(GC_VAR.get() is self)

    def schedule_backlog():
        for _ in range(BACKLOG):
            node = Node()
            contextvars.copy_context().run(lambda: (GC_VAR.set(node), lp.call_soon(node.callback)))

    def collect_then_stop():
        schedule_backlog()
        gc.collect()
        lp.call_soon(lp.stop)

    lp.call_soon(collect_then_stop)
    lp.run_forever()
    assert ran == [True] * BACKLOG

    class Holder:
        pass

    holder = Holder()
    holder.lp = lp
    contextvars.copy_context().run(lambda: (GC_VAR.set(holder), [lp.call_soon(named_callback) for _ in range(BACKLOG)]))
    loop_ref = weakref.ref(lp)
    del holder, lp
    gc.collect()
    assert loop_ref() is None


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_scheduling_arguments_by_keyword_and_their_errors(loop, method):
    """The calls' keyword forms (context= alone, callback= by name) and the
    TypeErrors for unknown, repeated and missing arguments, as asyncio's."""
    timed = method in ("call_later", "call_at")
    lead = (0,) if timed else ()
    ran = []

    def mark(value="by keyword"):
        ran.append(value)

    ctx = contextvars.copy_context()
    schedule = getattr(loop, method)
    schedule(*lead, mark, 1, context=ctx)
    schedule(*lead, callback=mark)
    loop.call_later(0.01, loop.stop)
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        schedule(*lead, ran.append, foo=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        schedule(*lead, ran.append, context=ctx, foo=1)
    with pytest.raises(TypeError, match="multiple values for argument 'callback'"):
        schedule(*lead, ran.append, callback=ran.append)
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'callback'"):
        schedule(*lead)
    loop.run_forever()
    assert ran == [1, "by keyword"]
