"""wrk as net_compare.py's load generator for the HTTP workload.

``run`` drives ``wrk -t1 -cN -dNs --latency URL`` pinned to one CPU after a warm-up
run, and returns a dict shaped like benches/loadgen's ``--json`` line (requests/s,
latency percentiles in µs, errors, the load generator's and the server's CPU from
/proc, the rest of the machine's), so net_compare.py tabulates both alike.
wrk itself only counts: it does not check bodies, so ``check`` makes one request
first and compares the answer.
"""

import http.client
import os
import re
import shutil
import subprocess
import time

#: wrk prints durations with these units.
UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
TICK = os.sysconf("SC_CLK_TCK")


def available():
    """``wrk --version``'s first words, or None when wrk is not installed."""
    if not shutil.which("wrk"):
        return None
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    first = (done.stdout + done.stderr).strip().splitlines()[:1]
    # "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
    return first[0].split(" Copyright")[0] if first else "wrk"


def seconds(value):
    """wrk takes whole seconds: at least one."""
    return max(1, round(value))


# ---------------------------------------------------------------- /proc samples

def proc_cpu(pid):
    """User + system seconds of a process, all threads (/proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_runq_wait(pid):
    """Seconds a process's live threads spent runnable but waiting for a CPU, or None."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def machine_busy():
    """Busy seconds of the whole machine so far, all CPUs (/proc/stat, as the loadgen)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]) / TICK


# ---------------------------------------------------------------- wrk's report

def to_us(text):
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"bad wrk duration {text!r}")
    return float(match.group(1)) * UNITS_US[match.group(2)]


def parse(text):
    """The numbers of wrk's ``--latency`` report: requests, rps, latency, errors."""
    out = {"latency_us": {}, "error_kinds": {}}
    for line in text.splitlines():
        line = line.strip()
        if match := re.fullmatch(r"(50|75|90|99)%\s+(\S+)", line):
            out["latency_us"][f"p{match.group(1)}"] = to_us(match.group(2))
        elif match := re.fullmatch(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)\s+\S+", line):
            out["latency_us"].update(mean=to_us(match.group(1)), max=to_us(match.group(3)))
        elif match := re.match(r"(\d+) requests in ([\d.]+\w+),", line):
            out["requests"] = int(match.group(1))
            out["wrk_duration_s"] = to_us(match.group(2)) / 1e6
        elif match := re.fullmatch(r"Requests/sec:\s+([\d.]+)", line):
            out["rps"] = float(match.group(1))
        elif line.startswith("Socket errors:"):
            for kind, count in re.findall(r"(\w+) (\d+)", line):
                if int(count):
                    out["error_kinds"][kind] = int(count)
            out["first_error"] = f"wrk: {line}"
        elif match := re.fullmatch(r"Non-2xx or 3xx responses:\s+(\d+)", line):
            out["error_kinds"]["non-2xx"] = int(match.group(1))
            out.setdefault("first_error", f"wrk: {line}")
    if "rps" not in out or "requests" not in out:
        raise ValueError("no 'Requests/sec' or 'N requests in' line")
    out["errors"] = sum(out["error_kinds"].values())
    return out


# ---------------------------------------------------------------- driving it

def check(host, port, expect, timeout=10):
    """One GET / with the standard library: '' if it answered 200 with ``expect``."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        answer = conn.getresponse()
        body = answer.read()
    except (OSError, http.client.HTTPException) as exc:
        return f"GET / failed: {exc!r}"
    finally:
        conn.close()
    if answer.status != 200 or body != expect:
        return f"GET / answered {answer.status} {body[:80]!r}, expected 200 {expect!r}"
    return ""


def command(url, conns, duration):
    return ["wrk", "-t1", f"-c{conns}", f"-d{seconds(duration)}s", "--latency", url]


def start(argv, cpu):
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}))


def finish(proc, expected, timeout):
    """Reap ``proc`` with wait4 for its exact CPU time; meanwhile follow its run-queue
    wait (its worker thread is gone once it has exited). Polls coarsely until shortly
    before the ``expected`` end (a monotonic time), then finely, so the reap, which
    ends the measured interval, comes within ~5 ms of wrk's exit without this process
    taking much CPU. (out, err, cpu_s, wait_s); out is None if it ran past ``timeout``."""
    deadline = time.monotonic() + timeout
    wait = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        now = time.monotonic()
        if now > deadline:
            proc.kill()
            proc.communicate()
            return None, "", None, wait
        wait = proc_runq_wait(proc.pid) or wait
        time.sleep(0.1 if now < expected - 0.2 else 0.005)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.communicate()
    return out, err, usage.ru_utime + usage.ru_stime, wait


def run(host, port, conns, duration, warmup, cpu, server_pid, expect):
    """Check one answer, warm up, then one measured wrk run; (result dict, '') or
    (None, why not)."""
    url = f"http://{host}:{port}/" if ":" not in host else f"http://[{host}]:{port}/"
    wrong = check(host, port, expect)
    if wrong:
        return None, wrong
    if warmup > 0:
        proc = start(command(url, conns, warmup), cpu)
        finish(proc, time.monotonic() + seconds(warmup), seconds(warmup) + 30)
    argv = command(url, conns, duration)
    server0, wait0, busy0 = proc_cpu(server_pid), proc_runq_wait(server_pid), machine_busy()
    began = time.monotonic()
    proc = start(argv, cpu)
    out, err, own_cpu, own_wait = finish(proc, began + seconds(duration), seconds(duration) + 30)
    elapsed = time.monotonic() - began
    server1, wait1, busy1 = proc_cpu(server_pid), proc_runq_wait(server_pid), machine_busy()
    if out is None:
        return None, "wrk did not finish"
    if proc.returncode != 0:
        return None, f"wrk exit {proc.returncode}: {err.strip() or out.strip()}"
    try:
        result = parse(out)
    except ValueError as exc:
        return None, f"cannot read wrk's report ({exc}): {out.strip()[-300:]}"
    server = None
    server_cpu = 0.0
    if server0 is not None and server1 is not None:
        server_cpu = server1 - server0
        server = {"pid": server_pid, "cpu_s": server_cpu, "util": server_cpu / elapsed,
                  "cpu_us_per_req": server_cpu / result["requests"] * 1e6 if result["requests"] else None,
                  "runq_wait_s": None if wait0 is None or wait1 is None else wait1 - wait0}
    others = max(0.0, (busy1 - busy0) - own_cpu - server_cpu)
    result.update(
        tool="wrk", command=argv, conns=conns, duration_s=elapsed, stalled=0,
        first_error=result.get("first_error") if result["errors"] else None,
        loadgen_cpu={"cpu_s": own_cpu, "util": own_cpu / elapsed, "runq_wait_s": own_wait},
        pinned_cpu=cpu, server=server,
        machine={"busy_cpus": (busy1 - busy0) / elapsed, "other_cpus": others / elapsed},
    )
    return result, ""
