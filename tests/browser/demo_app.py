"""The demo (examples/demo.py) with one hook for the browser test.

A line `block <ms>` sent to the demo's echo server blocks the loop for that long
inside the echo handler's own coroutine (a slow callback, and a stall past the
100 ms threshold, both attributed to `echo` in this file), then is echoed back like
any other data. Everything else is the demo, unchanged.

    python3 -m glassloop --inspect 127.0.0.1:0 tests/browser/demo_app.py --seconds 600
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import pathlib
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("demo", ROOT / "examples" / "demo.py")
assert _spec is not None and _spec.loader is not None
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            if data.startswith(b"block "):
                ms = min(int(data.split()[1]), 10_000)
                time.sleep(ms / 1000)  # blocks the loop on purpose: the test looks for it
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


# demo.main() passes the module's `echo` to asyncio.start_server when it runs.
demo.echo = echo

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(demo.main(parser.parse_args().seconds))
