"""Helpers shared by the test modules (``from loopsupport import ...``)."""

import os
import sys
import threading

PY311 = sys.version_info >= (3, 11)
PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)


def run_one_iteration(loop):
    """Run exactly one iteration of a loop that is not running.

    ``stop()`` before ``run_forever()`` makes it run one iteration and return.
    """
    loop.stop()
    loop.run_forever()


def run_briefly(loop, n=1):
    for _ in range(n):
        run_one_iteration(loop)


class RecordingHandler:
    """An exception handler that keeps every context it is given."""

    def __init__(self):
        self.contexts = []
        self.loops = []
        self.threads = []

    def __call__(self, loop, context):
        self.loops.append(loop)
        self.threads.append(threading.get_ident())
        self.contexts.append(context)


def rss_bytes():
    """This process's resident set size, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
