"""The sidecar under bad input and hostile clients (issue 4, "Bad input and faults").

Malformed HTTP and hostile query parameters get a 4xx and the server keeps
serving; the live stream holds at most max_stream_clients (64) and refuses the
rest with 503 without hurting the loop; a client that never reads costs nothing
to the others; tokens; a busy port. (Many tasks/transports, threads, close and
fork: test_inspector_load.py.)
"""

import json
import socket
import statistics
import threading
import time

import pytest

from inspectsupport import Inspected, SSEClient, free_port, http_get, raw_request, status_of, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _needs_glassloop(glassloop):
    return glassloop


SERVING_SCRIPT = '''
state = {"worst": 0.0}

async def heartbeat():
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.02)
        state["worst"] = max(state["worst"], loop.time() - t - 0.02)

async def parked(fut):
    await fut

async def main():
    loop = asyncio.get_running_loop()
    loop.create_task(heartbeat(), name="heartbeat")
    fut = loop.create_future()
    loop.create_task(parked(fut), name="parked")
    emit("READY")
    while True:
        cmd = await command()
        if cmd in ("stop", "eof"):
            break
        if cmd == "worst":
            emit("WORST", worst=state["worst"])
        if cmd == "reset":
            state["worst"] = 0.0
            emit("RESET")

asyncio.run(main())
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One inspected script shared by the cheap request tests of this module."""
    import glassloop  # noqa: F401  (fail early, clearly, if it is missing)
    s = Inspected(SERVING_SCRIPT, tmp_path_factory.mktemp("faults"))
    try:
        s.expect("READY")
        s.lid = s.only_loop()
        yield s
        s.send("stop")
        s.finish()
    finally:
        s.close()


def assert_serving(s):
    r = s.get("/healthz", timeout=5)
    assert r.status == 200 and r.json() == {"status": "ok"}
    assert s.alive()


def assert_json_error(r, status, kind=None):
    assert r.status == status, r
    body = r.json()
    assert set(body) >= {"error", "detail"}, body
    if kind is not None:
        assert body["error"] == kind, body


# ---------------------------------------------------------------------------
# Malformed HTTP, on raw sockets
# ---------------------------------------------------------------------------

MALFORMED = {
    "garbage request line": b"GARBAGE\r\n\r\n",
    "binary junk": b"\x00\x01\x02\xff\xfe\r\n\r\n",
    "100 KiB URI": b"GET /" + b"a" * (100 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "20 KiB header": b"GET /api/v1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "100 headers": b"GET /api/v1 HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n",
    "unknown HTTP version": b"GET /api/v1 HTTP/9.9\r\nHost: x\r\n\r\n",
    "HTTP/0.9 style": b"GET /api/v1\r\n\r\n",
    "NUL in path": b"GET /api/v1/loops/1\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    "negative Content-Length": b"GET /api/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "GET with a body": b"GET /api/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    "chunked body": b"GET /api/v1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST": b"POST /api/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "DELETE": b"DELETE /api/v1/loops/1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "space in header name": b"GET /api/v1 HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_gets_4xx_and_the_server_keeps_serving(server, name):
    raw = server.raw(MALFORMED[name], timeout=10)
    status = status_of(raw)
    assert status is not None and 400 <= status < 500, (name, raw[:300])
    assert_serving(server)


def test_documented_statuses_for_limits_and_methods(server):
    r = raw_request(server.host, server.port, b"GET /api/v1/loops?x=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(r) == 414, r[:200]
    r = raw_request(server.host, server.port, MALFORMED["GET with a body"])
    assert status_of(r) == 413, r[:200]
    r = raw_request(server.host, server.port, MALFORMED["POST"])
    assert status_of(r) == 405 and b"allow: get, head" in r.lower(), r[:300]
    assert_json_error(server.get("/api/v1/nope"), 404, "not found")
    h = server.get("/api/v1", method="HEAD")
    assert h.status == 200 and h.body == b""
    # The documented headers, and no CORS.
    r = server.get("/api/v1")
    low = {k.lower(): v for k, v in r.headers.items()}
    assert low["x-content-type-options"] == "nosniff"
    assert low["referrer-policy"] == "no-referrer"
    assert low["cache-control"] == "no-store"
    assert not any(k.startswith("access-control-") for k in low), low


def test_slow_and_idle_connections_do_not_block_others(server):
    # Ten connections that send half a request and stall, and ten that send nothing.
    socks = []
    try:
        for i in range(10):
            c = socket.create_connection((server.host, server.port))
            c.sendall(b"GET /api/v1 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(c)
            socks.append(socket.create_connection((server.host, server.port)))
        t0 = time.monotonic()
        for _ in range(5):
            assert_serving(server)
            assert server.get(f"/api/v1/loops/{server.lid}").status == 200
        assert time.monotonic() - t0 < 10
    finally:
        for c in socks:
            c.close()
    assert_serving(server)


# ---------------------------------------------------------------------------
# Hostile query parameters and ids
# ---------------------------------------------------------------------------

BAD_400 = [
    "/api/v1/loops/{lid}/tasks?limit=-1",
    "/api/v1/loops/{lid}/tasks?limit=1e9",
    "/api/v1/loops/{lid}/tasks?limit=abc",
    "/api/v1/loops/{lid}/tasks?limit=1.5",
    "/api/v1/loops/{lid}/tasks?limit=0x10",
    "/api/v1/loops/{lid}/tasks?limit=%2B5",
    "/api/v1/loops/{lid}/tasks?limit=%ff",
    "/api/v1/loops/{lid}/tasks?offset=-5",
    "/api/v1/loops/{lid}/tasks?state=bogus",
    "/api/v1/loops/{lid}/tasks?sort=bogus",
    "/api/v1/loops/{lid}/tasks?order=sideways",
    "/api/v1/loops/{lid}/tasks?fresh=maybe",
    "/api/v1/loops/{lid}/tasks?name=" + "a" * 300,
    "/api/v1/loops/{lid}/samples?since=-1",
    "/api/v1/loops/{lid}/samples?limit=-1",
    "/api/v1/loops/{lid}/histograms/callback_duration?limit=-1",
    "/api/v1/loops/{lid}/callback-sites?sort=bogus",
    "/api/v1/loops/{lid}/callback-sites?limit=-1",
    "/api/v1/loops/{lid}/slow-callbacks?limit=-1",
    "/api/v1/loops/{lid}/transports?limit=-1",
    "/api/v1/loops/{lid}/stalls?limit=-1",
    "/api/v1/stalls?limit=-1",
    "/api/v1/stalls?ongoing=perhaps",
    "/api/v1/loops/abc",
    "/api/v1/loops/-1",
    "/api/v1/loops/1.5",
    "/api/v1/loops/18446744073709551616",
    "/api/v1/loops/abc/tasks",
    "/api/v1/loops/{lid}/tasks/xyz/stack",
    "/api/v1/loops/{lid}/tasks/-3/stack",
    "/api/v1/loops/{lid}/tasks/1e3/stack",
    "/api/v1/stream?loop=abc",
]

NOT_FOUND = [
    "/api/v1/loops/99999",
    "/api/v1/loops/99999/tasks",
    "/api/v1/loops/{lid}/tasks/999999/stack",
    "/api/v1/loops/{lid}/tasks/18446744073709551615/stack",
    "/api/v1/loops/{lid}/histograms/nope",
    "/api/v1/stream?loop=99999",
    "/api/v1/nope",
]


@pytest.mark.parametrize("path", BAD_400)
def test_hostile_parameter_is_a_400(server, path):
    r = server.get(path.format(lid=server.lid))
    assert_json_error(r, 400, "bad request")
    assert_serving(server)


@pytest.mark.parametrize("path", NOT_FOUND)
def test_unknown_thing_is_a_404(server, path):
    r = server.get(path.format(lid=server.lid))
    assert_json_error(r, 404, "not found")


@pytest.mark.parametrize("path,field,clamped", [
    ("/api/v1/loops/{lid}/tasks?limit=999999999", "limit", 1000),
    ("/api/v1/loops/{lid}/transports?limit=999999999", "limit", 1000),
    ("/api/v1/loops/{lid}/callback-sites?limit=999999999", "limit", 1000),
    ("/api/v1/loops/{lid}/slow-callbacks?limit=999999999", "limit", 1000),
    ("/api/v1/loops/{lid}/samples?limit=999999999", "limit", 3600),
    ("/api/v1/loops/{lid}/tasks?limit=99999999999999999999999999", "limit", 1000),
])
def test_huge_limits_are_clamped(server, path, field, clamped):
    r = server.get(path.format(lid=server.lid))
    assert r.status == 200, r
    assert r.json()[field] == clamped


def test_huge_offsets_and_other_limits(server):
    r = server.get(f"/api/v1/loops/{server.lid}/tasks?offset=99999999999999999999999")
    assert r.status in (200, 400), r
    if r.status == 200:
        assert r.json()["items"] == []
    r = server.get("/api/v1/stalls?limit=999999999")
    assert r.status == 200 and isinstance(r.json()["stalls"], list)
    r = server.get(f"/api/v1/loops/{server.lid}/histograms/callback_duration?limit=999999999")
    assert r.status == 200 and len(r.json()["series"]) <= 3600
    # An empty value (the default, or refused) and repeated parameters (one
    # wins, or refused): never a crash.
    r = server.get(f"/api/v1/loops/{server.lid}/tasks?limit=")
    assert r.status in (200, 400), r
    r = server.get(f"/api/v1/loops/{server.lid}/tasks?limit=5&limit=-1")
    assert r.status in (200, 400), r
    assert_serving(server)


# ---------------------------------------------------------------------------
# The live stream: 200 clients at once, and one that never reads
# ---------------------------------------------------------------------------

THROUGHPUT_SCRIPT = '''
async def heartbeat():
    while True:
        await asyncio.sleep(0.05)

