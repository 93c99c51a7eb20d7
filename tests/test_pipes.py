"""connect_read_pipe / connect_write_pipe with os.pipe(), FIFOs, ptys and
socketpairs; the pipe transports' API; EOF; bytes integrity."""

import asyncio
import hashlib
import os
import pty
import shutil
import socket
import tempfile
import threading
import time
import tty

import pytest

from loopsupport import exc_signature, run_on_asyncio


@pytest.fixture
def run(run_collecting):
    """run_until_complete, then a garbage collection (conftest.run_collecting)."""
    return run_collecting


def payload(n, seed=b"pipes"):
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha512(seed + counter.to_bytes(8, "big")).digest() * 32
        counter += 1
    return bytes(out[:n])


class ReadProto(asyncio.Protocol):
    def __init__(self, loop):
        self.loop = loop
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.hasher = hashlib.sha256()
        self.keep = True  # False: only count and hash
        self.count = 0

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.made.set_result(None)

    def data_received(self, data):
        assert self.transport is not None
        assert not self.lost.done()
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.hasher.update(data)
        self.count += len(data)
        if self.keep:
            self.data += data

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)

    def connection_lost(self, exc):
        self.events.append(("lost", exc_signature(exc)))
        self.lost.set_result(exc)


class WriteProto(asyncio.BaseProtocol):
    def __init__(self, loop):
        self.loop = loop
        self.events = []
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.paused = 0
        self.resumed = 0
        self._resume_waiter = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.made.set_result(None)

    def pause_writing(self):
        self.paused += 1
        self.events.append("pause")

    def resume_writing(self):
        self.resumed += 1
        self.events.append("resume")
        if self._resume_waiter is not None and not self._resume_waiter.done():
            self._resume_waiter.set_result(None)

    async def wait_resumed(self):
        if self.paused > self.resumed:
            self._resume_waiter = self.loop.create_future()
            await self._resume_waiter

    def connection_lost(self, exc):
        self.events.append(("lost", exc_signature(exc)))
        self.lost.set_result(exc)


