"""Unix signals: add_signal_handler / remove_signal_handler, validation,
signal storms, Ctrl-C with asyncio.Runner, cleanup on loop.close()."""

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from loopsupport import RecordingHandler, run_on_asyncio, run_one_iteration


@pytest.fixture
def run(run_collecting):
    """run_until_complete, then a garbage collection (conftest.run_collecting)."""
    return run_collecting


@pytest.fixture(autouse=True)
def restore_signals():
    """Whatever a test does, leave the process's signal dispositions and
    wakeup fd as they were."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2,
                                              signal.SIGINT, signal.SIGHUP,
                                              signal.SIGALRM)}
    try:
        yield
    finally:
        for s, h in saved.items():
            if signal.getsignal(s) is not h and h is not None:
                signal.signal(s, h)
        old = signal.set_wakeup_fd(-1)
        assert old == -1, "a test left the signal wakeup fd set ({})".format(old)


async def wait_until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


# ---------------------------------------------------------------------------
# add / remove
# ---------------------------------------------------------------------------

def test_handler_runs_through_the_loop_with_args(loop, run):
    async def main():
        got = []

        def handler(*args):
            got.append((args, asyncio.get_running_loop() is loop,
                        threading.current_thread() is threading.main_thread()))

        assert loop.add_signal_handler(signal.SIGUSR1, handler, "a", 2) is None
        os.kill(os.getpid(), signal.SIGUSR1)
        # not called synchronously from the signal handler: the loop runs it
        assert got == []
        assert await wait_until(lambda: got)
        assert got == [(("a", 2), True, True)]
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await wait_until(lambda: len(got) == 2)
        assert loop.remove_signal_handler(signal.SIGUSR1) is True

    run(main())


def test_remove_signal_handler_results_and_dispositions(loop, run):
    async def main():
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
        assert loop.remove_signal_handler(signal.SIGUSR1) is False
        assert loop.remove_signal_handler(signal.SIGUSR2) is False
        # SIGINT goes back to Python's default handler (KeyboardInterrupt)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        assert loop.remove_signal_handler(signal.SIGINT) is True
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    run(main())


def test_replacing_a_handler(loop, run):
    async def main():
        got = []
        loop.add_signal_handler(signal.SIGUSR1, got.append, "first")
        loop.add_signal_handler(signal.SIGUSR1, got.append, "second")
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await wait_until(lambda: got)
        await asyncio.sleep(0.05)
        assert got == ["second"]
        loop.remove_signal_handler(signal.SIGUSR1)

    run(main())


def test_several_signals(loop, run):
    async def main():
        got = []
        loop.add_signal_handler(signal.SIGUSR1, got.append, "usr1")
        loop.add_signal_handler(signal.SIGUSR2, got.append, "usr2")
        loop.add_signal_handler(signal.SIGHUP, got.append, "hup")
        for s in (signal.SIGHUP, signal.SIGUSR2, signal.SIGUSR1):
            os.kill(os.getpid(), s)
            assert await wait_until(lambda: len(got) == 1)
            got.clear()
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.remove_signal_handler(signal.SIGUSR2)
        loop.remove_signal_handler(signal.SIGHUP)

    run(main())


def test_sigint_handler_replaces_keyboard_interrupt(loop, run):
    async def main():
        got = []
        loop.add_signal_handler(signal.SIGINT, got.append, "int")
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt
        assert await wait_until(lambda: got)
        assert got == ["int"]
        loop.remove_signal_handler(signal.SIGINT)

    run(main())


def test_signal_while_loop_not_running(loop):
    """A signal that arrives while the loop is stopped is handled on the next
    run."""
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, 1)
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.05)
    assert got == []

    async def wait():
        assert await wait_until(lambda: got)

    loop.run_until_complete(wait())
    assert got == [1]
    loop.remove_signal_handler(signal.SIGUSR1)


def test_signal_wakes_idle_loop(loop):
    """The loop sleeps in its poll with nothing to do; a signal sent by a
    thread wakes it at once."""
    latency = []

    def handler(sent):
        latency.append(time.monotonic() - sent[0])
        loop.stop()

    sent = [0.0]
    loop.add_signal_handler(signal.SIGUSR1, handler, sent)
    safety = loop.call_later(10, loop.stop)

    def sender():
        time.sleep(0.2)
        sent[0] = time.monotonic()
        os.kill(os.getpid(), signal.SIGUSR1)

    t = threading.Thread(target=sender)
    t.start()
    loop.run_forever()
    t.join()
    safety.cancel()
    loop.remove_signal_handler(signal.SIGUSR1)
    assert len(latency) == 1
    assert latency[0] < 0.5


def test_handler_exception_goes_to_exception_handler(loop, run):
    rec = RecordingHandler()
    loop.set_exception_handler(rec)

    async def main():
        def boom():
            raise ZeroDivisionError("in signal handler")

        loop.add_signal_handler(signal.SIGUSR1, boom)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await wait_until(lambda: rec.contexts)
        loop.remove_signal_handler(signal.SIGUSR1)

    run(main())
    assert len(rec.contexts) == 1
    ctx = rec.contexts[0]
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["message"].startswith("Exception in callback")
    assert isinstance(ctx["handle"], asyncio.Handle)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

def test_validation_same_as_reference(loop, run):
    async def scenario(lp):
        out = []

        def attempt(fn, *args):
            try:
                r = fn(*args)
                out.append(("ok", r))
            except Exception as e:
                out.append((type(e).__name__, str(e)))

        attempt(lp.add_signal_handler, signal.SIGKILL, lambda: None)
        attempt(lp.add_signal_handler, signal.SIGSTOP, lambda: None)
        attempt(lp.add_signal_handler, 0, lambda: None)
        attempt(lp.add_signal_handler, -1, lambda: None)
        attempt(lp.add_signal_handler, signal.NSIG, lambda: None)
        attempt(lp.add_signal_handler, 1000, lambda: None)
        attempt(lp.add_signal_handler, "SIGUSR1", lambda: None)
        attempt(lp.add_signal_handler, 1.5, lambda: None)

        async def coro_fn():
            pass

        attempt(lp.add_signal_handler, signal.SIGUSR1, coro_fn)
        c = coro_fn()
        attempt(lp.add_signal_handler, signal.SIGUSR1, c)
        c.close()
        attempt(lp.remove_signal_handler, 0)
        attempt(lp.remove_signal_handler, signal.NSIG)
        attempt(lp.remove_signal_handler, "x")
        attempt(lp.remove_signal_handler, signal.SIGKILL)
        # a failed add leaves nothing behind
        out.append(signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL)
        return out

    got = run(scenario(loop))
    assert got[0] == ("RuntimeError", "sig 9 cannot be caught")
    assert got[1] == ("RuntimeError", "sig 19 cannot be caught")
    assert got[2][0] == "ValueError" and got[3][0] == "ValueError"
    assert got[4] == ("ValueError", "invalid signal number {}".format(signal.NSIG))
    assert got[6][0] == "TypeError"
    assert got[8] == ("TypeError", "coroutines cannot be used with add_signal_handler()")
    assert got[-1] is True
    assert got == run_on_asyncio(scenario)


def test_add_signal_handler_on_closed_loop(loop_factory):
    def scenario(factory):
        lp = factory()
        lp.close()
        try:
            lp.add_signal_handler(signal.SIGUSR1, lambda: None)
        except Exception as e:
            return type(e).__name__, str(e)
        return None

    got = scenario(loop_factory)
    assert got == ("RuntimeError", "Event loop is closed")
    assert got == scenario(asyncio.new_event_loop)


def test_add_signal_handler_from_non_main_thread(loop_factory):
    """From another thread (the loop made in the main thread, or a loop that
    a thread runs with asyncio.Runner): the same error as asyncio's."""
    def scenario(factory):
        out = {}
        lp = factory()
        try:
            def other():
                try:
                    lp.add_signal_handler(signal.SIGUSR1, lambda: None)
                    out["main-loop"] = None
                except Exception as e:
                    out["main-loop"] = (type(e).__name__, str(e))

            t = threading.Thread(target=other)
            t.start()
            t.join()
        finally:
            lp.close()

        async def in_thread():
            lp2 = asyncio.get_running_loop()
            try:
                lp2.add_signal_handler(signal.SIGUSR1, lambda: None)
                out["thread-loop"] = None
            except Exception as e:
                out["thread-loop"] = (type(e).__name__, str(e))
            out["remove"] = lp2.remove_signal_handler(signal.SIGUSR1)

        def runner():
            with asyncio.Runner(loop_factory=factory) as r:
                r.run(in_thread())

        t = threading.Thread(target=runner)
        t.start()
        t.join()
        out["disposition"] = signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
        return out

    got = scenario(loop_factory)
    assert got["main-loop"] is not None and got["main-loop"][0] in ("RuntimeError", "ValueError")
    assert got["thread-loop"] is not None and got["thread-loop"][0] in ("RuntimeError", "ValueError")
    assert got["remove"] is False
    assert got["disposition"] is True
    assert got == scenario(asyncio.new_event_loop)


