"""Run one CPython ``test.test_asyncio`` module on a chosen event loop.

This is the per-module subprocess started by ``run.py``; it is not meant to be
run by hand (but it can be, for debugging one module)::

    python3 tests/conformance/worker.py --loop uvloop:new_event_loop \
        --module test_tasks --progress /tmp/p.jsonl [--skip-file ids.json]

What it does:

1. Resolves the loop factory ``module:callable`` and wraps it in a counting
   wrapper (number of loops created, and their types).
2. Injects the wrapper so that ``asyncio.new_event_loop()``, ``asyncio.run()``,
   ``asyncio.Runner()``, ``IsolatedAsyncioTestCase`` and any fresh default
   policy (also after ``asyncio.set_event_loop_policy(None)``) create the loop
   under test: the default policy *class* gets ``_loop_factory =
   staticmethod(wrapper)``, so every instance, present or future, uses it.
3. For modules whose loop-agnostic tests live in mixins that are only made
   concrete by selector-specific classes (``test_events``, ``test_sock_lowlevel``,
   ``test_sendfile``, ``test_server``, ``test_buffered_proto``,
   ``test_sslproto``), builds one new concrete class from the same bases as the
   module's own ``EPollEventLoopTests`` / ``SelectorStartServerTests`` / ...
   whose ``create_event_loop()`` / ``new_loop()`` returns the loop under test,
   and drops the module's own selector/proactor classes.
4. Runs the tests and streams one JSON line per event to ``--progress`` (the
   plan, each test start, each outcome), flushed immediately, so that the
   parent can account for a hang or a crash and resume after it.
5. Leaves with ``os._exit`` so that threads or children the tests leave behind
   cannot keep the interpreter alive.
"""

import argparse
import faulthandler
import importlib
import inspect
import json
import os
import signal
import sys
import threading
import time
import traceback
import unittest

# --------------------------------------------------------------------------
# Progress stream

_progress = None
_progress_lock = threading.Lock()


def emit(event, **fields):
    fields["event"] = event
    fields["t"] = time.time()
    line = json.dumps(fields, default=repr)
    with _progress_lock:
        _progress.write(line + "\n")
        _progress.flush()


# --------------------------------------------------------------------------
# Loop factory and its injection


class LoopCounter:
    """Wraps the factory; counts the loops it creates and records their types."""

    def __init__(self, factory, original_default_factory):
        self.factory = factory
        self.original_default_factory = original_default_factory
        self.count = 0
        self.types = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.silent = False

    def __call__(self):
        # A factory such as ``asyncio:new_event_loop`` goes back through the
        # default policy, i.e. through this wrapper: the nested call gets
        # asyncio's own loop class, and only the outer call is counted.
        if getattr(self._local, "depth", 0):
            return self.original_default_factory()
        self._local.depth = 1
        try:
            loop = self.factory()
        finally:
            self._local.depth = 0
        self.adopt(loop)
        return loop

    def adopt(self, loop):
        tp = type(loop)
        name = f"{tp.__module__}.{tp.__qualname__}"
        with self._lock:
            self.count += 1
            n = self.count
            self.types[name] = self.types.get(name, 0) + 1
        if not self.silent:
            emit("loop", n=n, type=name)


def resolve_factory(spec):
    if ":" not in spec:
        raise SystemExit(f"--loop must be 'module:callable', got {spec!r}")
    modname, _, attr = spec.partition(":")
    obj = importlib.import_module(modname)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise SystemExit(f"{spec} is not callable")
    return obj


