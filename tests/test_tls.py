"""TLS: ``ssl=`` on connections and servers, ``start_tls``, extra info,
shutdown, handshake failures and timeouts.

Certificates are generated at test time (``cryptography``): a CA, a server
certificate for ``localhost``/127.0.0.1 signed by it, a client certificate
signed by it, and an unrelated CA that the server's chain does not lead to.
"""

import asyncio
import hashlib
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time

import pytest

from loopsupport import PY311, exc_signature, run_on_asyncio

from certsupport import local_sans, make_ca, make_leaf, write_pem


# ---------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------

class Certs:
    pass


@pytest.fixture(scope="module")
def certs():
    d = tempfile.mkdtemp(prefix="gl-tls-")
    ca_key, ca_cert = make_ca("glassloop test CA")
    other_key, other_cert = make_ca("some other CA")
    srv_key, srv_cert = make_leaf(ca_key, ca_cert, "localhost", local_sans())
    cli_key, cli_cert = make_leaf(ca_key, ca_cert, "glassloop client", client=True)
    c = Certs()
    c.dir = d
    c.ca = os.path.join(d, "ca.pem")
    c.other_ca = os.path.join(d, "other-ca.pem")
    c.server = os.path.join(d, "server.pem")
    c.client = os.path.join(d, "client.pem")
    write_pem(c.ca, ca_cert)
    write_pem(c.other_ca, other_cert)
    write_pem(c.server, srv_cert, srv_key)
    write_pem(c.client, cli_cert, cli_key)
    try:
        yield c
    finally:
        shutil.rmtree(d, ignore_errors=True)


