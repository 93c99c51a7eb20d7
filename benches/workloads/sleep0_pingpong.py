"""Two tasks pass a ball back and forth N times.

Each round trip: ping yields with ``asyncio.sleep(0)`` and hands the round number
to pong through a Future; pong wakes, yields with ``sleep(0)`` and hands it back
through another Future. So each round trip is four task steps, two bare yields and
two Future wakeups. Checks every number comes back, in order.
"""

import asyncio
from time import perf_counter

from . import check

UNIT = "round trips/s"
N = 200_000
QUICK_N = 10_000


class Slot:
    """A one-value mailbox made of a Future, renewed on every take."""

    def __init__(self, loop):
        self.loop = loop
        self.future = loop.create_future()

    def put(self, value):
        self.future.set_result(value)

    async def take(self):
        value = await self.future
        self.future = self.loop.create_future()
        return value


async def main(n):
    loop = asyncio.get_running_loop()
    to_pong, to_ping = Slot(loop), Slot(loop)
    wrong = 0

    async def ping():
        nonlocal wrong
        for i in range(n):
            await asyncio.sleep(0)
            to_pong.put(i)
            if await to_ping.take() != i:
                wrong += 1

    async def pong():
        for _ in range(n):
            value = await to_pong.take()
            await asyncio.sleep(0)
            to_ping.put(value)

    await asyncio.gather(ping(), pong())
    return wrong


def run(loop, n):
    start = perf_counter()
    wrong = loop.run_until_complete(main(n))
    elapsed = perf_counter() - start
    check(wrong == 0, f"{wrong} round trips returned the wrong value")
    return {"ops": n, "elapsed_s": elapsed}
