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


# ---------------------------------------------------------------------------
# Every sock_* method: ready at once (fast path) and after waiting (slow path)
# ---------------------------------------------------------------------------

def unix_dgram_pair():
    """A bound Unix datagram socket and a sender (non-blocking), and the path."""
    path = short_unix_path()
    b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.bind(path)
    a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setblocking(False)
    return a, b, path


def fill_unix_dgram(a, path):
    """Send datagrams to `path` until the receiver's queue is full."""
    sent = 0
    while True:
        try:
            a.sendto(b"filler", path)
        except BlockingIOError:
            return sent
        sent += 1


async def wait_pending(task):
    await asyncio.sleep(0.02)
    assert not task.done(), "should be waiting for the socket"


@pytest.mark.parametrize("ready", [True, False], ids=["fast", "slow"])
def test_sock_recv_paths(loop, run, ready):
    a, b = tcp_pair()

    async def main():
        with a, b:
            if ready:
                a.send(b"early")
                await asyncio.sleep(0.01)
                return await loop.sock_recv(b, 100)
            t = asyncio.ensure_future(loop.sock_recv(b, 100))
            await wait_pending(t)
            a.send(b"late")
            return await asyncio.wait_for(t, 5)

    assert run(main()) == (b"early" if ready else b"late")


def test_large_sock_recv_results_stay_intact(loop, run):
    # Large reads (64 KiB, which glassloop makes straight into a bytes object it
    # may keep for the next read when a try finds nothing): every result is its
    # own object, with what was sent, unchanged by later reads on any socket.
    size = 65536
    pairs = [tcp_pair() for _ in range(2)]

    async def main():
        got = []
        try:
            for i in range(6):
                a, b = pairs[i % 2]
                payload = bytes([i + 1]) * (size if i % 3 == 0 else 1000 + i)
                t = asyncio.ensure_future(loop.sock_recv(b, size))
                await wait_pending(t)  # the first try found nothing
                await loop.sock_sendall(a, payload)
                data = await asyncio.wait_for(t, 5)
                while len(data) < len(payload):
                    data += await asyncio.wait_for(loop.sock_recv(b, size), 5)
                got.append((data, payload))
            return [d == p for d, p in got], len({id(d) for d, _ in got})
        finally:
            for a, b in pairs:
                a.close()
                b.close()

    assert run(main()) == ([True] * 6, 6)


