"""A small service on glassloop: a TCP echo server, clients talking to it, timers,
a task that sometimes blocks the loop, and the loop's own numbers printed live.

    python3 -m glassloop examples/demo.py [--seconds N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def client(port: int, stop: asyncio.Event) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    while not stop.is_set():
        msg = random.randbytes(random.randint(1, 4096))
        writer.write(msg)
        await writer.drain()
        assert await reader.readexactly(len(msg)) == msg
        sent += 1
        await asyncio.sleep(random.random() / 100)
    writer.close()
    await writer.wait_closed()
    return sent


async def sometimes_blocks(stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(1)
        time.sleep(0.15)  # a slow callback, on purpose: the loop records it


async def report(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        await asyncio.sleep(1)
        stats = getattr(loop, "stats", None)
        if stats is None:
            print(f"{type(loop).__name__}: no stats (not a glassloop loop)")
            continue
        s = stats()
        cb = s["callback_duration"]
        print(
            f"callbacks={s['callbacks']:>8} utilization={s['utilization']:.1%} "
            f"callback p50={cb['p50'] * 1e6:.0f}us p99={cb['p99'] * 1e6:.0f}us max={cb['max'] * 1e3:.1f}ms "
            f"slow={s['slow_callbacks']} fds={s['fds_registered']}",
            flush=True,
        )


async def main(seconds: float) -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"demo: echo server on 127.0.0.1:{port}, loop {type(asyncio.get_running_loop()).__module__}", flush=True)
    stop = asyncio.Event()
    async with server, asyncio.TaskGroup() as tg:
        clients = [tg.create_task(client(port, stop), name=f"client-{i}") for i in range(8)]
        tg.create_task(sometimes_blocks(stop), name="sometimes-blocks")
        tg.create_task(report(stop), name="report")
        await asyncio.sleep(seconds)
        stop.set()
    print(f"demo: {sum(c.result() for c in clients)} echoes", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(main(parser.parse_args().seconds))