def server_ctx(certs, require_client_cert=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(certs.ca)
    return ctx


def client_ctx(certs, ca=None, client_cert=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca or certs.ca)
    if client_cert:
        ctx.load_cert_chain(certs.client)
    return ctx


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

@pytest.fixture
def run(run_collecting):
    """run_until_complete, then a garbage collection (conftest.run_collecting)."""
    return run_collecting


def payload(n, seed=b"glassloop"):
    """n deterministic, non-repeating-looking bytes."""
    out = bytearray()
    block = hashlib.sha512(seed).digest()
    counter = 0
    while len(out) < n:
        out += hashlib.sha512(block + counter.to_bytes(8, "big")).digest() * 64
        counter += 1
    return bytes(out[:n])


async def small_buffer_socket(lp, port, rcvbuf=32 * 1024):
    """A TCP socket connected to 127.0.0.1:port with a small receive buffer,
    so that the kernel cannot swallow megabytes of a test's data."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await lp.sock_connect(sock, ("127.0.0.1", port))
    return sock


def shrink_send_buffer(transport, sndbuf=32 * 1024):
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)


def short_unix_path():
    d = tempfile.mkdtemp(prefix="gl-", dir="/tmp")
    return os.path.join(d, "s.sock")


class RecordingProtocol(asyncio.Protocol):
    """Records every callback; futures for connection made/lost and EOF."""

    def __init__(self, loop, eof_result=None):
        self.loop = loop
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.eof_result = eof_result

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.made.set_result(transport)

    def data_received(self, data):
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        if not self.eof.done():
            self.eof.set_result(None)
        return self.eof_result

    def connection_lost(self, exc):
        self.events.append(("lost", exc_signature(exc)))
        if not self.eof.done():
            self.eof.set_result(None)
        self.lost.set_result(exc)


async def echo_handler(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def tls_echo_roundtrip(reader, writer, size):
    data = payload(size)
    want = hashlib.sha256(data).hexdigest()
    h = hashlib.sha256()
    got = 0

    async def read_all():
        nonlocal got
        while got < size:
            chunk = await reader.read(1 << 18)
            assert chunk, "EOF after {} of {} bytes".format(got, size)
            h.update(chunk)
            got += len(chunk)

    reading = asyncio.ensure_future(read_all())
    view = memoryview(data)
    for i in range(0, size, 1 << 17):
        writer.write(view[i:i + (1 << 17)])
        await writer.drain()
    await asyncio.wait_for(reading, 30)
    assert got == size
    assert h.hexdigest() == want


# ---------------------------------------------------------------------------
# ssl= on the connection and server APIs, with byte integrity
# ---------------------------------------------------------------------------

def test_tls_tcp_echo_integrity(loop, run, certs):
    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0,
                                            ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx(certs), server_hostname="localhost")
        assert writer.get_extra_info("ssl_object") is not None
        await tls_echo_roundtrip(reader, writer, 3 * 1024 * 1024 + 17)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())


def test_tls_create_connection_hostname_from_host(loop, run, certs):
    """Without server_hostname, the host argument is the name checked."""
    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0,
                                            ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(
            lambda: RecordingProtocol(loop), "localhost", port,
            ssl=client_ctx(certs), family=socket.AF_INET)
        assert tr.get_extra_info("ssl_object").server_hostname == "localhost"
        tr.write(b"ping")
        for _ in range(200):
            if bytes(pr.data) == b"ping":
                break
            await asyncio.sleep(0.01)
        assert bytes(pr.data) == b"ping"
        tr.close()
        await pr.lost
        server.close()
        await server.wait_closed()

    run(main())


def test_tls_server_hostname_ip_and_empty(loop, run, certs):
    """ssl= with a bare IP host and no server_hostname checks the IP (our
    cert has an IP SAN); server_hostname='' sends no SNI."""
    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0,
                                            ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        # IP SAN matches 127.0.0.1
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx(certs))
        w.write(b"x")
        assert await r.readexactly(1) == b"x"
        w.close()
        await w.wait_closed()
        # server_hostname='' disables SNI (and the name check)
        ctx = client_ctx(certs)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="")
        assert w.get_extra_info("ssl_object").server_hostname is None
        w.write(b"y")
        assert await r.readexactly(1) == b"y"
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())


def test_tls_server_hostname_without_ssl_is_error(loop, run):
    async def main():
        with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1,
                                         server_hostname="localhost")
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful with ssl"):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1,
                                         ssl_handshake_timeout=1)

    run(main())


def test_tls_unix_echo_integrity(loop, run, certs):
    path = short_unix_path()

    async def main():
        server = await asyncio.start_unix_server(echo_handler, path, ssl=server_ctx(certs))
        reader, writer = await asyncio.open_unix_connection(
            path, ssl=client_ctx(certs), server_hostname="localhost")
        assert writer.get_extra_info("peername") in ("", path)
        assert writer.get_extra_info("cipher") is not None
        await tls_echo_roundtrip(reader, writer, 1024 * 1024 + 3)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    try:
        run(main())
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def test_tls_create_unix_connection_requires_server_hostname(loop, run, certs):
    path = short_unix_path()

    async def main():
        server = await loop.create_unix_server(
            lambda: RecordingProtocol(loop), path, ssl=server_ctx(certs))
        with pytest.raises(ValueError, match="server_hostname"):
            await loop.create_unix_connection(asyncio.Protocol, path, ssl=client_ctx(certs))
        server.close()
        await server.wait_closed()

    try:
        run(main())
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def test_tls_connect_accepted_socket(loop, run, certs):
    async def main():
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.setblocking(False)
        port = lsock.getsockname()[1]

        async def server_side():
            conn, _ = await loop.sock_accept(lsock)
            proto = RecordingProtocol(loop)
            tr, pr = await loop.connect_accepted_socket(
                lambda: proto, conn, ssl=server_ctx(certs))
            assert pr is proto
            assert tr.get_extra_info("sslcontext") is not None
            return tr, pr

        async def client_side():
            return await loop.create_connection(
                lambda: RecordingProtocol(loop), "127.0.0.1", port,
                ssl=client_ctx(certs), server_hostname="localhost")

        (str_, spr), (ctr, cpr) = await asyncio.gather(server_side(), client_side())
        data = payload(512 * 1024, b"accepted")
        ctr.write(data)
        for _ in range(500):
            if len(spr.data) >= len(data):
                break
            await asyncio.sleep(0.01)
        assert hashlib.sha256(spr.data).digest() == hashlib.sha256(data).digest()
        str_.write(b"reply")
        for _ in range(200):
            if bytes(cpr.data) == b"reply":
                break
            await asyncio.sleep(0.01)
        assert bytes(cpr.data) == b"reply"
        ctr.close()
        await asyncio.wait_for(spr.lost, 5)
        await asyncio.wait_for(cpr.lost, 5)
        lsock.close()

    run(main())


def test_tls_connect_accepted_socket_handshake_timeout_needs_ssl(loop, run):
    async def main():
        a, b = socket.socketpair()
        try:
            with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful with ssl"):
                await loop.connect_accepted_socket(asyncio.Protocol, a, ssl_handshake_timeout=1)
        finally:
            a.close()
            b.close()

    run(main())


def test_tls_backpressure_drain_blocks_until_peer_reads(loop, run, certs):
    """The server writes 6 MiB (64 KiB writes, each followed by drain()) to a
    client that does not read: drain() blocks and the write buffer stays
    non-empty; once the client reads, everything
    arrives intact and drain() returns."""
    size = 6 * 1024 * 1024
    data = payload(size, b"backpressure")
    result = {}

    async def main():
        client_may_read = asyncio.Event()
        server_done = loop.create_future()

        async def handler(reader, writer):
            try:
                shrink_send_buffer(writer)
                sent = 0

                async def send_all():
                    nonlocal sent
                    view = memoryview(data)
                    for i in range(0, size, 1 << 16):
                        writer.write(view[i:i + (1 << 16)])
                        await writer.drain()
                        sent = i + len(view[i:i + (1 << 16)])

                sending = asyncio.ensure_future(send_all())
                await asyncio.sleep(0.4)
                result["done_early"] = sending.done()
                result["sent_early"] = sent
                result["buffered"] = writer.transport.get_write_buffer_size()
                client_may_read.set()
                await asyncio.wait_for(sending, 20)
                writer.close()
                await writer.wait_closed()
                server_done.set_result(None)
            except BaseException as e:
                server_done.set_exception(e)
                raise

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            sock=await small_buffer_socket(loop, port), ssl=client_ctx(certs),
            server_hostname="localhost")
        await asyncio.wait_for(client_may_read.wait(), 10)
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = await asyncio.wait_for(reader.read(1 << 18), 10)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        await server_done
        assert n == size
        assert h.digest() == hashlib.sha256(data).digest()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())
    assert result["done_early"] is False
    assert result["sent_early"] < size // 2
    assert result["buffered"] > 0


def test_tls_transport_pause_reading_propagates(loop, run, certs):
    """A TLS client protocol that pauses reading stops the data flow (the
    server's writes back up) and resumes it."""
    async def main():
        written = loop.create_future()

        async def handler(reader, writer):
            shrink_send_buffer(writer)

            async def send_all():
                view = memoryview(payload(4 * 1024 * 1024, b"pause"))
                for i in range(0, len(view), 1 << 16):
                    writer.write(view[i:i + (1 << 16)])
                    await writer.drain()

            d = asyncio.ensure_future(send_all())
            await asyncio.sleep(0.3)
            written.set_result((d.done(), writer.transport.get_write_buffer_size()))
            await asyncio.wait_for(d, 20)
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(
            lambda: RecordingProtocol(loop), sock=await small_buffer_socket(loop, port),
            ssl=client_ctx(certs), server_hostname="localhost")
        tr.pause_reading()
        assert tr.is_reading() is False
        done_early, buffered = await written
        received_while_paused = len(pr.data)
        assert done_early is False
        assert buffered > 0
        await asyncio.sleep(0.1)
        assert len(pr.data) == received_while_paused
        tr.resume_reading()
        assert tr.is_reading() is True
        await asyncio.wait_for(pr.lost, 20)
        assert len(pr.data) == 4 * 1024 * 1024
        assert hashlib.sha256(pr.data).digest() == hashlib.sha256(payload(4 * 1024 * 1024, b"pause")).digest()
        server.close()
        await server.wait_closed()

    run(main())


# ---------------------------------------------------------------------------
# start_tls
# ---------------------------------------------------------------------------

def test_start_tls_streams_both_sides(loop, run, certs):
    """A plain connection upgraded with StreamWriter.start_tls on both sides
    (so loop.start_tls with server_side=True and False)."""
    async def main():
        server_info = {}

        async def handler(reader, writer):
            line = await reader.readline()
            assert line == b"STARTTLS\n"
            assert writer.get_extra_info("ssl_object") is None
            writer.write(b"OK\n")
            await writer.start_tls(server_ctx(certs))
            server_info["ssl_object"] = writer.get_extra_info("ssl_object")
            server_info["server_side"] = writer.get_extra_info("ssl_object").server_side
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data[::-1])
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        await writer.start_tls(client_ctx(certs), server_hostname="localhost")
        sslobj = writer.get_extra_info("ssl_object")
        assert isinstance(sslobj, ssl.SSLObject)
        assert sslobj.server_side is False
        assert writer.get_extra_info("peercert")["subject"]
        writer.write(b"hello tls")
        assert await reader.readexactly(9) == b"slt olleh"
        writer.close()
        await writer.wait_closed()
        assert server_info["server_side"] is True
        server.close()
        await server.wait_closed()

    run(main())


def test_start_tls_low_level(loop, run, certs):
    """loop.start_tls on a protocol-level connection: returns a new transport
    speaking TLS over the old one, and the protocol keeps receiving."""
    async def main():
        upgraded = loop.create_future()
        srv_proto = RecordingProtocol(loop)

        class ServerProto(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                assert data == b"UPGRADE"
                self.transport.write(b"GO")
                fut = asyncio.ensure_future(loop.start_tls(
                    self.transport, srv_proto, server_ctx(certs), server_side=True))
                fut.add_done_callback(
                    lambda f: upgraded.set_exception(f.exception()) if f.exception()
                    else upgraded.set_result(f.result()))

        server = await loop.create_server(ServerProto, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cli = RecordingProtocol(loop)
        tr, _ = await loop.create_connection(lambda: cli, "127.0.0.1", port)
        tr.write(b"UPGRADE")
        for _ in range(200):
            if bytes(cli.data) == b"GO":
                break
            await asyncio.sleep(0.01)
        assert bytes(cli.data) == b"GO"
        cli.data.clear()
        ssl_tr = await loop.start_tls(tr, cli, client_ctx(certs), server_hostname="localhost")
        assert ssl_tr is not tr
        assert ssl_tr.get_protocol() is cli
        assert ssl_tr.get_extra_info("sslcontext") is not None
        srv_tr = await asyncio.wait_for(upgraded, 5)
        srv_tr.write(b"over tls")
        for _ in range(200):
            if bytes(cli.data) == b"over tls":
                break
            await asyncio.sleep(0.01)
        assert bytes(cli.data) == b"over tls"
        ssl_tr.write(b"back")
        for _ in range(200):
            if bytes(srv_proto.data) == b"back":
                break
            await asyncio.sleep(0.01)
        assert bytes(srv_proto.data) == b"back"
        ssl_tr.close()
        await asyncio.wait_for(cli.lost, 5)
        await asyncio.wait_for(srv_proto.lost, 5)
        server.close()
        await server.wait_closed()

    run(main())


def test_start_tls_rejects_non_tls_context(loop, run):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        with pytest.raises(TypeError):
            await loop.start_tls(tr, pr, object())
        tr.close()
        server.close()
        await server.wait_closed()

    run(main())


# ---------------------------------------------------------------------------
# get_extra_info
# ---------------------------------------------------------------------------

def test_tls_extra_info(loop, run, certs):
    async def main():
        sctx = server_ctx(certs, require_client_cert=True)
        cctx = client_ctx(certs, client_cert=True)
        srv_protos = []

        def factory():
            p = RecordingProtocol(loop)
            srv_protos.append(p)
            return p

        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(
            lambda: RecordingProtocol(loop), "127.0.0.1", port,
            ssl=cctx, server_hostname="localhost")
        # client side
        assert tr.get_extra_info("sslcontext") is cctx
        sslobj = tr.get_extra_info("ssl_object")
        assert isinstance(sslobj, ssl.SSLObject)
        assert sslobj.server_hostname == "localhost"
        peercert = tr.get_extra_info("peercert")
        assert isinstance(peercert, dict)
        assert (("commonName", "localhost"),) in peercert["subject"]
        assert ("DNS", "localhost") in peercert["subjectAltName"]
        cipher = tr.get_extra_info("cipher")
        assert isinstance(cipher, tuple) and len(cipher) == 3
        assert cipher == sslobj.cipher()
        assert cipher[1].startswith("TLSv1")
        assert tr.get_extra_info("compression") is None
        assert tr.get_extra_info("peername") == ("127.0.0.1", port)
        assert tr.get_extra_info("sockname")[0] == "127.0.0.1"
        assert tr.get_extra_info("socket") is not None
        assert tr.get_extra_info("socket").fileno() >= 0
        assert tr.get_extra_info("no such key", "dflt") == "dflt"
        assert tr.can_write_eof() is False
        # server side
        tr.write(b"hi")
        for _ in range(200):
            if srv_protos and srv_protos[0].data:
                break
            await asyncio.sleep(0.01)
        str_ = srv_protos[0].transport
        assert str_.get_extra_info("sslcontext") is sctx
        assert str_.get_extra_info("ssl_object").server_side is True
        speer = str_.get_extra_info("peercert")
        assert (("commonName", "glassloop client"),) in speer["subject"]
        assert str_.get_extra_info("cipher") == cipher
        assert str_.get_extra_info("peername") == tr.get_extra_info("sockname")
        tr.close()
        await asyncio.wait_for(pr.lost, 5)
        await asyncio.wait_for(srv_protos[0].lost, 5)
        server.close()
        await server.wait_closed()

    run(main())


def test_tls_server_without_client_cert_peercert_none(loop, run, certs):
    async def main():
        srv = []

        def factory():
            p = RecordingProtocol(loop)
            srv.append(p)
            return p

        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(
            lambda: RecordingProtocol(loop), "127.0.0.1", port,
            ssl=client_ctx(certs), server_hostname="localhost")
        await asyncio.wait_for(asyncio.shield(_first(srv)), 5)
        await srv[0].made
        assert srv[0].transport.get_extra_info("peercert") is None
        tr.close()
        await pr.lost
        await asyncio.wait_for(srv[0].lost, 5)
        server.close()
        await server.wait_closed()

    run(main())


async def _first(lst):
    while not lst:
        await asyncio.sleep(0.005)
    return lst[0]


# ---------------------------------------------------------------------------
# Shutdown: close_notify, abort, ssl_shutdown_timeout
# ---------------------------------------------------------------------------

def test_tls_clean_close_peer_sees_eof(loop, run, certs):
    """close() sends close_notify: the server protocol gets the data, then
    eof_received, then connection_lost(None); the client's connection_lost
    gets None too."""
    async def main():
        srv = []

        def factory():
            p = RecordingProtocol(loop)
            srv.append(p)
            return p

        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(
            lambda: RecordingProtocol(loop), "127.0.0.1", port,
            ssl=client_ctx(certs), server_hostname="localhost")
        tr.write(b"last words")
        tr.close()
        assert tr.is_closing()
        t0 = loop.time()
        assert await asyncio.wait_for(pr.lost, 5) is None
        p = await _first(srv)
        assert await asyncio.wait_for(p.lost, 5) is None
        assert loop.time() - t0 < 2.0  # a cooperative peer: no shutdown timeout
        assert bytes(p.data) == b"last words"
        assert p.events == ["made", "data", "eof", ("lost", None)]
        # the server closes in reply (eof_received returned None): its
        # close_notify reaches the closing client as an EOF
        assert pr.events == ["made", "eof", ("lost", None)]
        server.close()
        await server.wait_closed()

    run(main())


def test_tls_streams_reader_sees_eof(loop, run, certs):
    async def main():
        got = loop.create_future()

        async def handler(reader, writer):
            got.set_result(await reader.read())
            assert reader.at_eof()
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx(certs), server_hostname="localhost")
        writer.write(b"a" * 100000)
        writer.close()
        assert await asyncio.wait_for(got, 5) == b"a" * 100000
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())


def test_tls_abort(loop, run, certs):
    """abort() closes at once without close_notify: the client protocol's
    connection_lost(None) comes right away, buffered data is dropped, and the
    server's connection is lost (in the same way as on asyncio)."""
    async def scenario(lp):
        srv = []

        def factory():
            p = RecordingProtocol(lp)
            srv.append(p)
            return p

        server = await lp.create_server(factory, "127.0.0.1", 0, ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        tr, pr = await lp.create_connection(
            lambda: RecordingProtocol(lp), "127.0.0.1", port,
            ssl=client_ctx(certs), server_hostname="localhost")
        p = await _first(srv)
        await p.made
        tr.abort()
        assert tr.is_closing()
        client_exc = await asyncio.wait_for(pr.lost, 2)
        server_exc = await asyncio.wait_for(p.lost, 5)
        server.close()
        await server.wait_closed()
        return pr.events, exc_signature(client_exc), p.events, exc_signature(server_exc)

    got = run(scenario(loop))
    assert got[0] == ["made", ("lost", None)]
    assert got[1] is None
    assert got == run_on_asyncio(scenario)


def test_tls_close_with_pending_data_flushes(loop, run, certs):
    """close() with a big write still buffered delivers everything first."""
    size = 2 * 1024 * 1024
    data = payload(size, b"flush")

    async def main():
        got = loop.create_future()

        async def handler(reader, writer):
            got.set_result(await reader.read())
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(
            lambda: RecordingProtocol(loop), "127.0.0.1", port,
            ssl=client_ctx(certs), server_hostname="localhost")
        tr.write(data)
        tr.close()
        received = await asyncio.wait_for(got, 20)
        assert len(received) == size
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        await asyncio.wait_for(pr.lost, 5)
        server.close()
        await server.wait_closed()

    run(main())


class _SilentTLSPeer:
    """A TLS server in a thread that completes the handshake and then never
    reads again (so it never answers close_notify)."""

    def __init__(self, ctx):
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.ctx = ctx
        self.release = threading.Event()
        self.handshaken = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.lsock.settimeout(10)
            conn, _ = self.lsock.accept()
            conn.settimeout(10)
            s = self.ctx.wrap_socket(conn, server_side=True)
            self.handshaken.set()
            self.release.wait(15)
            s.close()
        except Exception as e:  # pragma: no cover - reported by the test
            self.error = e
        finally:
            self.lsock.close()

    def stop(self):
        self.release.set()
        self.thread.join(10)


@pytest.mark.skipif(not PY311, reason="ssl_shutdown_timeout is new in 3.11")
def test_tls_ssl_shutdown_timeout(loop, run, certs):
    """close() waits for the peer's close_notify at most ssl_shutdown_timeout,
    then drops the connection; the protocol gets connection_lost(TimeoutError)
    as on asyncio."""
    async def scenario(lp):
        peer = _SilentTLSPeer(server_ctx(certs))
        try:
            tr, pr = await lp.create_connection(
                lambda: RecordingProtocol(lp), "127.0.0.1", peer.port,
                ssl=client_ctx(certs), server_hostname="localhost",
                ssl_shutdown_timeout=0.5)
            await lp.run_in_executor(None, peer.handshaken.wait, 5)
            t0 = time.monotonic()
            tr.close()
            await asyncio.sleep(0.2)
            early = pr.lost.done()
            exc = await asyncio.wait_for(pr.lost, 5)
            took = time.monotonic() - t0
            return early, took, exc_signature(exc)
        finally:
            peer.stop()

    early, took, exc = run(scenario(loop))
    assert early is False
    assert 0.4 <= took < 3.0
    assert exc[0] == "TimeoutError"
    ref = run_on_asyncio(scenario)
    assert exc == ref[2]


@pytest.mark.skipif(not PY311, reason="ssl_shutdown_timeout is new in 3.11")
def test_tls_ssl_shutdown_timeout_validation(loop, run, certs):
    async def main():
        with pytest.raises(ValueError, match="ssl_shutdown_timeout is only meaningful with ssl"):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1,
                                         ssl_shutdown_timeout=1)
        lsock = socket.create_server(("127.0.0.1", 0))
        try:
            with pytest.raises(ValueError, match="ssl_shutdown_timeout should be a positive number"):
                await loop.create_connection(asyncio.Protocol, *lsock.getsockname(),
                                             ssl=client_ctx(certs), server_hostname="localhost",
                                             ssl_shutdown_timeout=-1)
        finally:
            lsock.close()

    run(main())


# ---------------------------------------------------------------------------
# Handshake failures
# ---------------------------------------------------------------------------

async def _start_tls_server(lp, certs):
    srv = []

    def factory():
        p = RecordingProtocol(lp)
        srv.append(p)
        return p

    server = await lp.create_server(factory, "127.0.0.1", 0, ssl=server_ctx(certs))
    return server, srv, server.sockets[0].getsockname()[1]


def test_tls_untrusted_certificate(loop, run, certs):
    async def scenario(lp):
        server, srv, port = await _start_tls_server(lp, certs)
        with pytest.raises(ssl.SSLCertVerificationError) as ei:
            await lp.create_connection(
                lambda: RecordingProtocol(lp), "127.0.0.1", port,
                ssl=client_ctx(certs, ca=certs.other_ca), server_hostname="localhost")
        # the server side never hands a connection to its protocol
        await asyncio.sleep(0.1)
        made = [p for p in srv if p.events]
        server.close()
        await server.wait_closed()
        return exc_signature(ei.value), "certificate verify failed" in str(ei.value), len(made)

    got = run(scenario(loop))
    assert got[0][0] == "SSLCertVerificationError"
    assert got[1] is True
    assert got[2] == 0
    assert got == run_on_asyncio(scenario)


def test_tls_untrusted_certificate_streams(loop, run, certs):
    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0, ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port,
                                          ssl=ssl.create_default_context(cafile=certs.other_ca),
                                          server_hostname="localhost")
        # The server keeps serving trusted clients afterwards.
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx(certs),
                                             server_hostname="localhost")
        w.write(b"still alive")
        assert await asyncio.wait_for(r.readexactly(11), 5) == b"still alive"
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())