# ---------------------------------------------------------------------------
# Storms
# ---------------------------------------------------------------------------

def _storm_scenario(loop, start_storm):
    """Tick every 10 ms while a storm of SIGUSR1 arrives; return the handler
    count, the largest gap between ticks, and how late a 50 ms timer set
    right after the storm fires."""
    async def main():
        count = [0]
        loop.add_signal_handler(signal.SIGUSR1, lambda: count.__setitem__(0, count[0] + 1))
        ticks = []
        stop = asyncio.Event()

        async def ticker():
            while not stop.is_set():
                ticks.append(loop.time())
                await asyncio.sleep(0.01)

        tick_task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.05)
        await start_storm()
        await asyncio.sleep(0.1)
        stop.set()
        await tick_task
        # the loop still answers on time
        fired = loop.create_future()
        t0 = loop.time()
        loop.call_later(0.05, lambda: fired.set_result(loop.time()))
        late = await asyncio.wait_for(fired, 5) - t0 - 0.05
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        return count[0], max(gaps), late, len(ticks)

    return loop.run_until_complete(main())


# A burst overflows the loop's self-pipe: asyncio's signal handler then
# reports BlockingIOError through sys.unraisablehook, which is harmless.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_signal_storm_from_thread(loop):
    n = 10000

    async def start_storm():
        def storm():
            pid = os.getpid()
            for _ in range(n):
                os.kill(pid, signal.SIGUSR1)

        t = threading.Thread(target=storm)
        t.start()
        while t.is_alive():
            await asyncio.sleep(0.01)
        t.join()

    count, max_gap, late, nticks = _storm_scenario(loop, start_storm)
    assert 1 <= count <= n
    assert max_gap < 0.5, "the loop stalled for {:.3f}s during the storm".format(max_gap)
    assert late < 0.25, "a 50 ms timer fired {:.3f}s late".format(late)
    assert nticks >= 10


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_signal_storm_from_child_process(loop):
    n = 10000

    async def start_storm():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-S", "-c",
            "import os, signal, sys\npid = int(sys.argv[1])\n"
            "for _ in range(int(sys.argv[2])): os.kill(pid, signal.SIGUSR1)",
            str(os.getpid()), str(n))
        assert await asyncio.wait_for(proc.wait(), 20) == 0

    count, max_gap, late, nticks = _storm_scenario(loop, start_storm)
    assert 1 <= count <= n
    assert max_gap < 0.5, "the loop stalled for {:.3f}s during the storm".format(max_gap)
    assert late < 0.25, "a 50 ms timer fired {:.3f}s late".format(late)


