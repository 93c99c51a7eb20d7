"""create_connection, create_server, create_unix_connection/_server,
connect_accepted_socket and the Server object."""

import asyncio
import errno
import os
import socket
import stat

import pytest

from loopsupport import (closed_tcp_port, ipv6_loopback_works, recv_until_eof,
                         short_unix_path)

IPV6 = ipv6_loopback_works()


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Collect(asyncio.Protocol):
    """Client side: collects what arrives until EOF/connection_lost."""

    def __init__(self, loop):
        self.data = bytearray()
        self.made = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        self.data += data

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class Tracking(asyncio.Protocol):
    """Server side: remembers every connection it served."""

    def __init__(self, made_list):
        self.made_list = made_list

    def connection_made(self, transport):
        self.transport = transport
        self.made_list.append(transport)

    def data_received(self, data):
        self.transport.write(data)


async def echo_once(loop, host, port, payload=b"ping", family=0):
    r, w = await asyncio.open_connection(host, port, family=family)
    try:
        w.write(payload)
        await w.drain()
        return await asyncio.wait_for(r.readexactly(len(payload)), 5)
    finally:
        w.close()
        await w.wait_closed()


async def refused(host, port, family=socket.AF_INET):
    def attempt():
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            try:
                s.connect((host, port))
            except ConnectionRefusedError:
                return True
            return False
    return await asyncio.get_running_loop().run_in_executor(None, attempt)


# ---------------------------------------------------------------------------
# create_connection
# ---------------------------------------------------------------------------

def test_create_connection_host_port(loop, run):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: Collect(loop), "127.0.0.1", port)
        tr.write(b"hello")
        for _ in range(500):
            if len(pr.data) >= 5:
                break
            await asyncio.sleep(0.01)
        peer = tr.get_extra_info("peername")
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()
        return bytes(pr.data), peer, port

    data, peer, port = run(main())
    assert data == b"hello"
    assert peer == ("127.0.0.1", port)


def test_create_connection_localhost_name(loop, run):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: Collect(loop), "localhost", port,
                                              family=socket.AF_INET)
        peer = tr.get_extra_info("peername")
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()
        return peer, port

    peer, port = run(main())
    assert peer == ("127.0.0.1", port)


def _fake_resolver(loop, addrs):
    calls = []

    async def getaddrinfo(host, port, *, family=0, type=0, proto=0, flags=0):
        calls.append((host, port))
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", a)
                for a in addrs]

    loop.getaddrinfo = getaddrinfo
    return calls


@pytest.mark.parametrize("delay", [None, 0.05], ids=["sequential", "happy_eyeballs"])
def test_create_connection_tries_addresses_in_turn(loop, run, delay):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        good = server.sockets[0].getsockname()
        bad1 = ("127.0.0.1", closed_tcp_port())
        bad2 = ("127.0.0.1", closed_tcp_port())
        calls = _fake_resolver(loop, [bad1, bad2, good])
        tr, pr = await loop.create_connection(
            lambda: Collect(loop), "several.example", 4242,
            happy_eyeballs_delay=delay)
        peer = tr.get_extra_info("peername")
        tr.write(b"x")
        for _ in range(500):
            if pr.data:
                break
            await asyncio.sleep(0.01)
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()
        return peer, good, calls, bytes(pr.data)

    peer, good, calls, data = run(main())
    assert peer == good
    assert calls[0] == ("several.example", 4242)
    assert data == b"x"


def test_create_connection_all_addresses_fail(loop, run):
    async def main():
        bad1 = ("127.0.0.1", closed_tcp_port())
        bad2 = ("127.0.0.1", closed_tcp_port())
        _fake_resolver(loop, [bad1, bad2])
        with pytest.raises(OSError) as ei:
            await loop.create_connection(asyncio.Protocol, "several.example", 1)
        return ei.value, bad1, bad2

    exc, bad1, bad2 = run(main())
    assert str(exc).startswith("Multiple exceptions: ")
    assert str(bad1) in str(exc) and str(bad2) in str(exc)


def test_create_connection_empty_resolution(loop, run):
    async def main():
        _fake_resolver(loop, [])
        with pytest.raises(OSError) as ei:
            await loop.create_connection(asyncio.Protocol, "nothing.example", 1)
        return str(ei.value)

    assert run(main()) == "getaddrinfo() returned empty list"