def test_tls_hostname_mismatch(loop, run, certs):
    async def scenario(lp):
        server, srv, port = await _start_tls_server(lp, certs)
        with pytest.raises(ssl.SSLCertVerificationError) as ei:
            await lp.create_connection(
                lambda: RecordingProtocol(lp), "127.0.0.1", port,
                ssl=client_ctx(certs), server_hostname="wrong.example.org")
        await asyncio.sleep(0.1)  # let the server's side of the handshake fail too
        server.close()
        await server.wait_closed()
        return exc_signature(ei.value), "Hostname mismatch" in str(ei.value)

    got = run(scenario(loop))
    assert got[0][0] == "SSLCertVerificationError"
    assert got[1] is True
    assert got == run_on_asyncio(scenario)


def test_tls_client_cert_required_but_missing(loop, run, certs):
    """The server requires a client certificate; a client without one fails
    (at the handshake or at its first read, TLS 1.3), as on asyncio."""
    async def scenario(lp):
        srv = []

        def factory():
            p = RecordingProtocol(lp)
            srv.append(p)
            return p

        server = await lp.create_server(factory, "127.0.0.1", 0,
                                        ssl=server_ctx(certs, require_client_cert=True))
        port = server.sockets[0].getsockname()[1]
        outcome = None
        try:
            tr, pr = await lp.create_connection(
                lambda: RecordingProtocol(lp), "127.0.0.1", port,
                ssl=client_ctx(certs), server_hostname="localhost")
        except (ssl.SSLError, ConnectionError) as e:
            outcome = ("connect failed", type(e).__name__)
        else:
            tr.write(b"x")
            exc = await asyncio.wait_for(pr.lost, 5)
            outcome = ("lost", exc_signature(exc)[0] if exc else None)
        await asyncio.sleep(0.05)
        made = sum(1 for p in srv if "made" in p.events)
        server.close()
        await server.wait_closed()
        return outcome, made

    got = run(scenario(loop))
    assert got[1] == 0
    assert got == run_on_asyncio(scenario)


