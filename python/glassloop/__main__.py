"""`python -m glassloop script.py [args...]`: run a script with glassloop as asyncio's loop.

Every loop the script makes through asyncio (`asyncio.run`, `asyncio.Runner`,
`asyncio.new_event_loop`) is a glassloop loop.
"""

from __future__ import annotations

import argparse
import runpy
import sys

import glassloop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glassloop", description=__doc__.splitlines()[0])
    parser.add_argument("-m", dest="module", help="run a library module as a script, like python -m")
    parser.add_argument(
        "--inspect",
        nargs="?",
        const=True,
        default=None,
        metavar="ADDR",
        help="serve the inspector (dashboard, JSON API, /metrics) on ADDR (default 127.0.0.1:7070)",
    )
    parser.add_argument("script", nargs="?", help="the script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    ns = parser.parse_args(argv)
    if not ns.module and not ns.script:
        parser.error("give a script or -m module")
    if ns.inspect is not None:
        glassloop.start_inspector_from(ns.inspect)
    glassloop.install()
    if ns.module:
        sys.argv = [ns.module] + ([ns.script] if ns.script else []) + ns.args
        runpy.run_module(ns.module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [ns.script] + ns.args
        runpy.run_path(ns.script, run_name="__main__")


if __name__ == "__main__":
    main()
