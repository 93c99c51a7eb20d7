"""asyncio's Python transports in the loop's transport table.

Pipes (`connect_read_pipe`, `connect_write_pipe`, a subprocess's stdio),
subprocess transports and the rare stream socket of a family the Rust
transport does not take still run asyncio's Python classes. The loop makes
them through the subclasses here, which count what the Rust transports count
(bytes and calls each way, the write buffer's high-water mark, time paused) on
the transport's own data path, never by wrapping the protocol; `track()` puts
each in the loop's registry, a dict the Rust core holds
(`loop._tracked_transports`: `{id: (weakref, kind, created_unix_ms)}`), and
`rows()` turns the registry into table rows when the loop builds its tables.

The counters are plain attributes bumped once per read or write; nothing runs
per transport until a table is built (once a second while inspected).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
import weakref
from asyncio import base_subprocess, selector_events, unix_events
from asyncio.log import logger
from typing import Any

from ._core import _read_pipe

# Above any fd, so these ids never collide with a Rust transport's (its fd).
_ids = itertools.count(1 << 32)

_STDIO = {0: "stdin", 1: "stdout", 2: "stderr"}


def _nbytes(data: Any) -> int:
    return len(data) if type(data) is bytes else memoryview(data).nbytes


def track(loop: Any, transport: Any, kind: str) -> None:
    """Enter `transport` in `loop`'s transport table as `kind`
    (pipe_read, pipe_write, subprocess, tcp, unix)."""
    registry = loop._tracked_transports
    tid = next(_ids)
    # The entry goes when the transport is collected, or (rows()) once its
    # connection is lost, whichever comes first.
    ref = weakref.ref(transport, lambda _, tid=tid, registry=registry: registry.pop(tid, None))
    registry[tid] = (ref, kind, time.time_ns() // 1_000_000)
    transport._gl_id = tid


def _forget(transport: Any) -> None:
    loop = transport._loop
    if loop is not None:
        loop._tracked_transports.pop(getattr(transport, "_gl_id", None), None)


class _Paused:
    """Time spent paused, as the Rust transports report it (`paused_*_ns`)."""

    __slots__ = ("since", "total")

    def __init__(self) -> None:
        self.since = 0
        self.total = 0

    def start(self) -> None:
        if not self.since:
            self.since = time.monotonic_ns()

    def stop(self) -> None:
        if self.since:
            self.total += time.monotonic_ns() - self.since
            self.since = 0

    def ns(self) -> int:
        return self.total + (time.monotonic_ns() - self.since if self.since else 0)


class ReadPipeTransport(unix_events._UnixReadPipeTransport):
    """asyncio's read-pipe transport, counting what it reads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._gl_bytes_in = 0
        self._gl_calls_in = 0
        self._gl_paused = _Paused()
        super().__init__(*args, **kwargs)

    def _read_ready(self) -> None:
        # The same steps as asyncio's, counted: one read of what is waiting; the
        # data goes to the protocol, an empty read is the writer's end of file.
        # (_read_pipe, not os.read: see pipe.rs for the allocation it saves.)
        try:
            data = _read_pipe(self._fileno, self.max_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal_error(exc, "Fatal read error on pipe transport")
            return
        if data is None:
            return  # EAGAIN
        if data:
            self._gl_bytes_in += len(data)
            self._gl_calls_in += 1
            self._protocol.data_received(data)
            return
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._closing = True
        self._loop._remove_reader(self._fileno)
        self._loop.call_soon(self._protocol.eof_received)
        self._loop.call_soon(self._call_connection_lost, None)

    def pause_reading(self) -> None:
        super().pause_reading()
        if self._paused:
            self._gl_paused.start()

    def resume_reading(self) -> None:
        super().resume_reading()
        if not self._paused:
            self._gl_paused.stop()

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        _forget(self)
        super()._call_connection_lost(exc)


class _WriteCounting:
    """Counts a Python write transport's writes: bytes taken, bytes it gave up
    (closed or failed with data buffered), the buffer's high-water mark and the
    time the protocol was paused. Bytes out = taken - dropped - still buffered."""

    def _gl_init(self) -> None:
        self._gl_taken = 0
        self._gl_dropped = 0
        self._gl_calls_out = 0
        self._gl_high = 0
        self._gl_wpaused = _Paused()

    def write(self, data: Any) -> None:
        lost, closing = self._conn_lost, self._closing
        super().write(data)
        # asyncio ignores writes after close and counts failed ones in _conn_lost.
        if not closing and self._conn_lost == lost and data:
            self._gl_taken += _nbytes(data)
            self._gl_calls_out += 1
            buffered = self.get_write_buffer_size()
            if buffered > self._gl_high:
                self._gl_high = buffered

    def _maybe_pause_protocol(self) -> None:
        super()._maybe_pause_protocol()
        if self._protocol_paused:
            self._gl_wpaused.start()

    def _maybe_resume_protocol(self) -> None:
        super()._maybe_resume_protocol()
        if not self._protocol_paused:
            self._gl_wpaused.stop()

    def _gl_bytes_out(self) -> int:
        return max(0, self._gl_taken - self._gl_dropped - self.get_write_buffer_size())


class WritePipeTransport(_WriteCounting, unix_events._UnixWritePipeTransport):
    """asyncio's write-pipe transport, counting what it writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._gl_init()
        super().__init__(*args, **kwargs)

    def _write_ready(self) -> None:
        pending, lost = len(self._buffer), self._conn_lost
        super()._write_ready()
        if self._conn_lost != lost:
            self._gl_dropped += pending  # the write failed: asyncio dropped the buffer

    def _close(self, exc: BaseException | None = None) -> None:
        self._gl_dropped += len(self._buffer)
        super()._close(exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        _forget(self)
        super()._call_connection_lost(exc)


class SocketTransport(_WriteCounting, selector_events._SelectorSocketTransport):
    """asyncio's socket transport (for stream sockets of families other than
    IPv4, IPv6 and Unix), counting what it writes. Reads are not counted: they
    happen inside asyncio's read path, which this leaves as it is."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._gl_init()
        super().__init__(*args, **kwargs)

    def _force_close(self, exc: BaseException | None) -> None:
        if not self._conn_lost:
            self._gl_dropped += self.get_write_buffer_size()
        super()._force_close(exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        _forget(self)
        super()._call_connection_lost(exc)


def _state(t: Any) -> str:
    return "closing" if t.is_closing() else "open"


def _pipe_peer(protocol: Any) -> str:
    # A subprocess's stdio pipe: name the process and the stream.
    if isinstance(protocol, base_subprocess.WriteSubprocessPipeProto):
        proc = protocol.proc
        pid = proc.get_pid() if proc is not None else None
        if pid is not None:
            return f"pid {pid} {_STDIO.get(protocol.fd, protocol.fd)}"
    return ""


def _row(tid: int, kind: str, created: int, t: Any) -> tuple:
    protocol = t.get_protocol()
    protocol_name = type(protocol).__qualname__ if protocol is not None else ""
    if kind == "pipe_read":
        paused = t._gl_paused
        return (tid, kind, f"fd {t._fileno}", _pipe_peer(protocol), protocol_name, created,
                t._gl_bytes_in, 0, t._gl_calls_in, 0, 0, 0,
                bool(t._paused), False, paused.ns(), 0, _state(t))
    if kind == "subprocess":
        # Its bytes are those of its stdio pipes (each also listed on its own).
        bytes_in = bytes_out = calls_in = calls_out = 0
        for proto in (t._pipes or {}).values():
            pipe = getattr(proto, "pipe", None)
            if isinstance(pipe, ReadPipeTransport):
                bytes_in += pipe._gl_bytes_in
                calls_in += pipe._gl_calls_in
            elif isinstance(pipe, WritePipeTransport):
                bytes_out += pipe._gl_bytes_out()
                calls_out += pipe._gl_calls_out
        pid = t.get_pid()
        return (tid, kind, "", f"pid {pid}" if pid is not None else "", protocol_name, created,
                bytes_in, bytes_out, calls_in, calls_out, 0, 0,
                False, False, 0, 0, _state(t))
    # A write pipe, or an asyncio socket transport.
    if kind == "pipe_write":
        local, peer = f"fd {t._fileno}", _pipe_peer(protocol)
    else:
        local, peer = _sockname(t, "sockname"), _sockname(t, "peername")
    return (tid, kind, local, peer, protocol_name, created,
            0, t._gl_bytes_out(), 0, t._gl_calls_out, t.get_write_buffer_size(), t._gl_high,
            False, bool(t._protocol_paused), 0, t._gl_wpaused.ns(), _state(t))


def _sockname(t: Any, key: str) -> str:
    name = t.get_extra_info(key)
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return "" if name is None else os.fsdecode(name) if isinstance(name, (bytes, str)) else str(name)


def rows(registry: dict) -> list[tuple]:
    """The table rows of the live transports in `registry` (the Rust core's
    TransportRecord fields, in order); forgets the closed and collected ones."""
    out = []
    for tid, (ref, kind, created) in list(registry.items()):
        t = ref()
        if t is None or t._loop is None:  # collected, or its connection_lost ran
            registry.pop(tid, None)
            continue
        out.append(_row(tid, kind, created, t))
    return out


def socket_kind(sock: socket.socket) -> str:
    return "unix" if sock.family == getattr(socket, "AF_UNIX", None) else "tcp"