def test_large_sock_recvs_woken_together(loop, run):
    # Many 64 KiB reads waiting when their data comes in at once (glassloop makes
    # a large read when its task runs, not when the fd is reported ready): each
    # gets its own socket's bytes, in order, then its end of stream; a cancelled
    # one leaves its socket usable.
    size = 65536
    pairs = [tcp_pair() for _ in range(8)]

    async def read_all(b):
        parts = []
        while True:
            data = await loop.sock_recv(b, size)
            if not data:
                return b"".join(parts)
            parts.append(data)

    async def main():
        try:
            # A first large read, so the next ones take the large-read path.
            a, b = pairs[0]
            a.sendall(b"w" * size)
            got = b""
            while len(got) < size:
                got += await asyncio.wait_for(loop.sock_recv(b, size), 5)
            readers = [asyncio.ensure_future(read_all(b)) for _, b in pairs[1:]]
            cancelled = asyncio.ensure_future(loop.sock_recv(pairs[0][1], size))
            for t in readers + [cancelled]:
                await wait_pending(t)
            cancelled.cancel()
            await asyncio.gather(cancelled, return_exceptions=True)
            payloads = [bytes([i]) * (size // 4 + 4096 * i) for i in range(1, len(pairs))]
            for (a, _), payload in zip(pairs[1:], payloads):
                a.setblocking(True)
                a.sendall(payload)  # within the socket buffers: does not block
                a.shutdown(socket.SHUT_WR)
            results = await asyncio.wait_for(asyncio.gather(*readers), 10)
            a, b = pairs[0]
            a.send(b"after")
            after = await asyncio.wait_for(loop.sock_recv(b, size), 5)
            return [r == p for r, p in zip(results, payloads)], cancelled.cancelled(), after
        finally:
            for a, b in pairs:
                a.close()
                b.close()

    assert run(main()) == ([True] * 7, True, b"after")


@pytest.mark.parametrize("ready", [True, False], ids=["fast", "slow"])
def test_sock_recv_into_paths(loop, run, ready):
    a, b = tcp_pair()

    async def main():
        with a, b:
            buf = bytearray(8)
            if ready:
                a.send(b"0123456789")
                await asyncio.sleep(0.01)
                n = await loop.sock_recv_into(b, buf)
            else:
                t = asyncio.ensure_future(loop.sock_recv_into(b, buf))
                await wait_pending(t)
                a.send(b"0123456789")
                n = await asyncio.wait_for(t, 5)
            # The rest is still there for the next call, into another kind of buffer.
            import array
            arr = array.array("b", [0] * 4)
            n2 = await loop.sock_recv_into(b, arr)
            return n, bytes(buf), n2, arr.tobytes()

    assert run(main()) == (8, b"01234567", 2, b"89\x00\x00")


@pytest.mark.parametrize("ready", [True, False], ids=["fast", "slow"])
def test_sock_recvfrom_paths(loop, run, ready):
    a, b = udp_pair()

    async def main():
        with a, b:
            if ready:
                a.sendto(b"early", b.getsockname())
                await asyncio.sleep(0.01)
                return await loop.sock_recvfrom(b, 3), a.getsockname()
            t = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
            await wait_pending(t)
            a.sendto(b"late", b.getsockname())
            return await asyncio.wait_for(t, 5), a.getsockname()

    (data, addr), a_addr = run(main())
    assert data == (b"ear" if ready else b"late")  # a datagram is cut at bufsize
    assert addr == a_addr


@pytest.mark.parametrize("ready", [True, False], ids=["fast", "slow"])
def test_sock_recvfrom_into_paths(loop, run, ready):
    a, b = udp_pair()

    async def main():
        with a, b:
            buf = bytearray(6)
            if ready:
                a.sendto(b"early bird", b.getsockname())
                await asyncio.sleep(0.01)
                n, addr = await loop.sock_recvfrom_into(b, buf)
            else:
                t = asyncio.ensure_future(loop.sock_recvfrom_into(b, memoryview(buf)[1:], 3))
                await wait_pending(t)
                a.sendto(b"late", b.getsockname())
                n, addr = await asyncio.wait_for(t, 5)
            return n, bytes(buf), addr, a.getsockname()

    n, buf, addr, a_addr = run(main())
    assert addr == a_addr
    if ready:
        assert (n, buf) == (6, b"early ")
    else:
        assert (n, buf) == (3, b"\x00lat\x00\x00")


@pytest.mark.parametrize("ready", [True, False], ids=["fast", "slow"])
def test_sock_sendto_paths(loop, run, ready):
    # A Unix datagram sender waits while the receiver's queue is full.
    a, b, path = unix_dgram_pair()

    async def main():
        with a, b:
            if ready:
                return await loop.sock_sendto(a, b"now", path), b.recv(100)
            queued = fill_unix_dgram(a, path)
            t = asyncio.ensure_future(loop.sock_sendto(a, b"after the queue", path))
            await wait_pending(t)
            assert b.recv(100) == b"filler"  # room for one
            n = await asyncio.wait_for(t, 5)
            got = [b.recv(100) for _ in range(queued)]
            return n, got[-1]

    n, last = run(main())
    assert (n, last) == ((3, b"now") if ready else (15, b"after the queue"))


@pytest.mark.parametrize("ready", [True, False], ids=["fast", "slow"])
def test_sock_accept_paths(loop, run, ready):
    async def main():
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.setblocking(False)
        with lsock:
            if ready:
                client = socket.create_connection(lsock.getsockname())
                await asyncio.sleep(0.01)
                conn, addr = await loop.sock_accept(lsock)
            else:
                t = asyncio.ensure_future(loop.sock_accept(lsock))
                await wait_pending(t)
                client = socket.create_connection(lsock.getsockname())
                conn, addr = await asyncio.wait_for(t, 5)
            with client, conn:
                return addr == client.getsockname(), conn.gettimeout(), type(conn)

    assert run(main()) == (True, 0.0, socket.socket)


def test_sock_connect_unix_then_tcp_waits(loop, run):
    # A Unix connect to a listener with room completes at once; a TCP one waits
    # for the handshake (EINPROGRESS, then writable).
    path = short_unix_path()

    async def main():
        with socket.socket(socket.AF_UNIX) as ul, socket.create_server(("127.0.0.1", 0)) as tl:
            ul.bind(path)
            ul.listen(1)
            u = socket.socket(socket.AF_UNIX)
            u.setblocking(False)
            t = socket.socket()
            t.setblocking(False)
            with u, t:
                r1 = await loop.sock_connect(u, path)
                r2 = await asyncio.wait_for(loop.sock_connect(t, tl.getsockname()), 5)
                return r1, r2, u.getpeername() == path, t.getpeername() == tl.getsockname()

    assert run(main()) == (None, None, True, True)


def test_sock_connect_resolves_names(loop, run, monkeypatch):
    # asyncio resolves through loop.getaddrinfo (in the executor), never blocking.
    seen = []
    real = loop.getaddrinfo

    async def spy(host, port, **kwargs):
        seen.append((host, port))
        return await real(host, port, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", spy)

    async def main():
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            port = lsock.getsockname()[1]
            s = socket.socket()
            s.setblocking(False)
            with s:
                await asyncio.wait_for(loop.sock_connect(s, ("localhost", port)), 5)
                peer = s.getpeername()
            s2 = socket.socket()
            s2.setblocking(False)
            with s2:
                # A numeric address needs no lookup.
                await asyncio.wait_for(loop.sock_connect(s2, ("127.0.0.1", port)), 5)
            return peer, port

    peer, port = run(main())
    assert peer == ("127.0.0.1", port)
    assert seen == [("localhost", port)]


def test_sock_sendall_partial_then_rest_on_writable(loop, run):
    # More than the kernel holds: part goes at once, the rest as the peer reads.
    data = os.urandom(8 * 1024 * 1024)
    a, b = tcp_pair()

    async def main():
        with a, b:
            send = asyncio.ensure_future(loop.sock_sendall(a, memoryview(data)))
            await wait_pending(send)
            h = hashlib.sha256()
            n = 0
            while n < len(data):
                chunk = await loop.sock_recv(b, 1 << 16)
                h.update(chunk)
                n += len(chunk)
            await asyncio.wait_for(send, 5)
            return n, h.hexdigest()

    assert run(main()) == (len(data), hashlib.sha256(data).hexdigest())


# ---------------------------------------------------------------------------
# Cancelling a waiting call leaves the socket usable and unwatched
# ---------------------------------------------------------------------------

def _cancel_case(kind):
    """(sockets to close, start a waiting op, make the next op succeed, side)."""
    if kind in ("recv", "recv_into"):
        a, b = tcp_pair()
        op = (lambda lp: lp.sock_recv(b, 100)) if kind == "recv" else (lambda lp: lp.sock_recv_into(b, bytearray(100)))

        async def second(lp):
            a.send(b"second")
            got = await asyncio.wait_for(op(lp), 5)
            return got if isinstance(got, bytes) else b"second"[:got]
        return (a, b), b, op, second, "r", b"second"
    if kind in ("recvfrom", "recvfrom_into"):
        a, b = udp_pair()
        if kind == "recvfrom":
            op = lambda lp: lp.sock_recvfrom(b, 100)
        else:
            op = lambda lp: lp.sock_recvfrom_into(b, bytearray(100))

        async def second(lp):
            a.sendto(b"second", b.getsockname())
            got = await asyncio.wait_for(op(lp), 5)
            return got[0] if isinstance(got[0], bytes) else b"second"[:got[0]]
        return (a, b), b, op, second, "r", b"second"
    if kind == "accept":
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.setblocking(False)
        clients = []

        async def second(lp):
            clients.append(socket.create_connection(lsock.getsockname()))
            conn, _ = await asyncio.wait_for(lp.sock_accept(lsock), 5)
            conn.close()
            clients[0].close()
            return b"second"
        return (lsock,), lsock, lambda lp: lp.sock_accept(lsock), second, "r", b"second"
    if kind == "sendall":
        a, b = tcp_pair()
        big = b"x" * (16 * 1024 * 1024)

        async def second(lp):
            # Drain what the cancelled call got into the kernel, then send again.
            while True:
                try:
                    b.recv(1 << 20)
                except BlockingIOError:
                    break
            await asyncio.wait_for(lp.sock_sendall(a, b"second"), 5)
            got = b""
            while not got.endswith(b"second"):
                got += await asyncio.wait_for(lp.sock_recv(b, 1 << 20), 5)
            return b"second"
        return (a, b), a, lambda lp: lp.sock_sendall(a, big), second, "w", b"second"
    if kind == "sendto":
        a, b, path = unix_dgram_pair()
        fill_unix_dgram(a, path)

        async def second(lp):
            while True:
                try:
                    b.recv(100)
                except BlockingIOError:
                    break
            await asyncio.wait_for(lp.sock_sendto(a, b"second", path), 5)
            return b.recv(100)
        return (a, b), a, lambda lp: lp.sock_sendto(a, b"first", path), second, "w", b"second"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["recv", "recv_into", "recvfrom", "recvfrom_into",
                                  "accept", "sendall", "sendto"])
def test_cancelled_call_leaves_socket_usable_and_unwatched(loop, run, kind):
    socks, watched, op, second, side, expected = _cancel_case(kind)

    async def main():
        try:
            t = asyncio.ensure_future(op(loop))
            await wait_pending(t)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            # Nothing is watching the fd any more (asyncio: the reader/writer was removed).
            remove = loop.remove_reader if side == "r" else loop.remove_writer
            unwatched = remove(watched) is False
            return unwatched, await second(loop)
        finally:
            for s in socks:
                s.close()

    assert run(main()) == (True, expected)


def test_cancelled_sock_connect_leaves_no_writer(loop, run):
    # A listener whose accept queue is full drops new SYNs: the connect waits.
    async def main():
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)
        fillers = []
        with lsock:
            try:
                for _ in range(8):
                    c = socket.socket()
                    c.setblocking(False)
                    fillers.append(c)
                    try:
                        c.connect(lsock.getsockname())
                    except BlockingIOError:
                        pass
                await asyncio.sleep(0.05)
                s = socket.socket()
                s.setblocking(False)
                with s:
                    t = asyncio.ensure_future(loop.sock_connect(s, lsock.getsockname()))
                    await wait_pending(t)
                    t.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await t
                    return loop.remove_writer(s) is False
            finally:
                for c in fillers:
                    c.close()

    assert run(main()) is True


def test_second_reader_replaces_the_first_as_in_asyncio(loop, run):
    # asyncio's sock_recv is an add_reader: a second call on the fd replaces the
    # first, which is left waiting until cancelled.
    a, b = tcp_pair()

    async def main():
        with a, b:
            first = asyncio.ensure_future(loop.sock_recv(b, 100))
            await wait_pending(first)
            second = asyncio.ensure_future(loop.sock_recv(b, 100))
            await wait_pending(second)
            a.send(b"one")
            got = await asyncio.wait_for(second, 5)
            await asyncio.sleep(0.02)
            first_done = first.done()
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            a.send(b"two")
            again = await asyncio.wait_for(loop.sock_recv(b, 100), 5)
            return got, first_done, again

    assert run(main()) == (b"one", False, b"two")


def test_add_reader_replaces_waiting_sock_recv_and_back(loop, run):
    a, b = tcp_pair()

    async def main():
        with a, b:
            # A reader installed over a waiting sock_recv takes the fd's events.
            t = asyncio.ensure_future(loop.sock_recv(b, 100))
            await wait_pending(t)
            fired = asyncio.Event()
            loop.add_reader(b, fired.set)
            a.send(b"x")
            await asyncio.wait_for(fired.wait(), 5)
            assert not t.done()
            assert loop.remove_reader(b) is True
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
            assert b.recv(10) == b"x"
            # A sock_recv over an installed reader replaces it, and removes itself when done.
            calls = []
            loop.add_reader(b, calls.append, 1)
            t2 = asyncio.ensure_future(loop.sock_recv(b, 100))
            await asyncio.sleep(0.01)
            a.send(b"y")
            got = await asyncio.wait_for(t2, 5)
            return got, calls, loop.remove_reader(b)

    assert run(main()) == (b"y", [], False)


# ---------------------------------------------------------------------------
# Bulk data, errors, bad arguments
# ---------------------------------------------------------------------------

def test_64mib_through_sock_sendall_and_sock_recv_into(loop, run):
    import random
    rng = random.Random(7)
    data = rng.randbytes(64 * 1024 * 1024)
    a, b = tcp_pair()

    async def sender():
        pos = 0
        view = memoryview(data)
        while pos < len(data):
            size = rng.choice((1, 100, 4096, 65536, 1 << 20, 3 << 20))
            await loop.sock_sendall(a, view[pos:pos + size])
            pos += size
        a.shutdown(socket.SHUT_WR)

    async def receiver():
        h = hashlib.sha256()
        buf = bytearray(1 << 20)
        total = 0
        sizes = (1, 7, 1000, 65536, 1 << 20)
        while True:
            size = sizes[total % len(sizes)]
            n = await loop.sock_recv_into(b, memoryview(buf)[:size])
            if n == 0:
                return total, h.hexdigest()
            h.update(memoryview(buf)[:n])
            total += n

    async def main():
        with a, b:
            r = asyncio.ensure_future(receiver())
            await sender()
            return await asyncio.wait_for(r, 60)

    assert run(main()) == (len(data), hashlib.sha256(data).hexdigest())


def test_reset_connection_raises_connection_reset(loop, run):
    import struct

    def reset(s):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    async def main():
        errors = []
        # At once: the reset is already there.
        a, b = tcp_pair()
        with b:
            reset(a)
            await asyncio.sleep(0.01)
            with pytest.raises(ConnectionResetError) as ei:
                await loop.sock_recv(b, 100)
            errors.append(ei.value.errno)
        # While waiting.
        a, b = tcp_pair()
        with b:
            t = asyncio.ensure_future(loop.sock_recv_into(b, bytearray(10)))
            await wait_pending(t)
            reset(a)
            with pytest.raises(ConnectionResetError) as ei:
                await asyncio.wait_for(t, 5)
            errors.append(ei.value.errno)
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                await loop.sock_sendall(b, b"x" * 100)
        return errors

    import errno
    assert run(main()) == [errno.ECONNRESET, errno.ECONNRESET]


def test_sock_methods_on_closed_socket_raise_ebadf(loop, run):
    import errno
    a, b = tcp_pair()
    a.close()
    b.close()

    async def main():
        out = []
        for call in (lambda: loop.sock_recv(b, 10), lambda: loop.sock_recv_into(b, bytearray(2)),
                     lambda: loop.sock_sendall(b, b"x")):
            with pytest.raises(OSError) as ei:
                await call()
            out.append((type(ei.value), ei.value.errno))
        return out

    assert run(main()) == [(OSError, errno.EBADF)] * 3


def test_socket_closed_while_waiting_then_fd_reused(loop, run):
    # A socket closed under a waiting sock_recv never wakes it (as in asyncio);
    # cancelling it is clean, and a new socket on the same fd number works.
    async def main():
        a, b = tcp_pair()
        fd = b.fileno()
        t = asyncio.ensure_future(loop.sock_recv(b, 100))
        await wait_pending(t)
        b.close()
        a.close()
        await asyncio.sleep(0.01)
        assert not t.done()
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        reused = 0
        for _ in range(3):
            c, d = tcp_pair()
            with c, d:
                reused += fd in (c.fileno(), d.fileno())
                for x, y in ((c, d), (d, c)):
                    r = asyncio.ensure_future(loop.sock_recv(y, 100))
                    await wait_pending(r)
                    x.send(b"fresh")
                    assert await asyncio.wait_for(r, 5) == b"fresh"
        return reused > 0

    assert run(main()) is True


def test_fd_reused_after_completed_calls(loop, run):
    # After sock_* calls on a socket finished and it was closed, a new socket on
    # the same fd number must be watched afresh.
    async def main():
        reused = 0
        for i in range(5):
            c, d = tcp_pair()
            with c, d:
                fds = (c.fileno(), d.fileno())
                for j in range(3):
                    r = asyncio.ensure_future(loop.sock_recv(d, 100))
                    await asyncio.sleep(0.005)
                    c.send(b"%d" % j)
                    assert await asyncio.wait_for(r, 5) == b"%d" % j
                    w = asyncio.ensure_future(loop.sock_recv(c, 100))
                    await asyncio.sleep(0.005)
                    await loop.sock_sendall(d, b"back")
                    assert await asyncio.wait_for(w, 5) == b"back"
            if i:
                reused += fds == previous
            previous = fds
        return reused

    assert run(main()) >= 1


def test_sock_methods_reject_ssl_sockets(loop, run):
    import ssl
    ctx = ssl.create_default_context()
    s = ctx.wrap_socket(socket.socket(), server_hostname="example.invalid", do_handshake_on_connect=False)

    async def main():
        calls = [loop.sock_recv(s, 1), loop.sock_recv_into(s, bytearray(1)),
                 loop.sock_recvfrom(s, 1), loop.sock_recvfrom_into(s, bytearray(1)),
                 loop.sock_sendall(s, b"x"), loop.sock_sendto(s, b"x", ("127.0.0.1", 9)),
                 loop.sock_accept(s), loop.sock_connect(s, ("127.0.0.1", 9))]
        messages = []
        for c in calls:
            with pytest.raises(TypeError) as ei:
                await c
            messages.append(str(ei.value))
        return messages

    with s:
        assert run(main()) == ["Socket cannot be of type SSLSocket"] * 8


def test_sock_methods_bad_arguments(loop, run):
    a, b = tcp_pair()

    async def main():
        with a, b:
            with pytest.raises(ValueError, match="negative buffersize"):
                await loop.sock_recv(b, -1)
            with pytest.raises(TypeError):
                await loop.sock_recv(b, "10")
            with pytest.raises(TypeError, match="read-write bytes-like object"):
                await loop.sock_recv_into(b, b"immutable")
            with pytest.raises(TypeError, match="bytes-like object is required"):
                await loop.sock_sendall(a, 123)
            with pytest.raises(AttributeError):
                await loop.sock_recv(object(), 10)

    run(main())


@pytest.mark.parametrize("method", ["recv", "recv_into", "recvfrom", "recvfrom_into",
                                    "sendall", "sendto", "accept", "connect"])
def test_every_sock_method_needs_nonblocking_socket_in_debug(loop, run, method):
    loop.set_debug(True)
    calls = {
        "recv": lambda s: loop.sock_recv(s, 10),
        "recv_into": lambda s: loop.sock_recv_into(s, bytearray(10)),
        "recvfrom": lambda s: loop.sock_recvfrom(s, 10),
        "recvfrom_into": lambda s: loop.sock_recvfrom_into(s, bytearray(10)),
        "sendall": lambda s: loop.sock_sendall(s, b"x"),
        "sendto": lambda s: loop.sock_sendto(s, b"x", ("127.0.0.1", 9)),
        "accept": lambda s: loop.sock_accept(s),
        "connect": lambda s: loop.sock_connect(s, ("127.0.0.1", 9)),
    }

    async def main():
        with socket.socket() as s:
            with pytest.raises(ValueError, match="the socket must be non-blocking"):
                await calls[method](s)

    run(main())


def test_sock_recv_on_transport_socket_raises(loop, run):
    accepted = []

    class Keep(asyncio.Protocol):
        def connection_made(self, transport):
            accepted.append(transport)

    async def main():
        server = await loop.create_server(Keep, "127.0.0.1", 0)
        sock = socket.create_connection(server.sockets[0].getsockname())
        sock.setblocking(False)
        tr, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
        try:
            with pytest.raises(RuntimeError) as ei:
                await loop.sock_recv(sock, 10)
            return str(ei.value), sock.fileno()
        finally:
            tr.close()
            for _ in range(100):
                if accepted:
                    break
                await asyncio.sleep(0.01)
            for t in accepted:  # closed before the server, which 3.13.0's asyncio needs
                t.close()
            server.close()
            await server.wait_closed()

    msg, fd = run(main())
    assert msg.startswith(f"File descriptor {fd} is used by transport ")


def test_sock_calls_on_closed_loop(loop):
    # The syscall is tried first (data already there is returned), waiting raises.
    a, b = tcp_pair()
    with a, b:
        loop.close()
        a.send(b"ready")
        time.sleep(0.01)
        coro = loop.sock_recv(b, 100)
        with pytest.raises(StopIteration) as si:
            coro.send(None)
        assert si.value.value == b"ready"
        coro = loop.sock_recv(b, 100)
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            coro.send(None)


def test_loop_closed_with_waiting_calls(loop_factory):
    # Closing a loop drops its waiting calls (their futures stay pending, as in
    # asyncio); closing their coroutines afterwards is clean, and the sockets
    # work on another loop.
    a, b = tcp_pair()
    c, d = tcp_pair()
    with a, b, c, d:
        lp = loop_factory()
        t = lp.create_task(lp.sock_recv(b, 100))
        w = lp.create_task(lp.sock_sendall(c, b"y" * (32 * 1024 * 1024)))
        lp.run_until_complete(asyncio.sleep(0.02))
        assert not t.done() and not w.done()
        lp.close()
        t.get_coro().close()  # as the garbage collector would
        w.get_coro().close()
        del t, w
        lp2 = loop_factory()
        try:
            async def again():
                r = asyncio.ensure_future(lp2.sock_recv(b, 100))
                await asyncio.sleep(0.01)
                await lp2.sock_sendall(a, b"after close")
                first = await asyncio.wait_for(r, 5)
                # d still has the y's that went before the close: read past them.
                got, total = b"", 0
                send = asyncio.ensure_future(lp2.sock_sendall(c, b"end"))
                while not got.endswith(b"end"):
                    got = (got + await asyncio.wait_for(lp2.sock_recv(d, 1 << 20), 5))[-16:]
                await send
                return first
            assert lp2.run_until_complete(again()) == b"after close"
        finally:
            lp2.close()
