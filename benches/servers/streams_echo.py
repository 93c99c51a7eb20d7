"""TCP or Unix echo server on streams: start_server, reader.read, writer.write + drain."""

import asyncio

import _common


async def handle(reader, writer):
    try:
        while True:
            data = await reader.read(_common.READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass  # the load generator closing its end when the run is over
    finally:
        writer.close()


async def start(loop, args):
    if args.unix:
        server = await asyncio.start_unix_server(handle, args.unix, backlog=_common.BACKLOG)
    else:
        server = await asyncio.start_server(handle, args.host, args.port, backlog=_common.BACKLOG)
    return server.sockets[0].getsockname()


if __name__ == "__main__":
    args = _common.parse_args(__doc__)
    _common.serve(args, lambda loop: start(loop, args))
