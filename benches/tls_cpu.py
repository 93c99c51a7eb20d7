"""CPU per request of a TLS echo server, loops side by side.

A TLS echo server (a plain ``asyncio.Protocol``: ``data_received`` -> ``write``)
runs on each loop in its own process; a client process (Python, on uvloop when
installed) holds ``--conns`` TLS connections and does request/response rounds of
``--size`` bytes. After every connection has finished its handshake, the server
process's CPU time (user + system, all threads, from /proc schedstat) is read
before and after ``--requests`` requests: the result is server CPU microseconds
per request. Loops run interleaved, ``--rounds`` times, in a rotating order; the
table gives medians and the ratio to the first loop.

A loop is ``module:callable`` (``asyncio:new_event_loop``), optionally prefixed
``label=`` and suffixed ``@DIR`` to import it from DIR first (to compare a
baseline build: ``before=glassloop:new_event_loop@/path/to/old/site``).

    python3 benches/tls_cpu.py --loops asyncio:new_event_loop,uvloop:new_event_loop,glassloop:new_event_loop

The client is Python, so the number is the server's cost alone, not throughput.
``--callgrind`` counts the server's instructions per request instead (steadier
on a busy machine; valgrind slows the server about 50 times, so use fewer requests).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time


def make_cert(directory: str) -> str:
    """A self-signed certificate for localhost, written with its key to one PEM file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = os.path.join(directory, "cert.pem")
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return path


def parse_loop(spec: str) -> tuple[str, str, str | None]:
    label, _, rest = spec.partition("=") if "=" in spec.split(":")[0] else ("", "", spec)
    path, _, site = rest.partition("@")
    return (label or path.split(":")[0], path, site or None)


# ---------------------------------------------------------------------------
# Server process
# ---------------------------------------------------------------------------

class Echo(asyncio.Protocol):
    open = 0
    closed = 0
    stop_after = 0  # with --callgrind: exit (so callgrind writes its counts) after this many connections

    def connection_made(self, transport):
        self.transport = transport
        Echo.open += 1

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        Echo.open -= 1
        Echo.closed += 1
        if Echo.stop_after and Echo.closed >= Echo.stop_after and not Echo.open:
            asyncio.get_running_loop().stop()


def serve(args) -> None:
    if args.site:
        sys.path.insert(0, args.site)
    module, _, attr = args.loop.partition(":")
    loop = getattr(importlib.import_module(module), attr)()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert)
    Echo.stop_after = args.stop_after
    server = loop.run_until_complete(loop.create_server(Echo, "127.0.0.1", 0, ssl=ctx))
    where = os.path.dirname(importlib.import_module(module).__file__)
    print(server.sockets[0].getsockname()[1], where, flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


# ---------------------------------------------------------------------------
# Client process: connect, say "ready", wait for "go", run, say how many.
# ---------------------------------------------------------------------------

class Pinger(asyncio.Protocol):
    def __init__(self, payload: bytes, rounds: int, done: asyncio.Future):
        self.payload, self.left, self.done, self.got = payload, rounds, done, 0

    def connection_made(self, transport):
        self.transport = transport

    def go(self):
        self.transport.write(self.payload)

    def data_received(self, data):
        self.got += len(data)
        if self.got < len(self.payload):
            return
        if self.got > len(self.payload):
            self.done.set_exception(AssertionError("echo returned more than was sent"))
            return
        self.got = 0
        self.left -= 1
        if self.left:
            self.transport.write(self.payload)
        elif not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("server closed"))


async def client_main(args) -> None:
    loop = asyncio.get_running_loop()
    ctx = ssl.create_default_context(cafile=args.cert)
    payload = os.urandom(args.size)
    per_conn = args.requests // args.conns
    pingers = []
    for _ in range(args.conns):
        done = loop.create_future()
        _, p = await loop.create_connection(lambda: Pinger(payload, per_conn, done), "127.0.0.1", args.port,
                                            ssl=ctx, server_hostname="localhost")
        pingers.append(p)
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    start = time.perf_counter()
    for p in pingers:
        p.go()
    await asyncio.gather(*(p.done for p in pingers))
    print("done", per_conn * args.conns, time.perf_counter() - start, flush=True)
    for p in pingers:
        p.transport.close()


def client(args) -> None:
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(client_main(args))


# ---------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------

def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far (ns), from schedstat."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total


def instructions(args, path, site, cert, requests) -> int:
    """Instructions the server process executes (callgrind) for a whole run of
    `requests` requests, startup and handshakes included."""
    out = os.path.join(os.path.dirname(cert), f"callgrind.{os.getpid()}.{requests}")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
           os.path.abspath(__file__), "_serve", "--loop", path, "--cert", cert, "--stop-after", str(args.conns)]
    srv = subprocess.Popen(cmd + (["--site", site] if site else []), stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    port, _ = srv.stdout.readline().split()
    cli = subprocess.run([sys.executable, os.path.abspath(__file__), "_client", "--port", port, "--cert", cert,
                          "--conns", str(args.conns), "--size", str(args.size), "--requests", str(requests)],
                         input="go\n", capture_output=True, text=True, timeout=3600)
    if cli.returncode != 0:
        sys.exit(f"client failed: {cli.stderr[-2000:]}")
    srv.wait(600)
    with open(out) as f:
        total = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.MULTILINE)
    os.unlink(out)
    return int(total.group(1))


