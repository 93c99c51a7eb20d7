"""The high-level streams API on top of the loop's transports:
open_connection/start_server, open_unix_connection/start_unix_server,
StreamReader reads, drain() back-pressure, wait_closed."""

import asyncio
import hashlib
import os
import socket

import pytest

from loopsupport import short_unix_path

KINDS = ("tcp", "unix")


async def start(kind, handler, **kwargs):
    """(server, open()) for kind: open() connects a new (reader, writer)."""
    if kind == "tcp":
        server = await asyncio.start_server(handler, "127.0.0.1", 0, **kwargs)
        host, port = server.sockets[0].getsockname()
        return server, lambda **kw: asyncio.open_connection(host, port, **kw)
    path = short_unix_path()
    server = await asyncio.start_unix_server(handler, path, **kwargs)
    return server, lambda **kw: asyncio.open_unix_connection(path, **kw)


HANDLER_TASKS = set()


async def handlers_finished(timeout=5):
    """Wait for the server-side handler tasks (asyncio 3.11's Server does not)."""
    tasks = [t for t in HANDLER_TASKS if t.get_loop() is asyncio.get_running_loop()]
    if tasks:
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        assert not pending, "server handlers did not finish"
    HANDLER_TASKS.difference_update(tasks)


async def echo_handler(reader, writer):
    HANDLER_TASKS.add(asyncio.current_task())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("kind", KINDS)
def test_echo_roundtrip_and_wait_closed(loop, run, kind):
    data = os.urandom(4 * 1024 * 1024)

    async def main():
        server, open_ = await start(kind, echo_handler)
        async with server:
            reader, writer = await open_()
            assert writer.can_write_eof()
            assert isinstance(writer.transport, asyncio.Transport)

            async def send():
                for i in range(0, len(data), 100_000):
                    writer.write(data[i:i + 100_000])
                    await writer.drain()
                writer.write_eof()

            sender = asyncio.ensure_future(send())
            got = await asyncio.wait_for(reader.read(), 20)
            await sender
            assert reader.at_eof()
            assert not writer.is_closing()
            writer.close()
            assert writer.is_closing()
            await asyncio.wait_for(writer.wait_closed(), 5)
            await writer.wait_closed()  # again: returns at once
            await handlers_finished()
            return got

    got = run(main())
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("kind", KINDS)
def test_reader_methods(loop, run, kind):
    async def handler(reader, writer):
        writer.write(b"line one\nline two\nexact12bytesuntil-->here|rest")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server, open_ = await start(kind, handler)
        async with server:
            reader, writer = await open_()
            out = {
                "readline": await reader.readline(),
                "readuntil": await reader.readuntil(b"\n"),
                "readexactly": await reader.readexactly(12),
                "readuntil_multi": await reader.readuntil(b"-->"),
                "read4": await reader.read(4),
            }
            with pytest.raises(asyncio.IncompleteReadError) as ei:
                await reader.readexactly(100)
            out["partial"] = ei.value.partial
            out["expected"] = ei.value.expected
            out["eof_read"] = await reader.read()
            out["at_eof"] = reader.at_eof()
            writer.close()
            await writer.wait_closed()
            return out

    out = run(main())
    assert out == {
        "readline": b"line one\n",
        "readuntil": b"line two\n",
        "readexactly": b"exact12bytes",
        "readuntil_multi": b"until-->",
        "read4": b"here",
        "partial": b"|rest",
        "expected": 100,
        "eof_read": b"",
        "at_eof": True,
    }


@pytest.mark.parametrize("kind", KINDS)
def test_readuntil_limit_overrun_and_incomplete(loop, run, kind):
    async def handler(reader, writer):
        writer.write(b"x" * 100 + b"\n" + b"tail without separator")
        await writer.drain()
        writer.close()

    async def main():
        server, open_ = await start(kind, handler)
        async with server:
            reader, writer = await open_(limit=50)
            with pytest.raises(asyncio.LimitOverrunError) as lo:
                await reader.readuntil(b"\n")
            consumed = lo.value.consumed
            skipped = await reader.readexactly(101)  # the data is still there
            with pytest.raises(asyncio.IncompleteReadError) as ir:
                await reader.readuntil(b"\n")
            writer.close()
            await writer.wait_closed()
            return consumed, skipped, ir.value.partial

    consumed, skipped, partial = run(main())
    assert consumed >= 50
    assert skipped == b"x" * 100 + b"\n"
    assert partial == b"tail without separator"


