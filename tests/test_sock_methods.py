"""Low-level socket methods (sock_*), add_reader/add_writer, loop.sendfile,
getaddrinfo/getnameinfo."""

import asyncio
import hashlib
import os
import socket
import tempfile
import time

import pytest

from loopsupport import digest, short_unix_path


def tcp_pair():
    """Two connected non-blocking TCP sockets (a, b)."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        a = socket.create_connection(lsock.getsockname())
        b, _ = lsock.accept()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a.setblocking(False)
    b.setblocking(False)
    return a, b


# ---------------------------------------------------------------------------
# sock_recv / sock_recv_into / sock_sendall
# ---------------------------------------------------------------------------

def test_sock_recv_and_sendall(loop, run):
    a, b = tcp_pair()

    async def main():
        with a, b:
            pending = asyncio.ensure_future(loop.sock_recv(b, 100))
            await asyncio.sleep(0.01)
            assert not pending.done()  # waits for data
            assert await loop.sock_sendall(a, b"hello") is None
            first = await asyncio.wait_for(pending, 5)
            a.shutdown(socket.SHUT_WR)
            eof = await asyncio.wait_for(loop.sock_recv(b, 100), 5)
            return first, eof

    assert run(main()) == (b"hello", b"")


def test_sock_recv_into(loop, run):
    a, b = tcp_pair()

    async def main():
        with a, b:
            buf = bytearray(b"." * 10)
            task = asyncio.ensure_future(loop.sock_recv_into(b, buf))
            await asyncio.sleep(0.01)
            assert not task.done()
            await loop.sock_sendall(a, b"abc")
            n = await asyncio.wait_for(task, 5)
            view = memoryview(bytearray(4))
            await loop.sock_sendall(a, b"0123456789")
            await asyncio.sleep(0.01)
            n2 = await loop.sock_recv_into(b, view[1:3])
            return n, bytes(buf), n2, bytes(view)

    n, buf, n2, view = run(main())
    assert n == 3
    assert buf == b"abc......."
    assert n2 == 2
    assert view == b"\x0001\x00"


def test_sock_sendall_large_payload(loop, run):
    data = os.urandom(16 * 1024 * 1024)
    a, b = tcp_pair()

    async def reader():
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = await loop.sock_recv(b, 1 << 16)
            if not chunk:
                return n, h.hexdigest()
            n += len(chunk)
            h.update(chunk)

    async def main():
        with a, b:
            r = asyncio.ensure_future(reader())
            await loop.sock_sendall(a, data)
            a.shutdown(socket.SHUT_WR)
            return await asyncio.wait_for(r, 20)

    n, digest = run(main())
    assert n == len(data)
    assert digest == hashlib.sha256(data).hexdigest()


def test_sock_sendall_blocks_until_peer_reads(loop, run):
    data = b"q" * (32 * 1024 * 1024)
    a, b = tcp_pair()

    async def main():
        with a, b:
            send = asyncio.ensure_future(loop.sock_sendall(a, data))
            await asyncio.sleep(0.1)
            assert not send.done()  # the kernel cannot hold 32 MiB
            got = 0
            while got < len(data):
                got += len(await loop.sock_recv(b, 1 << 20))
            await asyncio.wait_for(send, 5)
            return got

    assert run(main()) == len(data)


def test_cancelled_sock_recv_leaves_socket_usable(loop, run):
    a, b = tcp_pair()

    async def main():
        with a, b:
            for _ in range(3):
                t = asyncio.ensure_future(loop.sock_recv(b, 100))
                await asyncio.sleep(0.01)
                t.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await t
            await loop.sock_sendall(a, b"after cancel")
            got = await asyncio.wait_for(loop.sock_recv(b, 100), 5)
            # wait_for timeouts cancel too.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(loop.sock_recv(b, 100), 0.02)
            await loop.sock_sendall(a, b"again")
            got2 = await asyncio.wait_for(loop.sock_recv(b, 100), 5)
            return got, got2

    assert run(main()) == (b"after cancel", b"again")


def test_cancelled_sock_recv_into_then_recv(loop, run):
    a, b = tcp_pair()

    async def main():
        with a, b:
            t = asyncio.ensure_future(loop.sock_recv_into(b, bytearray(10)))
            await asyncio.sleep(0.01)
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
            await loop.sock_sendall(a, b"ok")
            return await asyncio.wait_for(loop.sock_recv(b, 10), 5)

    assert run(main()) == b"ok"


def test_sock_methods_need_nonblocking_socket_in_debug(loop, run):
    loop.set_debug(True)

    async def main():
        with socket.socket() as s:
            with pytest.raises(ValueError, match="the socket must be non-blocking"):
                await loop.sock_recv(s, 10)
            with pytest.raises(ValueError, match="the socket must be non-blocking"):
                await loop.sock_sendall(s, b"x")

    run(main())


# ---------------------------------------------------------------------------
# Datagram sock methods
# ---------------------------------------------------------------------------

def test_sock_sendto_recvfrom(loop, run):
    a, b = udp_pair()

    async def main():
        with a, b:
            pending = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
            await asyncio.sleep(0.01)
            assert not pending.done()
            n = await loop.sock_sendto(a, b"datagram", b.getsockname())
            data, addr = await asyncio.wait_for(pending, 5)
            return n, data, addr, a.getsockname()

    n, data, addr, a_addr = run(main())
    assert n == 8
    assert data == b"datagram"
    assert addr == a_addr


def test_sock_recvfrom_into(loop, run):
    a, b = udp_pair()

    async def main():
        with a, b:
            buf = bytearray(20)
            pending = asyncio.ensure_future(loop.sock_recvfrom_into(b, buf))
            await asyncio.sleep(0.01)
            assert not pending.done()
            await loop.sock_sendto(a, b"into buffer", b.getsockname())
            n, addr = await asyncio.wait_for(pending, 5)
            # nbytes limits the read
            buf2 = bytearray(20)
            await loop.sock_sendto(a, b"0123456789", b.getsockname())
            n2, addr2 = await asyncio.wait_for(loop.sock_recvfrom_into(b, buf2, 4), 5)
            return n, bytes(buf[:n]), addr, n2, bytes(buf2), a.getsockname()

    n, data, addr, n2, buf2, a_addr = run(main())
    assert (n, data, addr) == (11, b"into buffer", a_addr)
    assert n2 == 4
    assert buf2 == b"0123" + bytes(16)


def test_sock_sendto_many(loop, run):
    a, b = udp_pair()

    async def main():
        with a, b:
            got = []
            for i in range(50):
                await loop.sock_sendto(a, b"%d" % i, b.getsockname())
                data, _ = await asyncio.wait_for(loop.sock_recvfrom(b, 100), 5)
                got.append(data)
            return got

    assert run(main()) == [b"%d" % i for i in range(50)]


# ---------------------------------------------------------------------------
# sock_connect / sock_accept
# ---------------------------------------------------------------------------

def test_sock_connect_hostname_and_accept(loop, run):
    async def main():
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.setblocking(False)
        port = lsock.getsockname()[1]
        with lsock:
            accept = asyncio.ensure_future(loop.sock_accept(lsock))
            await asyncio.sleep(0.01)
            assert not accept.done()
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setblocking(False)
            with client:
                await asyncio.wait_for(loop.sock_connect(client, ("localhost", port)), 5)
                conn, addr = await asyncio.wait_for(accept, 5)
                with conn:
                    await loop.sock_sendall(client, b"hi")
                    got = await asyncio.wait_for(loop.sock_recv(conn, 10), 5)
                    return (client.getpeername(), port, addr, client.getsockname(),
                            conn.gettimeout(), got)

    peer, port, addr, local, timeout, got = run(main())
    assert peer == ("127.0.0.1", port)
    assert addr == local
    assert timeout == 0  # sock_accept hands out a non-blocking socket
    assert got == b"hi"


def test_sock_connect_refused(loop, run):
    async def main():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            addr = probe.getsockname()
        s = socket.socket()
        s.setblocking(False)
        with s:
            with pytest.raises(ConnectionRefusedError):
                await asyncio.wait_for(loop.sock_connect(s, addr), 5)

    run(main())


def test_sock_connect_unix(loop, run):
    path = short_unix_path()

    async def main():
        lsock = socket.socket(socket.AF_UNIX)
        lsock.bind(path)
        lsock.listen(1)
        lsock.setblocking(False)
        with lsock:
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            with client:
                accept = asyncio.ensure_future(loop.sock_accept(lsock))
                await loop.sock_connect(client, path)
                conn, _ = await asyncio.wait_for(accept, 5)
                with conn:
                    await loop.sock_sendall(conn, b"unix")
                    return await asyncio.wait_for(loop.sock_recv(client, 10), 5)

    assert run(main()) == b"unix"


def test_cancelled_sock_accept_leaves_socket_usable(loop, run):
    async def main():
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.setblocking(False)
        with lsock:
            t = asyncio.ensure_future(loop.sock_accept(lsock))
            await asyncio.sleep(0.01)
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
            client = socket.create_connection(lsock.getsockname())
            with client:
                conn, _ = await asyncio.wait_for(loop.sock_accept(lsock), 5)
                conn.close()
        return t.cancelled()

    assert run(main()) is True


# ---------------------------------------------------------------------------
# sock_sendfile
# ---------------------------------------------------------------------------

@pytest.fixture
def data_file():
    data = os.urandom(3 * 1024 * 1024 + 123)
    with tempfile.NamedTemporaryFile(prefix="gl-sendfile-") as f:
        f.write(data)
        f.flush()
        with open(f.name, "rb") as rf:
            yield rf, data


@pytest.mark.parametrize("fallback", [True, False])
def test_sock_sendfile(loop, run, data_file, fallback):
    f, data = data_file
    a, b = tcp_pair()

    async def reader():
        chunks = []
        while True:
            c = await loop.sock_recv(b, 1 << 18)
            if not c:
                return b"".join(chunks)
            chunks.append(c)

    async def main():
        with a, b:
            r = asyncio.ensure_future(reader())
            n = await loop.sock_sendfile(a, f, fallback=fallback)
            pos = f.tell()
            n2 = await loop.sock_sendfile(a, f, offset=10, count=1000, fallback=fallback)
            pos2 = f.tell()
            a.shutdown(socket.SHUT_WR)
            got = await asyncio.wait_for(r, 20)
            return n, pos, n2, pos2, got

    n, pos, n2, pos2, got = run(main())
    assert n == len(data)
    assert pos == len(data)
    assert n2 == 1000
    assert pos2 == 1010
    assert digest(got) == digest(data + data[10:1010])


# ---------------------------------------------------------------------------
# add_reader / add_writer
# ---------------------------------------------------------------------------

def test_add_reader_is_level_triggered(loop, run):
    a, b = tcp_pair()
    calls = []

    async def main():
        with a, b:
            def on_readable(tag):
                calls.append(tag)  # never reads: stays readable

            loop.add_reader(b.fileno(), on_readable, "r")
            await asyncio.sleep(0.02)
            assert calls == []  # nothing to read yet
            a.send(b"x")
            for _ in range(200):
                if len(calls) >= 5:
                    break
                await asyncio.sleep(0.005)
            assert loop.remove_reader(b.fileno()) is True
            n = len(calls)
            await asyncio.sleep(0.02)
            assert len(calls) == n
            assert loop.remove_reader(b.fileno()) is False
            return b.recv(10)

    assert run(main()) == b"x"
    assert len(calls) >= 5 and set(calls) == {"r"}


def test_add_reader_replaces_callback_and_drains(loop, run):
    a, b = tcp_pair()
    got = []

    async def main():
        with a, b:
            loop.add_reader(b, lambda: got.append(("old",)))
            done = loop.create_future()

            def reader():
                data = b.recv(100)
                got.append(("new", data))
                if data == b"end":
                    done.set_result(None)

            loop.add_reader(b, reader)  # replaces the first one (a socket object works too)
            a.send(b"one")
            await asyncio.sleep(0.02)
            a.send(b"end")
            await asyncio.wait_for(done, 5)
            assert loop.remove_reader(b) is True

    run(main())
    assert ("old",) not in got
    assert b"".join(d for _, d in got) == b"oneend"


def test_add_writer_and_remove_writer(loop, run):
    a, b = tcp_pair()
    calls = []

    async def main():
        with a, b:
            loop.add_writer(a.fileno(), calls.append, 1)
            for _ in range(200):
                if len(calls) >= 3:
                    break
                await asyncio.sleep(0.005)
            assert loop.remove_writer(a.fileno()) is True
            n = len(calls)
            await asyncio.sleep(0.02)
            assert len(calls) == n
            assert loop.remove_writer(a.fileno()) is False
            # A full socket is not writable: fill it and watch nothing happen.
            try:
                while True:
                    a.send(b"f" * 65536)
            except BlockingIOError:
                pass
            full = []
            loop.add_writer(a.fileno(), full.append, 1)
            await asyncio.sleep(0.05)
            n_full = len(full)
            # Drain the peer: writable again.
            try:
                while True:
                    b.recv(1 << 20)
            except BlockingIOError:
                pass
            for _ in range(200):
                if len(full) > n_full:
                    break
                await asyncio.sleep(0.005)
            assert loop.remove_writer(a.fileno()) is True
            return n_full, len(full)

    n_full, n_after = run(main())
    assert len(calls) >= 3 and set(calls) == {1}
    assert n_full == 0
    assert n_after >= 1


def test_reader_and_writer_on_same_fd(loop, run):
    a, b = tcp_pair()
    events = []

    async def main():
        with a, b:
            loop.add_writer(b.fileno(), lambda: events.append("w"))
            loop.add_reader(b.fileno(), lambda: events.append("r"))
            await asyncio.sleep(0.02)
            assert "w" in events and "r" not in events
            assert loop.remove_writer(b.fileno()) is True
            events.clear()
            a.send(b"data")
            await asyncio.sleep(0.02)
            assert "r" in events and "w" not in events
            assert loop.remove_reader(b.fileno()) is True

    run(main())


def test_add_reader_on_transport_fd_raises(loop, run):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        tr, pr = await loop.create_connection(asyncio.Protocol,
                                              *server.sockets[0].getsockname())
        fd = tr.get_extra_info("socket").fileno()
        errors = []
        for method, args in ((loop.add_reader, (fd, print)), (loop.add_writer, (fd, print)),
                             (loop.remove_reader, (fd,)), (loop.remove_writer, (fd,))):
            with pytest.raises(RuntimeError) as ei:
                method(*args)
            errors.append(str(ei.value))
        tr.write(b"still works")
        tr.close()
        server.close()
        await server.wait_closed()
        return fd, tr, errors

    fd, tr, errors = run(main())
    assert len(errors) == 4
    for msg in errors:
        assert msg.startswith(f"File descriptor {fd!r} is used by transport ")


def test_add_reader_invalid_fd(loop):
    with pytest.raises(ValueError):
        loop.add_reader(-1, print)
    with pytest.raises((TypeError, ValueError)):
        loop.add_reader("nope", print)


# ---------------------------------------------------------------------------
# loop.sendfile on a transport
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_loop_sendfile_on_transport(loop, run, data_file, kind):
    f, data = data_file

    class Sink(asyncio.Protocol):
        def __init__(self):
            self.data = bytearray()
            self.done = loop.create_future()

        def data_received(self, d):
            self.data += d

        def connection_lost(self, exc):
            self.done.set_result(bytes(self.data))

    sinks = []

    def factory():
        sinks.append(Sink())
        return sinks[-1]

    async def main():
        if kind == "tcp":
            server = await loop.create_server(factory, "127.0.0.1", 0)
            tr, pr = await loop.create_connection(asyncio.Protocol,
                                                  *server.sockets[0].getsockname())
        else:
            path = short_unix_path()
            server = await loop.create_unix_server(factory, path)
            tr, pr = await loop.create_unix_connection(asyncio.Protocol, path)
        tr.write(b"header:")
        n = await loop.sendfile(tr, f)
        n2 = await loop.sendfile(tr, f, 5, 100)
        tr.write(b":trailer")
        tr.close()
        while not sinks:
            await asyncio.sleep(0.001)
        got = await asyncio.wait_for(sinks[0].done, 20)
        server.close()
        await server.wait_closed()
        return n, n2, got, f.tell()

    n, n2, got, pos = run(main())
    assert n == len(data)
    assert n2 == 100
    assert pos == 105
    assert digest(got) == digest(b"header:" + data + data[5:105] + b":trailer")


def test_loop_sendfile_without_fallback(loop, run, data_file):
    # asyncio's socket transports send files natively (os.sendfile); a loop
    # whose transport cannot must raise SendfileNotAvailableError here.
    f, data = data_file

    async def main():
        got = bytearray()
        done = loop.create_future()

        class Sink(asyncio.Protocol):
            def data_received(self, d):
                got.extend(d)

            def connection_lost(self, exc):
                done.set_result(None)

        server = await loop.create_server(Sink, "127.0.0.1", 0)
        tr, pr = await loop.create_connection(asyncio.Protocol,
                                              *server.sockets[0].getsockname())
        try:
            n = await loop.sendfile(tr, f, fallback=False)
        finally:
            tr.close()
        await asyncio.wait_for(done, 20)
        server.close()
        await server.wait_closed()
        return n, bytes(got)

    n, got = run(main())
    assert n == len(data)
    assert digest(got) == digest(data)


def test_loop_sendfile_closing_transport(loop, run, data_file):
    f, _ = data_file

    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        tr, pr = await loop.create_connection(asyncio.Protocol,
                                              *server.sockets[0].getsockname())
        tr.close()
        with pytest.raises(RuntimeError, match="Transport is closing"):
            await loop.sendfile(tr, f)
        server.close()
        await server.wait_closed()

    run(main())


# ---------------------------------------------------------------------------
# DNS
# ---------------------------------------------------------------------------

def test_getaddrinfo_matches_socket_module(loop, run):
    async def main():
        return (
            await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM),
            await loop.getaddrinfo("127.0.0.1", "http", family=socket.AF_INET,
                                   proto=socket.IPPROTO_TCP),
            await loop.getaddrinfo(None, 0, flags=socket.AI_PASSIVE, type=socket.SOCK_DGRAM),
        )

    r1, r2, r3 = run(main())
    assert r1 == socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
    assert r2 == socket.getaddrinfo("127.0.0.1", "http", family=socket.AF_INET,
                                    proto=socket.IPPROTO_TCP)
    assert r3 == socket.getaddrinfo(None, 0, flags=socket.AI_PASSIVE, type=socket.SOCK_DGRAM)
    assert r2[0][4] == ("127.0.0.1", 80)


def test_getaddrinfo_errors(loop, run):
    async def main():
        with pytest.raises(socket.gaierror) as ei:
            await loop.getaddrinfo("no-such-host.invalid", 80)
        return ei.value

    exc = run(main())
    assert exc.errno in (socket.EAI_NONAME, socket.EAI_AGAIN, getattr(socket, "EAI_NODATA", -5))


def test_getnameinfo(loop, run):
    async def main():
        return (await loop.getnameinfo(("127.0.0.1", 80)),
                await loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV))

    r1, r2 = run(main())
    assert r1 == socket.getnameinfo(("127.0.0.1", 80), 0)
    assert r2 == ("127.0.0.1", "80")


@pytest.mark.parametrize("which", ["getaddrinfo", "getnameinfo"])
def test_dns_does_not_block_loop(loop, run, monkeypatch, which):
    real = getattr(socket, which)

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, which, slow)
    ticks = []

    def tick():
        ticks.append(loop.time())
        loop.call_later(0.01, tick)

    async def main():
        loop.call_soon(tick)
        t0 = loop.time()
        if which == "getaddrinfo":
            res = await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        else:
            res = await loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST)
        return res, loop.time() - t0, len(ticks)

    res, elapsed, n = run(main())
    assert res
    assert elapsed >= 0.25
    assert n >= 10  # the loop kept running timers while the lookup blocked a thread


@pytest.fixture
def big_file():
    data = os.urandom(16 * 1024 * 1024)
    with tempfile.NamedTemporaryFile(prefix="gl-sendfile-") as f:
        f.write(data)
        f.flush()
        with open(f.name, "rb") as rf:
            yield rf, data


async def _transport_to_plain_peer(loop):
    lsock = socket.create_server(("127.0.0.1", 0))
    lost = loop.create_future()

    class P(asyncio.Protocol):
        def connection_lost(self, exc):
            lost.set_result(exc)

    tr, pr = await loop.create_connection(P, *lsock.getsockname())
    peer, _ = lsock.accept()
    lsock.close()
    return tr, peer, lost


def _read_all(sock):
    chunks = []
    while True:
        try:
            c = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not c:
            break
        chunks.append(c)
    return b"".join(chunks)


def test_loop_sendfile_waits_for_buffered_writes(loop, run, big_file):
    f, data = big_file
    head = os.urandom(8 * 1024 * 1024)

    async def main():
        tr, peer, lost = await _transport_to_plain_peer(loop)
        tr.write(head)
        assert tr.get_write_buffer_size() > 0  # the peer has not read yet
        reader = loop.run_in_executor(None, _read_all, peer)
        n = await asyncio.wait_for(loop.sendfile(tr, f, 0, 1 << 20), 20)
        tr.write(b"tail")
        tr.close()
        got = await asyncio.wait_for(reader, 20)
        await lost
        peer.close()
        return n, got

    n, got = run(main())
    assert n == 1 << 20
    assert digest(got) == digest(head + data[:1 << 20] + b"tail")


def test_write_during_sendfile_raises(loop, run, big_file):
    f, data = big_file

    async def main():
        tr, peer, lost = await _transport_to_plain_peer(loop)
        send = asyncio.ensure_future(loop.sendfile(tr, f))
        await asyncio.sleep(0.1)
        assert not send.done()  # 16 MiB do not fit in the kernel's buffers
        with pytest.raises(RuntimeError) as ei:
            tr.write(b"in the middle")
        reader = loop.run_in_executor(None, _read_all, peer)
        n = await asyncio.wait_for(send, 20)
        tr.write(b"after")
        tr.close()
        got = await asyncio.wait_for(reader, 20)
        await lost
        peer.close()
        return str(ei.value), n, got

    msg, n, got = run(main())
    assert msg == "unable to write; sendfile is in progress"
    assert n == len(data)
    assert digest(got) == digest(data + b"after")


def test_loop_sendfile_peer_reset_raises(loop, run, big_file):
    f, data = big_file

    async def main():
        tr, peer, lost = await _transport_to_plain_peer(loop)
        send = asyncio.ensure_future(loop.sendfile(tr, f))
        await asyncio.sleep(0.1)
        assert not send.done()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()
        with pytest.raises(OSError) as ei:
            await asyncio.wait_for(send, 5)
        tr.abort()
        await asyncio.wait_for(lost, 5)
        return ei.value

    exc = run(main())
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), repr(exc)
