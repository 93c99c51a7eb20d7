"""TCP or Unix echo server on asyncio.BufferedProtocol: get_buffer/buffer_updated -> write."""

import asyncio

import _common


class Echo(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.view = memoryview(bytearray(_common.READ_SIZE))

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        self.transport.write(self.view[:nbytes])
        if self.transport.get_write_buffer_size():
            # The kernel did not take it all, and a transport may keep a view of our
            # buffer rather than a copy (CPython 3.12's does): never overwrite it.
            self.view = memoryview(bytearray(_common.READ_SIZE))


async def start(loop, args):
    if args.unix:
        server = await loop.create_unix_server(Echo, args.unix, backlog=_common.BACKLOG)
    else:
        server = await loop.create_server(Echo, args.host, args.port, backlog=_common.BACKLOG)
    return server.sockets[0].getsockname()


if __name__ == "__main__":
    args = _common.parse_args(__doc__)
    _common.serve(args, lambda loop: start(loop, args))