def test_create_connection_refused(loop, run):
    async def main():
        with pytest.raises(ConnectionRefusedError) as ei:
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", closed_tcp_port())
        return ei.value

    exc = run(main())
    assert exc.errno == errno.ECONNREFUSED


def test_create_connection_local_addr(loop, run):
    seen = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            seen.append(transport.get_extra_info("peername"))
            transport.close()

    async def main():
        server = await loop.create_server(P, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        local_port = closed_tcp_port()
        tr, pr = await loop.create_connection(
            lambda: Collect(loop), "127.0.0.1", port, local_addr=("127.0.0.1", local_port))
        sockname = tr.get_extra_info("sockname")
        await asyncio.wait_for(pr.lost, 5)
        server.close()
        await server.wait_closed()
        return sockname, local_port

    sockname, local_port = run(main())
    assert sockname == ("127.0.0.1", local_port)
    assert seen == [("127.0.0.1", local_port)]


def test_create_connection_local_addr_in_use(loop, run):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            with pytest.raises(OSError) as ei:
                await loop.create_connection(asyncio.Protocol, "127.0.0.1", port,
                                             local_addr=busy.getsockname())
        server.close()
        await server.wait_closed()
        return ei.value

    exc = run(main())
    assert exc.errno == errno.EADDRINUSE


def test_create_connection_sock(loop, run):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        sock = socket.create_connection(addr)
        sock.setblocking(False)
        fd = sock.fileno()
        tr, pr = await loop.create_connection(lambda: Collect(loop), sock=sock)
        tr.write(b"via sock")
        for _ in range(500):
            if len(pr.data) >= 8:
                break
            await asyncio.sleep(0.01)
        info = (tr.get_extra_info("socket").fileno(), tr.get_extra_info("peername"))
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()
        return fd, addr, info, bytes(pr.data), sock

    fd, addr, info, data, sock = run(main())
    assert info == (fd, addr)
    assert data == b"via sock"
    assert sock.fileno() == -1  # the transport closed the socket it was given


def test_create_connection_argument_errors(loop, run):
    async def main():
        msgs = {}
        with pytest.raises(ValueError) as ei:
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1,
                                         server_hostname="example.com")
        msgs["server_hostname"] = str(ei.value)
        with pytest.raises(ValueError) as ei:
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1,
                                         ssl_handshake_timeout=1.0)
        msgs["ssl_handshake_timeout"] = str(ei.value)
        with pytest.raises(ValueError) as ei:
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1,
                                         ssl_shutdown_timeout=1.0)
        msgs["ssl_shutdown_timeout"] = str(ei.value)
        with socket.socket() as s:
            with pytest.raises(ValueError) as ei:
                await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, sock=s)
        msgs["host_and_sock"] = str(ei.value)
        with pytest.raises(ValueError) as ei:
            await loop.create_connection(asyncio.Protocol)
        msgs["nothing"] = str(ei.value)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            with pytest.raises(ValueError) as ei:
                await loop.create_connection(asyncio.Protocol, sock=s)
        msgs["dgram_sock"] = str(ei.value)
        return msgs

    msgs = run(main())
    assert msgs["server_hostname"] == "server_hostname is only meaningful with ssl"
    assert msgs["ssl_handshake_timeout"] == "ssl_handshake_timeout is only meaningful with ssl"
    assert msgs["ssl_shutdown_timeout"] == "ssl_shutdown_timeout is only meaningful with ssl"
    assert msgs["host_and_sock"] == "host/port and sock can not be specified at the same time"
    assert msgs["nothing"] == "host and port was not specified and no sock specified"
    assert msgs["dgram_sock"].startswith("A Stream Socket was expected")


# ---------------------------------------------------------------------------
# create_server and Server
# ---------------------------------------------------------------------------

def test_create_server_port_zero_and_server_api(loop, run):
    async def main():
        made = []
        server = await loop.create_server(lambda: Tracking(made), "127.0.0.1", 0)
        socks = server.sockets
        assert len(socks) == 1
        host, port = socks[0].getsockname()
        assert host == "127.0.0.1" and port != 0
        assert socks[0].family == socket.AF_INET
        assert server.get_loop() is loop
        assert server.is_serving() is True
        assert await echo_once(loop, host, port) == b"ping"
        assert len(made) == 1
        server.close()
        assert server.is_serving() is False
        assert server.sockets == ()
        await asyncio.wait_for(server.wait_closed(), 5)
        assert await refused(host, port)
        server.close()  # twice is fine
        return made

    made = run(main())
    assert len(made) == 1


