"""create_datagram_endpoint and datagram transports."""

import asyncio
import errno
import logging
import os
import socket

import pytest

from loopsupport import short_unix_path


class Dgram(asyncio.DatagramProtocol):
    def __init__(self, loop, echo=False):
        self.loop = loop
        self.echo = echo
        self.events = []
        self.received = []
        self.errors = []
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.error = loop.create_future()
        self._waiters = []

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)

    def datagram_received(self, data, addr):
        if "made" not in self.events or self.lost.done():
            self.events.append("datagram out of order")
        self.received.append((data, addr))
        if self.echo:
            self.transport.sendto(data, addr)
        for n, fut in list(self._waiters):
            if len(self.received) >= n and not fut.done():
                fut.set_result(None)

    def error_received(self, exc):
        self.errors.append(exc)
        if not self.error.done():
            self.error.set_result(exc)

    def connection_lost(self, exc):
        self.events.append("lost")
        if self.lost.done():
            self.events.append("lost twice")
        else:
            self.lost.set_result(exc)

    async def wait_count(self, n, timeout=5):
        if len(self.received) >= n:
            return
        fut = self.loop.create_future()
        self._waiters.append((n, fut))
        await asyncio.wait_for(fut, timeout)


def test_local_and_remote_addr_both_ways(loop, run):
    async def main():
        st, sp = await loop.create_datagram_endpoint(
            lambda: Dgram(loop, echo=True), local_addr=("127.0.0.1", 0))
        server_addr = st.get_extra_info("sockname")
        ct, cp = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), remote_addr=server_addr)
        client_addr = ct.get_extra_info("sockname")
        assert ct.get_extra_info("peername") == server_addr
        ct.sendto(b"hello")
        ct.sendto(b"world", None)
        ct.sendto(b"again", server_addr)  # the connected address is allowed
        await cp.wait_count(3)
        ct.close()
        st.close()
        await cp.lost
        await sp.lost
        return sp, cp, server_addr, client_addr

    sp, cp, server_addr, client_addr = run(main())
    assert sorted(d for d, _ in sp.received) == [b"again", b"hello", b"world"]
    assert {a for _, a in sp.received} == {client_addr}
    assert sorted(d for d, _ in cp.received) == [b"again", b"hello", b"world"]
    assert {a for _, a in cp.received} == {server_addr}
    assert sp.events == ["made", "lost"]
    assert cp.events == ["made", "lost"]
    assert sp.errors == cp.errors == []


def test_many_datagrams_unconnected(loop, run):
    payloads = [os.urandom((i * 7919) % 16000 + 1) for i in range(100)]

    async def main():
        st, sp = await loop.create_datagram_endpoint(
            lambda: Dgram(loop, echo=True), local_addr=("127.0.0.1", 0))
        server_addr = st.get_extra_info("sockname")
        ct, cp = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), local_addr=("127.0.0.1", 0))
        for i, p in enumerate(payloads):
            ct.sendto(p, server_addr)
            if i % 5 == 4:  # few in flight: a full socket buffer drops datagrams
                await cp.wait_count(i + 1)
        await cp.wait_count(len(payloads))
        ct.close()
        st.close()
        await cp.lost
        return cp, server_addr

    cp, server_addr = run(main())
    assert sorted(d for d, _ in cp.received) == sorted(payloads)
    assert {a for _, a in cp.received} == {server_addr}


def test_connected_sendto_other_address_fails(loop, run):
    async def main():
        st, sp = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), local_addr=("127.0.0.1", 0))
        server_addr = st.get_extra_info("sockname")
        ct, cp = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), remote_addr=server_addr)
        with pytest.raises(ValueError) as ei:
            ct.sendto(b"x", ("127.0.0.1", 9))
        with pytest.raises(TypeError) as ti:
            ct.sendto("text")
        ct.close()
        st.close()
        await cp.lost
        return str(ei.value), str(ti.value), server_addr

    msg, tmsg, server_addr = run(main())
    assert msg == f"Invalid address: must be None or {server_addr}"
    assert tmsg == "data argument must be a bytes-like object, not 'str'"


def test_error_received_port_unreachable(loop, run):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        ct, cp = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), remote_addr=("127.0.0.1", port))
        for _ in range(200):
            ct.sendto(b"anyone?")
            try:
                await asyncio.wait_for(asyncio.shield(cp.error), 0.01)
                break
            except asyncio.TimeoutError:
                pass
        exc = await asyncio.wait_for(cp.error, 1)
        assert not ct.is_closing()  # an error does not close the endpoint
        ct.close()
        await cp.lost
        return exc, cp

    exc, cp = run(main())
    assert isinstance(exc, ConnectionRefusedError)
    assert exc.errno == errno.ECONNREFUSED
    assert cp.events == ["made", "lost"]


def test_reuse_port(loop, run):
    async def main():
        t1, p1 = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), local_addr=("127.0.0.1", 0), reuse_port=True)
        port = t1.get_extra_info("sockname")[1]
        t2, p2 = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), local_addr=("127.0.0.1", port), reuse_port=True)
        opts = [t.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
                for t in (t1, t2)]
        ct, cp = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), remote_addr=("127.0.0.1", port))
        ct.sendto(b"x")
        for _ in range(500):
            if p1.received or p2.received:
                break
            await asyncio.sleep(0.01)
        for t in (t1, t2, ct):
            t.close()
        await asyncio.gather(p1.lost, p2.lost, cp.lost)
        return opts, len(p1.received) + len(p2.received)

    opts, n = run(main())
    assert all(o != 0 for o in opts)
    assert n == 1