async def chain_rate(seconds):
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    n = 0
    end = time.perf_counter() + seconds
    def step():
        nonlocal n
        n += 1
        if n % 64 or time.perf_counter() < end:
            loop.call_soon(step)
        else:
            done.set_result(None)
    t0 = time.perf_counter()
    loop.call_soon(step)
    await done
    return n / (time.perf_counter() - t0)

async def main():
    loop = asyncio.get_running_loop()
    loop.create_task(heartbeat(), name="heartbeat")
    emit("READY")
    while True:
        cmd = await command()
        if cmd in ("stop", "eof"):
            break
        if cmd == "measure":
            emit("RATE", rate=await chain_rate(0.3))

asyncio.run(main())
'''


def test_two_hundred_stream_clients(tmp_path):
    with Inspected(THROUGHPUT_SCRIPT, tmp_path) as s:
        s.expect("READY")
        lid = s.only_loop()

        def rate():
            s.send("measure")
            return s.expect("RATE")["rate"]

        base = [rate()]
        clients = []
        try:
            for _ in range(200):
                clients.append(SSEClient(s.host, s.port, f"/api/v1/stream?loop={lid}"))
            ok = [c for c in clients if c.status == 200]
            refused = [c for c in clients if c.status != 200]
            assert len(ok) == 64, [c.status for c in clients]
            assert all(c.status == 503 for c in refused) and len(refused) == 136
            body = refused[0].head.split(b"\r\n")
            assert any(l.lower().startswith(b"content-type: application/json") for l in body), refused[0].head
            st = s.json("/api/v1")["stream"]
            assert st["clients"] == 64 and st["max_clients"] == 64
            assert st["clients_refused"] >= 136

            # The loop keeps its pace with 64 streams open (interleaved, medians;
            # a generous bound: "not hurt", not a benchmark).
            loaded = []
            for _ in range(3):
                loaded.append(rate())
                base.append(rate())
            assert statistics.median(loaded) >= 0.3 * statistics.median(base), (base, loaded)

            # Admitted clients get the hello and samples of this loop.
            for c in (ok[0], ok[-1]):
                evs = list(c.events(timeout=5, stop=lambda e, d: e == "sample"))
                assert evs[0][0] == "hello" and evs[0][1]["loop"] == lid, evs[:2]
                assert evs[-1][0] == "sample" and evs[-1][1]["loop_id"] == lid
        finally:
            for c in clients:
                c.close()
        wait_for(lambda: s.json("/api/v1")["stream"]["clients"] == 0, timeout=10, what="clients to go")
        again = SSEClient(s.host, s.port)
        assert again.status == 200
        again.close()
        s.send("stop")
        s.finish()


def test_a_client_that_never_reads(tmp_path):
    with Inspected(SERVING_SCRIPT, tmp_path) as s:
        s.expect("READY")
        lid = s.only_loop()
        deaf = SSEClient(s.host, s.port, read=False, rcvbuf=4096)
        reader = SSEClient(s.host, s.port, f"/api/v1/stream?loop={lid}")
        try:
            assert reader.status == 200
            s.send("reset")
            s.expect("RESET")
            seqs = []
            t_end = time.monotonic() + 4
            for ev, data in reader.events(timeout=5, stop=lambda e, d: time.monotonic() > t_end):
                if ev == "sample":
                    seqs.append(data["seq"])
                assert_serving(s)
            # The reading client kept getting every sample, in order.
            assert len(seqs) >= 8, seqs
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
            st = s.json("/api/v1")["stream"]
            assert st["queued"] <= st["buffer"] * st["clients"], st
            s.send("worst")
            worst = s.expect("WORST")["worst"]
            assert worst < 0.5, f"the loop's timer was {worst:.3f} s late while a client did not read"
        finally:
            deaf.close()
            reader.close()
        s.send("stop")
        s.finish()


# ---------------------------------------------------------------------------
# Token, address, busy port
# ---------------------------------------------------------------------------

TOKEN_SCRIPT = '''
import glassloop
glassloop.start_inspector("127.0.0.1:0", token="s3cret-token")
async def main():
    await asyncio.sleep(0.2)
    emit("READY")
    await command()
