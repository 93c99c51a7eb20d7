"""What every echo server in this folder shares: the command line, making the loop,
printing the bound address, and serving until killed.

    python3 benches/servers/protocol_echo.py --loop uvloop:new_event_loop [--addr 127.0.0.1:0 | --unix PATH]

The first line on stdout is the address the server listens on (``HOST:PORT``, or the
socket path with ``--unix``); net_compare.py waits for it. Errors the loop reports go
to stderr, with the loop's label, so a benchmark run can show them.
"""

import argparse
import asyncio
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import loopspec  # noqa: E402  (benches/loopspec.py)

#: Read size for the servers that choose one (streams, sock_*, BufferedProtocol).
READ_SIZE = 64 * 1024
#: Listen backlog: the load generator opens up to 100 connections at once.
BACKLOG = 1024


def parse_args(description, unix=True):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--loop", default="asyncio:new_event_loop",
                        help="factory path, module:callable[?k=v&...] (see benches/README.md)")
    parser.add_argument("--addr", default="127.0.0.1:0", help="HOST:PORT to listen on (port 0: any)")
    if unix:
        parser.add_argument("--unix", metavar="PATH", help="listen on this Unix socket instead")
    args = parser.parse_args()
    host, sep, port = args.addr.rpartition(":")
    if not sep or not port.isdigit():
        parser.error(f"--addr must be HOST:PORT, got {args.addr!r}")
    args.host, args.port = host.strip("[]"), int(port)
    return args


def show_address(sockname):
    """Print where we listen: the first line net_compare.py reads."""
    if isinstance(sockname, tuple):
        host, port = sockname[:2]
        text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    else:
        text = os.fsdecode(sockname)
    print(text, flush=True)


def report(*args):
    """The loop's exception handler: one line per error on stderr, plus the traceback.

    asyncio calls it as ``handler(loop, context)``; rloop 0.5 as ``handler(context)``,
    which a two-argument handler turns into a TypeError hiding the real error."""
    context = args[-1]
    exc = context.get("exception")
    print(f"server error: {context.get('message')}: {exc!r}", file=sys.stderr, flush=True)
    if exc is not None:
        traceback.print_exception(exc, file=sys.stderr)


def serve(args, start):
    """Make the loop, run ``await start(loop)`` (which returns the bound sockname),
    print the address and serve until the process is killed."""
    spec = loopspec.parse(args.loop)
    loop = spec.new_loop()
    asyncio.set_event_loop(loop)
    loop.set_exception_handler(report)
    sockname = loop.run_until_complete(start(loop))
    show_address(sockname)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if getattr(args, "unix", None):
            try:
                os.unlink(args.unix)
            except OSError:
                pass