# ---------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------

CTRL_C_RUNNER = textwrap.dedent("""
    import asyncio, sys
    if sys.argv[1] == "glassloop":
        import glassloop
        factory = glassloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    async def main():
        loop = asyncio.get_running_loop()
        print("ready", type(loop).__module__.split(".")[0], flush=True)
        try:
            await asyncio.Event().wait()   # forever
        except asyncio.CancelledError:
            print("cancelled", flush=True)
            raise

    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            runner.run(main())
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            raise
""")

CTRL_C_RUN_FOREVER = textwrap.dedent("""
    import asyncio, sys
    if sys.argv[1] == "glassloop":
        import glassloop
        loop = glassloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    loop.call_soon(lambda: print("ready", flush=True))
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        print("KeyboardInterrupt out of run_forever", loop.is_running(), flush=True)
    loop.close()
    print("closed", flush=True)
""")

CTRL_C_BUSY_CALLBACKS = textwrap.dedent("""
    import asyncio, sys
    if sys.argv[1] == "glassloop":
        import glassloop
        factory = glassloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    async def main():
        print("ready", flush=True)
        n = 0
        try:
            while True:          # busy: the loop never sleeps in its poll
                await asyncio.sleep(0)
                n += 1
        except asyncio.CancelledError:
            print("cancelled", flush=True)
            raise

    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            runner.run(main())
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            raise
""")


