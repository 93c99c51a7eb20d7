"""TCP or Unix echo server on the loop's socket methods: sock_accept, sock_recv, sock_sendall."""

import asyncio
import os
import socket

import _common


async def echo(loop, client):
    with client:
        try:
            while True:
                data = await loop.sock_recv(client, _common.READ_SIZE)
                if not data:
                    break
                await loop.sock_sendall(client, data)
        except ConnectionError:
            pass  # the load generator closing its end when the run is over


async def accept_forever(loop, listener, tcp):
    tasks = set()  # keep the echo tasks alive
    while True:
        client, _ = await loop.sock_accept(listener)
        client.setblocking(False)
        if tcp:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(echo(loop, client))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def start(loop, args):
    if args.unix:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(args.unix)
        except FileNotFoundError:
            pass
        listener.bind(args.unix)
    else:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((args.host, args.port))
    listener.listen(_common.BACKLOG)
    listener.setblocking(False)
    start.task = loop.create_task(accept_forever(loop, listener, tcp=not args.unix))
    return listener.getsockname()


if __name__ == "__main__":
    args = _common.parse_args(__doc__)
    _common.serve(args, lambda loop: start(loop, args))
