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


def run_on_asyncio(coro_fn):
    """Run ``coro_fn(loop)`` on a fresh asyncio default loop and return its
    result: the reference a glassloop result is compared with inside a test.
    The current event loop is left as it was."""
    import asyncio
    ref = asyncio.new_event_loop()
    try:
        return ref.run_until_complete(coro_fn(ref))
    finally:
        ref.close()


def exc_signature(exc):
    """A comparable description of an exception: its type and a few fields."""
    if exc is None:
        return None
    return (type(exc).__name__, getattr(exc, "errno", None),
            getattr(exc, "reason", None), getattr(exc, "verify_code", None))


# ---------------------------------------------------------------------------
# Networking helpers (test_stream_transports, test_servers, test_udp,
# test_sock_methods, test_streams_api, test_net_faults)
# ---------------------------------------------------------------------------

def short_unix_path(name="sock"):
    """A fresh path for a Unix socket, short enough for sun_path (108 bytes).

    pytest's tmp_path can be too long; this lives in a new directory under
    /tmp.  The caller may leave it behind: the directory is removed at exit.
    """
    import atexit
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="gl-", dir="/tmp")
    atexit.register(shutil.rmtree, d, True)
    return os.path.join(d, name)


def ipv6_loopback_works():
    """True if a TCP socket can bind and connect on ::1."""
    import socket
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as srv:
            srv.bind(("::1", 0))
            srv.listen(1)
            with socket.create_connection(srv.getsockname()[:2], timeout=2):
                pass
        return True
    except OSError:
        return False


def closed_tcp_port(host="127.0.0.1"):
    """A loopback port nothing listens on (bound then released)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def recv_until_eof(sock, limit=None):
    """Blocking read of everything until EOF (for a peer run in a thread).

    Returns the bytes; stops early once ``limit`` bytes arrived.  A reset by
    the other side ends the read too.
    """
    chunks = []
    total = 0
    while limit is None or total < limit:
        try:
            data = sock.recv(1 << 18)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def digest(data):
    """(length, sha256 hex) of bytes: compares big payloads with short output."""
    import hashlib
    return len(data), hashlib.sha256(data).hexdigest()
