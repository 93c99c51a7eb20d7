"""N trivial coroutines, each wrapped with ``create_task``, awaited with
``asyncio.gather``.

Measures task creation, the first step of each task, its completion callback and
gather's bookkeeping. Checks every result arrives, in order.
"""

import asyncio
from time import perf_counter

from . import check

UNIT = "tasks/s"
N = 100_000
QUICK_N = 5_000


async def trivial(i):
    return i


async def main(n):
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(trivial(i)) for i in range(n)]
    return await asyncio.gather(*tasks)


def run(loop, n):
    start = perf_counter()
    results = loop.run_until_complete(main(n))
    elapsed = perf_counter() - start
    check(results == list(range(n)), "gather returned wrong or misordered results")
    return {"ops": n, "elapsed_s": elapsed}