def install_loop(counter):
    import asyncio
    import asyncio.events

    # The default policy class (asyncio.DefaultEventLoopPolicy is
    # _UnixDefaultEventLoopPolicy on 3.11-3.13).  BaseDefaultEventLoopPolicy
    # .new_event_loop() does ``return self._loop_factory()``; a class attribute
    # survives set_event_loop_policy(None), which instantiates the class anew.
    # staticmethod() keeps the wrapper from being bound as a method.
    policy_cls = asyncio.DefaultEventLoopPolicy
    policy_cls._loop_factory = staticmethod(counter)
    # Drop any policy instance created before the patch (harmless otherwise).
    asyncio.set_event_loop_policy(None)
    counter.silent = True
    # asyncio.run()/asyncio.Runner() without loop_factory call
    # events.new_event_loop() -> policy -> _loop_factory; IsolatedAsyncioTestCase
    # uses asyncio.Runner.  Verify the chain end to end.
    loop = asyncio.new_event_loop()
    loop.close()
    if counter.count != 1:
        raise RuntimeError("loop injection failed: asyncio.new_event_loop() "
                           "did not go through the factory")
    counter.count = 0
    counter.types.clear()
    counter.silent = False


def install_harness_shims():
    """Make test harness code (not the tests) loop-agnostic.

    ``test_utils.TestCase.close_loop`` reads the private ``loop._default_executor``
    of asyncio's BaseEventLoop.  For loops without that attribute (uvloop,
    glassloop) every test would error in its cleanup; instead shut the default
    executor down through the public API and delegate the rest (closing, child
    watcher thread checks) to the original.  Loops that have the attribute go
    through the original code unchanged.
    """
    from test.test_asyncio import utils as test_utils

    original = test_utils.TestCase.__dict__["close_loop"]
    original = getattr(original, "__func__", original)

    class _NoExecutorProxy:
        _default_executor = None

        def __init__(self, loop):
            self._loop = loop

        def close(self):
            self._loop.close()

        def __getattr__(self, name):
            return getattr(self._loop, name)

    def close_loop(loop):
        if hasattr(loop, "_default_executor"):
            return original(loop)
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        return original(_NoExecutorProxy(loop))

    test_utils.TestCase.close_loop = staticmethod(close_loop)


# --------------------------------------------------------------------------
# Per-module injection of loop-specific test classes

# For each module: the name of the concrete class used as template (first one
# that exists), whose bases (mixins + TestCase) are reused, and the hook
# method returning the loop.  Every other class in the module that defines the
# hook itself (the selector/proactor-specific variants) is dropped.
INJECT = {
    "test_events": dict(
        templates=["EPollEventLoopTests", "SelectEventLoopTests"],
        hook="create_event_loop", name="LoopUnderTestEventLoopTests",
        only_injected=True),
    "test_sock_lowlevel": dict(
        templates=["EPollEventLoopTests", "SelectEventLoopTests"],
        hook="create_event_loop", name="LoopUnderTestSockTests"),
    "test_sendfile": dict(
        templates=["EPollEventLoopTests", "SelectEventLoopTests"],
        hook="create_event_loop", name="LoopUnderTestSendfileTests"),
    "test_server": dict(
        templates=["SelectorStartServerTests"],
        hook="new_loop", name="LoopUnderTestStartServerTests"),
    "test_buffered_proto": dict(
        templates=["BufferedProtocolSelectorTests"],
        hook="new_loop", name="LoopUnderTestBufferedProtocolTests"),
    "test_sslproto": dict(
        templates=["SelectorStartTLSTests"],
        hook="new_loop", name="LoopUnderTestStartTLSTests"),
}

LOOP_HOOKS = ("create_event_loop", "new_loop")


def _instrumentable(loop, counter, notes):
    """Return a loop of the factory's kind that accepts instance attributes.

    Loops whose instances have no __dict__ (e.g. uvloop's cdef Loop) are
    replaced by an instance of a trivial Python subclass of their type.
    """
    try:
        loop.__dict__
        return loop
    except AttributeError:
        pass
    tp = type(loop)
    loop.close()
    sub = type(tp.__name__, (tp,), {"__module__": tp.__module__,
                                     "__qualname__": tp.__qualname__})
    new = sub()
    counter.adopt(new)
    msg = (f"{tp.__module__}.{tp.__qualname__} instances take no attributes: "
           "instrumented via a trivial subclass")
    if msg not in notes:
        notes.append(msg)
    return new


