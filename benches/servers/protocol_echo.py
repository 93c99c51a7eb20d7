"""TCP or Unix echo server on asyncio.Protocol: data_received -> transport.write."""

import asyncio

import _common


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def start(loop, args):
    if args.unix:
        server = await loop.create_unix_server(Echo, args.unix, backlog=_common.BACKLOG)
    else:
        server = await loop.create_server(Echo, args.host, args.port, backlog=_common.BACKLOG)
    return server.sockets[0].getsockname()


if __name__ == "__main__":
    args = _common.parse_args(__doc__)
    _common.serve(args, lambda loop: start(loop, args))
