"""UDP echo server on asyncio.DatagramProtocol: datagram_received -> transport.sendto."""

import asyncio

import _common


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def start(loop, args):
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=(args.host, args.port))
    return transport.get_extra_info("sockname")


if __name__ == "__main__":
    args = _common.parse_args(__doc__, unix=False)
    _common.serve(args, lambda loop: start(loop, args))
