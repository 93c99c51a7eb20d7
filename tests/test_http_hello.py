"""The benchmark's HTTP workload: aiohttp's hello-world (benches/servers/http_hello.py)
served on the loop, and the reading of wrk's report (benches/wrk.py)."""

import asyncio
import os
import sys

import pytest

BENCHES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benches")
# Appended, not prepended: benches/ holds generic names (report, runner) that must
# not shadow anything the rest of the suite imports.
sys.path += [os.path.join(BENCHES, "servers"), BENCHES]

import wrk  # noqa: E402  (benches/wrk.py)


async def _exchange(port, request):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await reader.read()  # every request below ends with Connection: close
    writer.close()
    await writer.wait_closed()
    return answer


def test_hello_world_keep_alive_and_pipelined(loop):
    import http_hello

    async def main():
        runner = await http_hello.serve_app("127.0.0.1", 0)
        try:
            port = runner.addresses[0][1]
            get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            last = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            pipelined = await _exchange(port, get * 2 + last)
            missing = await _exchange(port, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        finally:
            await runner.cleanup()
        return pipelined, missing

    pipelined, missing = loop.run_until_complete(main())
    # Three answers on one connection, in order, each with the fixed body.
    assert pipelined.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert pipelined.count(b"Content-Length: 13\r\n") == 3
    assert pipelined.endswith(b"\r\n\r\nHello, World!")
    assert pipelined.count(b"\r\n\r\nHello, World!") == 3
    assert missing.startswith(b"HTTP/1.1 404 ")


REPORT = """\
Running 1s test @ http://127.0.0.1:44679/
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   389.63us  258.83us   5.82ms   95.52%
    Req/Sec    26.67k     4.10k   30.40k    81.82%
  Latency Distribution
     50%  334.00us
     75%  393.00us
     90%  526.00us
     99%    0.87ms
  29158 requests in 1.10s, 4.62MB read
Requests/sec:  26519.98
Transfer/sec:      4.20MB
"""


def test_wrk_report_read():
    got = wrk.parse(REPORT)
    assert got["requests"] == 29158 and got["rps"] == 26519.98
    assert got["wrk_duration_s"] == pytest.approx(1.1)
    assert got["latency_us"] == pytest.approx(
        {"mean": 389.63, "max": 5820, "p50": 334, "p75": 393, "p90": 526, "p99": 870})
    assert got["errors"] == 0 and got["error_kinds"] == {}


def test_wrk_errors_counted():
    text = REPORT.replace(
        "Requests/sec:",
        "  Socket errors: connect 0, read 3, write 0, timeout 2\n"
        "  Non-2xx or 3xx responses: 5\nRequests/sec:")
    got = wrk.parse(text)
    assert got["error_kinds"] == {"read": 3, "timeout": 2, "non-2xx": 5}
    assert got["errors"] == 10
    assert got["first_error"].startswith("wrk: Socket errors: connect 0, read 3")


def test_wrk_report_without_totals_is_refused():
    with pytest.raises(ValueError):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")
