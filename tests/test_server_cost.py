"""The readings of strace's output (benches/server_cost.py) and callgrind's
(benches/callgrind.py) that server_cost.py's tables rest on."""

import os
import sys

import pytest

BENCHES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benches")
# Appended, not prepended: benches/ holds generic names (report, runner).
sys.path.append(BENCHES)

import callgrind  # noqa: E402  (benches/callgrind.py)
import server_cost  # noqa: E402  (benches/server_cost.py)

STRACE_C = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 58.90    0.395833          13     28599     14299 recvfrom
 39.80    0.267481          18     14299           write
  1.24    0.008339          57       146           epoll_wait
  0.02    0.000163           1       101         1 accept4
  0.00    0.000004           4         1           brk
------ ----------- ----------- --------- --------- ----------------
100.00    0.672072          15     43146     14300 total
"""


def test_strace_table_counts_calls_with_and_without_errors():
    counts = server_cost.strace_counts(STRACE_C)
    # The calls column, whether or not an errors column follows; the total row is not a syscall.
    assert counts == {"recvfrom": 28599, "write": 14299, "epoll_wait": 146, "accept4": 101, "brk": 1}


def test_callgrind_dump_totals_by_event(tmp_path):
    dump = tmp_path / "callgrind.out.1"
    dump.write_text("version: 1\ncreator: callgrind-3.19.0\ncmd: python3 x.py\n"
                    "events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n"
                    "fl=(1) a.c\nfn=(1) main\n3 10 4 2 1 1 0 1 0 0\n"
                    "summary: 1000 400 200 10 30 20 5 3 2\n"
                    "totals: 1000 400 200 10 30 20 5 3 2\n")
    assert callgrind.dump_events(dump) == {"Ir": 1000, "Dr": 400, "Dw": 200, "I1mr": 10, "D1mr": 30,
                                             "D1mw": 20, "ILmr": 5, "DLmr": 3, "DLmw": 2}
    plain = tmp_path / "callgrind.out.2"
    plain.write_text("events: Ir\nfn=(1) main\n1 7\ntotals: 7\n")
    assert callgrind.dump_events(plain) == {"Ir": 7}


def test_only_stream_echo_workloads_are_accepted():
    args = server_cost.parse_args(["--workloads", "protocol,sock-unix", "--sizes", "100,64KiB", "--conns", "1"])
    assert args.workloads == ["protocol", "sock-unix"] and args.sizes == [100, 65536] and args.conns == [1]
    for bad in ("udp", "tls", "http", "nope"):
        with pytest.raises(SystemExit) as exc:
            server_cost.parse_args(["--workloads", bad])
        assert exc.value.code == 2
