"""glassloop: an asyncio event loop in Rust that you can see into.

    import glassloop
    glassloop.run(main())                       # like asyncio.run, on glassloop
    asyncio.Runner(loop_factory=glassloop.new_event_loop)
    glassloop.install()                         # make it asyncio's default
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from typing import Any, Coroutine, TypeVar

from . import _core
from ._core import Handle, TimerHandle, __version__
from ._loop import Loop

__all__ = [
    "Loop",
    "Handle",
    "TimerHandle",
    "EventLoopPolicy",
    "new_event_loop",
    "install",
    "run",
    "inspect",
    "start_inspector",
    "start_otlp",
    "__version__",
]

_T = TypeVar("_T")


def new_event_loop(*, record: bool = True, inspect: str | bool | None = None, otlp: str | bool | None = None) -> Loop:
    """Return a new glassloop event loop.

    `record=False` turns off per-callback timing (counters still run); it exists
    to measure what recording costs. `inspect` starts the process's inspector
    sidecar (dashboard, JSON API, /metrics) on an address ("127.0.0.1:7070", ":0")
    or, with True, on `GLASSLOOP_INSPECT` or the default address; without it,
    a set `GLASSLOOP_INSPECT` does the same. `otlp` starts OpenTelemetry export
    (see `start_otlp`); by default it starts when an OTEL_EXPORTER_OTLP_*ENDPOINT
    variable is set.
    """
    loop = Loop(record=record)
    start_inspector_from(inspect)
    start_otlp_from(otlp)
    return loop


_otlp_enabled: bool | None = None


def start_otlp(endpoint: str | None = None) -> bool:
    """Start OTLP export of this process's loops (once) and return whether it runs.

    Configured only by the standard OTEL_* variables (endpoint, protocol
    http/protobuf or grpc, headers, service name, resource attributes, sampler,
    export interval); `endpoint` replaces OTEL_EXPORTER_OTLP_ENDPOINT. False when
    OTEL_SDK_DISABLED=true. Raises ValueError for a setting it cannot use.
    """
    global _otlp_enabled
    if _otlp_enabled is None:
        enabled, traces, metrics = _core.start_otlp(endpoint)
        _otlp_enabled = enabled
        if enabled:
            where = ", ".join(f"{n} -> {s[1]} ({s[0]})" for n, s in (("traces", traces), ("metrics", metrics)) if s)
            print(f"glassloop OTLP: {where}", file=sys.stderr, flush=True)
    return _otlp_enabled


_OTLP_ENDPOINT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


def start_otlp_from(otlp: str | bool | None) -> bool:
    # otlp=None: on when an OTLP endpoint variable is set; a bad setting is reported
    # and the loop runs on without export.
    if otlp is None:
        if not any(os.environ.get(v, "").strip() for v in _OTLP_ENDPOINT_VARS):
            return False
        otlp = True
    if otlp is False:
        return False
    try:
        return start_otlp(None if otlp is True else str(otlp))
    except ValueError as exc:
        warnings.warn(f"glassloop OTLP export did not start: {exc}", RuntimeWarning, stacklevel=3)
        return False


_inspector_url: str | None = None


def start_inspector(address: str | None = None, *, token: str | None = None, stall_threshold: float | None = None) -> str:
    """Start the inspector sidecar for this process (once) and return its URL.

    Binds 127.0.0.1:7070 unless told otherwise (`address`, or `GLASSLOOP_INSPECT`);
    any non-loopback address needs a token (`token` or `GLASSLOOP_TOKEN`).
    Raises OSError if the port is taken, ValueError for a bad address or a missing token.
    """
    global _inspector_url
    if _inspector_url is None:
        _inspector_url = _core.start_inspector(address, token, stall_threshold)
        print(f"glassloop inspector: {_inspector_url}", file=sys.stderr, flush=True)
    return _inspector_url


def start_inspector_from(inspect: str | bool | None) -> str | None:
    # One vocabulary: inspect="addr" / True / GLASSLOOP_INSPECT. A failure to start
    # is reported and the loop runs on without the sidecar.
    if inspect is None:
        env = os.environ.get("GLASSLOOP_INSPECT", "").strip()
        if not env or env.lower() in ("0", "false", "no", "off"):
            return None
        inspect = True
    if inspect is False:
        return None
    try:
        return start_inspector(None if inspect is True else str(inspect))
    except (OSError, ValueError) as exc:
        warnings.warn(f"glassloop inspector did not start: {exc}", RuntimeWarning, stacklevel=3)
        return None


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy, making glassloop loops."""

    def _loop_factory(self) -> Loop:  # type: ignore[override]
        return new_event_loop()


def install() -> None:
    """Make glassloop asyncio's default loop (sets `EventLoopPolicy`)."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(
    main: Coroutine[Any, Any, _T], *, debug: bool | None = None, otlp: str | bool | None = None, **loop_kwargs: Any
) -> _T:
    """Run the coroutine `main` on a new glassloop loop and return its result.

    The same as `asyncio.run(main, debug=debug)`; keyword arguments go to
    `new_event_loop()`. With OTLP export on, what it holds is sent before returning.
    """
    if asyncio.events._get_running_loop() is not None:
        # The same check and message as asyncio.run().
        raise RuntimeError("glassloop.run() cannot be called from a running event loop")
    try:
        with asyncio.Runner(debug=debug, loop_factory=lambda: new_event_loop(otlp=otlp, **loop_kwargs)) as runner:
            return runner.run(main)
    finally:
        if _otlp_enabled:
            _core.flush_otlp(5.0)


# A forked child has none of the sidecar's threads: its loops stay out of the hub.
os.register_at_fork(after_in_child=_core._after_fork_in_child)


def inspect(loop: asyncio.AbstractEventLoop | None = None) -> dict[str, Any]:
    """Everything a glassloop loop recorded, as plain data (JSON-ready but for
    the live task objects under tasks[i]["task"]).

    `loop` defaults to the running loop. Raises TypeError for loops that are not glassloop's.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    if not isinstance(loop, Loop):
        raise TypeError(f"glassloop.inspect() needs a glassloop loop, got {type(loop).__name__}")
    return {
        "stats": loop.stats(),
        "tasks": loop.tasks(),
        "callback_sites": loop.callback_sites(),
        "slow_callbacks": loop.slow_callbacks(),
        "transports": loop.transports(),
        "servers": loop.servers(),
    }