def test_tls_handshake_timeout_client(loop, run, certs):
    """The peer accepts TCP (kernel backlog) but never speaks TLS."""
    async def scenario(lp):
        lsock = socket.create_server(("127.0.0.1", 0))
        try:
            port = lsock.getsockname()[1]
            t0 = time.monotonic()
            with pytest.raises((TimeoutError, ConnectionAbortedError)) as ei:
                await lp.create_connection(
                    asyncio.Protocol, "127.0.0.1", port, ssl=client_ctx(certs),
                    server_hostname="localhost", ssl_handshake_timeout=0.3)
            took = time.monotonic() - t0
        finally:
            lsock.close()
        return type(ei.value).__name__, str(ei.value), took

    name, msg, took = run(scenario(loop))
    assert 0.25 <= took < 3.0
    ref = run_on_asyncio(scenario)
    assert (name, msg) == ref[:2]


def test_tls_handshake_timeout_server(loop, run, certs):
    """A client that connects to a TLS server and never sends a ClientHello is
    disconnected after ssl_handshake_timeout."""
    async def main():
        made = []
        server = await loop.create_server(lambda: RecordingProtocol(loop), "127.0.0.1", 0,
                                          ssl=server_ctx(certs), ssl_handshake_timeout=0.3)
        port = server.sockets[0].getsockname()[1]
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        t0 = time.monotonic()
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 100), 5)
        except ConnectionResetError:
            data = b""
        took = time.monotonic() - t0
        sock.close()
        server.close()
        await server.wait_closed()
        assert data == b""
        assert 0.25 <= took < 3.0
        assert made == []

    run(main())


