"""The server and transport tables, read through the Python API
(``loop.servers()``, ``loop.transports()``, ``glassloop.inspect()``).

Each test makes servers, pipes or subprocesses whose figures are known in
advance (3 connections accepted, N bytes through a pipe) and checks the tables
against them: glassloop-only by nature. What the loop does while it counts
(accepting after running out of descriptors, bytes through pipes) is checked on
both loops in the tests marked "behaviour" (the ``loop`` fixture).
"""

import asyncio
import errno
import functools
import os
import resource
import socket
import sys

import pytest

from loopsupport import short_unix_path


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Sink(asyncio.Protocol):
    """Collects what a read pipe delivers."""

    def __init__(self, loop):
        self.data = bytearray()
        self.eof = loop.create_future()

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.eof.set_result(None)

    def connection_lost(self, exc):
        pass


@pytest.fixture
def gl(glassloop, monkeypatch):
    monkeypatch.delenv("GLASSLOOP_INSPECT", raising=False)
    return glassloop


@pytest.fixture
def gloop(gl):
    lp = gl.new_event_loop()
    asyncio.set_event_loop(lp)
    yield lp
    if not lp.is_closed():
        lp.close()
    asyncio.set_event_loop(None)


async def until(predicate, what, timeout=10.0):
    """Await until ``predicate()`` is truthy (polling the loop); return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            value = predicate()
        except (IndexError, KeyError) as exc:  # the row is not there yet
            value = exc
        if value and not isinstance(value, Exception):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}")
        await asyncio.sleep(0.01)


def only(rows, **match):
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{match}: {found} in {rows}"
    return found[0]


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------

def test_server_table_counts_accepted_and_open_connections(gloop, gl):
    async def main():
        server = await gloop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        (row,) = gloop.servers()
        assert row["kind"] == "tcp" and row["addresses"] == [f"127.0.0.1:{port}"]
        assert row["protocol_factory"] == "Echo" and row["tls"] is False
        assert (row["accepted"], row["open"], row["refused"]) == (0, 0, 0)
        assert row["serving"] is True and row["state"] == "serving"
        assert row["created_unix_ms"] > 1_600_000_000_000

        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for r, w in clients:
            w.write(b"x")
            assert await r.readexactly(1) == b"x"
        await until(lambda: gloop.servers()[0]["open"] == 3, "3 open connections")
        assert gloop.servers()[0]["accepted"] == 3

        r, w = clients.pop()
        w.close()
        await w.wait_closed()
        await until(lambda: gloop.servers()[0]["open"] == 2, "one connection closed")
        assert gloop.servers()[0]["accepted"] == 3

        server.close()
        for r, w in clients:
            w.close()
        await server.wait_closed()
        await until(lambda: gloop.servers()[0]["open"] == 0, "the clients' connections closed")
        (row,) = gloop.servers()
        assert (row["serving"], row["state"], row["open"], row["accepted"]) == (False, "closed", 0, 3)
        assert gl.inspect(gloop)["servers"] == gloop.servers()

    gloop.run_until_complete(main())


def test_stream_and_unix_servers_are_listed(gloop):
    path = short_unix_path()

    async def handle(reader, writer):
        writer.write(await reader.readexactly(2))
        await writer.drain()
        writer.close()

    async def main():
        tcp = await asyncio.start_server(handle, "127.0.0.1", 0)
        unix = await asyncio.start_unix_server(handle, path)
        idle = await gloop.create_unix_server(functools.partial(Echo), short_unix_path(), start_serving=False)
        kinds = [(r["kind"], r["state"]) for r in gloop.servers()]
        assert kinds == [("tcp", "serving"), ("unix", "serving"), ("unix", "idle")], kinds
        assert gloop.servers()[1]["addresses"] == [path]
        assert gloop.servers()[2]["protocol_factory"] == "Echo"  # through the partial

        r, w = await asyncio.open_unix_connection(path)
        w.write(b"hi")
        assert await r.read() == b"hi"
        w.close()
        await until(lambda: gloop.servers()[1]["accepted"] == 1, "the Unix connection counted")
        assert gloop.servers()[1]["refused"] == 0

        await idle.start_serving()
        assert gloop.servers()[2]["state"] == "serving"
        for s in (tcp, unix, idle):
            s.close()
            await s.wait_closed()

    gloop.run_until_complete(main())


def test_a_collected_server_leaves_the_table(gloop):
    async def main():
        server = await gloop.create_server(Echo, "127.0.0.1", 0)
        assert len(gloop.servers()) == 1
        server.close()
        await server.wait_closed()
        del server
        import gc
        gc.collect()
        assert gloop.servers() == []

    gloop.run_until_complete(main())


class _Limited:
    """RLIMIT_NOFILE lowered so that the process has no descriptor to spare
    (restored on exit)."""

    def __enter__(self):
        self.old = resource.getrlimit(resource.RLIMIT_NOFILE)
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 64, self.old[1]))
        self.hogs = []
        try:
            while True:
                self.hogs.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        return self

    def free(self):
        for fd in self.hogs:
            os.close(fd)
        self.hogs = []
        resource.setrlimit(resource.RLIMIT_NOFILE, self.old)

    def __exit__(self, *exc):
        self.free()


def _serve_out_of_descriptors(loop):
    """Behaviour: a connection that arrives while the process is out of file
    descriptors is reported to the exception handler, and served once descriptors
    are free again (asyncio retries accepting after ACCEPT_RETRY_DELAY)."""
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.socket()
        client.setblocking(False)
        with _Limited() as limit:
            # The client's socket exists; the server cannot accept it.
            try:
                client.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            await until(lambda: contexts, "the accept failure reported")
            limit.free()
        await loop.sock_sendall(client, b"ping")
        assert await loop.sock_recv(client, 4) == b"ping"
        client.close()
        server.close()
        await server.wait_closed()
        return server

    server = loop.run_until_complete(main())
    assert contexts[0]["message"] == "socket.accept() out of system resource"
    assert isinstance(contexts[0]["exception"], OSError) and contexts[0]["exception"].errno == errno.EMFILE
    return contexts, server


@pytest.mark.timeout(30)
def test_accept_out_of_descriptors_is_reported_and_retried(loop):
    _serve_out_of_descriptors(loop)


@pytest.mark.timeout(30)
def test_accept_out_of_descriptors_counts_as_refused(gloop):
    contexts, server = _serve_out_of_descriptors(gloop)
    (row,) = gloop.servers()
    assert row["refused"] == len(contexts) >= 1
    assert row["accepted"] == 1


# ---------------------------------------------------------------------------
# asyncio's Python transports: pipes, subprocesses, other sockets
# ---------------------------------------------------------------------------

def test_read_pipe_counts_bytes_and_pauses(gloop):
    async def main():
        r, w = os.pipe()
        proto = Sink(gloop)
        transport, _ = await gloop.connect_read_pipe(lambda: proto, os.fdopen(r, "rb", 0))
        chunks = [b"a" * 1000, b"b" * 3000, b"c" * 7]
        for chunk in chunks:
            os.write(w, chunk)
            await until(lambda: len(proto.data) >= sum(map(len, chunks[: chunks.index(chunk) + 1])), "the chunk")
        row = only(gloop.transports(), kind="pipe_read")
        assert row["local"] == f"fd {r}" and row["peer"] == "" and row["protocol"] == "Sink"
        assert row["bytes_in"] == len(proto.data) == 4007
        assert row["calls_in"] == 3 and row["bytes_out"] == 0 and row["calls_out"] == 0
        assert row["state"] == "open" and row["reading_paused"] is False

        transport.pause_reading()
        await asyncio.sleep(0.02)
        row = only(gloop.transports(), kind="pipe_read")
        assert row["reading_paused"] is True and row["paused_reading_seconds"] >= 0.02
        transport.resume_reading()
        paused = only(gloop.transports(), kind="pipe_read")["paused_reading_seconds"]
        await asyncio.sleep(0.02)
        assert only(gloop.transports(), kind="pipe_read")["paused_reading_seconds"] == paused

        os.close(w)
        await proto.eof
        await until(lambda: not [t for t in gloop.transports() if t["kind"] == "pipe_read"], "the closed pipe gone")

    gloop.run_until_complete(main())


def test_write_pipe_counts_bytes_buffer_and_pause(gloop):
    async def main():
        r, w = os.pipe()
        os.set_blocking(r, False)
        transport, proto = await gloop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb", 0))
        transport.write(b"hello")
        transport.write(bytearray(b" world"))
        transport.write(memoryview(b"!!!!").cast("B"))
        row = only(gloop.transports(), kind="pipe_write")
        assert (row["bytes_out"], row["calls_out"], row["write_buffer"]) == (15, 3, 0)
        assert os.read(r, 100) == b"hello world!!!!"

        # Fill the pipe: the rest waits in the transport's buffer, past its high-water mark.
        big = b"z" * (4 << 20)
        transport.write(big)
        row = only(gloop.transports(), kind="pipe_write")
        assert row["write_buffer"] == transport.get_write_buffer_size() > 0
        assert row["write_buffer_high_water"] >= row["write_buffer"]
        assert row["bytes_out"] == 15 + len(big) - row["write_buffer"]
        assert row["writing_paused"] is True
        got = 0
        while transport.get_write_buffer_size():
            try:
                got += len(os.read(r, 1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        while got < len(big):
            try:
                got += len(os.read(r, 1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        row = only(gloop.transports(), kind="pipe_write")
        assert (row["bytes_out"], row["write_buffer"], row["writing_paused"]) == (15 + len(big), 0, False)
        assert row["paused_writing_seconds"] > 0

        # A write after close is dropped, as asyncio drops it: not counted.
        transport.close()
        transport.write(b"late")
        await asyncio.sleep(0.01)
        assert not [t for t in gloop.transports() if t["kind"] == "pipe_write"]
        os.close(r)

    gloop.run_until_complete(main())


def test_write_pipe_bytes_dropped_by_abort_are_not_counted(gloop):
    async def main():
        r, w = os.pipe()
        transport, _ = await gloop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb", 0))
        transport.write(b"y" * (4 << 20))
        buffered = transport.get_write_buffer_size()
        assert buffered > 0
        sent = only(gloop.transports(), kind="pipe_write")["bytes_out"]
        assert sent == (4 << 20) - buffered
        got = 0
        os.set_blocking(r, False)
        while got < sent:
            got += len(os.read(r, 1 << 20))
        transport.abort()
        row = only(gloop.transports(), kind="pipe_write")  # closing, connection_lost not yet run
        assert row["bytes_out"] == sent == got and row["state"] == "closing"
        os.close(r)

    gloop.run_until_complete(main())


def test_subprocess_and_its_pipes_are_listed(gloop):
    code = "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data * 2); sys.stdout.flush()"

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        rows = gloop.transports()
        sub = only(rows, kind="subprocess")
        assert sub["peer"] == f"pid {proc.pid}" and sub["protocol"] == "SubprocessStreamProtocol"
        stdin = only(rows, kind="pipe_write")
        stdout = only(rows, kind="pipe_read")
        assert stdin["peer"] == f"pid {proc.pid} stdin" and stdout["peer"] == f"pid {proc.pid} stdout"
        out, _ = await proc.communicate(b"abc" * 1000)
        assert out == b"abc" * 2000
        # Finished: the transports leave the table (their connection was lost).
        await until(lambda: not [t for t in gloop.transports() if str(proc.pid) in t["peer"]],
                    "the subprocess's transports gone")

    gloop.run_until_complete(main())


def test_subprocess_row_sums_its_pipes(gloop):
    code = "import sys, time; sys.stdout.write(sys.stdin.readline() * 3); sys.stdout.flush(); time.sleep(30)"

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        proc.stdin.write(b"0123456789\n")
        await proc.stdin.drain()
        got = await proc.stdout.readexactly(33)
        assert got == b"0123456789\n" * 3
        sub = only(gloop.transports(), kind="subprocess")
        assert (sub["bytes_out"], sub["calls_out"], sub["bytes_in"]) == (11, 1, 33)
        assert sub["state"] == "open"
        proc.kill()
        await proc.wait()

    gloop.run_until_complete(main())


def test_other_stream_sockets_keep_asyncios_transport_and_are_listed(gloop):
    # A socket type the Rust transport does not take (here SOCK_SEQPACKET) gets
    # asyncio's socket transport: listed, its writes counted.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    async def main():
        proto = Echo()
        transport = gloop._make_socket_transport(a, proto)
        await asyncio.sleep(0)
        transport.write(b"0123456789")
        row = only(gloop.transports(), protocol="Echo")
        assert row["kind"] == "unix" and row["bytes_out"] == 10 and row["calls_out"] == 1
        assert b.recv(100) == b"0123456789"
        transport.close()
        await asyncio.sleep(0.01)
        assert [t for t in gloop.transports() if t["protocol"] == "Echo"] == []

    gloop.run_until_complete(main())
    b.close()


def test_transports_open_counts_pipes(gloop):
    async def main():
        r, w = os.pipe()
        transport, _ = await gloop.connect_read_pipe(lambda: Sink(gloop), os.fdopen(r, "rb", 0))
        assert gloop.stats()["transports_open"] == 1
        transport.close()
        await asyncio.sleep(0.01)
        os.close(w)
        assert gloop.stats()["transports_open"] == 0

    gloop.run_until_complete(main())


def test_inspect_includes_transports_and_servers(gloop, gl):
    async def main():
        server = await gloop.create_server(Echo, "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        data = gl.inspect(gloop)
        kinds = sorted(t["kind"] for t in data["transports"])
        assert kinds == ["tcp", "tcp"], data["transports"]
        assert [s["addresses"] for s in data["servers"]] == [[f"127.0.0.1:{server.sockets[0].getsockname()[1]}"]]
        w.close()
        server.close()
        await server.wait_closed()

    gloop.run_until_complete(main())
