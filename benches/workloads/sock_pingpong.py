"""Two tasks echo a 1 KiB message over a loopback TCP connection N times with the
loop's socket methods.

Each round trip is what an echo server on ``sock_recv``/``sock_sendall`` does per
request, on both ends: a ``sock_sendall`` that the kernel takes at once, and a
``sock_recv`` that finds nothing yet and waits for the fd (the peer has not sent),
then is woken by the loop. Both ends run in one loop, so the per-request cost of
the sock_* machinery (not the kernel's) is what a callgrind count shows. Checks
every message comes back intact.
"""

import asyncio
import socket
from time import perf_counter

from . import check

UNIT = "round trips/s"
N = 50_000
QUICK_N = 4_000
SIZE = 1024


def tcp_pair():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for s in (a, b):
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


async def recv_exactly(loop, sock, size):
    parts = []
    while size:
        data = await loop.sock_recv(sock, 65536)
        if not data:
            raise EOFError("peer closed")
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


async def main(loop, n, client, server):
    message = bytes(range(256)) * (SIZE // 256)

    async def echo():
        for _ in range(n):
            await loop.sock_sendall(server, await recv_exactly(loop, server, SIZE))

    async def ping():
        wrong = 0
        for _ in range(n):
            await loop.sock_sendall(client, message)
            if await recv_exactly(loop, client, SIZE) != message:
                wrong += 1
        return wrong

    wrong, _ = await asyncio.gather(ping(), echo())
    return wrong


def run(loop, n):
    client, server = tcp_pair()
    with client, server:
        start = perf_counter()
        wrong = loop.run_until_complete(main(loop, n, client, server))
        elapsed = perf_counter() - start
    check(wrong == 0, f"{wrong} messages came back wrong")
    return {"ops": n, "elapsed_s": elapsed}
