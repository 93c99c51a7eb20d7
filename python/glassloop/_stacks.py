"""Where tasks are parked and what a thread is running: the inspector's deep queries.

Both functions return plain data (lists of dicts) so the Rust side can turn them
into JSON without knowing Python's frame objects.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from typing import Any

# A chain deeper than this is cut (and says so): a query must stay cheap.
MAX_DEPTH = 64


def _frame_entry(kind: str, code: Any, lineno: int | None) -> dict[str, Any]:
    return {
        "kind": kind,
        "qualname": getattr(code, "co_qualname", code.co_name),
        "file": code.co_filename,
        "line": lineno if lineno is not None else code.co_firstlineno,
    }


def await_stack(task: asyncio.Future) -> list[dict[str, Any]]:
    """The await chain of `task`, outermost first: each coroutine (or async
    generator/generator) with the line it is suspended at, ending with what it
    waits on: a future, another task, or nothing if it is about to run."""
    chain: list[dict[str, Any]] = []
    get_coro = getattr(task, "get_coro", None)
    obj: Any = get_coro() if get_coro is not None else None
    while obj is not None and len(chain) < MAX_DEPTH:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
        code = getattr(obj, "cr_code", None) or getattr(obj, "gi_code", None) or getattr(obj, "ag_code", None)
        if code is not None:
            kind = "coroutine" if hasattr(obj, "cr_code") else "generator"
            chain.append(_frame_entry(kind, code, frame.f_lineno if frame is not None else None))
            obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None) or getattr(obj, "ag_await", None)
            continue
        chain.append(_waited(obj))
        break
    else:
        if obj is not None:
            chain.append({"kind": "truncated", "repr": f"deeper than {MAX_DEPTH} frames"})
    # `await fut` in C code leaves an opaque iterator at the end of the chain; the
    # task's `_fut_waiter` names the future (or task) it really waits on.
    waiter = getattr(task, "_fut_waiter", None)
    if waiter is not None and (not chain or chain[-1]["kind"] in ("awaitable", "coroutine", "generator")):
        if chain and chain[-1]["kind"] == "awaitable":
            chain.pop()
        chain.append(_waited(waiter))
    return chain


def _waited(obj: object) -> dict[str, Any]:
    if isinstance(obj, asyncio.Task):
        return {"kind": "task", "name": obj.get_name(), "repr": _short_repr(obj)}
    if asyncio.isfuture(obj):
        return {"kind": "future", "repr": _short_repr(obj)}
    return {"kind": "awaitable", "repr": _short_repr(obj)}


def thread_stack(thread_id: int) -> list[dict[str, Any]] | None:
    """The Python stack of a thread right now, outermost first (None if the thread has no frame)."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return None
    return [
        {"qualname": getattr(f.f_code, "co_qualname", f.f_code.co_name), "file": f.f_code.co_filename, "line": lineno}
        for f, lineno in traceback.walk_stack(frame)
    ][::-1]


def _short_repr(obj: object, limit: int = 200) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not break the query
        text = f"<{type(obj).__name__} (repr failed: {type(exc).__name__})>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format(frames: list[dict[str, Any]]) -> str:
    lines = []
    for f in frames:
        if "qualname" in f:
            lines.append(f"{f.get('kind', 'frame')} {f['qualname']} ({f['file']}:{f['line']})")
        else:
            lines.append(f"{f['kind']} {f.get('repr', '')}")
    return "\n".join(lines)


def await_stack_text(task: asyncio.Future) -> str:
    """`await_stack(task)` as text, one frame per line (for the inspector's JSON API)."""
    return _format(await_stack(task))


def thread_stack_text(thread_id: int) -> str | None:
    """`thread_stack(thread_id)` as text, outermost first (for the stall watchdog)."""
    frames = thread_stack(thread_id)
    return None if frames is None else _format(frames)
