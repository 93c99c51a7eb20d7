"""glassloop: an asyncio event loop in Rust that you can see into.

    import glassloop
    glassloop.run(main())                       # like asyncio.run, on glassloop
    asyncio.Runner(loop_factory=glassloop.new_event_loop)
    glassloop.install()                         # make it asyncio's default
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

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
    "__version__",
]

_T = TypeVar("_T")


def new_event_loop(*, record: bool = True) -> Loop:
    """Return a new glassloop event loop.

    `record=False` turns off per-callback timing (counters still run); it exists
    to measure what recording costs.
    """
    return Loop(record=record)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy, making glassloop loops."""

    def _loop_factory(self) -> Loop:  # type: ignore[override]
        return new_event_loop()


def install() -> None:
    """Make glassloop asyncio's default loop (sets `EventLoopPolicy`)."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None, **loop_kwargs: Any) -> _T:
    """Run the coroutine `main` on a new glassloop loop and return its result.

    The same as `asyncio.run(main, debug=debug)`; keyword arguments go to
    `new_event_loop()`.
    """
    if asyncio.events._get_running_loop() is not None:
        # The same check and message as asyncio.run().
        raise RuntimeError("glassloop.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=lambda: new_event_loop(**loop_kwargs)) as runner:
        return runner.run(main)


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
    }