def test_tls_handshake_timeout_validation(loop, run, certs):
    async def main():
        lsock = socket.create_server(("127.0.0.1", 0))
        try:
            with pytest.raises(ValueError, match="ssl_handshake_timeout should be a positive number"):
                await loop.create_connection(asyncio.Protocol, *lsock.getsockname(),
                                             ssl=client_ctx(certs), server_hostname="localhost",
                                             ssl_handshake_timeout=-1)
        finally:
            lsock.close()
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful with ssl"):
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl_handshake_timeout=1)

    run(main())


def test_tls_peer_sends_garbage(loop, run, certs):
    """The 'server' answers the ClientHello with plain text: the client's
    create_connection raises ssl.SSLError (as asyncio's does)."""
    async def scenario(lp):
        handled = lp.create_future()

        async def handler(reader, writer):
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 20)
            try:
                await reader.read()  # until the client gives up
            except ConnectionError:
                pass
            writer.close()
            handled.set_result(None)

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ssl.SSLError) as ei:
            await asyncio.wait_for(lp.create_connection(
                asyncio.Protocol, "127.0.0.1", port, ssl=client_ctx(certs),
                server_hostname="localhost"), 5)
        await asyncio.wait_for(handled, 5)
        server.close()
        await server.wait_closed()
        return exc_signature(ei.value)

    got = run(scenario(loop))
    assert got[0] == "SSLError"
    assert got == run_on_asyncio(scenario)


def test_tls_server_gets_garbage(loop, run, certs):
    """A plain-text client talking to a TLS server is disconnected; the
    server's protocol is never connected, and the server keeps serving."""
    async def main():
        server, srv, port = await _start_tls_server(loop, certs)
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, b"GET / HTTP/1.0\r\n\r\n" * 10)
        chunks = []
        while True:
            try:
                d = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
            except ConnectionResetError:
                break
            if not d:
                break
            chunks.append(d)
        sock.close()
        # Whatever the server sent before closing is a TLS alert record, if anything.
        data = b"".join(chunks)
        assert data == b"" or data[:1] == b"\x15"
        assert [p for p in srv if "made" in p.events] == []
        tr, pr = await loop.create_connection(
            lambda: RecordingProtocol(loop), "127.0.0.1", port,
            ssl=client_ctx(certs), server_hostname="localhost")
        tr.close()
        await asyncio.wait_for(pr.lost, 5)
        server.close()
        await server.wait_closed()

    run(main())


def test_tls_many_concurrent_connections(loop, run, certs):
    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0, ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        cctx = client_ctx(certs)

        async def one(i):
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=cctx,
                                                 server_hostname="localhost")
            msg = ("message %d " % i).encode() * 1000
            w.write(msg)
            got = await r.readexactly(len(msg))
            w.close()
            await w.wait_closed()
            return got == msg

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(20))), 20)
        assert all(results)
        server.close()
        await server.wait_closed()

    run(main())


# ---------------------------------------------------------------------------
# start_tls over glassloop's own stream transport: the failure paths
# (ssl= connections get asyncio's socket transport; start_tls wraps the
# transport the plain connection already has)
# ---------------------------------------------------------------------------

async def starttls_server(lp, certs, mode, done=None, small_buffers=False):
    """A plain server speaking a tiny STARTTLS protocol: it reads
    "STARTTLS\\n", answers "OK\\n" and then, by mode:
    'tls' upgrades (server side) and echoes; 'silent' never speaks TLS;
    'garbage' sends plain text instead of a ServerHello; 'hangup' closes
    the connection instead; 'rude' upgrades, sends b"bye" and drops the TCP
    connection without a close_notify."""
    async def handler(reader, writer):
        outcome = None
        if small_buffers:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        try:
            line = await reader.readline()
            if line != b"STARTTLS\n":
                outcome = ("bad line", line)
                return
            writer.write(b"OK\n")
            if mode == "tls":
                await writer.start_tls(server_ctx(certs))
                while True:
                    data = await reader.read(1 << 16)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
                outcome = "echoed"
            elif mode == "silent":
                await reader.read()
                outcome = "silent"
            elif mode == "hangup":
                await reader.read(1)  # the ClientHello has come
                writer.transport.abort()
                outcome = "hung up"
            elif mode == "rude":
                await writer.start_tls(server_ctx(certs))
                writer.write(b"bye")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.transport.abort()
                outcome = "rude"
            elif mode == "garbage":
                await reader.read(1)  # the ClientHello has come
                writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 20)
                await reader.read()
                outcome = "garbage"
        except (ssl.SSLError, ConnectionError) as e:
            outcome = exc_signature(e)
        finally:
            writer.close()
            if done is not None and not done.done():
                done.set_result(outcome)

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def plain_then_start_tls(lp, port, ctx, sock=None, **kwargs):
    """Connect in plain text, negotiate STARTTLS, upgrade with loop.start_tls.
    Returns (ssl_transport, protocol, plain_transport)."""
    proto = RecordingProtocol(lp)
    if sock is not None:
        tr, _ = await lp.create_connection(lambda: proto, sock=sock)
    else:
        tr, _ = await lp.create_connection(lambda: proto, "127.0.0.1", port)
    tr.write(b"STARTTLS\n")
    for _ in range(500):
        if bytes(proto.data) == b"OK\n":
            break
        await asyncio.sleep(0.01)
    assert bytes(proto.data) == b"OK\n"
    proto.data.clear()
    try:
        ssl_tr = await lp.start_tls(tr, proto, ctx, **kwargs)
    except BaseException:
        tr.close()
        raise
    return ssl_tr, proto, tr


def test_start_tls_echo_integrity(loop, run, certs):
    async def main():
        done = loop.create_future()
        server, port = await starttls_server(loop, certs, "tls", done)
        ssl_tr, proto, plain = await plain_then_start_tls(
            loop, port, client_ctx(certs), server_hostname="localhost")
        size = 3 * 1024 * 1024 + 5
        data = payload(size, b"starttls-echo")
        view = memoryview(data)
        for i in range(0, size, 1 << 17):
            ssl_tr.write(view[i:i + (1 << 17)])
        for _ in range(3000):
            if len(proto.data) >= size:
                break
            await asyncio.sleep(0.01)
        assert len(proto.data) == size
        assert hashlib.sha256(proto.data).digest() == hashlib.sha256(data).digest()
        ssl_tr.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert await asyncio.wait_for(done, 5) == "echoed"
        server.close()
        await server.wait_closed()

    run(main())


