"""TCP and Unix stream transports: byte integrity under flow control, protocol
callback order, and the transport API (create_connection, create_server and
their Unix variants; on glassloop these are the Rust StreamTransport)."""

import array
import asyncio
import gc
import hashlib
import logging
import os
import random
import socket
import threading
import time

import pytest


import pytest as _pytest

# asyncio 3.12 and 3.13.0's selector transport writes with sendmsg() and keeps references to
# the caller's buffers (fixed in later 3.12 releases): on the asyncio reference run
# of 3.12 these tests meet CPython's bugs, not ours. glassloop runs them everywhere.
_ASYNCIO_312_BUGS = {
    "test_echo_integrity_writelines",
    "test_writes_after_close_ignored_then_warned",
    "test_written_bytearray_is_copied",
    "test_write_memoryview_of_any_format",
    "test_set_write_buffer_limits_negative_values",
    "test_write_in_resume_writing_after_close_is_flushed",
}


@_pytest.fixture(autouse=True)
def _asyncio_312_known_bugs(request):
    if (
        request.node.originalname in _ASYNCIO_312_BUGS
        and "asyncio" in request.node.callspec.id.split("-")
        and __import__("sys").version_info[:2] in ((3, 12), (3, 13))
    ):
        _pytest.xfail("asyncio 3.12's sendmsg-based selector transport bug (reference run only)")

from loopsupport import RecordingHandler, digest, recv_until_eof, short_unix_path

KINDS = ("tcp", "unix")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

async def serve(loop, kind, factory, **kwargs):
    """A server for ``kind``; returns (server, address to connect to)."""
    if kind == "tcp":
        server = await loop.create_server(factory, "127.0.0.1", 0, **kwargs)
        return server, server.sockets[0].getsockname()
    path = short_unix_path()
    server = await loop.create_unix_server(factory, path, **kwargs)
    return server, path


async def connect(loop, kind, factory, addr, **kwargs):
    if kind == "tcp":
        return await loop.create_connection(factory, *addr, **kwargs)
    return await loop.create_unix_connection(factory, addr, **kwargs)


def plain_listener(kind):
    """A listening plain socket (the peer the test drives by hand)."""
    if kind == "tcp":
        lsock = socket.create_server(("127.0.0.1", 0))
        return lsock, lsock.getsockname()
    path = short_unix_path()
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(16)
    return lsock, path


async def connected_to_plain_peer(loop, kind, factory, **kwargs):
    """(transport, protocol, peer socket): the loop's transport is the client
    end; ``peer`` is a blocking plain socket that reads only when told to."""
    lsock, addr = plain_listener(kind)
    try:
        tr, pr = await connect(loop, kind, factory, addr, **kwargs)
        peer, _ = lsock.accept()
    finally:
        lsock.close()
    return tr, pr, peer


class Recorder(asyncio.Protocol):
    """Records every callback, in order, and checks asyncio's state machine."""

    def __init__(self, loop, eof_keep_open=None):
        self.loop = loop
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.eof_keep_open = eof_keep_open
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.errors = []

    def _check(self, name):
        if name != "made" and not self.events:
            self.errors.append(f"{name} before connection_made")
        if self.lost.done():
            self.errors.append(f"{name} after connection_lost")

    def connection_made(self, transport):
        if self.events:
            self.errors.append("connection_made twice or late")
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        self._check("data")
        if self.eof.done():
            self.errors.append("data_received after eof_received")
        assert isinstance(data, bytes)
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self):
        self._check("eof")
        self.events.append("eof")
        if not self.eof.done():
            self.eof.set_result(None)
        return self.eof_keep_open

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self._check("lost")
        self.events.append("lost")
        if self.lost.done():
            self.errors.append("connection_lost twice")
        else:
            self.lost.set_result(exc)


async def wait_for_data(proto, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while len(proto.data) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"got {len(proto.data)} of {n} bytes")
        await asyncio.sleep(0.005)


# ---------------------------------------------------------------------------
# Byte integrity
# ---------------------------------------------------------------------------

PAYLOAD_SIZE = 64 * 1024 * 1024
_payload_cache = {}


def payload(size=PAYLOAD_SIZE):
    if size not in _payload_cache:
        data = random.Random(size).randbytes(size)
        _payload_cache[size] = (data, hashlib.sha256(data).hexdigest())
    return _payload_cache[size]


def log_uniform_size(rng, top=256 * 1024):
    """1 B ... ``top`` bytes, log-uniform: as many tiny writes as huge ones."""
    return max(1, min(top, int(2 ** rng.uniform(0, 18))))


class EchoServer(asyncio.Protocol):
    """Echoes; pauses its reading while its own writes are paused."""

    instances = None

    def __init__(self):
        self.pauses = 0
        self.resumes = 0
        self.lost = None
        if EchoServer.instances is not None:
            EchoServer.instances.append(self)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return None  # close: flushes what is buffered, then connection_lost

    def pause_writing(self):
        self.pauses += 1
        self.transport.pause_reading()

    def resume_writing(self):
        self.resumes += 1
        self.transport.resume_reading()


class BufferedEchoServer(asyncio.BufferedProtocol):
    def __init__(self):
        self.buf = bytearray(64 * 1024)
        self.pauses = 0
        self.resumes = 0

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.transport.write(bytes(self.buf[:nbytes]))

    def eof_received(self):
        return None

    def pause_writing(self):
        self.pauses += 1
        self.transport.pause_reading()

    def resume_writing(self):
        self.resumes += 1
        self.transport.resume_reading()


class Sender:
    """Mixin: sends ``data`` in random chunks, honouring pause/resume_writing,
    then write_eof(); randomly pauses its own reading (a slow reader)."""

    def __init__(self, loop, data, seed, writelines=False, echo_paused=None):
        self.loop = loop
        # Whether the echo side has paused its writing (ends the slow start).
        self.echo_paused = echo_paused or (lambda: True)
        self.data = memoryview(data)
        self.rng = random.Random(seed)
        self.writelines = writelines
        self.pos = 0
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.read_pauses = 0
        self.reading_paused = False
        self.hasher = hashlib.sha256()
        self.received = 0
        self.errors = []
        self.done = loop.create_future()
        self.eof_seen = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        # A slow start: we do not read until every stage is full -- the echo
        # side paused (its writes back to us stall), stopped reading, and so
        # our own writes stall: once both have paused, the slow start ends.
        self.slow_start = True
        self._pause_reading_for(10.0)
        self.loop.call_soon(self.pump)

    def pump(self):
        tr = self.transport
        if tr.is_closing():
            return
        while not self.paused and self.pos < len(self.data):
            if self.writelines:
                pieces = []
                for _ in range(self.rng.randint(1, 1500)):  # over IOV_MAX-ish batches too
                    n = self.rng.randint(1, 1024)
                    pieces.append(self.data[self.pos:self.pos + n])
                    self.pos += len(pieces[-1])
                    if self.pos >= len(self.data):
                        break
                tr.writelines(pieces)
            else:
                n = log_uniform_size(self.rng)
                tr.write(self.data[self.pos:self.pos + n])
                self.pos += n
        if self.pos >= len(self.data) and not self.paused:
            if tr.can_write_eof():
                tr.write_eof()

    def pause_writing(self):
        if self.paused:
            self.errors.append("pause_writing twice")
        self.paused = True
        self.pauses += 1
        if self.slow_start:
            self.slow_start = False
            self._end_slow_start()

    def _end_slow_start(self):
        # Our writes can stall first (one pump() fills the kernel before the echo
        # side reads at all): keep not reading until the echo side stalls too.
        if self.echo_paused():
            self.loop.call_later(0.02, self._resume_reading)
        elif self.reading_paused:
            self.loop.call_later(0.005, self._end_slow_start)

    def resume_writing(self):
        if not self.paused:
            self.errors.append("resume_writing without pause_writing")
        self.paused = False
        self.resumes += 1
        self.loop.call_soon(self.pump)

    def _pause_reading_for(self, delay):
        self.transport.pause_reading()
        if self.transport.is_reading():
            self.errors.append("is_reading() true after pause_reading()")
        self.reading_paused = True
        self.read_pauses += 1
        self.loop.call_later(delay, self._resume_reading)

    def _resume_reading(self):
        if not self.reading_paused:
            return  # the slow start's fallback timer, after it ended
        self.reading_paused = False
        self.transport.resume_reading()

    def got(self, data):
        if self.reading_paused:
            self.errors.append("data delivered while reading was paused")
        self.hasher.update(data)
        self.received += len(data)
        if self.rng.random() < 0.03:
            self._pause_reading_for(self.rng.uniform(0.0, 0.01))

    def eof_received(self):
        self.eof_seen = True
        return None

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(exc)