@pytest.mark.parametrize("kind", KINDS)
def test_drain_blocks_while_peer_does_not_read(loop, run, kind):
    chunk = b"d" * 65536
    go = None

    async def handler(reader, writer):
        await go.wait()  # a peer that does not read until told to
        total = 0
        while True:
            data = await reader.read(1 << 20)
            if not data:
                break
            total += len(data)
        writer.write(str(total).encode())
        await writer.drain()
        writer.close()

    async def main():
        nonlocal go
        go = asyncio.Event()
        server, open_ = await start(kind, handler)
        async with server:
            reader, writer = await open_()
            written = 0
            blocked = None
            for _ in range(2000):  # at most 128 MiB
                writer.write(chunk)
                written += len(chunk)
                d = asyncio.ensure_future(writer.drain())
                # Blocked for good once the peer's StreamReader has paused
                # its transport and the kernel buffers are full.
                done, _ = await asyncio.wait([d], timeout=0.1)
                if not done:
                    blocked = d
                    break
            assert blocked is not None, "drain() never blocked"
            size_when_blocked = writer.transport.get_write_buffer_size()
            await asyncio.sleep(0.2)
            assert not blocked.done()  # still nobody reads
            go.set()
            await asyncio.wait_for(blocked, 10)
            assert writer.transport.get_write_buffer_size() <= 16 * 1024
            writer.write_eof()
            reply = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            await writer.wait_closed()
            return written, size_when_blocked, reply

    written, size_when_blocked, reply = run(main())
    assert size_when_blocked > 64 * 1024
    assert int(reply) == written


@pytest.mark.parametrize("kind", KINDS)
def test_drain_raises_after_connection_lost(loop, run, kind):
    async def handler(reader, writer):
        sock = writer.get_extra_info("socket")
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async def main():
        server, open_ = await start(kind, handler)
        async with server:
            reader, writer = await open_()
            try:
                # EOF, or the reset the zero linger sent
                assert await asyncio.wait_for(reader.read(), 5) == b""
            except ConnectionResetError:
                pass
            with pytest.raises(ConnectionError):
                for _ in range(100):
                    writer.write(b"x" * 65536)
                    await writer.drain()
                    await asyncio.sleep(0.01)
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    run(main())


def test_start_server_sockets_and_serve_forever(loop, run):
    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0, start_serving=False)
        host, port = server.sockets[0].getsockname()
        task = asyncio.ensure_future(server.serve_forever())
        while not server.is_serving():
            await asyncio.sleep(0)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"abc")
        got = await reader.readexactly(3)
        writer.close()
        await writer.wait_closed()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await handlers_finished()
        return got, server.is_serving()

    assert run(main()) == (b"abc", False)


def test_open_connection_extra_info_and_sock(loop, run):
    async def main():
        server = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        sock = socket.create_connection(addr)
        reader, writer = await asyncio.open_connection(sock=sock)
        info = (writer.get_extra_info("peername"), writer.get_extra_info("socket").fileno(),
                sock.fileno())
        writer.write(b"via sock")
        got = await reader.readexactly(8)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await handlers_finished()
        return addr, info, got

    addr, (peer, fd1, fd2), got = run(main())
    assert peer == addr
    assert fd1 == fd2
    assert got == b"via sock"


@pytest.mark.parametrize("kind", KINDS)
def test_many_concurrent_stream_clients(loop, run, kind):
    async def main():
        server, open_ = await start(kind, echo_handler)

        async def client(i):
            reader, writer = await open_()
            msg = (b"%d:" % i) * (i + 1)
            writer.write(msg)
            writer.write_eof()
            got = await reader.read()
            writer.close()
            await writer.wait_closed()
            return got == msg

        async with server:
            results = await asyncio.gather(*(client(i) for i in range(100)))
        await handlers_finished()
        return results

    assert all(run(main()))


def test_open_connection_refused(loop, run):
    async def main():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(FileNotFoundError):
            await asyncio.open_unix_connection(short_unix_path("missing"))

    run(main())