def test_start_tls_backpressure(loop, run, certs):
    """After start_tls, a peer that does not read makes the TLS transport
    pause its protocol's writing; reading again resumes it."""
    async def main():
        done = loop.create_future()
        server, port = await starttls_server(loop, certs, "tls", done, small_buffers=True)

        class Proto(RecordingProtocol):
            paused = 0
            resumed = 0

            def pause_writing(self):
                self.paused += 1

            def resume_writing(self):
                self.resumed += 1

        ssl_tr, proto, plain = await plain_then_start_tls(
            loop, port, client_ctx(certs), server_hostname="localhost",
            sock=await small_buffer_socket(loop, port))
        proto.__class__ = Proto
        shrink_send_buffer(plain)
        # The echo server stops reading once its writes back up, because we
        # do not read the echoes while paused.
        ssl_tr.pause_reading()
        size = 8 * 1024 * 1024
        data = payload(size, b"starttls-bp")
        view = memoryview(data)
        for i in range(0, size, 1 << 16):
            ssl_tr.write(view[i:i + (1 << 16)])
            await asyncio.sleep(0)
        await asyncio.sleep(0.3)
        assert proto.paused >= 1
        assert ssl_tr.get_write_buffer_size() > 0
        ssl_tr.resume_reading()
        for _ in range(3000):
            if len(proto.data) >= size:
                break
            await asyncio.sleep(0.01)
        assert len(proto.data) == size
        assert hashlib.sha256(proto.data).digest() == hashlib.sha256(data).digest()
        assert proto.resumed >= 1
        assert ssl_tr.get_write_buffer_size() == 0
        ssl_tr.close()
        await asyncio.wait_for(proto.lost, 5)
        await asyncio.wait_for(done, 5)
        server.close()
        await server.wait_closed()

    run(main())


def test_start_tls_untrusted_certificate(loop, run, certs):
    async def scenario(lp):
        done = lp.create_future()
        server, port = await starttls_server(lp, certs, "tls", done)
        with pytest.raises(ssl.SSLCertVerificationError) as ei:
            await asyncio.wait_for(plain_then_start_tls(
                lp, port, client_ctx(certs, ca=certs.other_ca),
                server_hostname="localhost"), 5)
        server_outcome = await asyncio.wait_for(done, 5)
        server.close()
        await server.wait_closed()
        return exc_signature(ei.value), server_outcome

    got = run(scenario(loop))
    assert got[0][0] == "SSLCertVerificationError"
    assert got == run_on_asyncio(scenario)


def test_start_tls_hostname_mismatch(loop, run, certs):
    async def scenario(lp):
        done = lp.create_future()
        server, port = await starttls_server(lp, certs, "tls", done)
        with pytest.raises(ssl.SSLCertVerificationError) as ei:
            await asyncio.wait_for(plain_then_start_tls(
                lp, port, client_ctx(certs), server_hostname="nope.invalid"), 5)
        server_outcome = await asyncio.wait_for(done, 5)
        server.close()
        await server.wait_closed()
        return exc_signature(ei.value), "Hostname mismatch" in str(ei.value), server_outcome

    got = run(scenario(loop))
    assert got[1] is True
    assert got == run_on_asyncio(scenario)


def test_start_tls_handshake_timeout(loop, run, certs):
    async def scenario(lp):
        done = lp.create_future()
        server, port = await starttls_server(lp, certs, "silent", done)
        t0 = time.monotonic()
        with pytest.raises((TimeoutError, ConnectionAbortedError)) as ei:
            await asyncio.wait_for(plain_then_start_tls(
                lp, port, client_ctx(certs), server_hostname="localhost",
                ssl_handshake_timeout=0.3), 5)
        took = time.monotonic() - t0
        server_outcome = await asyncio.wait_for(done, 5)
        server.close()
        await server.wait_closed()
        return type(ei.value).__name__, str(ei.value), server_outcome, took

    got = run(scenario(loop))
    assert 0.25 <= got[3] < 3.0
    assert got[:3] == run_on_asyncio(scenario)[:3]


def test_start_tls_peer_sends_garbage(loop, run, certs):
    async def scenario(lp):
        done = lp.create_future()
        server, port = await starttls_server(lp, certs, "garbage", done)
        with pytest.raises(ssl.SSLError) as ei:
            await asyncio.wait_for(plain_then_start_tls(
                lp, port, client_ctx(certs), server_hostname="localhost"), 5)
        server_outcome = await asyncio.wait_for(done, 5)
        server.close()
        await server.wait_closed()
        return exc_signature(ei.value), server_outcome

    got = run(scenario(loop))
    assert got[0][0] == "SSLError"
    assert got == run_on_asyncio(scenario)


def test_start_tls_server_side_gets_garbage(loop, run, certs):
    """Server-side start_tls when the client sends plain text instead of a
    ClientHello: the server's start_tls raises ssl.SSLError and the client
    sees the connection close."""
    async def scenario(lp):
        done = lp.create_future()
        server, port = await starttls_server(lp, certs, "tls", done)
        sock = socket.socket()
        sock.setblocking(False)
        await lp.sock_connect(sock, ("127.0.0.1", port))
        await lp.sock_sendall(sock, b"STARTTLS\n")
        assert await asyncio.wait_for(lp.sock_recv(sock, 3), 5) == b"OK\n"
        await lp.sock_sendall(sock, b"GET / HTTP/1.0\r\n\r\n" * 10)
        server_outcome = await asyncio.wait_for(done, 5)
        rest = b""
        while True:
            try:
                d = await asyncio.wait_for(lp.sock_recv(sock, 4096), 5)
            except ConnectionResetError:
                break
            if not d:
                break
            rest += d
        sock.close()
        server.close()
        await server.wait_closed()
        return server_outcome, rest == b"" or rest[:1] == b"\x15"

    got = run(scenario(loop))
    assert got[0][0] == "SSLError"
    assert got[1] is True
    assert got == run_on_asyncio(scenario)


def test_start_tls_abort(loop, run, certs):
    async def scenario(lp):
        done = lp.create_future()
        server, port = await starttls_server(lp, certs, "tls", done)
        ssl_tr, proto, plain = await plain_then_start_tls(
            lp, port, client_ctx(certs), server_hostname="localhost")
        ssl_tr.write(b"x" * 1000)
        ssl_tr.abort()
        assert ssl_tr.is_closing()
        exc = await asyncio.wait_for(proto.lost, 2)
        server_outcome = await asyncio.wait_for(done, 5)
        await asyncio.sleep(0)
        plain_closing = plain.is_closing()
        server.close()
        await server.wait_closed()
        return proto.events, exc_signature(exc), server_outcome, plain_closing

    got = run(scenario(loop))
    assert got[1] is None
    assert got[3] is True
    assert got == run_on_asyncio(scenario)


class _SilentStartTLSPeer(_SilentTLSPeer):
    """Like _SilentTLSPeer, after a plain-text STARTTLS exchange."""

    def _run(self):
        try:
            self.lsock.settimeout(10)
            conn, _ = self.lsock.accept()
            conn.settimeout(10)
            buf = b""
            while not buf.endswith(b"\n"):
                buf += conn.recv(1)
            conn.sendall(b"OK\n")
            s = self.ctx.wrap_socket(conn, server_side=True)
            self.handshaken.set()
            self.release.wait(15)
            s.close()
        except Exception as e:  # pragma: no cover
            self.error = e
        finally:
            self.lsock.close()