async def wait_for_len(proto, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while len(proto.data) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return bytes(proto.data)


def read_all_fd(fd, n=None):
    """Blocking read of fd until EOF (or n bytes)."""
    chunks = []
    got = 0
    while n is None or got < n:
        d = os.read(fd, 1 << 16)
        if not d:
            break
        chunks.append(d)
        got += len(d)
    return b"".join(chunks)


# ---------------------------------------------------------------------------
# os.pipe()
# ---------------------------------------------------------------------------

def test_read_pipe_os_pipe(loop, run):
    async def main():
        r, w = os.pipe()
        pipeobj = os.fdopen(r, "rb", 0)
        proto = ReadProto(loop)
        tr, pr = await loop.connect_read_pipe(lambda: proto, pipeobj)
        assert pr is proto
        assert proto.events == ["made"]
        assert tr.get_extra_info("pipe") is pipeobj
        assert tr.get_protocol() is proto
        assert tr.is_reading()
        assert not tr.is_closing()
        os.write(w, b"hello ")
        os.write(w, b"pipe")
        assert await wait_for_len(proto, 10) == b"hello pipe"
        os.close(w)
        await asyncio.wait_for(proto.lost, 5)
        assert proto.events == ["made", "data", "eof", ("lost", None)]
        assert pipeobj.closed
        assert tr.is_closing()

    run(main())


def test_write_pipe_os_pipe(loop, run):
    async def main():
        r, w = os.pipe()
        pipeobj = os.fdopen(w, "wb", 0)
        proto = WriteProto(loop)
        tr, pr = await loop.connect_write_pipe(lambda: proto, pipeobj)
        try:
            assert pr is proto
            assert tr.get_extra_info("pipe") is pipeobj
            assert tr.can_write_eof() is True
            assert tr.get_write_buffer_size() == 0
            tr.write(b"abc")
            tr.writelines([b"def", bytearray(b"ghi"), memoryview(b"jkl")])
            assert os.read(r, 100) == b"abcdefghijkl"
            tr.write_eof()
            assert tr.is_closing()
            await asyncio.wait_for(proto.lost, 5)
            assert proto.events == ["made", ("lost", None)]
            assert os.read(r, 100) == b""  # EOF: the write end was closed
            assert pipeobj.closed
        finally:
            os.close(r)

    run(main())


def test_pipe_integrity_both_ends_on_loop(loop, run):
    """8 MiB through an os.pipe() with both transports on the loop; the
    writer's buffer goes over the high-water mark (pause_writing) and drains
    (resume_writing)."""
    size = 8 * 1024 * 1024 + 11
    data = payload(size)

    async def main():
        r, w = os.pipe()
        rp = ReadProto(loop)
        rp.keep = False
        wp = WriteProto(loop)
        rtr, _ = await loop.connect_read_pipe(lambda: rp, os.fdopen(r, "rb", 0))
        wtr, _ = await loop.connect_write_pipe(lambda: wp, os.fdopen(w, "wb", 0))
        wtr.write(data)
        assert wtr.get_write_buffer_size() > 0
        assert wp.paused == 1
        await asyncio.wait_for(wp.wait_resumed(), 10)
        wtr.write_eof()
        await asyncio.wait_for(rp.lost, 10)
        await asyncio.wait_for(wp.lost, 5)
        assert rp.count == size
        assert rp.hasher.digest() == hashlib.sha256(data).digest()
        assert wp.resumed == 1
        assert wp.events == ["made", "pause", "resume", ("lost", None)]
        assert rp.events == ["made", "data", "eof", ("lost", None)]

    run(main())


def test_pipe_integrity_chunked_with_flow_control(loop, run):
    """4 MiB written in 64 KiB chunks, waiting for resume_writing whenever the
    transport pauses the protocol."""
    size = 4 * 1024 * 1024
    data = payload(size, b"chunked")

    async def main():
        r, w = os.pipe()
        rp = ReadProto(loop)
        wp = WriteProto(loop)
        await loop.connect_read_pipe(lambda: rp, os.fdopen(r, "rb", 0))
        wtr, _ = await loop.connect_write_pipe(lambda: wp, os.fdopen(w, "wb", 0))
        view = memoryview(data)
        max_buffered = 0
        for i in range(0, size, 1 << 16):
            wtr.write(view[i:i + (1 << 16)])
            max_buffered = max(max_buffered, wtr.get_write_buffer_size())
            await wp.wait_resumed()
        wtr.close()
        await asyncio.wait_for(rp.lost, 10)
        assert len(rp.data) == size
        assert hashlib.sha256(rp.data).digest() == hashlib.sha256(data).digest()
        # flow control kept the buffer near the high-water mark
        assert max_buffered < 256 * 1024

    run(main())


def test_read_pipe_sees_eof_when_writer_closes_in_thread(loop, run):
    async def main():
        r, w = os.pipe()
        proto = ReadProto(loop)
        await loop.connect_read_pipe(lambda: proto, os.fdopen(r, "rb", 0))
        data = payload(3 * 1024 * 1024, b"thread")

        def writer():
            with os.fdopen(w, "wb") as f:
                f.write(data)

        t = threading.Thread(target=writer)
        t.start()
        await asyncio.wait_for(proto.lost, 10)
        t.join()
        assert bytes(proto.data) == data
        assert proto.events[-2:] == ["eof", ("lost", None)]

    run(main())


def test_write_pipe_reader_closed_detected(loop, run):
    """When the read end is closed, the write transport notices without
    writing (it watches the fd for readability) and calls connection_lost(None)."""
    async def main():
        r, w = os.pipe()
        proto = WriteProto(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, os.fdopen(w, "wb", 0))
        await asyncio.sleep(0.02)
        os.close(r)
        exc = await asyncio.wait_for(proto.lost, 5)
        assert exc is None
        assert tr.is_closing()

    run(main())


def test_write_pipe_reader_closed_with_buffered_data(loop, run):
    """The read end closes while data is still buffered: connection_lost gets a
    BrokenPipeError, as on asyncio."""
    async def scenario(lp):
        r, w = os.pipe()
        proto = WriteProto(lp)
        tr, _ = await lp.connect_write_pipe(lambda: proto, os.fdopen(w, "wb", 0))
        tr.write(b"x" * (1024 * 1024))
        assert tr.get_write_buffer_size() > 0
        await asyncio.sleep(0.02)
        os.close(r)
        exc = await asyncio.wait_for(proto.lost, 5)
        return exc_signature(exc), tr.get_write_buffer_size()

    got = run(scenario(loop))
    assert got[0][0] == "BrokenPipeError"
    assert got == run_on_asyncio(scenario)


# ---------------------------------------------------------------------------
# FIFO
# ---------------------------------------------------------------------------

@pytest.fixture
def fifo_path():
    d = tempfile.mkdtemp(prefix="gl-fifo-")
    path = os.path.join(d, "fifo")
    os.mkfifo(path)
    try:
        yield path
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_fifo_read_and_write(loop, run, fifo_path):
    size = 2 * 1024 * 1024 + 1
    data = payload(size, b"fifo")

    async def main():
        rfd = os.open(fifo_path, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(fifo_path, os.O_WRONLY | os.O_NONBLOCK)
        rp = ReadProto(loop)
        wp = WriteProto(loop)
        rtr, _ = await loop.connect_read_pipe(lambda: rp, os.fdopen(rfd, "rb", 0))
        wtr, _ = await loop.connect_write_pipe(lambda: wp, os.fdopen(wfd, "wb", 0))
        wtr.write(data)
        wtr.write_eof()
        await asyncio.wait_for(rp.lost, 10)
        await asyncio.wait_for(wp.lost, 5)
        assert len(rp.data) == size
        assert hashlib.sha256(rp.data).digest() == hashlib.sha256(data).digest()
        assert rp.events == ["made", "data", "eof", ("lost", None)]

    run(main())


def test_fifo_writer_in_thread(loop, run, fifo_path):
    """The reader opens the FIFO first; a thread opens it for writing
    (blocking open), writes and closes: the read pipe sees the data and EOF."""
    async def main():
        rfd = os.open(fifo_path, os.O_RDONLY | os.O_NONBLOCK)
        rp = ReadProto(loop)
        await loop.connect_read_pipe(lambda: rp, os.fdopen(rfd, "rb", 0))

        def writer():
            with open(fifo_path, "wb") as f:
                f.write(b"through the fifo")

        t = threading.Thread(target=writer)
        t.start()
        await asyncio.wait_for(rp.lost, 5)
        t.join()
        assert bytes(rp.data) == b"through the fifo"
        assert rp.events == ["made", "data", "eof", ("lost", None)]

    run(main())


# ---------------------------------------------------------------------------
# pty
# ---------------------------------------------------------------------------

def test_pty_read_pipe(loop, run):
    """Read the master side of a pty (a character device) through a read
    pipe. When the slave closes, Linux reports EIO: connection_lost gets that
    OSError, as on asyncio."""
    async def scenario(lp):
        master, slave = pty.openpty()
        tty.setraw(slave)
        proto = ReadProto(lp)
        tr, _ = await lp.connect_read_pipe(lambda: proto, os.fdopen(master, "rb", 0))
        os.write(slave, b"hello pty\n")
        got = await wait_for_len(proto, 10)
        os.close(slave)
        exc = await asyncio.wait_for(proto.lost, 5)
        return got, [e if isinstance(e, str) else e[0] for e in proto.events], exc_signature(exc)

    got = run(scenario(loop))
    assert got[0] == b"hello pty\n"
    assert got == run_on_asyncio(scenario)


def test_pty_write_pipe(loop, run):
    async def main():
        master, slave = pty.openpty()
        tty.setraw(slave)
        try:
            proto = WriteProto(loop)
            tr, _ = await loop.connect_write_pipe(lambda: proto, os.fdopen(master, "wb", 0))
            assert tr.can_write_eof() is True
            msg = payload(2000, b"pty").hex().encode()[:3000]
            tr.write(msg)
            got = await loop.run_in_executor(None, read_all_fd, slave, len(msg))
            assert got == msg
            tr.close()
            await asyncio.wait_for(proto.lost, 5)
            assert proto.events == ["made", ("lost", None)]
        finally:
            os.close(slave)

    run(main())


# ---------------------------------------------------------------------------
# socketpair
# ---------------------------------------------------------------------------

def test_socketpair_read_pipe(loop, run):
    async def main():
        a, b = socket.socketpair()
        proto = ReadProto(loop)
        tr, _ = await loop.connect_read_pipe(lambda: proto, a)
        assert tr.get_extra_info("pipe") is a
        b.sendall(b"over a socket")
        assert await wait_for_len(proto, 13) == b"over a socket"
        b.close()
        await asyncio.wait_for(proto.lost, 5)
        assert proto.events == ["made", "data", "eof", ("lost", None)]
        assert a.fileno() == -1  # the transport closed the socket

    run(main())


def test_socketpair_write_pipe(loop, run):
    async def main():
        a, b = socket.socketpair()
        proto = WriteProto(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, a)
        data = payload(1024 * 1024, b"sockpair")
        tr.write(data)
        got = await loop.run_in_executor(None, _recv_exactly, b, len(data))
        assert got == data
        # the peer closes: the write pipe transport notices (it watches the
        # socket for readability) and its protocol loses the connection
        b.close()
        exc = await asyncio.wait_for(proto.lost, 5)
        assert exc is None
        assert proto.events[0] == "made"

    run(main())


def _recv_exactly(sock, n):
    buf = bytearray()
    while len(buf) < n:
        d = sock.recv(1 << 16)
        if not d:
            break
        buf += d
    return bytes(buf)


# ---------------------------------------------------------------------------
# Rejected objects
# ---------------------------------------------------------------------------

def test_regular_file_rejected(loop, run, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"data")

    async def scenario(lp):
        out = []
        with open(path, "rb") as f:
            with pytest.raises(ValueError) as ei:
                await lp.connect_read_pipe(asyncio.Protocol, f)
            out.append(str(ei.value))
            out.append(f.closed)
        with open(path, "ab") as f:
            with pytest.raises(ValueError) as ei:
                await lp.connect_write_pipe(asyncio.BaseProtocol, f)
            out.append(str(ei.value))
            out.append(f.closed)
        return out

    got = run(scenario(loop))
    assert got == ["Pipe transport is for pipes/sockets only.", False,
                   "Pipe transport is only for pipes, sockets and character devices", False]
    assert got == run_on_asyncio(scenario)


def test_regular_file_rejected_protocol_not_connected(loop, run, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"data")

    async def main():
        made = []

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                made.append(transport)

        with open(path, "rb") as f:
            with pytest.raises(ValueError):
                await loop.connect_read_pipe(P, f)
        await asyncio.sleep(0.01)
        assert made == []

    run(main())


# ---------------------------------------------------------------------------
# The transports' API
# ---------------------------------------------------------------------------

def test_read_pipe_pause_resume(loop, run):
    async def main():
        r, w = os.pipe()
        proto = ReadProto(loop)
        tr, _ = await loop.connect_read_pipe(lambda: proto, os.fdopen(r, "rb", 0))
        try:
            await asyncio.sleep(0)
            assert "polling" in repr(tr)
            os.write(w, b"one")
            assert await wait_for_len(proto, 3) == b"one"
            tr.pause_reading()
            assert tr.is_reading() is False
            assert "idle" in repr(tr)
            tr.pause_reading()  # no-op
            os.write(w, b"two")
            await asyncio.sleep(0.1)
            assert bytes(proto.data) == b"one"
            tr.resume_reading()
            assert tr.is_reading() is True
            assert "polling" in repr(tr)
            tr.resume_reading()  # no-op
            assert await wait_for_len(proto, 6) == b"onetwo"
            # pause, EOF arrives while paused: not reported until resumed
            tr.pause_reading()
            os.close(w)
            w = None
            await asyncio.sleep(0.1)
            assert not proto.lost.done()
            assert "eof" not in proto.events
            tr.resume_reading()
            await asyncio.wait_for(proto.lost, 5)
            assert proto.events == ["made", "data", "eof", ("lost", None)]
        finally:
            if w is not None:
                os.close(w)

    run(main())


def test_read_pipe_close(loop, run):
    async def main():
        r, w = os.pipe()
        try:
            pipeobj = os.fdopen(r, "rb", 0)
            proto = ReadProto(loop)
            tr, _ = await loop.connect_read_pipe(lambda: proto, pipeobj)
            tr.close()
            assert tr.is_closing()
            assert tr.is_reading() is False
            tr.close()  # idempotent
            exc = await asyncio.wait_for(proto.lost, 5)
            assert exc is None
            assert proto.events == ["made", ("lost", None)]
            assert pipeobj.closed
            with pytest.raises(BrokenPipeError):
                os.write(w, b"nobody reads")
        finally:
            os.close(w)

    run(main())


def test_write_pipe_buffer_size_and_limits(loop, run):
    async def scenario(lp):
        r, w = os.pipe()
        proto = WriteProto(lp)
        tr, _ = await lp.connect_write_pipe(lambda: proto, os.fdopen(w, "wb", 0))
        out = {"limits": tr.get_write_buffer_limits()}
        tr.write(b"y" * (1024 * 1024))
        out["buffered"] = tr.get_write_buffer_size()
        out["paused"] = proto.paused
        await asyncio.sleep(0.05)
        out["buffered_later"] = tr.get_write_buffer_size()
        out["polling"] = "polling" in repr(tr)
        tr.set_write_buffer_limits(high=4 * 1024 * 1024)
        out["limits2"] = tr.get_write_buffer_limits()
        out["resumed_after_raise"] = proto.resumed
        got = await lp.run_in_executor(None, read_all_fd, r, 1024 * 1024)
        for _ in range(200):
            if tr.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
        out["got"] = len(got)
        out["final"] = tr.get_write_buffer_size()
        out["idle"] = "idle" in repr(tr)
        tr.close()
        await asyncio.wait_for(proto.lost, 5)
        os.close(r)
        out["events"] = proto.events
        return out

    got = run(scenario(loop))
    assert got["limits"] == (16 * 1024, 64 * 1024)
    assert got["buffered"] > 512 * 1024
    assert got["buffered"] == got["buffered_later"]  # nobody reads
    assert got["paused"] == 1
    assert got["polling"] is True
    assert got["got"] == 1024 * 1024
    assert got["final"] == 0
    assert got == run_on_asyncio(scenario)


def test_write_pipe_write_eof_flushes_first(loop, run):
    async def main():
        r, w = os.pipe()
        try:
            proto = WriteProto(loop)
            tr, _ = await loop.connect_write_pipe(lambda: proto, os.fdopen(w, "wb", 0))
            data = payload(1024 * 1024, b"eof")
            tr.write(data)
            tr.write_eof()
            assert tr.is_closing()
            await asyncio.sleep(0.05)
            assert not proto.lost.done()  # still flushing: nobody read yet
            got = await loop.run_in_executor(None, read_all_fd, r)
            assert got == data  # everything, then EOF
            exc = await asyncio.wait_for(proto.lost, 5)
            assert exc is None
        finally:
            os.close(r)

    run(main())


def test_write_pipe_abort_drops_buffer(loop, run):
    async def main():
        r, w = os.pipe()
        try:
            proto = WriteProto(loop)
            tr, _ = await loop.connect_write_pipe(lambda: proto, os.fdopen(w, "wb", 0))
            tr.write(b"z" * (1024 * 1024))
            assert tr.get_write_buffer_size() > 0
            tr.abort()
            assert tr.is_closing()
            exc = await asyncio.wait_for(proto.lost, 1)
            assert exc is None
            got = await loop.run_in_executor(None, read_all_fd, r)
            assert 0 < len(got) < 1024 * 1024  # only what the pipe had taken
            assert tr.get_write_buffer_size() == 0
            # writes after abort are dropped silently
            tr.write(b"more")
        finally:
            os.close(r)

    run(main())


def test_write_pipe_close_flushes(loop, run):
    async def main():
        r, w = os.pipe()
        try:
            proto = WriteProto(loop)
            tr, _ = await loop.connect_write_pipe(lambda: proto, os.fdopen(w, "wb", 0))
            data = payload(300 * 1024, b"close")
            tr.write(data)
            tr.close()
            tr.write(b"ignored after close")
            got = await loop.run_in_executor(None, read_all_fd, r)
            assert got == data
            await asyncio.wait_for(proto.lost, 5)
            assert proto.events[0] == "made" and proto.events[-1] == ("lost", None)
        finally:
            os.close(r)

    run(main())


def test_pipe_transports_repr_and_types(loop, run):
    async def main():
        r, w = os.pipe()
        rtr, _ = await loop.connect_read_pipe(asyncio.Protocol, os.fdopen(r, "rb", 0))
        wtr, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, os.fdopen(w, "wb", 0))
        assert isinstance(rtr, asyncio.ReadTransport)
        assert isinstance(wtr, asyncio.WriteTransport)
        assert "fd=%d" % r in repr(rtr)
        assert "fd=%d" % w in repr(wtr)
        wtr.close()
        rtr.close()
        await asyncio.sleep(0.01)
        assert "closed" in repr(rtr)
        assert "closed" in repr(wtr)

    run(main())


def test_read_pipe_streams(loop, run):
    """The high-level way: a StreamReader over a read pipe."""
    async def main():
        r, w = os.pipe()
        reader = asyncio.StreamReader()
        tr, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0))
        data = payload(1024 * 1024 + 7, b"streams")

        def writer():
            with os.fdopen(w, "wb") as f:
                f.write(data)

        t = threading.Thread(target=writer)
        t.start()
        got = await asyncio.wait_for(reader.read(), 10)
        t.join()
        assert got == data
        assert reader.at_eof()

    run(main())