def test_create_server_many_clients(loop, run):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()
        payloads = [os.urandom(1 + i * 997 % 50000) for i in range(50)]
        results = await asyncio.gather(*(echo_once(loop, host, port, p) for p in payloads))
        server.close()
        await server.wait_closed()
        return payloads, results

    payloads, results = run(main())
    assert results == payloads


def test_create_server_several_hosts(loop, run):
    if not IPV6:
        pytest.skip("IPv6 loopback (::1) does not work on this machine")

    async def main():
        made = []
        server = await loop.create_server(lambda: Tracking(made), ["127.0.0.1", "::1"], 0)
        families = sorted(s.family for s in server.sockets)
        addrs = [s.getsockname() for s in server.sockets]
        for s in server.sockets:
            assert await echo_once(loop, s.getsockname()[0], s.getsockname()[1]) == b"ping"
        server.close()
        await server.wait_closed()
        return families, addrs, made

    families, addrs, made = run(main())
    assert families == sorted([socket.AF_INET, socket.AF_INET6])
    assert {a[0] for a in addrs} == {"127.0.0.1", "::1"}
    assert len(made) == 2


def test_create_server_several_hosts_ipv4_only(loop, run):
    # Several hosts without IPv6: the same address twice fails, two different
    # loopback addresses work (127.0.0.0/8 is all loopback on Linux).
    async def main():
        server = await loop.create_server(Echo, ["127.0.0.1", "127.0.0.2"], 0,
                                          reuse_address=True)
        addrs = sorted(s.getsockname() for s in server.sockets)
        for host, port in addrs:
            assert await echo_once(loop, host, port) == b"ping"
        server.close()
        await server.wait_closed()
        return addrs

    addrs = run(main())
    assert [a[0] for a in addrs] == ["127.0.0.1", "127.0.0.2"]


def test_create_server_address_in_use(loop, run):
    async def main():
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            with pytest.raises(OSError) as ei:
                await loop.create_server(Echo, "127.0.0.1", busy.getsockname()[1],
                                         reuse_address=False)
        return ei.value

    exc = run(main())
    assert exc.errno == errno.EADDRINUSE
    assert "error while attempting to bind on address" in str(exc)


def test_create_server_reuse_address_default(loop, run):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        v = server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        server.close()
        await server.wait_closed()
        return v

    assert run(main()) != 0


def test_create_server_reuse_port(loop, run):
    async def main():
        made1, made2 = [], []
        s1 = await loop.create_server(lambda: Tracking(made1), "127.0.0.1", 0, reuse_port=True)
        port = s1.sockets[0].getsockname()[1]
        s2 = await loop.create_server(lambda: Tracking(made2), "127.0.0.1", port, reuse_port=True)
        opts = [s.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in (s1, s2)]
        for _ in range(20):
            assert await echo_once(loop, "127.0.0.1", port) == b"ping"
        s1.close()
        s2.close()
        await s1.wait_closed()
        await s2.wait_closed()
        return opts, made1, made2

    opts, made1, made2 = run(main())
    assert all(o != 0 for o in opts)
    assert len(made1) + len(made2) == 20


def test_create_server_backlog(loop, run):
    async def main():
        made = []
        server = await loop.create_server(lambda: Tracking(made), "127.0.0.1", 0,
                                          backlog=1, start_serving=False)
        host, port = server.sockets[0].getsockname()
        await server.start_serving()
        # One at a time: a full backlog drops SYNs, and their retry takes 1 s.
        results = [await echo_once(loop, host, port, b"%d" % i) for i in range(20)]
        server.close()
        await server.wait_closed()
        return results, made

    results, made = run(main())
    assert results == [b"%d" % i for i in range(20)]
    assert len(made) == 20