def measure(args, label, path, site, cert) -> dict:
    me = [sys.executable, os.path.abspath(__file__)]
    srv = subprocess.Popen(me + ["_serve", "--loop", path, "--cert", cert] + (["--site", site] if site else []),
                           stdout=subprocess.PIPE, text=True)
    try:
        port, loop_module = srv.stdout.readline().split()
        cli = subprocess.Popen(me + ["_client", "--port", port, "--cert", cert, "--conns", str(args.conns),
                                     "--size", str(args.size), "--requests", str(args.requests)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert cli.stdout.readline().strip() == "ready"
        c0 = cpu_ns(srv.pid)
        cli.stdin.write("go\n")
        cli.stdin.flush()
        _, n, wall = cli.stdout.readline().split()
        c1 = cpu_ns(srv.pid)
        cli.wait(30)
        n, wall = int(n), float(wall)
        return {"loop": label, "module": loop_module, "requests": n, "cpu_us_per_req": (c1 - c0) / 1e3 / n,
                "req_per_s": n / wall}
    finally:
        srv.kill()
        srv.wait()


def count_instructions(args, loops) -> None:
    n1, n2 = args.requests // 4, args.requests
    per_req: dict[str, list[float]] = {label: [] for label, _, _ in loops}
    with tempfile.TemporaryDirectory() as d:
        cert = make_cert(d)
        for r in range(args.rounds):
            for label, path, site in loops:
                low = instructions(args, path, site, cert, n1)
                high = instructions(args, path, site, cert, n2)
                per_req[label].append((high - low) / (n2 - n1))
                print(f"round {r + 1}: {label:<12} {per_req[label][-1]:,.0f} instructions/req", file=sys.stderr, flush=True)
    base = statistics.median(per_req[loops[0][0]])
    print(f"\nTLS echo, {args.conns} connections, {args.size} B requests; server instructions per request "
          f"(callgrind, runs of {n1} and {n2} requests differenced; median of {args.rounds})")
    print(f"| loop | instructions/req | vs {loops[0][0]} |")
    print("|---|---:|---:|")
    for label, _, _ in loops:
        med = statistics.median(per_req[label])
        print(f"| {label} | {med:,.0f} | {med / base:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_argument
    sub("mode", nargs="?", default="run", choices=["run", "_serve", "_client"], help=argparse.SUPPRESS)
    sub("--loops", default="asyncio:new_event_loop,uvloop:new_event_loop,glassloop:new_event_loop")
    sub("--conns", type=int, default=10)
    sub("--size", type=int, default=1024)
    sub("--requests", type=int, default=20000, help="requests per measurement (all connections)")
    sub("--rounds", type=int, default=5)
    sub("--loop", help=argparse.SUPPRESS)
    sub("--site", help=argparse.SUPPRESS)
    sub("--cert", help=argparse.SUPPRESS)
    sub("--port", type=int, help=argparse.SUPPRESS)
    sub("--stop-after", type=int, default=0, help=argparse.SUPPRESS)
    sub("--callgrind", action="store_true",
        help="count the server's instructions per request under callgrind instead "
             "(two run lengths, --requests/4 and --requests, startup cancelled out)")
    args = ap.parse_args()
    if args.mode == "_serve":
        return serve(args)
    if args.mode == "_client":
        return client(args)

    loops = [parse_loop(s) for s in args.loops.split(",")]
    if args.callgrind:
        return count_instructions(args, loops)
    results: dict[str, list[dict]] = {label: [] for label, _, _ in loops}
    with tempfile.TemporaryDirectory() as d:
        cert = make_cert(d)
        for r in range(args.rounds):
            order = loops[r % len(loops):] + loops[:r % len(loops)]
            for label, path, site in order:
                res = measure(args, label, path, site, cert)
                results[label].append(res)
                print(f"round {r + 1}: {label:<12} {res['cpu_us_per_req']:8.2f} us/req  {res['req_per_s']:9.0f} req/s"
                      f"  ({res['module']})", file=sys.stderr, flush=True)
    base = statistics.median(x["cpu_us_per_req"] for x in results[loops[0][0]])
    print(f"\nTLS echo, {args.conns} connections, {args.size} B requests, {args.requests} requests a run, "
          f"{args.rounds} rounds interleaved; server CPU per request (median, min-max)")
    print(f"| loop | CPU us/req | range | vs {loops[0][0]} | req/s (Python client) |")
    print("|---|---:|---:|---:|---:|")
    for label, _, _ in loops:
        xs = [x["cpu_us_per_req"] for x in results[label]]
        med = statistics.median(xs)
        rps = statistics.median(x["req_per_s"] for x in results[label])
        print(f"| {label} | {med:.2f} | {min(xs):.2f}-{max(xs):.2f} | {med / base:.2f} | {rps:.0f} |")


if __name__ == "__main__":
    main()