# ---------------------------------------------------------------------------
# add_reader / add_writer on a pipe: level-triggered, as asyncio's selector loop
# ---------------------------------------------------------------------------

@pytest.fixture
def pipe_fds():
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


async def until(predicate, timeout=5.0):
    """Yields to the loop until `predicate()` holds (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    return predicate()


async def settle(loop, iterations=20):
    """Lets the loop run a few polling iterations (each sleep polls)."""
    for _ in range(iterations):
        await asyncio.sleep(0.001)


def test_add_reader_called_again_while_data_remains(loop, run, pipe_fds):
    r, w = pipe_fds
    got = []

    async def main():
        os.write(w, b"0123456789")

        def on_readable():
            got.append(os.read(r, 1))  # leaves the rest for the next call

        loop.add_reader(r, on_readable)
        assert await until(lambda: len(got) >= 10)
        await settle(loop)  # drained: no further call
        n = len(got)
        assert loop.remove_reader(r) is True
        return n

    assert run(main()) == 10
    assert b"".join(got) == b"0123456789"


def test_add_reader_wakes_for_data_written_after_drain(loop, run, pipe_fds):
    r, w = pipe_fds
    got = bytearray()
    calls = []

    async def main():
        def on_readable():
            calls.append(1)
            got.extend(os.read(r, 3))

        loop.add_reader(r, on_readable)
        for i in range(5):
            chunk = bytes([65 + i]) * 7
            os.write(w, chunk)
            assert await until(lambda: len(got) == 7 * (i + 1))
            await settle(loop, 3)
        assert loop.remove_reader(r) is True
        return bytes(got), len(calls)

    data, ncalls = run(main())
    assert data == b"AAAAAAABBBBBBBCCCCCCCDDDDDDDEEEEEEE"
    assert ncalls == 5 * 3  # 3 + 3 + 1 bytes per chunk


def test_add_writer_keeps_firing_while_writable(loop, run, pipe_fds):
    r, w = pipe_fds
    calls = []

    async def main():
        loop.add_writer(w, calls.append, "w")  # writes nothing: stays writable
        assert await until(lambda: len(calls) >= 10)
        assert loop.remove_writer(w) is True
        n = len(calls)
        await settle(loop)
        assert len(calls) == n
        return loop.remove_writer(w)

    assert run(main()) is False
    assert set(calls) == {"w"}


def test_add_writer_stops_while_full_and_resumes_when_drained(loop, run, pipe_fds):
    r, w = pipe_fds
    calls = []

    async def main():
        def on_writable():
            written = 0
            try:
                while True:
                    written += os.write(w, b"x" * 4096)
            except BlockingIOError:
                calls.append(written)  # the pipe is full now

        loop.add_writer(w, on_writable)
        assert await until(lambda: bool(calls))
        await settle(loop)
        assert len(calls) == 1  # a full pipe is not writable: no more calls
        drained = 0
        while True:
            try:
                drained += len(os.read(r, 1 << 16))
            except BlockingIOError:
                break
        assert await until(lambda: len(calls) >= 2)
        assert loop.remove_writer(w) is True
        return drained

    assert run(main()) == calls[0] > 0


def test_remove_reader_inside_callback_stops_it(loop, run, pipe_fds):
    r, w = pipe_fds
    calls = []

    async def main():
        os.write(w, b"0123456789")

        def on_readable():
            calls.append(os.read(r, 1))
            calls.append(loop.remove_reader(r))

        loop.add_reader(r, on_readable)
        assert await until(lambda: bool(calls))
        await settle(loop)
        return os.read(r, 100)

    assert run(main()) == b"123456789"
    assert calls == [b"0", True]


def test_remove_writer_inside_callback_keeps_reader(loop, run):
    # One fd, both sides: removing one side from its own callback leaves the other.
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    events = []

    async def main():
        with a, b:
            def on_writable():
                events.append("w")
                loop.remove_writer(b.fileno())

            loop.add_reader(b.fileno(), lambda: events.append(("r", b.recv(1))))
            loop.add_writer(b.fileno(), on_writable)
            assert await until(lambda: "w" in events)
            a.send(b"xyz")
            assert await until(lambda: len(events) >= 4)
            await settle(loop)
            assert loop.remove_writer(b.fileno()) is False
            assert loop.remove_reader(b.fileno()) is True

    run(main())
    assert events == ["w", ("r", b"x"), ("r", b"y"), ("r", b"z")]


def test_add_reader_again_replaces_callback(loop, run, pipe_fds):
    r, w = pipe_fds
    calls = []

    async def main():
        os.write(w, b"0123456789")

        def second():
            calls.append(("second", os.read(r, 1)))

        def first():
            calls.append(("first", os.read(r, 1)))
            loop.add_reader(r, second)  # same fd: replaces this callback

        loop.add_reader(r, first)
        assert await until(lambda: len(calls) >= 10)
        await settle(loop)
        assert loop.remove_reader(r) is True
        # And from outside a callback, on a drained fd: the new one gets the next data.
        loop.add_reader(r, lambda: calls.append(("third", os.read(r, 100))))
        loop.add_reader(r, lambda: calls.append(("fourth", os.read(r, 100))))
        os.write(w, b"end")
        assert await until(lambda: len(calls) >= 11)
        await settle(loop)
        assert loop.remove_reader(r) is True

    run(main())
    assert calls[0] == ("first", b"0")
    assert calls[1:10] == [("second", bytes([c])) for c in b"123456789"]
    assert calls[10:] == [("fourth", b"end")]


def test_cancelled_reader_handle_is_not_called(loop, run, pipe_fds):
    # asyncio's _add_reader returns the handle; cancelling it stops the callback,
    # and the loop drops the reader once the fd is ready.
    r, w = pipe_fds
    calls = []

    async def main():
        handle = loop._add_reader(r, calls.append, 1)
        handle.cancel()
        os.write(w, b"data")
        await settle(loop)
        removed = loop.remove_reader(r)
        # The fd can be watched again afterwards.
        done = loop.create_future()
        loop.add_reader(r, lambda: done.done() or done.set_result(os.read(r, 100)))
        got = await asyncio.wait_for(done, 5)
        assert loop.remove_reader(r) is True
        return removed, got

    assert run(main()) == (False, b"data")
    assert calls == []


def test_read_pipe_helper_matches_os_read(pipe_fds):
    # glassloop's pipe transports read with _core._read_pipe instead of os.read
    # (no 256 KiB allocation per read); it must behave as os.read, EAGAIN aside.
    from glassloop._core import _read_pipe

    r, w = pipe_fds
    assert _read_pipe(r, 1 << 18) is None  # EAGAIN
    data = payload(200_000)
    os.write(w, data[:60_000])
    assert _read_pipe(r, 10) == data[:10]
    assert _read_pipe(r, 1 << 30) == data[10:60_000]  # capped, and what is there
    assert _read_pipe(r, 100) is None
    os.close(w)
    assert _read_pipe(r, 100) == b""  # end of file
    os.close(r)
    with pytest.raises(OSError) as ei:
        _read_pipe(r, 100)
    with pytest.raises(OSError) as ei2:
        os.read(r, 100)
    assert (type(ei.value), ei.value.errno) == (type(ei2.value), ei2.value.errno)


def test_read_pipe_drains_an_enlarged_pipe(loop, run):
    # A pipe holding more than one read takes (asyncio reads up to 256 KiB at a
    # time, glassloop 120 KiB): the transport reads again while data remains.
    import fcntl
    r, w = os.pipe()
    try:
        size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (AttributeError, OSError):
        size = fcntl.fcntl(w, getattr(fcntl, "F_GETPIPE_SZ", 1032))
    data = payload(size)
    os.set_blocking(w, False)
    n = os.write(w, data)  # the whole pipe, before anyone reads
    os.close(w)

    async def main():
        proto = ReadProto(loop)
        tr, _ = await loop.connect_read_pipe(lambda: proto, os.fdopen(r, "rb", 0))
        await asyncio.wait_for(proto.lost, 10)
        return bytes(proto.data), proto.events

    got, events = run(main())
    assert got == data[:n]
    assert events == ["made", "data", "eof", ("lost", None)]