class StreamSender(Sender, asyncio.Protocol):
    def data_received(self, data):
        self.got(data)


class BufferedSender(Sender, asyncio.BufferedProtocol):
    """Reads through get_buffer()/buffer_updated() into random-sized windows
    of one big buffer; hashes what buffer_updated() says landed there."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.big = bytearray(256 * 1024)
        self.window = None
        self.get_buffer_calls = 0
        self.buffer_updated_calls = 0

    def get_buffer(self, sizehint):
        # A get_buffer() whose read found nothing (EAGAIN) gets no
        # buffer_updated(); the next get_buffer() replaces its window.
        self.get_buffer_calls += 1
        size = log_uniform_size(self.rng)
        start = self.rng.randint(0, len(self.big) - size)
        self.window = (start, size)
        # Poison the window: only what the loop writes there may be hashed.
        self.big[start:start + size] = b"\xa5" * size
        return memoryview(self.big)[start:start + size]

    def buffer_updated(self, nbytes):
        self.buffer_updated_calls += 1
        if self.window is None:
            self.errors.append("buffer_updated() without get_buffer()")
            return
        start, size = self.window
        self.window = None
        if not 0 < nbytes <= size:
            self.errors.append(f"buffer_updated({nbytes}) for a {size}-byte buffer")
        self.got(bytes(self.big[start:start + nbytes]))


async def _echo_roundtrip(loop, kind, sender_cls, server_cls, size, writelines=False):
    data, digest = payload(size)
    EchoServer.instances = []
    servers = []

    def server_factory():
        p = server_cls()
        servers.append(p)
        return p

    server, addr = await serve(loop, kind, server_factory)
    try:
        tr, client = await connect(
            loop, kind, lambda: sender_cls(loop, data, seed=7, writelines=writelines,
                                           echo_paused=lambda: any(s.pauses for s in servers)), addr)
        exc = await asyncio.wait_for(client.done, 30)
    finally:
        server.close()
        await server.wait_closed()
        EchoServer.instances = None
    assert exc is None
    assert client.errors == []
    assert client.eof_seen
    assert client.received == len(data)
    assert client.hasher.hexdigest() == digest
    # The slow reader made the echo side stop, and then the sender.
    assert len(servers) == 1
    assert servers[0].pauses >= 1
    assert client.pauses >= 1
    assert client.resumes == client.pauses
    assert client.read_pauses >= 2
    return client


@pytest.mark.parametrize("kind", KINDS)
def test_echo_integrity_random_chunks(loop, run, kind):
    run(_echo_roundtrip(loop, kind, StreamSender, EchoServer, PAYLOAD_SIZE))


@pytest.mark.parametrize("kind", KINDS)
def test_echo_integrity_buffered_protocol(loop, run, kind):
    client = run(_echo_roundtrip(loop, kind, BufferedSender, BufferedEchoServer,
                                 32 * 1024 * 1024))
    assert client.get_buffer_calls > client.buffer_updated_calls > 0


@pytest.mark.parametrize("kind", KINDS)
def test_echo_integrity_writelines(loop, run, kind):
    run(_echo_roundtrip(loop, kind, StreamSender, EchoServer, 32 * 1024 * 1024,
                        writelines=True))


def test_buffered_protocol_data_lands_in_given_buffer(loop, run):
    calls = []

    class P(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(b"." * 10)
            self.got = bytearray()
            self.eof = loop.create_future()

        def get_buffer(self, sizehint):
            calls.append(("get_buffer", sizehint))
            return self.buf

        def buffer_updated(self, n):
            calls.append(("buffer_updated", n))
            self.got += self.buf[:n]

        def eof_received(self):
            calls.append(("eof",))
            self.eof.set_result(None)

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, "tcp", P)
        with peer:
            peer.sendall(b"abcdefghijklmnopqrstuvwxy")  # 25 bytes: 3 reads of <= 10
            peer.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(pr.eof, 5)
        tr.close()
        return pr

    pr = run(main())
    assert bytes(pr.got) == b"abcdefghijklmnopqrstuvwxy"
    names = [c[0] for c in calls]
    assert names[-1] == "eof"
    # Strict alternation get_buffer, buffer_updated ...
    # Each buffer_updated() comes right after the get_buffer() whose buffer
    # it filled.  (A get_buffer() whose read found nothing, EAGAIN, is not
    # followed by buffer_updated(): asyncio allows that too.)
    for i, name in enumerate(names):
        if name == "buffer_updated":
            assert names[i - 1] == "get_buffer", names
    assert names[-2] == "get_buffer"  # the read that found EOF
    updates = [c[1] for c in calls if c[0] == "buffer_updated"]
    assert all(0 < n <= 10 for n in updates)
    assert sum(updates) == 25
    for c in calls:
        if c[0] == "get_buffer":
            assert isinstance(c[1], int)


# ---------------------------------------------------------------------------
# Protocol callback order
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_callback_order_peer_sends_then_closes(loop, run, kind):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        peer.sendall(b"hello ")
        await wait_for_data(pr, 6)
        peer.sendall(b"world")
        peer.close()
        exc = await asyncio.wait_for(pr.lost, 5)
        await asyncio.sleep(0.01)
        return pr, exc, tr

    pr, exc, tr = run(main())
    assert pr.errors == []
    assert exc is None
    assert bytes(pr.data) == b"hello world"
    assert pr.events == ["made", "data", "eof", "lost"]
    assert tr.is_closing()


@pytest.mark.parametrize("kind", KINDS)
def test_data_arriving_during_an_iteration_is_read_at_the_next_poll(loop, run, kind):
    """A transport is read once per iteration, as a selector reports an fd once:
    what the peer sends while callbacks run is read at the next poll, after the
    callbacks scheduled meanwhile (here: after a resume_reading, whose catch-up
    read must not add a second read to the iteration)."""
    async def main():
        order = []
        done = loop.create_future()

        class Probe(asyncio.Protocol):
            def data_received(self, data):
                order.append(data)
                if data == b"1":
                    loop.call_soon(order.append, "soon")
                    peer.sendall(b"2")
                elif not done.done():
                    done.set_result(None)

        tr, _, peer = await connected_to_plain_peer(loop, kind, Probe)
        tr.pause_reading()
        await asyncio.sleep(0)
        tr.resume_reading()
        peer.sendall(b"1")
        await asyncio.wait_for(done, 5)
        tr.close()
        peer.close()
        return order

    assert run(main()) == [b"1", "soon", b"2"]


@pytest.mark.parametrize("kind", KINDS)
def test_callback_order_server_side(loop, run, kind):
    protos = []

    def factory():
        p = Recorder(loop)
        protos.append(p)
        return p

    async def main():
        server, addr = await serve(loop, kind, factory)
        if kind == "tcp":
            r, w = await asyncio.open_connection(*addr)
        else:
            r, w = await asyncio.open_unix_connection(addr)
        w.write(b"ping")
        await w.drain()
        w.write_eof()
        while not protos:
            await asyncio.sleep(0.001)
        exc = await asyncio.wait_for(protos[0].lost, 5)
        assert await r.read() == b""
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return exc

    exc = run(main())
    (p,) = protos
    assert exc is None
    assert p.errors == []
    assert p.events == ["made", "data", "eof", "lost"]
    assert bytes(p.data) == b"ping"


@pytest.mark.parametrize("kind", KINDS)
def test_eof_received_true_keeps_transport_open_for_writing(loop, run, kind):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(
            loop, kind, lambda: Recorder(loop, eof_keep_open=True))
        peer.sendall(b"question")
        peer.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(pr.eof, 5)
        await asyncio.sleep(0.05)
        assert not pr.lost.done()
        assert not tr.is_closing()
        tr.write(b"answer to " + bytes(pr.data))
        tr.close()
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        peer.close()
        exc = await asyncio.wait_for(pr.lost, 5)
        return pr, exc, got

    pr, exc, got = run(main())
    assert got == b"answer to question"
    assert exc is None
    assert pr.events == ["made", "data", "eof", "lost"]
    assert pr.errors == []


@pytest.mark.parametrize("kind", KINDS)
def test_eof_received_false_closes_transport(loop, run, kind):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(
            loop, kind, lambda: Recorder(loop, eof_keep_open=False))
        peer.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(pr.eof, 5)
        exc = await asyncio.wait_for(pr.lost, 5)
        assert tr.is_closing()
        # The peer sees our side close.
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        peer.close()
        return pr, exc, got

    pr, exc, got = run(main())
    assert exc is None
    assert got == b""
    assert pr.events == ["made", "eof", "lost"]


@pytest.mark.parametrize("kind", KINDS)
def test_write_eof_half_close(loop, run, kind):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        assert tr.can_write_eof() is True
        tr.write(b"request")
        tr.write_eof()
        assert not tr.is_closing()
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        # Our reading side still works after write_eof().
        peer.sendall(b"reply")
        peer.close()
        exc = await asyncio.wait_for(pr.lost, 5)
        return pr, exc, got

    pr, exc, got = run(main())
    assert got == b"request"
    assert bytes(pr.data) == b"reply"
    assert exc is None
    assert pr.events == ["made", "data", "eof", "lost"]


@pytest.mark.parametrize("kind", KINDS)
def test_write_eof_flushes_buffer_first(loop, run, kind):
    big = os.urandom(4 * 1024 * 1024)

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        tr.write(big)
        assert tr.get_write_buffer_size() > 0  # the peer has not read yet
        tr.write_eof()
        with pytest.raises(RuntimeError, match="write_eof"):
            tr.write(b"more")
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        peer.close()
        await asyncio.wait_for(pr.lost, 5)
        return got

    got = run(main())
    assert digest(got) == digest(big)


@pytest.mark.parametrize("kind", KINDS)
def test_close_flushes_buffer_then_connection_lost(loop, run, kind):
    big = os.urandom(4 * 1024 * 1024)

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        tr.write(big)
        assert tr.get_write_buffer_size() > 0
        tr.close()
        assert tr.is_closing()
        assert not tr.is_reading()
        tr.close()  # a second close is harmless
        await asyncio.sleep(0.05)
        # Not lost while data is still waiting for the peer.
        assert not pr.lost.done()
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        exc = await asyncio.wait_for(pr.lost, 5)
        await asyncio.sleep(0.01)
        peer.close()
        return pr, exc, got

    pr, exc, got = run(main())
    assert digest(got) == digest(big)
    assert exc is None
    assert pr.events.count("lost") == 1
    assert pr.errors == []


@pytest.mark.parametrize("kind", KINDS)
def test_abort_drops_buffer_and_calls_connection_lost(loop, run, kind):
    big = os.urandom(8 * 1024 * 1024)

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        tr.write(big)
        assert tr.get_write_buffer_size() > 0
        tr.abort()
        assert tr.is_closing()
        assert tr.get_write_buffer_size() == 0
        # No peer reading is needed for abort to finish.
        exc = await asyncio.wait_for(pr.lost, 5)
        tr.abort()  # harmless again
        tr.close()
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        peer.close()
        await asyncio.sleep(0.01)
        return pr, exc, got

    pr, exc, got = run(main())
    assert exc is None
    assert len(got) < len(big)
    assert big.startswith(got)
    assert pr.events.count("lost") == 1
    assert pr.errors == []


@pytest.mark.parametrize("kind", KINDS)
def test_data_received_exception_goes_to_handler_and_closes(loop, run, kind):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)
    boom = ValueError("boom in data_received")

    class Bad(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise boom

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Bad(loop))
        peer.sendall(b"x")
        exc = await asyncio.wait_for(pr.lost, 5)
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        peer.close()
        return tr, pr, exc, got

    tr, pr, exc, got = run(main())
    assert exc is boom
    assert got == b""
    assert tr.is_closing()
    assert pr.events == ["made", "data", "lost"]
    assert len(handler.contexts) == 1
    ctx = handler.contexts[0]
    assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
    assert ctx["exception"] is boom
    assert ctx["transport"] is tr
    assert ctx["protocol"] is pr


# ---------------------------------------------------------------------------
# Transport API
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_transport_isinstance_transport_abcs(loop, run, kind):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        peer.close()
        await asyncio.wait_for(pr.lost, 5)
        return tr

    tr = run(main())
    assert isinstance(tr, asyncio.Transport)
    assert isinstance(tr, asyncio.ReadTransport)
    assert isinstance(tr, asyncio.WriteTransport)
    assert isinstance(tr, asyncio.BaseTransport)


def test_transport_methods_take_arguments_as_asyncio_declares_them(loop, run):
    """The transport's methods as users call them: by keyword, through a saved
    bound method, through the class, with a wrong count (TypeError); and the
    transport can be weakly referenced."""
    import inspect
    import weakref

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, "tcp", lambda: Recorder(loop))
        try:
            write = tr.write
            write(b"a")
            tr.write(data=b"b")
            type(tr).write(tr, b"c")
            tr.writelines(list_of_data=[b"d"])
            for call in (lambda: tr.write(), lambda: tr.write(b"x", b"y"), lambda: tr.write(b"x", nope=1),
                         lambda: tr.is_closing(1)):
                with pytest.raises(TypeError):
                    call()
            tr.set_write_buffer_limits(high=4096, low=1024)
            limits = tr.get_write_buffer_limits()
            extra = (tr.get_extra_info(name="peername"), tr.get_extra_info("nothing", default=7))
            params = {name: list(inspect.signature(getattr(tr, name)).parameters)
                      for name in ("write", "writelines", "get_extra_info", "set_write_buffer_limits")}
            ref = weakref.ref(tr)
            tr.close()
            got = await loop.run_in_executor(None, recv_until_eof, peer)
            return limits, extra, params, ref() is tr, got, peer.getsockname()
        finally:
            tr.close()
            peer.close()

    limits, extra, params, weak_ok, got, peer_name = run(main())
    assert got == b"abcd"
    assert limits == (1024, 4096)
    assert extra == (peer_name, 7)
    assert params == {
        "write": ["data"],
        "writelines": ["list_of_data"],
        "get_extra_info": ["name", "default"],
        "set_write_buffer_limits": ["high", "low"],
    }
    assert weak_ok


@pytest.mark.parametrize("kind", KINDS)
def test_is_reading_pause_resume(loop, run, kind):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        await asyncio.sleep(0)
        assert tr.is_reading() is True
        assert tr.is_closing() is False
        tr.pause_reading()
        assert tr.is_reading() is False
        tr.pause_reading()  # idempotent (3.11+)
        peer.sendall(b"while paused")
        await asyncio.sleep(0.1)
        assert bytes(pr.data) == b""
        tr.resume_reading()
        assert tr.is_reading() is True
        tr.resume_reading()
        await wait_for_data(pr, 12)
        assert bytes(pr.data) == b"while paused"
        # Data that arrives while paused is delivered on resume even when it
        # is followed by EOF.
        tr.pause_reading()
        peer.sendall(b" and then eof")
        peer.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.1)
        assert not pr.eof.done()
        tr.resume_reading()
        await asyncio.wait_for(pr.eof, 5)
        await asyncio.wait_for(pr.lost, 5)
        assert tr.is_reading() is False
        assert tr.is_closing() is True
        peer.close()
        return pr

    pr = run(main())
    assert bytes(pr.data) == b"while paused and then eof"
    assert pr.errors == []


def test_write_buffer_limits(loop, run):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, "tcp", lambda: Recorder(loop))
        try:
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            tr.set_write_buffer_limits(high=1000, low=100)
            assert tr.get_write_buffer_limits() == (100, 1000)
            tr.set_write_buffer_limits(high=1000)
            assert tr.get_write_buffer_limits() == (250, 1000)
            tr.set_write_buffer_limits(low=100)
            assert tr.get_write_buffer_limits() == (100, 400)
            tr.set_write_buffer_limits()
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            tr.set_write_buffer_limits(0, 0)
            assert tr.get_write_buffer_limits() == (0, 0)
            with pytest.raises(ValueError) as ei:
                tr.set_write_buffer_limits(high=1, low=2)
            with pytest.raises(ValueError) as ei2:
                tr.set_write_buffer_limits(high=10, low=-1)
            assert tr.get_write_buffer_size() == 0
            return str(ei.value), str(ei2.value)
        finally:
            tr.close()
            peer.close()

    msg, msg2 = run(main())
    assert msg == "high (1) must be >= low (2) must be >= 0"
    assert msg2 == "high (10) must be >= low (-1) must be >= 0"


@pytest.mark.parametrize("kind", KINDS)
def test_pause_writing_at_high_water_resume_at_low(loop, run, kind):
    chunk = b"z" * 8192
    sizes = {}

    class P(Recorder):
        def pause_writing(self):
            super().pause_writing()
            sizes.setdefault("pause", self.transport.get_write_buffer_size())

        def resume_writing(self):
            super().resume_writing()
            sizes.setdefault("resume", self.transport.get_write_buffer_size())

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: P(loop))
        tr.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        written = 0
        while "pause" not in pr.events:
            tr.write(chunk)
            written += len(chunk)
            assert written < 512 * 1024 * 1024, "pause_writing never called"
            if written % (1 << 20) == 0:
                await asyncio.sleep(0)
        assert tr.get_write_buffer_size() > 64 * 1024
        assert "resume" not in pr.events
        await asyncio.sleep(0.1)
        assert "resume" not in pr.events  # the peer reads nothing
        reader = loop.run_in_executor(None, recv_until_eof, peer, written)
        for _ in range(500):
            if "resume" in pr.events:
                break
            await asyncio.sleep(0.01)
        tr.close()
        got = await reader
        await asyncio.wait_for(pr.lost, 5)
        peer.close()
        return pr, written, got

    pr, written, got = run(main())
    assert pr.events[:3] == ["made", "pause", "resume"]
    assert sizes["pause"] > 64 * 1024
    assert sizes["pause"] <= 64 * 1024 + len(chunk)
    assert sizes["resume"] <= 16 * 1024
    assert len(got) == written


@pytest.mark.parametrize("kind", KINDS)
def test_set_write_buffer_limits_can_pause_immediately(loop, run, kind):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        tr.pause_reading()
        while tr.get_write_buffer_size() < 32 * 1024:
            tr.write(b"y" * 4096)
            if "pause" in pr.events:
                break
        assert "pause" not in pr.events
        tr.set_write_buffer_limits(high=1024)  # now above the high-water mark
        events = list(pr.events)
        tr.abort()
        peer.close()
        await asyncio.wait_for(pr.lost, 5)
        return events

    assert run(main()) == ["made", "pause"]


@pytest.mark.parametrize("kind", KINDS)
def test_memory_bounded_when_peer_never_reads(loop, run, kind):
    chunk = b"m" * (64 * 1024)
    high = 256 * 1024

    class Producer(asyncio.Protocol):
        def __init__(self):
            self.paused = False
            self.written = 0
            self.max_buffer = 0
            self.pauses = 0

        def connection_made(self, transport):
            self.transport = transport
            transport.set_write_buffer_limits(high=high)
            loop.call_soon(self.produce)

        def produce(self):
            if self.transport.is_closing():
                return
            if not self.paused:
                self.transport.write(chunk)
                self.written += len(chunk)
                self.max_buffer = max(self.max_buffer, self.transport.get_write_buffer_size())
            loop.call_soon(self.produce)

        def pause_writing(self):
            self.paused = True
            self.pauses += 1

        def resume_writing(self):
            self.paused = False

        def connection_lost(self, exc):
            pass

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, Producer)
        await asyncio.sleep(0.5)
        size = tr.get_write_buffer_size()
        written = pr.written
        tr.abort()
        await asyncio.sleep(0.01)
        peer.close()
        return pr, size, written

    pr, size, written = run(main())
    assert pr.pauses == 1
    assert pr.max_buffer <= high + len(chunk)
    assert high < size <= high + len(chunk)
    # Nothing was written after pause_writing: all of it is in the kernel or
    # in the transport's buffer, and the kernel holds a few MiB at most.
    assert written < 64 * 1024 * 1024


@pytest.mark.parametrize("kind", KINDS)
def test_set_protocol_get_protocol(loop, run, kind):
    async def main():
        tr, first, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        assert tr.get_protocol() is first
        peer.sendall(b"one")
        await wait_for_data(first, 3)
        second = Recorder(loop)
        second.events.append("made")  # set_protocol does not call connection_made
        tr.set_protocol(second)
        assert tr.get_protocol() is second
        peer.sendall(b"two")
        peer.close()
        exc = await asyncio.wait_for(second.lost, 5)
        return first, second, exc

    first, second, exc = run(main())
    assert bytes(first.data) == b"one"
    assert bytes(second.data) == b"two"
    assert not first.lost.done()
    assert first.events == ["made", "data"]
    assert second.events == ["made", "data", "eof", "lost"]
    assert exc is None


def test_get_extra_info_tcp(loop, run):
    async def main():
        lsock = socket.create_server(("127.0.0.1", 0))
        tr, pr = await loop.create_connection(lambda: Recorder(loop), *lsock.getsockname())
        peer, peer_addr = lsock.accept()
        lsock.close()
        try:
            sock = tr.get_extra_info("socket")
            info = {
                "peername": tr.get_extra_info("peername"),
                "sockname": tr.get_extra_info("sockname"),
                "family": sock.family,
                "type": sock.type,
                "getsockname": sock.getsockname(),
                "getpeername": sock.getpeername(),
                "nodelay": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                "missing": tr.get_extra_info("no-such-key"),
                "default": tr.get_extra_info("no-such-key", "dflt"),
                "fileno_ok": sock.fileno() >= 0,
            }
            return info, peer.getsockname(), peer_addr
        finally:
            tr.close()
            peer.close()

    info, peer_sockname, peer_addr = run(main())
    assert info["peername"] == peer_sockname
    assert info["sockname"] == peer_addr
    assert info["getsockname"] == info["sockname"]
    assert info["getpeername"] == info["peername"]
    assert info["family"] == socket.AF_INET
    assert info["type"] == socket.SOCK_STREAM
    assert info["nodelay"] != 0
    assert info["missing"] is None
    assert info["default"] == "dflt"
    assert info["fileno_ok"]


def test_get_extra_info_unix(loop, run):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, "unix", lambda: Recorder(loop))
        try:
            sock = tr.get_extra_info("socket")
            return (tr.get_extra_info("peername"), tr.get_extra_info("sockname"),
                    sock.family, sock.getpeername(), peer.getsockname())
        finally:
            tr.close()
            peer.close()

    peername, sockname, family, sock_peer, peer_sockname = run(main())
    assert family == socket.AF_UNIX
    assert peername == peer_sockname
    assert sock_peer == peer_sockname
    assert sockname in ("", b"", None)


def test_server_side_transport_extra_info_and_nodelay(loop, run):
    got = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            sock = transport.get_extra_info("socket")
            got.append((transport.get_extra_info("peername"),
                        transport.get_extra_info("sockname"),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                        isinstance(transport, asyncio.Transport)))
            transport.close()

    async def main():
        server = await loop.create_server(P, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        r, w = await asyncio.open_connection(*addr)
        assert await r.read() == b""
        local = w.get_extra_info("sockname")
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return addr, local

    addr, local = run(main())
    assert got == [(local, addr, got[0][2], True)]
    assert got[0][2] != 0


def test_write_type_error_messages(loop, run):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, "tcp", lambda: Recorder(loop))
        msgs = []
        try:
            for bad in ("text", 42, None, [b"x"]):
                with pytest.raises(TypeError) as ei:
                    tr.write(bad)
                msgs.append(str(ei.value))
            with pytest.raises(TypeError):
                tr.writelines([b"ok", "text"])
            # bytes-likes are accepted
            tr.write(b"a")
            tr.write(bytearray(b"b"))
            tr.write(memoryview(b"c"))
            tr.writelines([b"d", bytearray(b"e"), memoryview(b"f")])
            tr.write(b"")
            tr.writelines([])
            tr.close()
            got = await loop.run_in_executor(None, recv_until_eof, peer)
            return msgs, got
        finally:
            tr.close()
            peer.close()

    msgs, got = run(main())
    assert msgs == [
        "data argument must be a bytes-like object, not 'str'",
        "data argument must be a bytes-like object, not 'int'",
        "data argument must be a bytes-like object, not 'NoneType'",
        "data argument must be a bytes-like object, not 'list'",
    ]
    assert got == b"abcdef"


def test_write_after_write_eof_runtime_error(loop, run):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, "tcp", lambda: Recorder(loop))
        try:
            tr.write_eof()
            tr.write_eof()  # a second write_eof is harmless
            with pytest.raises(RuntimeError) as ei:
                tr.write(b"x")
            with pytest.raises(RuntimeError):
                tr.writelines([b"x"])
            got = await loop.run_in_executor(None, recv_until_eof, peer)
            return str(ei.value), got
        finally:
            tr.close()
            peer.close()

    msg, got = run(main())
    assert msg == "Cannot call write() after write_eof()"
    assert got == b""


@pytest.mark.parametrize("kind", KINDS)
def test_writes_after_close_ignored_then_warned(loop, run, kind, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")

    def warnings_():
        return [r for r in caplog.records
                if r.name == "asyncio" and r.levelno == logging.WARNING
                and r.getMessage() == "socket.send() raised exception."]

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        tr.write(b"before")
        tr.close()
        for _ in range(4):
            tr.write(b"ignored")
        n4 = len(warnings_())
        await asyncio.wait_for(pr.lost, 5)
        tr.write(b"ignored")
        n5 = len(warnings_())
        tr.writelines([b"ignored"])
        n6 = len(warnings_())
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        peer.close()
        return n4, n5, n6, got, tr.get_write_buffer_size()

    n4, n5, n6, got, size = run(main())
    assert got == b"before"
    assert size == 0
    assert n4 == 0
    assert n5 == 1
    assert n6 == 2


@pytest.mark.parametrize("kind", KINDS)
def test_connection_lost_exactly_once_when_closed_and_aborted(loop, run, kind):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        tr.close()
        tr.abort()
        tr.close()
        await asyncio.wait_for(pr.lost, 5)
        await asyncio.sleep(0.05)
        peer.close()
        return pr

    pr = run(main())
    assert pr.events == ["made", "lost"]
    assert pr.errors == []


@pytest.mark.parametrize("kind", KINDS)
def test_closed_transport_releases_socket(loop, run, kind):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        fd = tr.get_extra_info("socket").fileno()
        tr.close()
        await asyncio.wait_for(pr.lost, 5)
        await asyncio.sleep(0)
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        peer.close()
        return fd, got

    fd, got = run(main())
    assert got == b""


# ---------------------------------------------------------------------------
# Re-entrancy and protocol errors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["close", "abort"])
@pytest.mark.parametrize("kind", KINDS)
def test_close_inside_data_received_stops_delivery(loop, run, kind, how):
    class P(Recorder):
        def data_received(self, data):
            super().data_received(data)
            getattr(self.transport, how)()

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: P(loop))
        # Several reads' worth.
        sender = loop.run_in_executor(None, peer.sendall, os.urandom(2 * 1024 * 1024))
        exc = await asyncio.wait_for(pr.lost, 5)
        await asyncio.sleep(0.05)
        try:
            await sender  # our side closed: the rest fails to send
        except OSError:
            pass
        peer.close()
        return pr, exc

    pr, exc = run(main())
    assert exc is None
    assert pr.events == ["made", "data", "lost"]
    assert 0 < len(pr.data) <= 2 * 1024 * 1024
    assert pr.errors == []


class PausingInDataReceived(Recorder):
    """Pauses reading in its first data_received(); resumes 50 ms later."""

    def data_received(self, data):
        first = not self.data
        super().data_received(data)
        if first:
            self.transport.pause_reading()
            self.paused_at = len(self.data)
            self.loop.call_later(0.05, self.transport.resume_reading)


@pytest.mark.parametrize("kind", KINDS)
def test_pause_in_data_received_with_fin_already_queued(loop, run, kind):
    data = os.urandom(600 * 1024)  # more than one read

    async def main():
        lsock, addr = plain_listener(kind)
        with lsock:
            # The peer sends everything and its FIN before we even connect
            # our protocol to the loop's reads.
            tr, pr = await connect(loop, kind, lambda: PausingInDataReceived(loop), addr)
            peer, _ = lsock.accept()
        sender = loop.run_in_executor(None, lambda: (peer.sendall(data), peer.shutdown(socket.SHUT_WR)))
        await asyncio.wait_for(pr.eof, 5)
        exc = await asyncio.wait_for(pr.lost, 5)
        await sender
        peer.close()
        return pr, exc

    pr, exc = run(main())
    assert exc is None
    assert digest(bytes(pr.data)) == digest(data)
    assert pr.paused_at < len(data)
    assert pr.events == ["made", "data", "eof", "lost"]
    assert pr.errors == []


@pytest.mark.parametrize("kind", KINDS)
def test_buffered_protocol_tiny_buffer_then_eof(loop, run, kind):
    data = os.urandom(3000)

    class P(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(7)
            self.got = bytearray()
            self.done = loop.create_future()
            self.eofs = 0

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, n):
            self.got += self.buf[:n]

        def eof_received(self):
            self.eofs += 1

        def connection_lost(self, exc):
            self.done.set_result(exc)

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, P)
        peer.sendall(data)
        peer.shutdown(socket.SHUT_WR)
        exc = await asyncio.wait_for(pr.done, 5)
        peer.close()
        return pr, exc

    pr, exc = run(main())
    assert exc is None
    assert bytes(pr.got) == data
    assert pr.eofs == 1


def test_set_protocol_switches_to_buffered_protocol(loop, run):
    class B(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(100)
            self.got = bytearray()
            self.calls = 0
            self.lost = loop.create_future()

        def get_buffer(self, sizehint):
            self.calls += 1
            return self.buf

        def buffer_updated(self, n):
            self.got += self.buf[:n]

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        tr, first, peer = await connected_to_plain_peer(loop, "tcp", lambda: Recorder(loop))
        peer.sendall(b"plain")
        await wait_for_data(first, 5)
        second = B()
        tr.set_protocol(second)
        peer.sendall(b"buffered")
        peer.close()
        await asyncio.wait_for(second.lost, 5)
        return first, second

    first, second = run(main())
    assert bytes(first.data) == b"plain"
    assert bytes(second.got) == b"buffered"
    assert second.calls >= 1


@pytest.mark.parametrize("method", ["eof_received", "get_buffer", "buffer_updated",
                                    "get_buffer_empty"])
def test_protocol_method_errors_are_fatal(loop, run, method):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)
    boom = RuntimeError("boom")
    lost = loop.create_future()

    class Base:
        def connection_lost(self, exc):
            lost.set_result(exc)

    if method == "eof_received":
        class P(Base, asyncio.Protocol):
            def eof_received(self):
                raise boom
    else:
        class P(Base, asyncio.BufferedProtocol):
            def get_buffer(self, sizehint):
                if method == "get_buffer":
                    raise boom
                if method == "get_buffer_empty":
                    return bytearray()
                return bytearray(100)

            def buffer_updated(self, n):
                raise boom

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, "tcp", P)
        if method == "eof_received":
            peer.shutdown(socket.SHUT_WR)
        else:
            peer.sendall(b"data")
        exc = await asyncio.wait_for(lost, 5)
        peer.close()
        return tr, pr, exc

    tr, pr, exc = run(main())
    assert len(handler.contexts) == 1
    ctx = handler.contexts[0]
    name = "get_buffer" if method == "get_buffer_empty" else method
    assert ctx["message"] == f"Fatal error: protocol.{name}() call failed."
    assert ctx["transport"] is tr
    assert ctx["protocol"] is pr
    assert exc is ctx["exception"]
    if method == "get_buffer_empty":
        assert isinstance(exc, RuntimeError)
        assert str(exc) == "get_buffer() returned an empty buffer"
    else:
        assert exc is boom


@pytest.mark.parametrize("method", ["pause_writing", "resume_writing"])
def test_flow_control_callback_errors_reported(loop, run, method):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)
    boom = RuntimeError("flow")

    class P(Recorder):
        def pause_writing(self):
            super().pause_writing()
            if method == "pause_writing":
                raise boom

        def resume_writing(self):
            super().resume_writing()
            if method == "resume_writing":
                raise boom

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, "tcp", lambda: P(loop))
        written = 0
        while "pause" not in pr.events:
            tr.write(b"p" * 65536)
            written += 65536
        reader = loop.run_in_executor(None, recv_until_eof, peer, written)
        for _ in range(500):
            if "resume" in pr.events:
                break
            await asyncio.sleep(0.01)
        got = await reader
        assert not tr.is_closing()  # a failing flow-control callback is not fatal
        tr.close()
        await asyncio.wait_for(pr.lost, 5)
        peer.close()
        return tr, pr, written, len(got)

    tr, pr, written, n = run(main())
    assert n == written
    assert len(handler.contexts) == 1
    ctx = handler.contexts[0]
    assert ctx["message"] == f"protocol.{method}() failed"
    assert ctx["exception"] is boom
    assert ctx["transport"] is tr
    assert ctx["protocol"] is pr


def test_connection_lost_exception_still_closes_socket(loop, run):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)
    boom = RuntimeError("in connection_lost")

    class P(Recorder):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise boom

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, "tcp", lambda: P(loop))
        tr.close()
        await asyncio.wait_for(pr.lost, 5)
        await asyncio.sleep(0.01)
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        peer.close()
        return got

    assert run(main()) == b""
    assert len(handler.contexts) == 1
    ctx = handler.contexts[0]
    assert ctx["exception"] is boom
    assert ctx["message"].startswith("Exception in callback ")


@pytest.mark.parametrize("kind", KINDS)
def test_written_bytearray_is_copied(loop, run, kind):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        data = bytearray(b"a" * (8 * 1024 * 1024))
        tr.write(data)
        assert tr.get_write_buffer_size() > 0  # part of it is queued
        data[:] = b"b" * len(data)  # the caller reuses its buffer
        mv = memoryview(bytearray(b"c" * 1000))
        tr.write(mv)
        mv[:] = b"d" * 1000
        tr.close()
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        await asyncio.wait_for(pr.lost, 5)
        peer.close()
        return got

    got = run(main())
    assert digest(got) == digest(b"a" * (8 * 1024 * 1024) + b"c" * 1000)


@pytest.mark.parametrize("kind", KINDS)
def test_flood_does_not_starve_timers(loop, run, kind):
    ticks = []

    class Sink(asyncio.Protocol):
        def __init__(self):
            self.n = 0
            self.lost = loop.create_future()

        def data_received(self, data):
            self.n += len(data)

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    def tick():
        ticks.append(loop.time())
        loop.call_later(0.005, tick)

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, Sink)
        blob = os.urandom(1 << 20)

        def flood():
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                peer.sendall(blob)
            peer.shutdown(socket.SHUT_WR)

        loop.call_soon(tick)
        await loop.run_in_executor(None, flood)
        await asyncio.wait_for(pr.lost, 10)
        peer.close()
        return pr.n

    n = run(main())
    assert n >= 1 << 20
    # ~100 expected in 0.5 s on an idle machine; a loop starved by the
    # reads has one or two (a busy machine can stretch single gaps, so the
    # count, not the longest gap, is the measure).
    assert len(ticks) >= 10


@pytest.mark.parametrize("kind", KINDS)
def test_write_memoryview_of_any_format(loop, run, kind):
    # Any C-contiguous buffer exposed through a memoryview is sent as its raw
    # bytes, whatever its item format (array('i'), cast('I'), 2-D).
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        try:
            ints = array.array("i", [1, 2, 3])
            tr.write(memoryview(ints))
            tr.write(memoryview(b"abcdefgh").cast("I"))
            tr.write(memoryview(bytearray(b"ABCDEF")).cast("B", (2, 3)))
            tr.writelines([memoryview(array.array("h", [7])), b"!"])
            tr.close()
            got = await loop.run_in_executor(None, recv_until_eof, peer)
            return got, ints.tobytes()
        finally:
            tr.close()
            peer.close()

    got, int_bytes = run(main())
    assert got == int_bytes + b"abcdefgh" + b"ABCDEF" + array.array("h", [7]).tobytes() + b"!"


def test_set_write_buffer_limits_negative_values(loop, run):
    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, "tcp", lambda: Recorder(loop))
        msgs = []
        try:
            for kwargs in ({"high": -1}, {"high": -5}, {"low": -1}, {"high": 5, "low": -3}):
                with pytest.raises(ValueError) as ei:
                    tr.set_write_buffer_limits(**kwargs)
                msgs.append(str(ei.value))
            # A failed call changes nothing.
            return msgs, tr.get_write_buffer_limits()
        finally:
            tr.close()
            peer.close()

    msgs, limits = run(main())
    # low defaults to high // 4 (floor division, as in asyncio).
    assert msgs == [
        "high (-1) must be >= low (-1) must be >= 0",
        "high (-5) must be >= low (-2) must be >= 0",
        "high (-4) must be >= low (-1) must be >= 0",
        "high (5) must be >= low (-3) must be >= 0",
    ]
    assert limits == (16 * 1024, 64 * 1024)


@pytest.mark.parametrize("kind", KINDS)
def test_unclosed_transport_resource_warning(loop_factory, kind):
    import warnings
    lp = loop_factory()
    lsock, addr = plain_listener(kind)

    async def main():
        tr, pr = await connect(lp, kind, asyncio.Protocol, addr)
        return lsock.accept()[0]

    try:
        peer = lp.run_until_complete(main())
    finally:
        lsock.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lp.close()  # the transport was never closed
        gc.collect()
        gc.collect()
    peer.close()
    msgs = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert any(m.startswith("unclosed transport ") for m in msgs), msgs


@pytest.mark.parametrize("kind", KINDS)
def test_empty_writes_after_close_are_not_counted(loop, run, kind, caplog):
    # write(b"") returns before the connection-lost accounting (asyncio), so
    # empty writes never produce the "socket.send() raised exception." warning.
    caplog.set_level(logging.WARNING, logger="asyncio")

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: Recorder(loop))
        tr.close()
        await asyncio.wait_for(pr.lost, 5)
        for _ in range(10):
            tr.write(b"")
            tr.writelines([])
        n_empty = sum(r.getMessage() == "socket.send() raised exception."
                      for r in caplog.records)
        for _ in range(4):
            tr.write(b"x")
        n_real = sum(r.getMessage() == "socket.send() raised exception."
                     for r in caplog.records)
        peer.close()
        return n_empty, n_real

    # close() counts as the first lost write; 4 more reach the threshold (5)
    # only on the 5th: so 4 real writes after close log nothing either.
    assert run(main()) == (0, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_protocol_methods_looked_up_at_call_time(loop, run, kind):
    # Protocols may rebind their callbacks (state machines do, e.g. a
    # handshake phase then a body phase); the transport calls whatever the
    # protocol's attribute is when data arrives, as asyncio does.
    class P(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            self.phases = []
            self.data_received = self.handshake

        def handshake(self, data):
            self.phases.append(("handshake", data))
            self.data_received = self.body

        def body(self, data):
            self.phases.append(("body", data))

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: P(loop))
        peer.sendall(b"hello")
        for _ in range(200):
            if pr.phases:
                break
            await asyncio.sleep(0.005)
        peer.sendall(b"payload")
        for _ in range(200):
            if len(pr.phases) >= 2:
                break
            await asyncio.sleep(0.005)
        tr.close()
        peer.close()
        await asyncio.wait_for(pr.lost, 5)
        return pr.phases

    assert run(main()) == [("handshake", b"hello"), ("body", b"payload")]


def test_buffered_protocol_methods_looked_up_at_call_time(loop, run):
    handler = RecordingHandler()
    loop.set_exception_handler(handler)

    class P(asyncio.BufferedProtocol):
        def __init__(self):
            self.small = bytearray(3)
            self.got = []
            self.lost = loop.create_future()

        def connection_made(self, transport):
            self.get_buffer = lambda hint: self.small
            self.buffer_updated = lambda n: self.got.append(bytes(self.small[:n]))

        def get_buffer(self, hint):  # replaced in connection_made
            raise AssertionError("stale get_buffer called")

        def buffer_updated(self, n):
            raise AssertionError("stale buffer_updated called")

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, "tcp", P)
        peer.sendall(b"abcdefg")
        peer.close()
        exc = await asyncio.wait_for(pr.lost, 5)
        return exc, pr.got

    exc, got = run(main())
    assert [c["message"] for c in handler.contexts] == []
    assert exc is None
    assert b"".join(got) == b"abcdefg"
    assert max(len(g) for g in got) <= 3


@pytest.mark.parametrize("kind", KINDS)
def test_buffered_protocol_buffer_of_any_format(loop, run, kind):
    # get_buffer() may hand out any writable C-contiguous buffer; the read
    # fills its bytes and buffer_updated() gets a byte count.
    handler = RecordingHandler()
    loop.set_exception_handler(handler)

    class P(asyncio.BufferedProtocol):
        def __init__(self):
            self.arr = array.array("i", [0] * 4)  # 16 bytes
            self.got = bytearray()
            self.lost = loop.create_future()

        def get_buffer(self, hint):
            return memoryview(self.arr)

        def buffer_updated(self, n):
            self.got += memoryview(self.arr).cast("B")[:n]

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, P)
        peer.sendall(b"0123456789abcdefXYZ")
        peer.close()
        exc = await asyncio.wait_for(pr.lost, 5)
        return exc, bytes(pr.got)

    exc, got = run(main())
    assert [c["message"] for c in handler.contexts] == []
    assert exc is None
    assert got == b"0123456789abcdefXYZ"


def test_ipv6_transport(loop, run):
    from loopsupport import ipv6_loopback_works
    if not ipv6_loopback_works():
        pytest.skip("IPv6 loopback (::1) does not work on this machine")

    async def main():
        lsock = socket.create_server(("::1", 0), family=socket.AF_INET6)
        tr, pr = await loop.create_connection(lambda: Recorder(loop), "::1",
                                              lsock.getsockname()[1])
        peer, peer_addr = lsock.accept()
        lsock.close()
        sock = tr.get_extra_info("socket")
        info = (tr.get_extra_info("peername"), tr.get_extra_info("sockname"), sock.family,
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        tr.write(b"v6")
        tr.close()
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        await asyncio.wait_for(pr.lost, 5)
        peer_sockname = peer.getsockname()
        peer.close()
        return info, got, peer_sockname, peer_addr

    (peername, sockname, family, nodelay), got, peer_sockname, peer_addr = run(main())
    assert got == b"v6"
    assert family == socket.AF_INET6
    assert peername == peer_sockname and len(peername) == 4
    assert sockname == peer_addr
    assert nodelay != 0


@pytest.mark.parametrize("reading", [True, False])
def test_sendfile_restores_reading_state(loop, run, reading, tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(256 * 1024)
    path.write_bytes(data)

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, "tcp", lambda: Recorder(loop))
        await asyncio.sleep(0)
        if not reading:
            tr.pause_reading()
        reader = loop.run_in_executor(None, recv_until_eof, peer, len(data))
        with open(path, "rb") as f:
            n = await loop.sendfile(tr, f)
        state = tr.is_reading()
        got = await reader
        peer.sendall(b"after")
        await asyncio.sleep(0.05)
        delivered = bytes(pr.data)
        tr.close()
        peer.close()
        await asyncio.wait_for(pr.lost, 5)
        return n, state, got, delivered

    n, state, got, delivered = run(main())
    assert n == len(data)
    assert digest(got) == digest(data)
    assert state is reading
    assert delivered == (b"after" if reading else b"")


def test_unix_connection_and_server_with_sock(loop, run):
    path = short_unix_path()

    async def main():
        lsock = socket.socket(socket.AF_UNIX)
        lsock.bind(path)
        made = []

        class S(asyncio.Protocol):
            def connection_made(self, transport):
                made.append(transport)
                transport.write(b"welcome")
                transport.close()

        server = await loop.create_unix_server(S, sock=lsock)
        csock = socket.socket(socket.AF_UNIX)
        csock.connect(path)
        tr, pr = await loop.create_unix_connection(lambda: Recorder(loop), sock=csock)
        exc = await asyncio.wait_for(pr.lost, 5)
        server.close()
        await server.wait_closed()
        return exc, bytes(pr.data), len(made), tr.get_extra_info("peername")

    exc, data, n, peername = run(main())
    assert exc is None
    assert data == b"welcome"
    assert n == 1
    assert peername == path


@pytest.mark.parametrize("kind", KINDS)
def test_write_in_resume_writing_after_close_is_flushed(loop, run, kind):
    # close() flushes the buffer first; resume_writing() may still fire while
    # it does, and what the protocol writes there is buffered and flushed too
    # (asyncio re-checks its buffer after calling resume_writing()).
    head = os.urandom(8 * 1024 * 1024)
    tail = os.urandom(8 * 1024 * 1024)

    class P(Recorder):
        def resume_writing(self):
            super().resume_writing()
            if self.events.count("resume") == 1:
                self.transport.write(tail)

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: P(loop))
        tr.write(head)
        assert pr.events == ["made", "pause"]
        tr.close()
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        exc = await asyncio.wait_for(pr.lost, 5)
        peer.close()
        return pr, exc, len(got), hashlib.sha256(got).hexdigest()

    pr, exc, n, digest = run(main())
    assert exc is None
    assert "resume" in pr.events
    assert n == len(head) + len(tail)
    assert digest == hashlib.sha256(head + tail).hexdigest()


@pytest.mark.parametrize("how", ["close", "abort"])
@pytest.mark.parametrize("kind", KINDS)
def test_close_inside_connection_made(loop, run, kind, how):
    class P(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(b"bye")
            getattr(transport, how)()

    async def main():
        tr, pr, peer = await connected_to_plain_peer(loop, kind, lambda: P(loop))
        try:
            peer.sendall(b"never delivered")
        except OSError:  # our end may be gone already (a Unix socket says EPIPE)
            pass
        exc = await asyncio.wait_for(pr.lost, 5)
        await asyncio.sleep(0.05)
        got = await loop.run_in_executor(None, recv_until_eof, peer)
        peer.close()
        return pr, exc, got

    pr, exc, got = run(main())
    assert exc is None
    assert pr.events == ["made", "lost"]
    assert bytes(pr.data) == b""
    assert got == b"bye"  # it went to the kernel before close()/abort()
    assert pr.errors == []


class Keeper(Recorder):
    """Keeps some of the bytes objects data_received gets (the objects
    themselves, or a memoryview of them) and drops the rest after hashing them;
    acks every ``size`` bytes so that the peer sends one message at a time."""

    def __init__(self, loop, size):
        super().__init__(loop)
        self.size = size
        self.kept = []  # (offset, object or memoryview)
        self.hash_errors = []
        self.calls = 0

    def data_received(self, data):
        offset = len(self.data)
        super().data_received(data)
        self.calls += 1
        if self.calls % 3 == 0:
            self.kept.append((offset, data))
        elif self.calls % 3 == 1:
            self.kept.append((offset, memoryview(data)))
        # A cached hash must be the hash of these bytes, not of an earlier read's.
        if hash(data) != hash(bytes(bytearray(data))):
            self.hash_errors.append(offset)
        {data: None}  # hashes it (and caches the hash) via a dict too
        acks = (offset + len(data)) // self.size - offset // self.size
        if acks:
            self.transport.write(b"k" * acks)


async def send_acked(loop, kind, factory, messages):
    """Sends ``messages`` from a plain peer to a transport of ``factory``'s
    protocol, each once the protocol acked the one before (one byte back), then
    EOF; returns the protocol after its eof_received."""
    tr, pr, peer = await connected_to_plain_peer(loop, kind, factory)

    def drive():
        for m in messages:
            peer.sendall(m)
            assert peer.recv(1) == b"k"
        peer.shutdown(socket.SHUT_WR)

    try:
        await loop.run_in_executor(None, drive)
        await asyncio.wait_for(pr.eof, 10)
    finally:
        tr.close()
        peer.close()
    return pr


def assert_kept_intact(pr, messages):
    """Everything arrived in order, and each object the protocol kept (or a view
    of one) still holds the bytes it was given, with no stale cached hash."""
    sent = b"".join(messages)
    assert bytes(pr.data) == sent
    assert pr.errors == [] and pr.hash_errors == []
    for offset, obj in pr.kept:
        assert bytes(obj) == sent[offset:offset + len(obj)]


@pytest.mark.parametrize("size", [1024, 65536])
@pytest.mark.parametrize("kind", KINDS)
def test_received_bytes_are_never_rewritten(loop, run, kind, size):
    # Equal-size reads, one message per round trip: each data_received object
    # the protocol kept, or holds a view of, still has the bytes it was given,
    # and a hash Python cached for an object is never one of another read.
    # 64 KiB messages take glassloop's large-read path (received straight into
    # the bytes object).
    count = 200 if size < 16384 else 60
    rng = random.Random(7)
    messages = [rng.randbytes(size) for _ in range(count)]

    pr = run(send_acked(loop, kind, lambda: Keeper(loop, size), messages))
    assert_kept_intact(pr, messages)
    assert len(pr.kept) >= count // 2


class MessageKeeper(Recorder):
    """Keeps every other bytes object data_received gets and acks each message
    (of the sizes given) once it is whole, so the peer sends one at a time."""

    def __init__(self, loop, sizes):
        super().__init__(loop)
        self.ends = [sum(sizes[:i + 1]) for i in range(len(sizes))]
        self.kept = []  # (offset, object)
        self.hash_errors = []

    def data_received(self, data):
        offset = len(self.data)
        super().data_received(data)
        if len(self.kept) % 2 == 0 or offset % 2 == 0:
            self.kept.append((offset, data))
        if hash(data) != hash(bytes(bytearray(data))):
            self.hash_errors.append(offset)
        acks = sum(1 for end in self.ends if offset < end <= len(self.data))
        if acks:
            self.transport.write(b"k" * acks)


@pytest.mark.parametrize("kind", KINDS)
def test_reads_of_changing_sizes_are_whole_and_never_rewritten(loop, run, kind):
    # After large reads glassloop reads into a bytes object the size of the last
    # read; these sizes make the next read larger, a little smaller, much smaller,
    # exactly the largest read (256 KiB) and beyond it, then small and large again.
    sizes = [65536, 65536, 100000, 60000, 70000, 1000, 65536, 20000, 65536, 262144,
             300000, 17000, 16384, 16383, 40000, 65536]
    rng = random.Random(11)
    messages = [rng.randbytes(n) for n in sizes]

    pr = run(send_acked(loop, kind, lambda: MessageKeeper(loop, sizes), messages))
    assert_kept_intact(pr, messages)