def patch_test_runners(mod, counter, notes):
    """test_runners' BaseTest installs a policy whose loops are a mocked
    ``asyncio.BaseEventLoop`` (selector and self-pipe replaced by mocks, and
    ``shutdown_asyncgens`` replaced by a flag setter).  Give it the loop under
    test instead, keeping the flag that its tearDown asserts on (but calling
    the real shutdown_asyncgens)."""
    def new_loop(self):
        loop = _instrumentable(counter(), counter, notes)
        loop.shutdown_ag_run = False
        real = loop.shutdown_asyncgens

        async def shutdown_asyncgens():
            loop.shutdown_ag_run = True
            await real()
        loop.shutdown_asyncgens = shutdown_asyncgens
        return loop

    mod.BaseTest.new_loop = new_loop
    notes.append("BaseTest.new_loop -> loop under test (instead of a mocked BaseEventLoop)")


def patch_test_pep492(mod, counter, notes):
    """test_pep492's BaseTest runs on a mocked ``asyncio.BaseEventLoop``;
    run it on the loop under test instead."""
    from test.test_asyncio import utils as test_utils

    def setUp(self):
        test_utils.TestCase.setUp(self)
        self.loop = counter()
        self.set_event_loop(self.loop)

    mod.BaseTest.setUp = setUp
    notes.append("BaseTest.setUp -> loop under test (instead of a mocked BaseEventLoop)")


MODULE_PATCHES = {
    "test_runners": patch_test_runners,
    "test_pep492": patch_test_pep492,
}


def _iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from _iter_tests(t)
        else:
            yield t


def _is_selector_specific(cls):
    """A class that itself defines a loop hook constructing asyncio's loops."""
    for hook in LOOP_HOOKS:
        fn = cls.__dict__.get(hook)
        if fn is None:
            continue
        try:
            src = inspect.getsource(fn)
        except (OSError, TypeError):
            continue
        if "SelectorEventLoop" in src or "ProactorEventLoop" in src:
            return True
    return False


def build_suite(mod, modname, counter, notes):
    loader = unittest.TestLoader()
    if modname in MODULE_PATCHES:
        MODULE_PATCHES[modname](mod, counter, notes)
    spec = INJECT.get(modname)
    injected = []
    dropped = set()
    if spec is not None:
        template = None
        for tname in spec["templates"]:
            template = getattr(mod, tname, None)
            if template is not None:
                break
        if template is None:
            raise RuntimeError(f"{modname}: none of {spec['templates']} found; "
                               "cannot build the loop-under-test class")
        hook = spec["hook"]

        def make_loop(self):
            return counter()

        # Same bases as the module's own concrete class, plus what that class
        # defines itself other than the hook (e.g. test_server's
        # SelectorStartServerTests adds test_start_unix_server_1).  Private
        # names (unittest's per-class _class_cleanups ...) are not copied.
        extra = {k: v for k, v in template.__dict__.items()
                 if not k.startswith("_") and k != hook}
        ns = dict(extra)
        ns.update({hook: make_loop, "__module__": mod.__name__,
                   "__qualname__": spec["name"],
                   "__doc__": f"{template.__name__}'s tests on the loop under test"})
        cls = type(spec["name"], template.__bases__, ns)
        setattr(mod, spec["name"], cls)  # picked up by loadTestsFromModule
        injected.append(cls)
        notes.append(f"injected {spec['name']}"
                     f"({', '.join(b.__name__ for b in template.__bases__)})"
                     f" via {hook}()"
                     + (f" + {template.__name__}'s own {sorted(extra)}" if extra else ""))
        for name, obj in vars(mod).items():
            if (isinstance(obj, type) and issubclass(obj, unittest.TestCase)
                    and obj is not cls and hook in obj.__dict__):
                dropped.add(obj)
        if spec.get("only_injected"):
            for name, obj in vars(mod).items():
                if (isinstance(obj, type) and issubclass(obj, unittest.TestCase)
                        and obj is not cls):
                    dropped.add(obj)
    else:
        for name, obj in vars(mod).items():
            if (isinstance(obj, type) and issubclass(obj, unittest.TestCase)
                    and _is_selector_specific(obj)):
                dropped.add(obj)
                notes.append(f"WARNING: dropped unhandled selector-specific class {name}")

    full = loader.loadTestsFromModule(mod)
    tests = [t for t in _iter_tests(full) if type(t) not in dropped]
    for cls in injected:
        if not any(type(t) is cls for t in tests):
            raise RuntimeError(f"{cls.__name__} was not collected")
    if dropped:
        notes.append("dropped: " + ", ".join(sorted(c.__name__ for c in dropped)))
    # unittest.TestSuite handles class/module fixtures when tests of a class
    # are contiguous, which they are (loader order is kept).
    return unittest.TestSuite(tests)