def test_reuse_port_needed_for_second_bind(loop, run):
    async def main():
        t1, p1 = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), local_addr=("127.0.0.1", 0))
        port = t1.get_extra_info("sockname")[1]
        with pytest.raises(OSError) as ei:
            await loop.create_datagram_endpoint(
                lambda: Dgram(loop), local_addr=("127.0.0.1", port))
        t1.close()
        await p1.lost
        return ei.value

    assert run(main()).errno == errno.EADDRINUSE


def test_allow_broadcast(loop, run):
    async def main():
        t, p = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), local_addr=("127.0.0.1", 0), allow_broadcast=True)
        on = t.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        t2, p2 = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), local_addr=("127.0.0.1", 0))
        off = t2.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        t.close()
        t2.close()
        await asyncio.gather(p.lost, p2.lost)
        return on, off

    on, off = run(main())
    assert on != 0
    assert off == 0


def test_sock_argument(loop, run):
    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        t, p = await loop.create_datagram_endpoint(lambda: Dgram(loop, echo=True), sock=sock)
        assert t.get_extra_info("socket").fileno() == sock.fileno()
        assert t.get_extra_info("sockname") == sock.getsockname()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b"via sock", sock.getsockname())
            data, addr = await loop.run_in_executor(None, client.recvfrom, 100)
        t.close()
        await p.lost
        return data, addr, sock

    data, addr, sock = run(main())
    assert data == b"via sock"
    assert sock.fileno() == -1


def test_sock_argument_with_other_arguments_rejected(loop, run):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            with pytest.raises(ValueError, match="socket modifier keyword arguments"):
                await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, sock=sock, local_addr=("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            with pytest.raises(ValueError, match="A (UDP|datagram) [Ss]ocket was expected"):
                await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock)

    run(main())


def test_write_buffer_size_and_close(loop, run, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")

    def warned():
        return [r for r in caplog.records
                if r.getMessage() == "socket.send() raised exception."]

    async def main():
        st, sp = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), local_addr=("127.0.0.1", 0))
        addr = st.get_extra_info("sockname")
        ct, cp = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), remote_addr=addr)
        assert ct.get_write_buffer_size() == 0
        ct.sendto(b"x" * 1000)
        assert ct.get_write_buffer_size() == 0  # the kernel took it
        await sp.wait_count(1)
        assert not ct.is_closing()
        ct.close()
        assert ct.is_closing()
        ct.close()
        exc = await asyncio.wait_for(cp.lost, 5)
        for _ in range(4):
            ct.sendto(b"ignored")  # silently dropped
        n4 = len(warned())
        ct.sendto(b"ignored")
        n5 = len(warned())
        await asyncio.sleep(0.05)
        st.close()
        await sp.lost
        return exc, sp, cp, n4, n5

    exc, sp, cp, n4, n5 = run(main())
    assert (n4, n5) == (0, 1)
    assert exc is None
    assert [d for d, _ in sp.received] == [b"x" * 1000]
    assert cp.events == ["made", "lost"]


def test_abort(loop, run):
    async def main():
        t, p = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), local_addr=("127.0.0.1", 0))
        addr = t.get_extra_info("sockname")
        t.abort()
        assert t.is_closing()
        exc = await asyncio.wait_for(p.lost, 5)
        # The socket is gone: nothing receives on that address any more.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(addr)
        return exc, p

    exc, p = run(main())
    assert exc is None
    assert p.events == ["made", "lost"]


def test_unix_datagram_endpoint(loop, run):
    spath = short_unix_path("srv")
    cpath = short_unix_path("cli")

    async def main():
        st, sp = await loop.create_datagram_endpoint(
            lambda: Dgram(loop, echo=True), local_addr=spath, family=socket.AF_UNIX)
        ct, cp = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), local_addr=cpath, remote_addr=spath, family=socket.AF_UNIX)
        ct.sendto(b"unix dgram")
        await cp.wait_count(1)
        ct.close()
        st.close()
        await asyncio.gather(cp.lost, sp.lost)
        return sp, cp

    sp, cp = run(main())
    assert sp.received == [(b"unix dgram", cpath)]
    assert cp.received == [(b"unix dgram", spath)]


def test_burst_of_datagrams_all_delivered(loop, run):
    # Datagrams that all arrive before the loop looks are each delivered: the
    # endpoint's reader is level-triggered (one datagram per callback).
    async def main():
        t, p = await loop.create_datagram_endpoint(
            lambda: Dgram(loop), local_addr=("127.0.0.1", 0))
        addr = t.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(100):
                s.sendto(b"%03d" % i, addr)
        await p.wait_count(100)
        await asyncio.sleep(0.02)
        t.close()
        await p.lost
        return p

    p = run(main())
    assert sorted(d for d, _ in p.received) == [b"%03d" % i for i in range(100)]