@pytest.mark.skipif(not PY311, reason="ssl_shutdown_timeout is new in 3.11")
def test_start_tls_ssl_shutdown_timeout(loop, run, certs):
    async def scenario(lp):
        peer = _SilentStartTLSPeer(server_ctx(certs))
        try:
            ssl_tr, proto, plain = await plain_then_start_tls(
                lp, peer.port, client_ctx(certs), server_hostname="localhost",
                ssl_shutdown_timeout=0.5)
            await lp.run_in_executor(None, peer.handshaken.wait, 5)
            t0 = time.monotonic()
            ssl_tr.close()
            await asyncio.sleep(0.2)
            early = proto.lost.done()
            exc = await asyncio.wait_for(proto.lost, 5)
            took = time.monotonic() - t0
            await asyncio.sleep(0)
            return early, took, exc_signature(exc), plain.is_closing()
        finally:
            peer.stop()

    early, took, exc, plain_closing = run(scenario(loop))
    assert early is False
    assert 0.4 <= took < 3.0
    assert exc[0] == "TimeoutError"
    assert plain_closing is True
    ref = run_on_asyncio(scenario)
    assert exc == ref[2]


def test_start_tls_peer_hangs_up_during_handshake(loop, run, certs):
    async def scenario(lp):
        done = lp.create_future()
        server, port = await starttls_server(lp, certs, "hangup", done)
        with pytest.raises(ConnectionError) as ei:
            await asyncio.wait_for(plain_then_start_tls(
                lp, port, client_ctx(certs), server_hostname="localhost"), 5)
        server_outcome = await asyncio.wait_for(done, 5)
        server.close()
        await server.wait_closed()
        return exc_signature(ei.value), server_outcome

    got = run(scenario(loop))
    assert got[0][0] == "ConnectionResetError"
    assert got == run_on_asyncio(scenario)


def test_start_tls_peer_closes_without_close_notify(loop, run, certs):
    """The peer drops the TCP connection after sending data, without a TLS
    close_notify (common with real servers): the data arrives and the
    protocol's connection is lost the same way as on asyncio."""
    async def scenario(lp):
        done = lp.create_future()
        server, port = await starttls_server(lp, certs, "rude", done)
        ssl_tr, proto, plain = await plain_then_start_tls(
            lp, port, client_ctx(certs), server_hostname="localhost")
        exc = await asyncio.wait_for(proto.lost, 5)
        server_outcome = await asyncio.wait_for(done, 5)
        server.close()
        await server.wait_closed()
        return bytes(proto.data), proto.events, exc_signature(exc), server_outcome

    got = run(scenario(loop))
    assert got[0] == b"bye"
    assert got == run_on_asyncio(scenario)


def test_tls_peer_closes_without_close_notify(loop, run, certs):
    """The same over an ssl= connection."""
    async def scenario(lp):
        async def handler(reader, writer):
            writer.write(b"bye")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.transport.abort()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        tr, proto = await lp.create_connection(
            lambda: RecordingProtocol(lp), "127.0.0.1", port,
            ssl=client_ctx(certs), server_hostname="localhost")
        exc = await asyncio.wait_for(proto.lost, 5)
        server.close()
        await server.wait_closed()
        return bytes(proto.data), proto.events, exc_signature(exc)

    got = run(scenario(loop))
    assert got[0] == b"bye"
    assert got == run_on_asyncio(scenario)


# ---------------------------------------------------------------------------
# The socket under TLS, flow control both ways, shutdown from either side
# ---------------------------------------------------------------------------

def test_tls_raw_transport_is_the_loops_socket_transport(loop, run, loop_name, certs):
    """ssl= puts asyncio's SSLProtocol over the loop's own socket transport: on
    glassloop the Rust StreamTransport (as start_tls does), on asyncio its
    selector transport; both ends, client and server, TCP and Unix."""
    async def main():
        path = short_unix_path()
        accepted = []
        tcp = await loop.create_server(lambda: _Accepted(accepted), "127.0.0.1", 0, ssl=server_ctx(certs))
        unix = await loop.create_unix_server(lambda: _Accepted(accepted), path, ssl=server_ctx(certs))
        port = tcp.sockets[0].getsockname()[1]
        t1, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port,
                                             ssl=client_ctx(certs), server_hostname="localhost")
        t2, _ = await loop.create_unix_connection(asyncio.Protocol, path,
                                                  ssl=client_ctx(certs), server_hostname="localhost")
        for _ in range(1000):
            if len(accepted) == 2:
                break
            await asyncio.sleep(0.005)
        raw = [type(t._ssl_protocol._transport).__name__ for t in (t1, t2, *accepted)]
        for t in (t1, t2, *accepted):
            t.close()
        for srv in (tcp, unix):
            srv.close()
            await srv.wait_closed()
        return raw

    expected = "StreamTransport" if loop_name == "glassloop" else "_SelectorSocketTransport"
    assert run(main()) == [expected] * 4


class _Accepted(asyncio.Protocol):
    def __init__(self, into):
        self.into = into

    def connection_made(self, transport):
        self.into.append(transport)


class _FlowEcho(asyncio.Protocol):
    """One end of the 16 MiB test: hashes what it receives, echoes it back when
    `echo`, pauses its reading now and then (every `pause_every`-th
    data_received, for a little while), and follows write flow control: an
    echoing end stops reading while its writes are paused."""

    def __init__(self, loop, echo, pause_every, pause_for):
        self.loop, self.echo = loop, echo
        self.pause_every, self.pause_for = pause_every, pause_for
        self.hash = hashlib.sha256()
        self.received = 0
        self.calls = 0
        self.reasons = set()
        self.reading_pauses = 0
        self.writing_pauses = 0
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.progress = asyncio.Event()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def _pause(self, why):
        if not self.reasons:
            self.transport.pause_reading()
        self.reasons.add(why)

    def _resume(self, why):
        self.reasons.discard(why)
        if not self.reasons and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data):
        self.received += len(data)
        self.hash.update(data)
        self.calls += 1
        self.progress.set()
        if self.echo:
            self.transport.write(data)
        if self.calls % self.pause_every == 0 and "now and then" not in self.reasons:
            self.reading_pauses += 1
            self._pause("now and then")
            self.loop.call_later(self.pause_for, self._resume, "now and then")

    def pause_writing(self):
        self.writing_pauses += 1
        self.can_write.clear()
        if self.echo:
            self._pause("peer is slow")

    def resume_writing(self):
        self.can_write.set()
        if self.echo:
            self._resume("peer is slow")

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def _small_buffer_connection(lp, kind, address, factory, **kwargs):
    """A TLS client connection whose socket has small kernel buffers (32 KiB),
    so that flow control has to act long before 16 MiB are in flight."""
    if kind == "tcp":
        sock = await small_buffer_socket(lp, address[1])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        return await lp.create_connection(factory, sock=sock, **kwargs)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.connect(address)
    sock.setblocking(False)
    return await lp.create_unix_connection(factory, sock=sock, **kwargs)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ("tcp", "unix"))