def _ctrl_c(script, loop_name, main_loop):
    async def go():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, loop_name,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = await asyncio.wait_for(proc.stdout.readline(), 20)
        await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            return first, out, err + b"\n[killed: no exit after SIGINT]", proc.returncode
        return first, out, err, proc.returncode

    return main_loop.run_until_complete(go())


@pytest.mark.parametrize("script", ["runner", "busy"])
def test_ctrl_c_with_runner(loop, loop_name, script):
    """Runner whose main task waits forever (or spins on sleep(0)): SIGINT
    cancels the main task, which sees CancelledError, and the process exits
    with KeyboardInterrupt (killed by SIGINT), as on asyncio."""
    src = CTRL_C_RUNNER if script == "runner" else CTRL_C_BUSY_CALLBACKS
    first, out, err, rc = _ctrl_c(src, loop_name, loop)
    assert first.startswith(b"ready"), (first, err)
    if script == "runner":
        assert first == b"ready " + loop_name.encode() + b"\n"
    assert out == b"cancelled\nKeyboardInterrupt\n", err.decode(errors="replace")[-2000:]
    assert rc == -signal.SIGINT, err.decode(errors="replace")[-2000:]
    assert err.rstrip().endswith(b"KeyboardInterrupt"), err.decode(errors="replace")[-2000:]
    assert b"Traceback" in err


def test_signal_during_a_c_callback_is_handled_before_sleeping(loop):
    """A signal delivered while a C function runs as a callback (libc's
    raise(3) through ctypes: no Python code runs between it and the loop's next
    poll, and nothing checks for signals on the way) still has its Python
    handler run before the loop goes to sleep: the handler stops the loop, long
    before the safety timer would."""
    raise_ = getattr(ctypes.CDLL(None, use_errno=True), "raise")
    raise_.argtypes = [ctypes.c_int]
    got, fired = [], []

    def handler(signum, frame):
        got.append(signum)
        loop.stop()

    def safety():
        fired.append(True)
        loop.stop()

    # A first run of the same callback with signal 0 (none sent): glassloop names
    # a callback site the first time it meets one, which runs Python code.
    loop.call_soon(raise_, 0)
    loop.call_soon(loop.stop)
    loop.run_forever()
    old = signal.signal(signal.SIGUSR1, handler)
    try:
        loop.call_soon(raise_, signal.SIGUSR1)
        timer = loop.call_later(30, safety)
        loop.run_forever()
        timer.cancel()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert got == [signal.SIGUSR1]
    assert fired == [], "the loop slept through the signal until the safety timer"


def test_ctrl_c_run_forever(loop, loop_name):
    """No Runner: SIGINT raises KeyboardInterrupt out of run_forever(), which
    leaves the loop stopped and closable."""
    first, out, err, rc = _ctrl_c(CTRL_C_RUN_FOREVER, loop_name, loop)
    assert first == b"ready\n", err
    assert out == b"KeyboardInterrupt out of run_forever False\nclosed\n", err.decode(errors="replace")[-2000:]
    assert rc == 0


