"""Workloads: one module each, exposing ``UNIT``, ``N``, ``QUICK_N`` and ``run(loop, n)``.

``run`` builds its own input outside the timed region, times only the loop's work
with ``time.perf_counter``, checks that the loop did the right thing (raising
``WorkloadError`` otherwise, never ``assert``, which ``-O`` strips) and returns a
dict with at least ``ops`` (what the rate counts) and ``elapsed_s``.
"""

import importlib

NAMES = (
    "call_soon_chain",
    "call_soon_burst",
    "timers",
    "threadsafe",
    "tasks_gather",
    "sleep0_pingpong",
    "udp_pingpong",
    "sock_pingpong",
    "subprocess_spawn",
    "subprocess_pipe",
)


class WorkloadError(RuntimeError):
    """The loop under test produced a wrong result."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise WorkloadError(message)


def load(name: str):
    if name not in NAMES:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")
