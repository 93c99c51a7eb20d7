"""Shared fixtures for glassloop's pytest suite.

Every test of loop behaviour takes the ``loop`` (or ``loop_factory``) fixture,
which is parametrized twice: once with glassloop and once with asyncio's default
loop.  The asyncio run is the proof that the test itself is right: a test that
fails on asyncio is a wrong test, a test that fails only on glassloop has found a
glassloop bug.

Run from the repository root::

    python3 -m pytest tests -q              # both loops
    python3 -m pytest tests -q -k asyncio   # only the reference run
    python3 -m pytest tests -q -k glassloop # only glassloop

If glassloop cannot be imported, every glassloop test FAILS (it is never
skipped): a missing build must not look like a green run.

Each test gets a default timeout of ``DEFAULT_TIMEOUT`` seconds (pytest-timeout)
unless ``--timeout``, ``PYTEST_TIMEOUT``, an ini ``timeout`` or a
``@pytest.mark.timeout`` says otherwise.
"""

import asyncio
import gc
import os
import signal
import sys

import pytest

# The test modules import their helpers with ``from loopsupport import ...``;
# make that work whatever pytest's import mode.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

DEFAULT_TIMEOUT = 60.0

LOOP_NAMES = ("glassloop", "asyncio")

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

def pytest_configure(config):
    # A run started in the background (`cmd &` in a script ignores SIGINT, nohup
    # SIGHUP) hands the ignored signals down to every child: the Ctrl-C and
    # kill/terminate tests' children would never see them. Put the defaults back
    # here, so children start with them too.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGHUP, signal.SIGTERM):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
    config.addinivalue_line(
        "markers",
        "unexpected_errors_ok: do not fail the test when the loop's exception "
        "handler was called without the test expecting it",
    )


def _timeout_configured(config):
    try:
        if config.getoption("timeout") is not None:
            return True
    except ValueError:  # pytest-timeout not installed
        return True
    if os.environ.get("PYTEST_TIMEOUT"):
        return True
    try:
        return bool(config.getini("timeout"))
    except ValueError:
        return False


def pytest_collection_modifyitems(config, items):
    if _timeout_configured(config):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


# ---------------------------------------------------------------------------
# Loop factories
# ---------------------------------------------------------------------------

_glassloop_import = {}


def glassloop_import_error():
    """None if glassloop imports, else the exception importing it raised."""
    if "error" not in _glassloop_import:
        try:
            import glassloop  # noqa: F401
        except Exception as exc:  # ImportError, or a broken extension module
            _glassloop_import["error"] = exc
        else:
            _glassloop_import["error"] = None
    return _glassloop_import["error"]


def _missing_glassloop_message():
    return (
        "glassloop cannot be imported with {} ({!r}); build and install it "
        "for this Python (`scripts/setup.sh`, or `python3 -m pip install .` "
        "in the repository root) to run the glassloop half of this "
        "suite".format(sys.executable, glassloop_import_error())
    )


def import_glassloop():
    """Import glassloop or fail the calling test with a clear message."""
    if glassloop_import_error() is not None:
        pytest.fail(_missing_glassloop_message(), pytrace=False)
    import glassloop
    return glassloop


def _needs_glassloop(item):
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("loop_factory") == "glassloop":
        return True
    return "glassloop" in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    # Fail (in the call phase, so it is reported as a failure and not as a
    # setup error) every test that needs glassloop when it cannot be imported.
    # The fixtures below hand out None in that case instead of failing.
    if _needs_glassloop(item) and glassloop_import_error() is not None:
        pytest.fail(_missing_glassloop_message(), pytrace=False)


def get_loop_factory(name):
    """The loop factory for a loop name ('glassloop' or 'asyncio')."""
    if name == "glassloop":
        return import_glassloop().new_event_loop
    if name == "asyncio":
        return asyncio.new_event_loop
    raise ValueError(name)


@pytest.fixture(params=LOOP_NAMES)
def loop_factory(request):
    """``glassloop.new_event_loop`` or ``asyncio.new_event_loop``."""
    if request.param == "glassloop" and glassloop_import_error() is not None:
        return None  # the test fails in its call phase
    return get_loop_factory(request.param)


@pytest.fixture
def loop_name(request, loop_factory):
    """'glassloop' or 'asyncio': the name of the loop under test."""
    return request.node.callspec.params["loop_factory"]


class _UnexpectedErrors:
    """Exception handler installed by the ``loop`` fixture.

    As in uvloop's test base, a test fails when its loop's exception handler was
    called and the test did not install its own handler to look at it.
    """

    def __init__(self):
        self.contexts = []

    def __call__(self, loop, context):
        self.contexts.append(context)
        loop.default_exception_handler(context)


@pytest.fixture
def loop(request, loop_factory):
    """A fresh loop from ``loop_factory``, set as the current event loop.

    Teardown closes it and resets the current loop.  The loop's exception
    handler records every call; a test that did not replace the handler fails
    at teardown if anything reached it (mark the test ``unexpected_errors_ok``
    to allow it).
    """
    if loop_factory is None:  # glassloop missing: the test fails when called
        yield None
        return
    lp = loop_factory()
    guard = _UnexpectedErrors()
    lp.set_exception_handler(guard)
    asyncio.set_event_loop(lp)
    try:
        yield lp
    finally:
        try:
            if not lp.is_closed():
                if lp.is_running():  # a broken test left it running
                    lp.stop()
                else:
                    lp.close()
        finally:
            asyncio.set_event_loop(None)
            gc.collect(1)  # young garbage: cheap, and what the test made
    if (guard.contexts
            and request.node.get_closest_marker("unexpected_errors_ok") is None):
        msgs = "\n".join(
            "  - {!r}: {!r}".format(c.get("message"), c.get("exception"))
            for c in guard.contexts
        )
        pytest.fail(
            "the loop's exception handler was called unexpectedly:\n" + msgs,
            pytrace=False,
        )


@pytest.fixture
def run(loop):
    """``run(aw)`` is ``loop.run_until_complete(aw)``."""
    return None if loop is None else loop.run_until_complete


@pytest.fixture
def run_collecting(loop):
    """``run(aw)``: ``loop.run_until_complete(aw)``, then a garbage collection.

    Collecting here, inside the test, runs the finalizers of whatever a
    failed scenario left behind (e.g. a StreamWriter whose transport is None)
    before pytest formats the failure: on CPython 3.11.7 a finalizer whose
    exception pytest formats (traceback -> ast.parse) in the middle of
    pytest's own ast.parse of the failure report raises "SystemError: AST
    constructor recursion depth mismatch" and aborts the whole session.
    Modules whose scenarios leave transports behind on failure (TLS, pipes,
    subprocesses, signals) make it their ``run``.
    """
    if loop is None:
        return None

    def _run(aw):
        try:
            return loop.run_until_complete(aw)
        finally:
            gc.collect()

    return _run


@pytest.fixture
def glassloop():
    """The glassloop module; the test fails (never skips) if it cannot be
    imported."""
    if glassloop_import_error() is not None:
        return None  # the test fails in its call phase
    import glassloop as module
    return module


@pytest.fixture
def restore_policy():
    """Put asyncio's event loop policy back after the test."""
    saved = asyncio.get_event_loop_policy()
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(saved)
