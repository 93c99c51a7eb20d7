"""N short children (``/bin/true``) through ``asyncio.create_subprocess_exec``,
K running at a time, each awaited with ``wait()``.

Measures what a loop adds to starting and reaping a child: the subprocess
transport, learning of the child's exit (a pidfd on glassloop, libuv's SIGCHLD
handling on uvloop, the policy's child watcher on asyncio: a thread per child on
3.11) and waking the waiter. fork/exec dominate, so the differences between loops
are smaller than on the other workloads. Checks every child exited with 0.
"""

import asyncio
import shutil
from time import perf_counter

from . import check

UNIT = "children/s"
N = 1_000
QUICK_N = 40
#: Children running at once.
K = 16

TRUE = shutil.which("true") or "/bin/true"


async def main(n):
    codes = []
    sem = asyncio.Semaphore(K)

    async def one():
        async with sem:
            proc = await asyncio.create_subprocess_exec(TRUE)
            codes.append(await proc.wait())

    await asyncio.gather(*(one() for _ in range(n)))
    return codes


def run(loop, n):
    start = perf_counter()
    codes = loop.run_until_complete(main(n))
    elapsed = perf_counter() - start
    check(len(codes) == n, f"{len(codes)} of {n} children reported")
    check(codes == [0] * n, f"exit codes other than 0: {sorted(set(codes))}")
    return {"ops": n, "elapsed_s": elapsed, "concurrency": K}