glassloop.run(main())
'''


def test_token_protects_everything_but_healthz(tmp_path):
    with Inspected(TOKEN_SCRIPT, tmp_path, launcher="plain") as s:
        s.expect("READY")
        r = s.get("/api/v1/loops")
        assert_json_error(r, 401, "unauthorized")
        assert r.headers.get("www-authenticate", r.headers.get("WWW-Authenticate", "")).startswith("Bearer")
        assert s.get("/metrics").status == 401
        assert s.get("/api/v1/loops", headers={"Authorization": "Bearer wrong"}).status == 401
        assert s.get("/api/v1/loops", headers={"Authorization": "Bearer s3cret-token-and-more"}).status == 401
        assert s.get("/healthz").status == 200
        ok = s.get("/api/v1/loops", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status == 200 and len(ok.json()["loops"]) == 1
        assert s.get("/metrics?token=s3cret-token").status == 200
        s.send()
        s.finish()


NONLOCAL_SCRIPT = '''
import glassloop
try:
    glassloop.start_inspector("0.0.0.0:0")
except ValueError as e:
    emit("REFUSED", error=str(e))
else:
    emit("STARTED")
'''


def test_non_loopback_address_needs_a_token(tmp_path):
    with Inspected(NONLOCAL_SCRIPT, tmp_path, launcher="plain", wait_url=False) as s:
        d = s.expect("REFUSED")
        assert "token" in d["error"].lower(), d
        s.finish()


BUSY_SCRIPT = '''
async def main():
    await asyncio.sleep(0.05)
    emit("RAN")
asyncio.run(main())
'''


def test_busy_port_is_a_clear_error_and_the_loop_still_runs(tmp_path):
    port = free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        with Inspected(BUSY_SCRIPT, tmp_path, address=f"127.0.0.1:{port}", wait_url=False) as s:
            s.expect("RAN")
            s.finish()
            err = "\n".join(s.stderr_log)
            assert "already in use" in err and str(port) in err, err
    finally:
        holder.close()