def test_tls_echo_16mib_random_chunks_pause_resume_both_sides(loop, run, certs, kind):
    """16 MiB through a TLS echo in random-sized writes (1 B .. 256 KiB) that
    follow pause_writing/resume_writing, both ends pausing their reading now and
    then: every byte comes back, in order (same SHA-256), and flow control acted
    on both sides of the connection."""
    import random
    size = 16 * 1024 * 1024
    data = payload(size, b"16 MiB " + kind.encode())
    rng = random.Random(1603)

    async def main():
        servers = []

        def factory():
            p = _FlowEcho(loop, echo=True, pause_every=7, pause_for=0.002)
            servers.append(p)
            return p

        if kind == "tcp":
            server = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ctx(certs))
            address = server.sockets[0].getsockname()
        else:
            address = short_unix_path()
            server = await loop.create_unix_server(factory, address, ssl=server_ctx(certs))
        tr, client = await _small_buffer_connection(
            loop, kind, address, lambda: _FlowEcho(loop, echo=False, pause_every=5, pause_for=0.003),
            ssl=client_ctx(certs), server_hostname="localhost")
        view = memoryview(data)
        sent = 0
        while sent < size:
            await client.can_write.wait()
            n = rng.choice((1, 100, 1000, 4096, 16 * 1024, 65536, 100_000, 256 * 1024))
            n = rng.randint(1, n)
            tr.write(view[sent:sent + n])
            sent += n
            if rng.random() < 0.1:
                await asyncio.sleep(0)
        while client.received < size:
            client.progress.clear()
            await asyncio.wait_for(client.progress.wait(), 20)
        tr.close()
        assert await asyncio.wait_for(client.lost, 10) is None
        server_end = servers[0]
        assert await asyncio.wait_for(server_end.lost, 10) is None
        server.close()
        await server.wait_closed()
        return client, server_end

    client, server_end = run(main())
    want = hashlib.sha256(data).hexdigest()
    assert (client.received, client.hash.hexdigest()) == (size, want)
    assert (server_end.received, server_end.hash.hexdigest()) == (size, want)
    assert client.reading_pauses > 0 and server_end.reading_pauses > 0
    assert client.writing_pauses > 0  # the writer was held back, not buffered without bound


def small_buffer_listener():
    """A listening TCP socket whose accepted sockets get a 32 KiB receive buffer."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    lsock.setblocking(False)
    return lsock


def test_tls_peer_stops_reading_pauses_writer_and_bounds_buffers(loop, run, certs):
    """A TLS client writes to a server that stops reading (small kernel buffers
    on both ends): the client protocol gets pause_writing once the TLS layer's
    buffer passes its high-water mark, nothing grows after the writer stops
    (neither the TLS layer's buffer nor the socket transport's), and when the
    server reads again resume_writing comes and every byte arrives."""
    chunk = payload(64 * 1024, b"stalled reader")

    async def main():
        servers = []

        def factory():
            p = RecordingProtocol(loop)
            servers.append(p)
            return p

        server = await loop.create_server(factory, sock=small_buffer_listener(), ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        tr, client = await _small_buffer_connection(
            loop, "tcp", ("127.0.0.1", port), lambda: _FlowEcho(loop, echo=False, pause_every=1 << 30, pause_for=0),
            ssl=client_ctx(certs), server_hostname="localhost")
        peer = await _first(servers)
        await peer.made
        peer.transport.pause_reading()
        written = 0
        while client.can_write.is_set():
            tr.write(chunk)
            written += len(chunk)
            assert written < 64 * 1024 * 1024, "pause_writing never came"
            await asyncio.sleep(0)
        high = tr.get_write_buffer_limits()[1]
        at_pause = tr.get_write_buffer_size()
        raw = tr._ssl_protocol._transport
        samples = []
        for _ in range(2):
            await asyncio.sleep(0.25)
            samples.append((tr.get_write_buffer_size(), raw.get_write_buffer_size(), len(peer.data)))
        peer.transport.resume_reading()
        await asyncio.wait_for(client.can_write.wait(), 10)
        while len(peer.data) < written:
            await asyncio.sleep(0.01)
        tr.close()
        await asyncio.wait_for(client.lost, 5)
        await asyncio.wait_for(peer.lost, 5)
        server.close()
        await server.wait_closed()
        return written, high, at_pause, samples, client.writing_pauses, bytes(peer.data)

    written, high, at_pause, samples, pauses, got = run(main())
    assert pauses == 1
    assert high <= at_pause <= high + len(chunk)  # paused by the write that crossed the mark
    assert samples[0] == samples[1]  # nothing moves while the peer does not read
    assert samples[0][2] == 0
    # What the writer got rid of before it was paused: the TLS layer's buffer, the
    # socket transport's, the kernel's and the reader's TLS buffer; all bounded.
    assert written < 2 * 1024 * 1024
    assert got == chunk * (written // len(chunk))


def test_tls_streams_drain_blocks_while_peer_does_not_read(loop, run, certs):
    """StreamWriter.drain() over ssl= waits while the peer does not read and
    returns once it reads: back-pressure reaches the writing coroutine."""
    size = 8 * 1024 * 1024
    data = payload(size, b"client drain")

    async def main():
        may_read = asyncio.Event()
        got = loop.create_future()

        async def handler(reader, writer):
            await may_read.wait()
            got.set_result(await reader.readexactly(size))
            writer.close()

        server = await asyncio.start_server(handler, sock=small_buffer_listener(), ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        sock = await small_buffer_socket(loop, port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        reader, writer = await asyncio.open_connection(sock=sock, ssl=client_ctx(certs), server_hostname="localhost")
        progress = []

        async def send_all():
            view = memoryview(data)
            for i in range(0, size, 1 << 16):
                writer.write(view[i:i + (1 << 16)])
                await writer.drain()
                progress.append(i + (1 << 16))

        sending = asyncio.ensure_future(send_all())
        await asyncio.sleep(0.3)
        stalled_at = len(progress)
        await asyncio.sleep(0.2)
        still_stalled = len(progress) == stalled_at and not sending.done()
        buffered = writer.transport.get_write_buffer_size()
        may_read.set()
        await asyncio.wait_for(sending, 20)
        received = await asyncio.wait_for(got, 20)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return still_stalled, buffered, stalled_at, received

    still_stalled, buffered, stalled_at, received = run(main())
    assert still_stalled is True
    assert buffered > 0
    assert stalled_at * (1 << 16) < 2 * 1024 * 1024
    assert received == data


@pytest.mark.parametrize("who", ("server", "both"))
def test_tls_close_notify_from_server_or_both(loop, run, certs, who):
    """close() on the server side sends close_notify after the pending data; the
    client gets the data, eof_received and connection_lost(None). Closing both
    sides at once, each with data in flight, ends as it does on asyncio (with
    OpenSSL 3: application data after close_notify is an SSLError on both)."""
    async def scenario(lp):
        servers = []

        def factory():
            p = RecordingProtocol(lp)
            servers.append(p)
            return p

        server = await lp.create_server(factory, "127.0.0.1", 0, ssl=server_ctx(certs))
        port = server.sockets[0].getsockname()[1]
        tr, pr = await lp.create_connection(lambda: RecordingProtocol(lp), "127.0.0.1", port,
                                            ssl=client_ctx(certs), server_hostname="localhost")
        peer = await _first(servers)
        await peer.made
        peer.transport.write(b"from the server " * 1000)
        peer.transport.close()
        if who == "both":
            tr.write(b"from the client " * 1000)
            tr.close()
        client_exc = await asyncio.wait_for(pr.lost, 5)
        server_exc = await asyncio.wait_for(peer.lost, 5)
        server.close()
        await server.wait_closed()
        return (pr.events, exc_signature(client_exc), bytes(pr.data),
                peer.events, exc_signature(server_exc), bytes(peer.data))

    got = run(scenario(loop))
    if who == "server":
        # The client gets the data and the close_notify (EOF), answers it; the
        # server gets the answer as its EOF.
        assert got == (["made", "data", "eof", ("lost", None)], None, b"from the server " * 1000,
                       ["made", "eof", ("lost", None)], None, b"")
    assert got == run_on_asyncio(scenario)
