"""Pipe throughput to and from a child: N MiB written to ``cat``'s stdin while its
stdout is read back, through asyncio's subprocess streams (``StreamWriter.write``
+ ``drain()`` in one task, ``StreamReader.read(64 KiB)`` in another).

Measures the pipe transports and their flow control (the pipe's 64 KiB kernel
buffer fills, writing pauses, reading resumes it). Checks the byte count and a
CRC-32 of everything read back.
"""

import asyncio
import os
import shutil
import zlib
from time import perf_counter

from . import check

UNIT = "MiB/s"
N = 256  # MiB
QUICK_N = 4
CHUNK = 64 * 1024

CAT = shutil.which("cat") or "/bin/cat"


async def main(blocks, total):
    proc = await asyncio.create_subprocess_exec(
        CAT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)

    async def send():
        for block in blocks:
            proc.stdin.write(block)
            await proc.stdin.drain()
        proc.stdin.close()

    async def receive():
        crc, got = 0, 0
        while True:
            data = await proc.stdout.read(CHUNK)
            if not data:
                return crc, got
            crc = zlib.crc32(data, crc)
            got += len(data)

    _, (crc, got) = await asyncio.gather(send(), receive())
    return crc, got, await proc.wait()


def run(loop, n):
    total = n << 20
    pattern = os.urandom(CHUNK + 4096)
    # Different windows of the pattern, so a repeated or dropped block changes the CRC.
    blocks = [pattern[i % 4096:i % 4096 + CHUNK] for i in range(total // CHUNK)]
    want = 0
    for block in blocks:
        want = zlib.crc32(block, want)
    start = perf_counter()
    crc, got, rc = loop.run_until_complete(main(blocks, total))
    elapsed = perf_counter() - start
    check(rc == 0, f"cat exited with {rc}")
    check(got == total, f"read back {got} of {total} bytes")
    check(crc == want, "the bytes read back differ from those written")
    return {"ops": n, "elapsed_s": elapsed}
