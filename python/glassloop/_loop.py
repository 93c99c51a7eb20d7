"""The glassloop event loop: the Rust core plus asyncio's Python-level API.

`Loop` puts `glassloop._core.LoopCore` (ready queue, timers, mio reactor, handle
running and recording, all in Rust) first in the MRO, so those methods win, and
inherits the rest of the asyncio API from the standard selector loop: its
networking, pipes, subprocesses and signals run on top of our reactor through
`_add_reader`/`_add_writer`. TCP and Unix stream connections, TLS ones
included, get the Rust `StreamTransport`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import gc
import inspect
import io
import os
import selectors
import socket
import sys
import threading
import time
import warnings
import weakref
from asyncio import base_events, constants, events, futures, sslproto, trsock
from asyncio.log import logger
from typing import Any

from . import _children, _core, _stacks, _tracked

__all__ = ["Loop"]

_Future = futures.Future  # what the Rust `_sock_*` methods return when a call must wait


class _ReactorSelector(selectors.BaseSelector):
    """A read-only view of the Rust reactor's registrations.

    asyncio's transports only consult `loop._selector` to describe themselves in
    their reprs ("read=polling"); the loop never selects through it.
    """

    def __init__(self, core: _core.LoopCore) -> None:
        self._core = core

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        sides = self._core._fd_sides(fd)
        if sides is None:
            raise KeyError(f"{fileobj!r} is not registered")
        events_mask = (selectors.EVENT_READ if sides[0] else 0) | (selectors.EVENT_WRITE if sides[1] else 0)
        return selectors.SelectorKey(fileobj, fd, events_mask, None)

    def get_map(self) -> dict:
        return {}

    def register(self, fileobj, events, data=None):  # pragma: no cover - never called by asyncio
        raise RuntimeError("glassloop's reactor is driven through loop.add_reader/add_writer")

    def unregister(self, fileobj):  # pragma: no cover
        raise RuntimeError("glassloop's reactor is driven through loop.remove_reader/remove_writer")

    def select(self, timeout=None):  # pragma: no cover
        raise RuntimeError("glassloop polls in Rust")

    def close(self) -> None:
        self._core = None  # type: ignore[assignment]


def _server_takes_transport() -> bool:
    # Server._attach()/_detach() take the transport from Python 3.13 on (and in late 3.12 patches).
    return len(inspect.signature(asyncio.base_events.Server._attach).parameters) > 1


_SERVER_TAKES_TRANSPORT = _server_takes_transport()


def _server_attach(server: Any, transport: Any) -> None:
    if _SERVER_TAKES_TRANSPORT:
        server._attach(transport)
    else:
        server._attach()


def _server_detach(server: Any, transport: Any) -> None:
    if _SERVER_TAKES_TRANSPORT:
        server._detach(transport)
    else:
        server._detach()


class _CoreFacade:
    """What the two Rust-backed transports share: the Python object asyncio sees
    in front of a Rust core, kept in the `_core` slot. The core's methods are
    method descriptors on the class (`_core._install_facades`), so a call
    costs no Python frame and reads no instance dict; the attributes asyncio's own
    code reads on its transports are the core's."""

    __slots__ = ()
    _core_name = ""

    def _bind_core(self, loop: Loop, core: Any) -> None:
        self._core = core
        self._loop = loop
        core._set_facade(self)

    @property
    def _protocol_paused(self) -> bool:
        return self._core._protocol_paused

    @property
    def _extra(self) -> dict:
        return self._core._extra

    @property
    def _sock(self) -> socket.socket | None:
        return self._core._sock

    @property
    def _sock_fd(self) -> int:
        return self._core._sock_fd

    def __repr__(self) -> str:
        return repr(self._core).replace(self._core_name, type(self).__name__, 1)

    def __del__(self, _warn=warnings.warn) -> None:
        # As asyncio's transports: a transport dropped while open warns and closes its socket.
        core = getattr(self, "_core", None)
        sock = core._sock if core is not None else None
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()


class StreamTransport(_CoreFacade, asyncio.transports._FlowControlMixin):
    """A TCP or Unix stream transport whose data path is in Rust.

    A real `asyncio.Transport` (a `_FlowControlMixin`, as asyncio's own socket
    transports are, which `loop.sendfile()`'s fallback requires).
    """

    __slots__ = ("_core", "__weakref__")
    _sendfile_compatible = asyncio.constants._SendfileMode.TRY_NATIVE
    _start_tls_compatible = True
    _core_name = "StreamTransport"

    def __init__(self, loop: Loop, sock: socket.socket, protocol: asyncio.BaseProtocol, extra: dict | None, server: Any) -> None:
        self._bind_core(loop, _core.StreamTransportCore(loop, sock, protocol, extra, server))