# ---------------------------------------------------------------------------
# Cleanup on close
# ---------------------------------------------------------------------------

def test_close_removes_handlers(loop_factory):
    baseline = signal.set_wakeup_fd(-1)
    assert baseline == -1
    lp = loop_factory()
    try:
        lp.add_signal_handler(signal.SIGUSR1, lambda: None)
        lp.add_signal_handler(signal.SIGUSR2, lambda: None)
        lp.add_signal_handler(signal.SIGINT, lambda: None)
        assert signal.getsignal(signal.SIGUSR1) != signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    finally:
        lp.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # the loop's self-pipe is no longer the wakeup fd
    assert signal.set_wakeup_fd(-1) == -1


def test_wakeup_fd_set_and_reset(loop):
    """add_signal_handler points the wakeup fd at the loop's self-pipe; the
    last remove_signal_handler resets it."""
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop.add_signal_handler(signal.SIGUSR2, lambda: None)
    fd = signal.set_wakeup_fd(-1)
    assert fd >= 0
    signal.set_wakeup_fd(fd)
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    fd2 = signal.set_wakeup_fd(-1)
    assert fd2 == fd  # still set: SIGUSR2 has a handler
    signal.set_wakeup_fd(fd)
    assert loop.remove_signal_handler(signal.SIGUSR2) is True
    assert signal.set_wakeup_fd(-1) == -1


def test_signal_after_close_is_not_delivered(loop_factory):
    """After close(), the disposition is back to default: a SIGUSR1 would
    kill the process, so check with SIGUSR1 ignored instead that nothing of
    the closed loop runs."""
    got = []
    lp = loop_factory()
    lp.add_signal_handler(signal.SIGUSR1, got.append, 1)
    lp.close()
    old = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert got == []


def test_keyboard_interrupt_inside_callback(loop_factory):
    """SIGINT arrives while a callback runs (Python's default handler raises
    KeyboardInterrupt inside it): run_forever() propagates it, the loop is
    left stopped and usable, and the callbacks queued after the interrupted
    one run on the next iteration, exactly as on asyncio."""
    def scenario(factory):
        lp = factory()
        got = []
        try:
            def interrupted():
                got.append("interrupted-start")
                signal.raise_signal(signal.SIGINT)
                got.append("not reached")

            lp.call_soon(got.append, "a")
            lp.call_soon(interrupted)
            lp.call_soon(got.append, "b")
            lp.call_soon(got.append, "c")
            try:
                lp.run_forever()
                raised = None
            except KeyboardInterrupt:
                raised = "KeyboardInterrupt"
            state = (raised, list(got), lp.is_running())
            got.clear()
            run_one_iteration(lp)
            after = list(got)
            # and the loop runs coroutines again
            after_coro = lp.run_until_complete(asyncio.sleep(0.01, result="ok"))
            return state, after, after_coro
        finally:
            lp.close()

    got = scenario(loop_factory)
    assert got[0] == ("KeyboardInterrupt", ["a", "interrupted-start"], False)
    assert got == scenario(asyncio.new_event_loop)


def test_keyboard_interrupt_in_task(loop_factory):
    """KeyboardInterrupt raised in a task's step propagates out of
    run_until_complete, as on asyncio."""
    def scenario(factory):
        lp = factory()
        try:
            async def main():
                await asyncio.sleep(0)
                signal.raise_signal(signal.SIGINT)
                await asyncio.sleep(10)

            task = lp.create_task(main())
            try:
                lp.run_until_complete(task)
                raised = None
            except KeyboardInterrupt:
                raised = "KeyboardInterrupt"
            out = (raised, task.done(), lp.is_running())
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" log
            if not task.done():
                task.cancel()
                try:
                    lp.run_until_complete(task)
                except (asyncio.CancelledError, KeyboardInterrupt):
                    pass
            return out
        finally:
            lp.close()

    got = scenario(loop_factory)
    assert got[0] == "KeyboardInterrupt"
    assert got == scenario(asyncio.new_event_loop)