def test_create_server_start_serving_false(loop, run):
    async def main():
        made = []
        server = await loop.create_server(lambda: Tracking(made), "127.0.0.1", 0,
                                          start_serving=False)
        host, port = server.sockets[0].getsockname()
        assert server.is_serving() is False
        # Not listening yet: asyncio calls listen() when serving starts.
        assert await refused(host, port)
        await server.start_serving()
        assert server.is_serving() is True
        await server.start_serving()  # again: no-op
        assert await echo_once(loop, host, port) == b"ping"
        server.close()
        await server.wait_closed()
        return made

    assert len(run(main())) == 1


def test_serve_forever(loop, run):
    async def main():
        made = []
        server = await loop.create_server(lambda: Tracking(made), "127.0.0.1", 0,
                                          start_serving=False)
        host, port = server.sockets[0].getsockname()
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0.01)
        assert server.is_serving() is True
        assert await echo_once(loop, host, port) == b"ping"
        with pytest.raises(RuntimeError, match="already being awaited"):
            await server.serve_forever()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert server.is_serving() is False
        assert await refused(host, port)
        return made

    assert len(run(main())) == 1


def test_server_async_with(loop, run):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()
        async with server as s:
            assert s is server
            assert server.is_serving()
            assert await echo_once(loop, host, port) == b"ping"
        assert not server.is_serving()
        assert await refused(host, port)

    run(main())