class DatagramTransport(_CoreFacade, asyncio.transports._FlowControlMixin, asyncio.DatagramTransport):
    """A UDP or Unix datagram endpoint whose data path is in Rust.

    A real `asyncio.DatagramTransport`, and an `asyncio.Transport` with flow
    control as asyncio's own endpoint is (reading can be paused and resumed, the
    write buffer has water marks).
    """

    __slots__ = ("_core", "__weakref__")
    _core_name = "DatagramTransport"

    def __init__(self, loop: Loop, sock: socket.socket, protocol: asyncio.BaseProtocol, address: Any, extra: dict | None) -> None:
        self._bind_core(loop, _core.DatagramTransportCore(loop, sock, protocol, address, extra))

    @property
    def _address(self) -> Any:
        return self._core._address


_core._install_facades(StreamTransport, DatagramTransport)


_DATAGRAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


def _address_text(name: Any) -> str:
    """A listening socket's name as the server table shows it."""
    if isinstance(name, tuple):
        host, port = name[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(name, bytes):  # Linux's abstract namespace
        return repr(name)
    return str(name)


def _factory_name(factory: Any) -> str:
    while isinstance(factory, functools.partial):
        factory = factory.func
    return getattr(factory, "__qualname__", None) or type(factory).__qualname__


# accept() failures that mean "out of a resource": asyncio reports them and
# stops accepting for a while (constants.ACCEPT_RETRY_DELAY).
_ACCEPT_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _unqueue_if_cancelled(record):
    def done(submitted):
        # A concurrent future can only be cancelled before its job starts: the job
        # will never run, so it leaves the queue here (in whatever thread cancelled it).
        if submitted.cancelled():
            record(3)
    return done


def _run_foreign_handle(handle: asyncio.Handle) -> None:
    # asyncio's own Handle objects (signal handlers) reach us through _add_callback.
    if not handle._cancelled:
        handle._run()


# The ready queue keeps `call_soon` handles out of the collector's lists (see
# handles.rs); as a full collection starts, each live loop puts back under its
# watch the queued handles someone else holds too, so that a dropped, unclosed
# loop in a cycle with one of them is still freed (and warns).
_live_loops: "weakref.WeakSet[Loop]" = weakref.WeakSet()


def _before_full_collection(phase: str, info: dict) -> None:
    if phase == "start" and info["generation"] == 2:
        for lp in list(_live_loops):
            lp._track_shared_handles()


gc.callbacks.append(_before_full_collection)


class Loop(_core.LoopCore, asyncio.SelectorEventLoop):  # type: ignore[misc]
    """An asyncio event loop written in Rust that records what it does.

    Use it like any asyncio loop; `stats()` tells what it measured.
    """

    def __init__(self, *, record: bool = True) -> None:
        super().__init__(selector=_ReactorSelector(self))
        _live_loops.add(self)

    # Running. The iterations themselves run in Rust (`_run_forever_inner`);
    # this sets up what asyncio expects of a running loop around them.
    def run_forever(self) -> None:
        """Run until `stop()` is called."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        old_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            events._set_running_loop(self)
            self._run_forever_inner()
        finally:
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_hooks)

    def close(self) -> None:
        """Close the loop: drop pending callbacks, shut down the default executor."""
        super().close()
        self._close_core()
        if self._subprocess_children is not None:
            self._subprocess_children.close()

    # Connections made by asyncio's create_connection/create_server/connect_accepted_socket
    # (and their Unix variants) get a Rust transport; the rest keep asyncio's
    # (counting, and in the transport table: see _tracked).
    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        self._connection_opened()
        if server is not None:
            self._server_accepted(server)
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            transport = _tracked.SocketTransport(self, sock, protocol, waiter, extra, server)
            _tracked.track(self, transport, _tracked.socket_kind(sock))
            return transport
        self._ensure_fd_no_transport(sock)
        transport = StreamTransport(self, sock, protocol, extra, server)
        self._transports[sock.fileno()] = transport
        if server is not None:
            _server_attach(server, transport)
        self.call_soon(protocol.connection_made, transport)
        self.call_soon(transport._start_reading)
        if waiter is not None:
            self.call_soon(futures._set_result_unless_cancelled, waiter, None)
        return transport

    # create_datagram_endpoint (asyncio's) gets a Rust endpoint for UDP and Unix datagrams.
    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        if sock.type != socket.SOCK_DGRAM or sock.family not in _DATAGRAM_FAMILIES:
            return super()._make_datagram_transport(sock, protocol, address, waiter, extra)
        self._ensure_fd_no_transport(sock)
        transport = DatagramTransport(self, sock, protocol, address, extra)
        self._transports[sock.fileno()] = transport
        self.call_soon(protocol.connection_made, transport)
        self.call_soon(transport._start_reading)
        if waiter is not None:
            self.call_soon(futures._set_result_unless_cancelled, waiter, None)
        return transport

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *, server_side=False,
                            server_hostname=None, extra=None, server=None, **timeouts):
        # TLS connections (ssl= on create_connection, create_server, ...) get asyncio's
        # SSLProtocol over a Rust transport, as start_tls does: ciphertext moves between
        # socket and SSL object with no Python handle per event, and into the
        # SSLProtocol's own buffer (a BufferedProtocol) without a copy.
        if rawsock.type != socket.SOCK_STREAM or rawsock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            self._connection_opened()  # asyncio's transport: not seen by _make_socket_transport
            return super()._make_ssl_transport(
                rawsock, protocol, sslcontext, waiter, server_side=server_side,
                server_hostname=server_hostname, extra=extra, server=server, **timeouts)
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname, **timeouts)
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    # Subprocesses: asyncio's transport and pipes, but the child's exit is watched
    # by the loop itself (a pidfd on the reactor; see _children) rather than by
    # the policy's child watcher.
    _subprocess_children: _children.Children | None = None

    async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs):
        transport = await self._watched_subprocess_transport(
            protocol, args, shell, stdin, stdout, stderr, bufsize, extra=extra, **kwargs)
        _tracked.track(self, transport, "subprocess")
        return transport

    async def _watched_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs):
        if _children.chosen_child_watcher() is not None:
            # The program installed a watcher of its own choosing: use it, as asyncio would.
            return await super()._make_subprocess_transport(
                protocol, args, shell, stdin, stdout, stderr, bufsize, extra=extra, **kwargs)
        if self._subprocess_children is None:
            self._subprocess_children = _children.Children(self)
        waiter = self.create_future()
        transport = asyncio.unix_events._UnixSubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize, waiter=waiter, extra=extra, **kwargs)
        self._subprocess_children.watch(transport)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            # The pipes could not be connected: kill the child and wait for it, as asyncio does.
            transport.close()
            await transport._wait()
            raise
        return transport

    # Pipes and subprocesses run asyncio's transports, made through counting
    # subclasses and entered in the transport table.
    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        transport = _tracked.ReadPipeTransport(self, pipe, protocol, waiter, extra)
        _tracked.track(self, transport, "pipe_read")
        return transport

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        transport = _tracked.WritePipeTransport(self, pipe, protocol, waiter, extra)
        _tracked.track(self, transport, "pipe_write")
        return transport

    # Servers: asyncio's, entered in the server table when made.
    @functools.wraps(asyncio.SelectorEventLoop.create_server)
    async def create_server(self, *args, **kwargs):
        server = await super().create_server(*args, **kwargs)
        self._track_server(server)
        return server

    @functools.wraps(asyncio.SelectorEventLoop.create_unix_server)
    async def create_unix_server(self, *args, **kwargs):
        server = await super().create_unix_server(*args, **kwargs)
        self._track_server(server)
        return server

    def _track_server(self, server) -> None:
        sockets = server._sockets or ()
        unix = bool(sockets) and sockets[0].family == getattr(socket, "AF_UNIX", None)
        self._server_created(
            server,
            "unix" if unix else "tcp",
            server._ssl_context is not None,
            [_address_text(s.getsockname()) for s in sockets],
            _factory_name(server._protocol_factory),
        )

    def _accept_connection(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100, *timeouts):
        # asyncio's accept loop, with its failures counted as the server's refused
        # connections. Unlike asyncio, which calls accept() again after running out
        # of descriptors (reporting the same failure up to `backlog` times), one
        # failure ends this round; accepting resumes after the same retry delay.
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
                if self._debug:
                    logger.debug("%r got a new connection from %r: %r", server, addr, conn)
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError):
                return  # nothing more is waiting
            except ConnectionAbortedError:
                # The client gave up before we accepted; asyncio drops it silently.
                if server is not None:
                    self._server_refused(server)
                return
            except OSError as exc:
                if server is not None:
                    self._server_refused(server)
                if exc.errno not in _ACCEPT_RESOURCE_ERRNOS:
                    raise  # the loop reports it to the exception handler
                self.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": exc,
                    "socket": trsock.TransportSocket(sock),
                })
                # The listening socket stays readable: stop watching it for a while.
                self._remove_reader(sock.fileno())
                self.call_later(
                    constants.ACCEPT_RETRY_DELAY, self._start_serving,
                    protocol_factory, sock, sslcontext, server, backlog, *timeouts,
                )
                return
            else:
                self.create_task(self._accept_connection2(
                    protocol_factory, conn, {"peername": addr}, sslcontext, server, *timeouts,
                ))

    async def _sendfile_native(self, transp, file, offset, count):
        """`loop.sendfile()` on a Rust transport: sendfile(2) straight from the file
        to the socket, waiting on the transport's own writable events."""
        if not isinstance(transp, StreamTransport):
            return await super()._sendfile_native(transp, file, offset, count)
        try:
            in_fd = file.fileno()
            size = os.fstat(in_fd).st_size
        except (AttributeError, io.UnsupportedOperation, OSError) as exc:
            raise asyncio.exceptions.SendfileNotAvailableError("not a regular file") from exc
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        end = offset + count if count else size
        position, sent = offset, 0
        try:
            while position < end:
                try:
                    n = os.sendfile(transp._sock_fd, in_fd, position, min(end - position, 1 << 30))
                except BlockingIOError:
                    await transp._wait_writable()
                    continue
                except OSError as exc:
                    if sent == 0 and exc.errno in (errno.ENOTSOCK, errno.ENOSYS, errno.EINVAL):
                        raise asyncio.exceptions.SendfileNotAvailableError("os.sendfile() is not available") from exc
                    raise
                if n == 0:
                    break  # end of file
                position += n
                sent += n
            return sent
        finally:
            if sent:
                file.seek(position)
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()

    # Low-level socket methods. Each Rust `_sock_*` makes asyncio's checks and tries
    # the syscall: it returns the result, or, when the socket is not ready, a
    # future the loop resolves once the retried syscall succeeds (sock.rs). A
    # coroutine that stops waiting (cancelled, closed) takes its call off the fd.
    async def sock_recv(self, sock, n):
        """Receive up to `n` bytes from `sock` (b"" at end of stream)."""
        fut = self._sock_recv(sock, n)
        while fut.__class__ is _Future:
            try:
                data = await fut
            except BaseException:
                self._sock_abandon(sock, fut)
                fut = None  # no cycle through the traceback
                raise
            if data is not None:
                return data
            # None: the socket became readable and a large read is ours to make,
            # now that the task runs (sock.rs); it may find nothing and wait again.
            fut = self._sock_recv(sock, n)
        return fut

    async def sock_recv_into(self, sock, buf):
        """Receive into the writable buffer `buf`; returns the number of bytes written."""
        fut = self._sock_recv_into(sock, buf)
        if fut.__class__ is not _Future:
            return fut
        try:
            return await fut
        except BaseException:
            self._sock_abandon(sock, fut)
            fut = None
            raise

    async def sock_recvfrom(self, sock, bufsize):
        """Receive a datagram of at most `bufsize` bytes: `(data, address)`."""
        fut = self._sock_recvfrom(sock, bufsize)
        if fut.__class__ is not _Future:
            return fut
        try:
            return await fut
        except BaseException:
            self._sock_abandon(sock, fut)
            fut = None
            raise

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        """Receive a datagram into `buf` (at most `nbytes`, default its size): `(nbytes, address)`."""
        fut = self._sock_recvfrom_into(sock, buf, nbytes)
        if fut.__class__ is not _Future:
            return fut
        try:
            return await fut
        except BaseException:
            self._sock_abandon(sock, fut)
            fut = None
            raise

    async def sock_sendall(self, sock, data):
        """Send all of `data` (any bytes-like object), waiting for room as needed."""
        fut = self._sock_sendall(sock, data)
        if fut.__class__ is not _Future:
            return fut
        try:
            return await fut
        except BaseException:
            self._sock_abandon(sock, fut)
            fut = None
            raise

    async def sock_sendto(self, sock, data, address):
        """Send a datagram to `address`; returns the number of bytes sent."""
        fut = self._sock_sendto(sock, data, address)
        if fut.__class__ is not _Future:
            return fut
        try:
            return await fut
        except BaseException:
            self._sock_abandon(sock, fut)
            fut = None
            raise

    async def sock_accept(self, sock):
        """Accept a connection: `(conn, address)`, `conn` non-blocking."""
        fut = self._sock_accept(sock)
        if fut.__class__ is not _Future:
            return fut
        try:
            return await fut
        except BaseException:
            self._sock_abandon(sock, fut)
            fut = None
            raise

    async def sock_connect(self, sock, address):
        """Connect `sock` to `address`, resolving a host name first as asyncio does."""
        base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        if sock.family == socket.AF_INET or (base_events._HAS_IPv6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self)
            _, _, _, _, address = resolved[0]
        fut = self._sock_connect(sock, address)
        if fut.__class__ is not _Future:
            return fut
        try:
            return await fut
        except BaseException:
            self._sock_abandon(sock, fut)
            fut = None
            raise

    # asyncio's Python code schedules through these private entry points.
    def _call_soon(self, callback, args, context):
        return self.call_soon(callback, *args, context=context)

    def _add_callback(self, handle):
        if not handle._cancelled:
            self.call_soon(_run_foreign_handle, handle)

    def _add_callback_signalsafe(self, handle):
        self._add_callback(handle)
        self._write_to_self()

    def run_in_executor(self, executor, func, *args):
        """As asyncio's; jobs on thread pools are also counted and timed
        (queued, running, done, and the job-duration histogram)."""
        if executor is not None and not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            return super().run_in_executor(executor, func, *args)  # e.g. a process pool: can't wrap
        # asyncio's steps (the same in 3.11-3.13), keeping the concurrent future to
        # see a job cancelled before it ran.
        self._check_closed()
        if self._debug:
            self._check_callback(func, "run_in_executor")
        if executor is None:
            executor = self._default_executor
            self._check_default_executor()
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        record = self._executor_event

        def job():
            record(1)
            start = time.monotonic_ns()
            try:
                return func(*args)
            finally:
                record(2, time.monotonic_ns() - start)

        # Counted as queued before it is submitted: a worker may start it at once.
        record(0)
        try:
            submitted = executor.submit(job)
        except BaseException:
            record(3)
            raise
        submitted.add_done_callback(_unqueue_if_cancelled(record))
        return futures.wrap_future(submitted, loop=self)

    def _create_task_slow(self, coro, **kwargs):
        # create_task() with a task factory, in debug mode, or with newer keywords:
        # asyncio's own code, then the task table.
        task = asyncio.SelectorEventLoop.create_task(self, coro, **kwargs)
        self._task_created(task, kwargs.get("context"))
        return task

    def tasks(self, *, include_finished: bool = True) -> list[dict[str, Any]]:
        """The task table: live tasks (with the task object under "task"), then the
        most recently finished ones. Times are seconds, timestamps unix milliseconds."""
        return self._tasks(include_finished)

    def await_stack(self, task: asyncio.Future) -> list[dict[str, Any]]:
        """Where `task` is parked: its await chain, outermost coroutine first,
        ending with the future or task it waits on."""
        return _stacks.await_stack(task)

    def callback_sites(self, *, order: str = "total", limit: int = 50) -> list[dict[str, Any]]:
        """Where the loop spends its time: callback sites ordered by "total", "count" or "max"."""
        if order not in ("total", "count", "max"):
            raise ValueError(f"order must be 'total', 'count' or 'max', not {order!r}")
        return self._callback_sites(order, limit)

    def transports(self) -> list[dict[str, Any]]:
        """The transport table: the loop's open transports (Rust TCP and Unix
        streams, then asyncio's pipes, subprocesses and other sockets) with their
        counters. Times are seconds, timestamps unix milliseconds."""
        return self._transports_table()

    def servers(self) -> list[dict[str, Any]]:
        """The server table: every server made by `create_server`/`create_unix_server`
        still alive, oldest first, with connections accepted, open and refused."""
        return self._servers()

    def slow_callbacks(self) -> list[dict[str, Any]]:
        """Callbacks that ran at least `slow_callback_duration` (the last 256), oldest first."""
        return self._slow_callbacks()

    def stats(self) -> dict[str, Any]:
        """What the loop measured about itself, as plain data.

        Counters are totals since the loop was created; durations are seconds.
        """
        stats = self._stats()
        busy, idle = stats["busy_seconds"], stats["idle_seconds"]
        stats["utilization"] = busy / (busy + idle) if busy + idle > 0 else 0.0
        stats["running"] = self.is_running()
        stats["closed"] = self.is_closed()
        stats["debug"] = self.get_debug()
        return stats