# --------------------------------------------------------------------------
# Result streaming


def _format_err(err, limit_head=12, limit_tail=4):
    exc_type, exc, tb = err
    # Skip unittest's own frames, as unittest's reports do.
    while tb is not None and "__unittest" in tb.tb_frame.f_globals:
        tb = tb.tb_next
    lines = "".join(traceback.format_exception(exc_type, exc, tb)).rstrip().splitlines()
    if len(lines) > limit_head + limit_tail:
        lines = lines[:limit_head] + ["  ..."] + lines[-limit_tail:]
    try:
        msg = str(exc)
    except Exception:
        msg = "<unprintable>"
    msg = msg.strip().splitlines()[0] if msg.strip() else ""
    name = exc_type.__qualname__ if exc_type is not None else "?"
    mod = getattr(exc_type, "__module__", "builtins")
    if mod not in ("builtins", None):
        name = f"{mod}.{name}"
    exception = f"{name}: {msg}" if msg else name
    # Innermost frame: tells apart message-less exceptions (NotImplementedError)
    where = ""
    t = tb
    while t is not None:
        co = t.tb_frame.f_code
        where = f"{os.path.basename(co.co_filename)}:{t.tb_lineno} in {co.co_name}"
        t = t.tb_next
    return exception[:300], "\n".join(lines)[:4000], where


class StreamingResult(unittest.TestResult):
    """Aggregates per test (subtests fold into their parent) and streams."""

    RANK = {"error": 5, "failure": 4, "xpass": 3, "xfail": 2, "passed": 1, "skipped": 0}

    def __init__(self, counter, verbose_stream):
        super().__init__()
        self.counter = counter
        self.out = verbose_stream
        self._cur = {}

    # ---- bookkeeping
    def _record(self, test, status, detail=None, sub=None):
        tid = test.id()
        st = self._cur.get(tid)
        if st is None:
            # Outcome without startTest: a fixture error (_ErrorHolder)
            self._emit(tid, status, [detail] if detail else [], fixture=True)
            return
        st["statuses"].append(status)
        if detail:
            if sub:
                detail = dict(detail, subtest=sub)
            st["details"].append(detail)

    def _emit(self, tid, status, details, fixture=False, duration=None):
        ev = {"id": tid, "status": status, "loops": self.counter.count}
        if details:
            ev["exception"] = details[0]["exception"]
            ev["traceback"] = details[0]["traceback"]
            if details[0].get("where"):
                ev["where"] = details[0]["where"]
            if details[0].get("subtest"):
                ev["subtest"] = details[0]["subtest"]
            if len(details) > 1:
                ev["more"] = len(details) - 1
        if fixture:
            ev["fixture"] = True
        if duration is not None:
            ev["duration"] = round(duration, 3)
        emit("outcome", **ev)
        print(f"{tid} ... {status}", file=self.out, flush=True)

    # ---- unittest API
    def startTest(self, test):
        super().startTest(test)
        tid = test.id()
        self._cur[tid] = {"statuses": [], "details": [], "t0": time.monotonic()}
        emit("start", id=tid)
        print(f"{tid} ...", file=self.out, flush=True)

    def stopTest(self, test):
        super().stopTest(test)
        tid = test.id()
        st = self._cur.pop(tid, None)
        if st is None:
            return
        statuses = st["statuses"] or ["passed"]
        # A test with subtests that all passed gets addSuccess; a test whose
        # only statuses are subtest skips and nothing else is 'skipped'.
        status = max(statuses, key=lambda s: self.RANK[s])
        if "passed" in statuses and status == "skipped":
            status = "passed"
        details = [d for d in st["details"]]
        self._emit(tid, status, details, duration=time.monotonic() - st["t0"])

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, "passed")

    def addError(self, test, err):
        super().addError(test, err)
        exc, tb, where = _format_err(err)
        self._record(test, "error", {"exception": exc, "traceback": tb, "where": where})

    def addFailure(self, test, err):
        super().addFailure(test, err)
        exc, tb, where = _format_err(err)
        self._record(test, "failure", {"exception": exc, "traceback": tb, "where": where})

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        parent = getattr(test, "test_case", None)  # a _SubTest
        if parent is not None:
            self._record(parent, "skipped")
        else:
            self._record(test, "skipped", {"exception": f"skipped: {reason}"[:300],
                                           "traceback": ""})

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, "xfail")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, "xpass", {"exception": "unexpected success", "traceback": ""})

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is None:
            return
        exc, tb, where = _format_err(err)
        is_failure = issubclass(err[0], test.failureException)
        self._record(test, "failure" if is_failure else "error",
                     {"exception": exc, "traceback": tb, "where": where},
                     sub=subtest._subDescription())