def test_server_close_keeps_existing_connections(loop, run):
    async def main():
        made = []
        server = await loop.create_server(lambda: Tracking(made), "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()
        r, w = await asyncio.open_connection(host, port)
        w.write(b"a")
        assert await r.readexactly(1) == b"a"
        server.close()
        await asyncio.sleep(0.01)
        # Listening stopped, the accepted connection still works.
        w.write(b"b")
        assert await asyncio.wait_for(r.readexactly(1), 5) == b"b"
        w.close()
        await w.wait_closed()
        await server.wait_closed()

    run(main())


def test_create_server_sock(loop, run):
    async def main():
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        server = await loop.create_server(Echo, sock=lsock)
        assert [s.fileno() for s in server.sockets] == [lsock.fileno()]
        host, port = lsock.getsockname()
        assert await echo_once(loop, host, port) == b"ping"
        server.close()
        await server.wait_closed()
        return lsock

    lsock = run(main())
    assert lsock.fileno() == -1


def test_create_server_argument_errors(loop, run):
    async def main():
        msgs = {}
        with pytest.raises(ValueError) as ei:
            await loop.create_server(Echo, "127.0.0.1", 0, ssl_handshake_timeout=1.0)
        msgs["hs"] = str(ei.value)
        with socket.socket() as s:
            with pytest.raises(ValueError) as ei:
                await loop.create_server(Echo, "127.0.0.1", 0, sock=s)
        msgs["both"] = str(ei.value)
        with pytest.raises(ValueError) as ei:
            await loop.create_server(Echo)
        msgs["none"] = str(ei.value)
        return msgs

    msgs = run(main())
    assert msgs["hs"] == "ssl_handshake_timeout is only meaningful with ssl"
    assert msgs["both"] == "host/port and sock can not be specified at the same time"
    assert msgs["none"] == "Neither host/port nor sock were specified"


# ---------------------------------------------------------------------------
# Unix servers
# ---------------------------------------------------------------------------

async def unix_echo_once(path, payload=b"ping"):
    r, w = await asyncio.open_unix_connection(path)
    try:
        w.write(payload)
        await w.drain()
        return await asyncio.wait_for(r.readexactly(len(payload)), 5)
    finally:
        w.close()
        await w.wait_closed()


def test_create_unix_server_path(loop, run):
    path = short_unix_path()

    async def main():
        made = []
        server = await loop.create_unix_server(lambda: Tracking(made), path)
        assert server.sockets[0].getsockname() == path
        assert server.sockets[0].family == socket.AF_UNIX
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert await unix_echo_once(path) == b"ping"
        tr, pr = await loop.create_unix_connection(lambda: Collect(loop), path)
        peer = tr.get_extra_info("peername")
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()
        return made, peer

    made, peer = run(main())
    assert len(made) == 2
    assert peer == path


def test_create_unix_server_removes_stale_socket_file(loop, run):
    path = short_unix_path()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # leaves the socket file behind
    assert os.path.exists(path)

    async def main():
        server = await loop.create_unix_server(Echo, path)
        out = await unix_echo_once(path)
        server.close()
        await server.wait_closed()
        return out

    assert run(main()) == b"ping"


def test_create_unix_server_refuses_regular_file(loop, run):
    path = short_unix_path()
    with open(path, "w") as f:
        f.write("not a socket")

    async def main():
        with pytest.raises(OSError) as ei:
            await loop.create_unix_server(Echo, path)
        return ei.value

    exc = run(main())
    assert exc.errno == errno.EADDRINUSE
    assert str(exc) == f"[Errno {errno.EADDRINUSE}] Address {path!r} is already in use"
    with open(path) as f:
        assert f.read() == "not a socket"


def test_create_unix_server_abstract_namespace(loop, run):
    name = "\0glassloop-test-%d-%d" % (os.getpid(), id(loop))

    async def main():
        made = []
        server = await loop.create_unix_server(lambda: Tracking(made), name)
        sockname = server.sockets[0].getsockname()
        out = await unix_echo_once(name)
        tr, pr = await loop.create_unix_connection(lambda: Collect(loop), name)
        peer = tr.get_extra_info("peername")
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()
        return sockname, out, peer, made

    sockname, out, peer, made = run(main())
    assert sockname == name.encode()
    assert peer == name.encode()
    assert out == b"ping"
    assert len(made) == 2


def test_create_unix_server_start_serving_false(loop, run):
    path = short_unix_path()

    async def main():
        server = await loop.create_unix_server(Echo, path, start_serving=False)
        assert not server.is_serving()
        await server.start_serving()
        assert server.is_serving()
        out = await unix_echo_once(path)
        async with server:
            pass
        assert not server.is_serving()
        return out

    assert run(main()) == b"ping"


def test_create_unix_connection_missing_path(loop, run):
    async def main():
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_connection(asyncio.Protocol, short_unix_path("missing"))
        with pytest.raises(ValueError):
            await loop.create_unix_connection(asyncio.Protocol, server_hostname="x")

    run(main())


# ---------------------------------------------------------------------------
# connect_accepted_socket
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_connect_accepted_socket(loop, run, kind):
    async def main():
        if kind == "tcp":
            lsock = socket.create_server(("127.0.0.1", 0))
            client = socket.create_connection(lsock.getsockname())
        else:
            path = short_unix_path()
            lsock = socket.socket(socket.AF_UNIX)
            lsock.bind(path)
            lsock.listen(1)
            client = socket.socket(socket.AF_UNIX)
            client.connect(path)
        conn, _ = lsock.accept()
        lsock.close()
        conn.setblocking(False)
        tr, pr = await loop.connect_accepted_socket(lambda: Collect(loop), conn)
        assert pr.made.done()
        assert isinstance(tr, asyncio.Transport)
        tr.write(b"from server")
        client.sendall(b"from client")
        client.shutdown(socket.SHUT_WR)
        tr.write_eof()
        got = await loop.run_in_executor(None, recv_until_eof, client)
        exc = await asyncio.wait_for(pr.lost, 5)
        client.close()
        return got, bytes(pr.data), exc

    got, data, exc = run(main())
    assert got == b"from server"
    assert data == b"from client"
    assert exc is None


def test_connect_accepted_socket_rejects_dgram(loop, run):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            with pytest.raises(ValueError, match="A Stream Socket was expected"):
                await loop.connect_accepted_socket(asyncio.Protocol, s)

    run(main())


def test_burst_of_connections_all_accepted(loop, run):
    # Connections queued in the backlog before the loop looks are all
    # accepted, and each gets its own protocol and transport.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))

    async def main():
        made = []
        server = await loop.create_server(lambda: Tracking(made), sock=lsock, backlog=100)
        addr = lsock.getsockname()
        clients = [socket.create_connection(addr) for _ in range(60)]  # blocking, no loop turn
        for i, c in enumerate(clients):
            c.sendall(b"%02d" % i)
        for _ in range(500):
            if len(made) == len(clients):
                break
            await asyncio.sleep(0.01)
        replies = []
        for i, c in enumerate(clients):
            c.settimeout(5)
            replies.append(await loop.run_in_executor(None, c.recv, 10))
            c.close()
        server.close()
        await server.wait_closed()
        return made, replies

    made, replies = run(main())
    assert len(made) == 60
    assert len({id(t) for t in made}) == 60
    assert replies == [b"%02d" % i for i in range(60)]
