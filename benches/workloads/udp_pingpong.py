"""Two UDP endpoints on loopback pass a 1 KiB datagram back and forth N times.

Each round trip: the client's ``sendto``, the server's ``datagram_received`` and
its echo ``sendto``, the client's ``datagram_received`` — two reads, two sends and
the polls between them, all on one loop. The socket syscalls are the kernel's
share; under callgrind what remains is the loop's and the transports' own cost
per datagram. Checks every datagram comes back whole and in order.
"""

import asyncio
from time import perf_counter

from . import check

UNIT = "round trips/s"
N = 100_000
QUICK_N = 5_000
SIZE = 1024


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class Client(asyncio.DatagramProtocol):
    def __init__(self, n, done):
        self.n = n
        self.done = done
        self.count = 0
        self.wrong = 0

    def connection_made(self, transport):
        self.transport = transport

    def send(self):
        self.transport.sendto(self.count.to_bytes(4, "little") * (SIZE // 4))

    def datagram_received(self, data, addr):
        if data != self.count.to_bytes(4, "little") * (SIZE // 4):
            self.wrong += 1
        self.count += 1
        if self.count < self.n:
            self.send()
        else:
            self.done.set_result(None)

    def error_received(self, exc):
        self.done.set_exception(exc)


async def main(n):
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    done = loop.create_future()
    client, protocol = await loop.create_datagram_endpoint(
        lambda: Client(n, done), remote_addr=server.get_extra_info("sockname"))
    start = perf_counter()
    protocol.send()
    await done
    elapsed = perf_counter() - start
    client.close()
    server.close()
    await asyncio.sleep(0)
    return protocol, elapsed


def run(loop, n):
    protocol, elapsed = loop.run_until_complete(main(n))
    check(protocol.count == n, f"{protocol.count} of {n} round trips completed")
    check(protocol.wrong == 0, f"{protocol.wrong} datagrams came back wrong")
    return {"ops": n, "elapsed_s": elapsed}