# --------------------------------------------------------------------------


def main():
    global _progress
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", required=True)
    ap.add_argument("--module", required=True)
    ap.add_argument("--progress", required=True)
    ap.add_argument("--skip-file")
    args = ap.parse_args()

    _progress = open(args.progress, "a", buffering=1, encoding="utf-8")
    # On SIGUSR1 (sent by run.py before it kills a hung worker) dump every
    # thread's stack to stderr (the module's log); on fatal signals too.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)

    # If run.py goes away (killed by CI, say), take our process group down.
    parent = os.getppid()

    def watch_parent():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                try:
                    os.killpg(0, signal.SIGKILL)
                finally:
                    os._exit(70)
    threading.Thread(target=watch_parent, name="conformance-parent-watch",
                     daemon=True).start()

    skip = set()
    if args.skip_file:
        with open(args.skip_file, encoding="utf-8") as f:
            skip = set(json.load(f))

    modname = args.module
    emit("hello", pid=os.getpid(), python=sys.version.split()[0],
         module=modname, loop=args.loop)

    notes = []
    try:
        import asyncio
        factory = resolve_factory(args.loop)
        counter = LoopCounter(factory, asyncio.DefaultEventLoopPolicy._loop_factory)
        install_loop(counter)
    except BaseException:
        exc, tb, _ = _format_err(sys.exc_info())
        emit("fatal", stage="loop", exception=exc, traceback=tb)
        os._exit(3)

    try:
        install_harness_shims()
    except Exception as e:     # harness changed in some future version
        notes.append(f"WARNING: harness shim not installed: {e!r}")
    try:
        mod = importlib.import_module(f"test.test_asyncio.{modname}")
    except unittest.SkipTest as e:
        emit("module_skipped", reason=str(e))
        emit("done", loops=counter.count, loop_types=counter.types, notes=notes)
        os._exit(0)
    except BaseException:
        exc, tb, _ = _format_err(sys.exc_info())
        emit("fatal", stage="import", exception=exc, traceback=tb)
        os._exit(3)

    try:
        suite = build_suite(mod, modname, counter, notes)
    except BaseException:
        exc, tb, _ = _format_err(sys.exc_info())
        emit("fatal", stage="collect", exception=exc, traceback=tb)
        os._exit(3)

    ids = [t.id() for t in _iter_tests(suite)]
    if skip:
        suite = unittest.TestSuite(t for t in _iter_tests(suite) if t.id() not in skip)
    emit("plan", ids=ids, notes=notes)

    result = StreamingResult(counter, sys.stderr)
    t0 = time.monotonic()
    try:
        suite.run(result)
    except BaseException:
        exc, tb, _ = _format_err(sys.exc_info())
        emit("fatal", stage="run", exception=exc, traceback=tb)
    emit("done", loops=counter.count, loop_types=counter.types,
         duration=round(time.monotonic() - t0, 3), notes=notes)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    # Do not wait for threads or atexit handlers the tests left behind.
    os._exit(0)


if __name__ == "__main__":
    main()
