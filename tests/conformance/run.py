#!/usr/bin/env python3
"""CPython ``test.test_asyncio`` conformance runner for any asyncio event loop.

    python3 tests/conformance/run.py --loop glassloop:new_event_loop
    python3 tests/conformance/run.py --compare asyncio:new_event_loop,uvloop:new_event_loop,glassloop:new_event_loop

Each test module runs in its own subprocess (``worker.py``), which injects the
loop under test (see worker.py / README.md).  A module that hangs or crashes is
killed and reported as such, and resumed after the offending test.
See ``--help`` and README.md.
"""

import argparse
import collections
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "worker.py")
DEFAULT_LOG_DIR = os.path.join(HERE, "results")

DEFAULT_MODULES = [
    "test_events", "test_tasks", "test_futures", "test_futures2", "test_locks",
    "test_queues", "test_runners", "test_taskgroups", "test_timeouts",
    "test_waitfor", "test_context", "test_pep492", "test_streams",
    "test_server", "test_sock_lowlevel", "test_sendfile", "test_buffered_proto",
    "test_subprocess", "test_ssl", "test_sslproto", "test_protocols",
    "test_threads",
]

# Rough wall time per module on asyncio's loop (seconds, 3.11, this machine);
# used only to start the longest modules first when running in parallel.
ESTIMATED_SECONDS = {
    "test_events": 30, "test_tasks": 20, "test_subprocess": 15, "test_ssl": 12,
    "test_taskgroups": 6, "test_sslproto": 5, "test_futures": 2.5,
    "test_waitfor": 1.5, "test_streams": 1.2, "test_sock_lowlevel": 1.1,
    "test_sendfile": 1.1, "test_locks": 1,
}

# Modules whose tests only use fake loops (test_utils.TestLoop), mocks or no
# loop at all, so that the factory legitimately creates no loop there.  Every
# other module must create at least one loop through the factory when any of
# its tests ran, or the injection is broken and the run fails.
NO_LOOP_MODULES = {"test_futures", "test_protocols",
                   # outside the default list; mock-based or Windows-only:
                   "test_proactor_events", "test_windows_events",
                   "test_windows_utils", "test_transports"}

NOT_RUN = "not run"

STOP = threading.Event()  # set on Ctrl-C / SIGTERM: kill workers, start no more
_active = set()          # running worker Popen objects
_active_lock = threading.Lock()
_print_lock = threading.Lock()


def say(*a, **kw):
    with _print_lock:
        print(*a, **kw, flush=True)


# ---------------------------------------------------------------------------
# Interpreter / loop probing


def probe_python(python):
    code = (
        "import json, os, sys\n"
        "d = {'version': sys.version.split()[0], "
        "'minor': '%d.%d' % sys.version_info[:2], 'platform': sys.platform}\n"
        "try:\n"
        "    import test.test_asyncio as t\n"
        "    d['dir'] = os.path.dirname(t.__file__)\n"
        "except BaseException as e:\n"
        "    d['error'] = repr(e)\n"
        "print(json.dumps(d))\n")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"cannot run {python}: {out.stderr.strip()}")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    if "error" in info:
        raise SystemExit(f"{python}: test.test_asyncio is not importable: {info['error']}")
    return info


def probe_loop(python, spec, env):
    """Returns None if the factory resolves in the target interpreter, else why not."""
    if ":" not in spec:
        return f"not of the form module:callable: {spec!r}"
    mod, _, attr = spec.partition(":")
    code = ("import importlib, sys\n"
            f"o = importlib.import_module({mod!r})\n"
            f"for p in {attr!r}.split('.'):\n"
            "    o = getattr(o, p)\n"
            "assert callable(o), 'not callable'\n")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit code {out.returncode}"
    return None


# ---------------------------------------------------------------------------
# Running one module


def _kill_group(proc, dump_first=False):
    """Kill the worker and everything in its process group (its session)."""
    if dump_first and proc.poll() is None and hasattr(signal, "SIGUSR1"):
        try:
            os.kill(proc.pid, signal.SIGUSR1)   # faulthandler: dump all stacks
        except ProcessLookupError:
            pass
        for _ in range(20):
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def _tail(path, n=40):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-n:])


class ModuleRun:
    def __init__(self, python, loop, module, env, log_dir, timeout, test_timeout,
                 max_restarts):
        self.python = python
        self.loop = loop
        self.module = module
        self.env = env
        self.log_dir = log_dir
        self.timeout = timeout
        self.test_timeout = test_timeout
        self.max_restarts = max_restarts
        self.plan = None                  # list of test ids
        self.outcomes = collections.OrderedDict()   # id -> outcome dict
        self.fixture_errors = []
        self.notes = []
        self.events = []                  # status events: timeout/crash/...
        self.loops = 0
        self.loop_types = collections.Counter()
        self.fatal = None
        self.module_skipped = None
        self.segments = 0

    # -- one worker process
    def _segment(self, deadline):
        seg = self.segments
        self.segments += 1
        progress_path = os.path.join(self.log_dir, f"{self.module}.{seg}.jsonl")
        log_path = os.path.join(self.log_dir, f"{self.module}.log")
        skip_path = None
        cmd = [self.python, WORKER, "--loop", self.loop, "--module", self.module,
               "--progress", progress_path]
        if self.outcomes:
            skip_path = os.path.join(self.log_dir, f"{self.module}.{seg}.skip.json")
            with open(skip_path, "w") as f:
                json.dump(list(self.outcomes), f)
            cmd += ["--skip-file", skip_path]
        open(progress_path, "w").close()
        cwd = tempfile.mkdtemp(prefix=f"conformance-{self.module}-")
        log = open(log_path, "ab")
        log.write(f"\n===== segment {seg}: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
        with _active_lock:
            _active.add(proc)
        st = {"current": None,    # (id, monotonic start) of the running test
              "loops": 0, "done": None}
        killed = None             # "timeout" / "test timeout"
        buf = ""
        try:
            with open(progress_path, encoding="utf-8") as pf:
                while True:
                    rc = proc.poll()
                    chunk = pf.read()
                    if chunk:
                        buf += chunk
                        *lines, buf = buf.split("\n")
                        for line in lines:
                            self._handle(line, st)
                        continue   # drain everything before deciding
                    if rc is not None:
                        break      # polled before the last (empty) read: all read
                    now = time.monotonic()
                    if STOP.is_set():
                        killed = "interrupted"
                        _kill_group(proc)
                        break
                    if now > deadline:
                        killed = "timeout"
                        _kill_group(proc, dump_first=True)
                        break
                    cur = st["current"]
                    if cur and self.test_timeout and now - cur[1] > self.test_timeout:
                        killed = "test timeout"
                        _kill_group(proc, dump_first=True)
                        break
                    time.sleep(0.2)
                # after a kill: whatever was written just before it
                for line in (buf + pf.read()).split("\n"):
                    self._handle(line, st)
        finally:
            # Reap whatever the tests left behind in the worker's session.
            _kill_group(proc)
            with _active_lock:
                _active.discard(proc)
            log.close()
            shutil.rmtree(cwd, ignore_errors=True)
            # progress/skip files are kept next to the log for debugging
        self.loops += st["loops"]
        current = st["current"]
        rc = proc.returncode
        if killed is None and st["done"] is not None and rc == 0:
            return "finished", None
        if killed is None:
            if rc is not None and rc < 0:
                try:
                    killed = f"crash (signal {-rc}: {signal.Signals(-rc).name})"
                except ValueError:
                    killed = f"crash (signal {-rc})"
            else:
                killed = f"crash (exit code {rc})"
        if current is not None:
            tail = _tail(log_path)
            what = killed
            if killed == "test timeout":
                what = f"test timeout ({self.test_timeout:g}s)"
            elif killed == "timeout":
                what = f"module timeout ({self.timeout:g}s)"
            self.outcomes[current[0]] = {
                "id": current[0], "status": "error", "exception": what,
                "traceback": f"[{what}] last lines of the worker's log:\n{tail}"[-4000:],
                "killed": killed}
        return killed, (current[0] if current else None)

    def _handle(self, line, st):
        if not line.strip():
            return
        try:
            ev = json.loads(line)
        except ValueError:
            return
        kind = ev.get("event")
        if kind == "plan":
            if self.plan is None:
                self.plan = ev["ids"]
                self.notes.extend(n for n in ev.get("notes", []) if n not in self.notes)
        elif kind == "loop":
            st["loops"] = max(st["loops"], ev.get("n", 0))
            self.loop_types[ev.get("type", "?")] += 1
        elif kind == "start":
            st["current"] = (ev["id"], time.monotonic())
        elif kind == "outcome":
            st["loops"] = max(st["loops"], ev.get("loops", 0))
            if ev.get("fixture"):
                self.fixture_errors.append(ev)
            else:
                self.outcomes[ev["id"]] = ev
                if st["current"] and st["current"][0] == ev["id"]:
                    st["current"] = None
        elif kind == "done":
            st["done"] = ev
            st["loops"] = max(st["loops"], ev.get("loops", 0))
            self.notes.extend(n for n in ev.get("notes", []) if n not in self.notes)
        elif kind == "fatal":
            self.fatal = ev
        elif kind == "module_skipped":
            self.module_skipped = ev.get("reason", "")

    def run(self):
        os.makedirs(self.log_dir, exist_ok=True)
        log_path = os.path.join(self.log_dir, f"{self.module}.log")
        for name in os.listdir(self.log_dir):   # stale files of an earlier run
            if name == f"{self.module}.log" or (
                    name.startswith(self.module + ".")
                    and name.endswith((".jsonl", ".skip.json"))):
                try:
                    os.unlink(os.path.join(self.log_dir, name))
                except OSError:
                    pass
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        restarts = 0
        self.duration, self.restarts = 0.0, 0
        while not STOP.is_set():
            before = len(self.outcomes)
            outcome, culprit = self._segment(deadline)
            if outcome == "finished" or self.fatal or self.module_skipped is not None:
                if outcome != "finished" and not self.fatal and self.module_skipped is None:
                    self.events.append((outcome, culprit))
                break
            self.events.append((outcome, culprit))
            remaining = self._remaining()
            no_progress = culprit is None and len(self.outcomes) == before
            if (outcome in ("timeout", "interrupted") or self.plan is None
                    or not remaining or no_progress):
                break
            if restarts >= self.max_restarts:
                self.events.append(("restart limit", None))
                break
            if time.monotonic() > deadline - 1:
                self.events.append(("timeout", None))
                break
            restarts += 1
        self.duration = time.monotonic() - t0
        self.restarts = restarts
        return self

    def _remaining(self):
        if self.plan is None:
            return []
        return [t for t in self.plan if t not in self.outcomes]

    # -- results
    def summary(self):
        counts = collections.Counter()
        failures = []
        remaining = self._remaining()
        # Unrun tests: attributed to a class/module fixture error if one
        # covers them, else to the timeout/crash that stopped the module.
        fixture_for = {}
        folded = set()
        for fe in self.fixture_errors:
            m = re.search(r"\(([\w.]+)\)\s*$", fe["id"])
            scope = m.group(1) if m else None
            hit = False
            if scope:
                for tid in remaining:
                    if tid.startswith(scope + ".") and tid not in fixture_for:
                        fixture_for[tid] = fe
                        hit = True
            if hit:
                folded.add(id(fe))
        stopped_by = self.events[-1][0] if self.events else "interrupted"
        for tid, ev in self.outcomes.items():
            st = ev["status"]
            counts[st] += 1
            if st in ("failure", "error", "xpass"):
                failures.append({k: ev[k] for k in
                                 ("id", "status", "exception", "where", "traceback",
                                  "subtest")
                                 if k in ev})
        for tid in remaining:
            counts["error"] += 1
            fe = fixture_for.get(tid)
            if fe:
                failures.append({"id": tid, "status": "error",
                                 "exception": f"not run: {fe['id'].split(' ')[0]} failed: "
                                              f"{fe.get('exception', '')}",
                                 "traceback": fe.get("traceback", "")})
            else:
                failures.append({"id": tid, "status": "error",
                                 "exception": f"{NOT_RUN} ({stopped_by})",
                                 "traceback": ""})
        for fe in self.fixture_errors:
            if id(fe) not in folded:
                counts["error"] += 1
                failures.append({k: fe[k] for k in ("id", "status", "exception", "traceback")
                                 if k in fe})
        if self.fatal:
            counts["error"] += 1
            failures.append({"id": f"{self.module} ({self.fatal.get('stage')})",
                             "status": "error",
                             "exception": self.fatal.get("exception", ""),
                             "traceback": self.fatal.get("traceback", "")})
        if self.segments == 0:
            status = "not started (interrupted)"
        elif self.fatal:
            status = f"fatal: {self.fatal.get('stage')} failed"
        elif self.module_skipped is not None:
            status = f"module skipped: {self.module_skipped}"
        elif self.events:
            kinds = collections.Counter(k for k, _ in self.events)
            status = "; ".join(f"{k} x{n}" if n > 1 else k for k, n in kinds.items())
            culprits = [".".join(c.rsplit(".", 2)[-2:]) for _, c in self.events if c]
            if culprits:
                status += " in " + ", ".join(culprits)
            if self.restarts:
                status += f" (resumed {self.restarts}x)"
        else:
            status = "ok"
        slowest = sorted(((ev.get("duration", 0), tid) for tid, ev in self.outcomes.items()
                          if ev.get("duration") is not None), reverse=True)[:3]
        ran = sum(1 for ev in self.outcomes.values() if ev["status"] != "skipped")
        return {
            "module": self.module,
            "passed": counts["passed"],
            "failed": counts["failure"] + counts["xpass"],
            "errors": counts["error"],
            "skipped": counts["skipped"],
            "xfail": counts["xfail"],
            "xpass": counts["xpass"],
            "tests": len(self.plan) if self.plan is not None else 0,
            "ran": ran,
            "loops_created": self.loops,
            "loop_types": dict(self.loop_types),
            "status": status,
            "incidents": [{"kind": k, "test": c} for k, c in self.events],
            "duration": round(self.duration, 1),
            "slowest": [{"id": t, "seconds": d} for d, t in slowest],
            "notes": self.notes,
            "failures": failures,
        }


def enable_subreaper():
    """Linux: orphans of the tests (e.g. children started in a new session,
    which escape the worker's process group) get re-parented to us instead of
    init, so reap_orphans() can find them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0     # PR_SET_CHILD_SUBREAPER
    except Exception:
        return False


def reap_orphans():
    """Kill and reap our children that are not workers (call only when no
    worker runs).  Returns how many were killed."""
    killed = 0
    me = os.getpid()
    with _active_lock:
        workers = {p.pid for p in _active}
    if os.path.isdir("/proc"):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid in workers:
                continue
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read().decode("ascii", "replace")
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except OSError:
                    pass
    if not workers:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
    return killed


# ---------------------------------------------------------------------------
# Running one loop over all modules


def run_loop(args, python, pyinfo, loop, modules, env):
    slug = re.sub(r"[^\w.-]+", "_", loop)
    log_dir = os.path.join(args.log_dir, f"{slug}-py{pyinfo['minor']}")
    os.makedirs(log_dir, exist_ok=True)
    t0 = time.monotonic()
    why = probe_loop(python, loop, env)
    result = {"loop": loop, "python": pyinfo["version"], "modules": {},
              "log_dir": log_dir}
    if why is not None:
        say(f"[{loop}] UNAVAILABLE: {why}")
        result["unavailable"] = why
        result["wall_time"] = round(time.monotonic() - t0, 1)
        return result

    order = sorted(modules, key=lambda m: -ESTIMATED_SECONDS.get(m, 1))
    say(f"[{loop}] running {len(modules)} modules on Python {pyinfo['version']} "
        f"with {args.jobs} job(s); logs in {os.path.relpath(log_dir)}")

    def one(module):
        r = ModuleRun(python, loop, module, env, log_dir, args.timeout,
                      args.test_timeout, args.max_restarts).run().summary()
        say("  " + format_module_line(r))
        return r

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        futs = {ex.submit(one, m): m for m in order}
        try:
            for fut in concurrent.futures.as_completed(futs):
                r = fut.result()
                result["modules"][r["module"]] = r
        except BaseException:
            STOP.set()      # running workers get killed, queued modules return
            raise
    result["modules"] = {m: result["modules"][m] for m in modules}
    n = reap_orphans()
    if n:
        say(f"[{loop}] killed {n} process(es) the tests left behind outside their worker")
        result["orphans_killed"] = n
    result["wall_time"] = round(time.monotonic() - t0, 1)
    tot = collections.Counter()
    for r in result["modules"].values():
        for k in ("passed", "failed", "errors", "skipped", "xfail", "xpass",
                  "loops_created"):
            tot[k] += r[k]
    result["totals"] = dict(tot)
    return result


def format_module_line(r):
    flag = ""
    if r.get("zero_loops"):
        flag = "  !! NO LOOP CREATED BY THE FACTORY"
    types = ",".join(sorted(r["loop_types"])) or "-"
    return (f"{r['module']:<23} {r['passed']:5d} passed {r['failed']:4d} failed "
            f"{r['errors']:4d} errors {r['skipped']:4d} skipped {r['xfail']:3d} xfail "
            f"{r['xpass']:3d} xpass | loops {r['loops_created']:4d} [{types}] | "
            f"{r['duration']:6.1f}s {r['status']}{flag}")


def summary_line(res):
    if "unavailable" in res:
        return f"conformance[{res['loop']}]: unavailable ({res['unavailable']})"
    t = res["totals"]
    return (f"conformance[{res['loop']}]: {t['passed']} passed, {t['failed']} failed, "
            f"{t['errors']} errors, {t['skipped']} skipped")


def cell(r):
    s = f"{r['passed']}/{r['failed']}/{r['errors']}/{r['skipped']}"
    st = r["status"]
    if st.startswith("module skipped"):
        s += " (module skipped)"
    elif st.startswith("fatal"):
        s += f" ({st})"
    elif r.get("incidents"):
        kinds = collections.Counter(i["kind"] for i in r["incidents"])
        s += " (" + ", ".join(f"{k} x{n}" if n > 1 else k for k, n in kinds.items()) + ")"
    if r.get("zero_loops"):
        s += " ⚠ 0 loops"
    return s


def markdown_table(results, modules):
    cols = [res["loop"] for res in results]
    lines = ["| module | " + " | ".join(cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for m in modules:
        row = [m]
        for res in results:
            r = res["modules"].get(m)
            row.append("unavailable" if "unavailable" in res else (cell(r) if r else "-"))
        lines.append("| " + " | ".join(row) + " |")
    row = ["**total**"]
    for res in results:
        if "unavailable" in res:
            row.append("unavailable")
        else:
            t = res["totals"]
            row.append(f"**{t['passed']}/{t['failed']}/{t['errors']}/{t['skipped']}**")
    lines.append("| " + " | ".join(row) + " |")
    lines.append("| wall time | " + " | ".join(f"{res['wall_time']:.0f} s" for res in results) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Floors


def floor_key(pyinfo):
    return f"python{pyinfo['minor']}"


def check_floor(results, floor, key, floor_loops):
    problems = []
    mods = floor.get(key)
    if mods is None:
        say(f"floor: no entry for {key}; nothing to check")
        return problems
    for res in results:
        if floor_loops and res["loop"] not in floor_loops:
            continue
        if "unavailable" in res:
            problems.append(f"{res['loop']}: loop unavailable ({res['unavailable']})")
            continue
        for m, minimum in mods.items():
            r = res["modules"].get(m)
            if r is None:
                continue   # not run this time
            if r["passed"] < minimum:
                problems.append(f"{res['loop']}: {m}: {r['passed']} passed < floor {minimum}")
    return problems


def write_floor(path, res, key, margin):
    data = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    entry = dict(data.get(key, {}))
    for m, r in res["modules"].items():
        entry[m] = max(0, r["passed"] - margin)
    data[key] = dict(sorted(entry.items()))
    data = dict(sorted(data.items()))
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------


def failure_categories(res, top=15):
    groups = collections.Counter()
    example = {}
    for r in res["modules"].values():
        for f in r["failures"]:
            msg = f.get("exception", "")
            if ":" not in msg and f.get("where"):
                msg += f" @ {f['where'].split(' in ')[-1]}()"
            # normalise addresses, numbers and quoted reprs a little
            key = re.sub(r"0x[0-9a-f]+", "0x…", msg)
            key = re.sub(r"\b\d+(\.\d+)?\b", "N", key)
            key = key[:160]
            groups[key] += 1
            example.setdefault(key, f["id"])
    return [(n, k, example[k]) for k, n in groups.most_common(top)]


def main(argv=None):
    # Started in the background (`cmd &` in a script), we and our workers would
    # ignore SIGINT, and test_runners' Ctrl-C tests would hang: restore Python's
    # handler, which the workers then start with.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    ap = argparse.ArgumentParser(
        description="Run CPython's test.test_asyncio suites on a chosen event loop.")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--loop", help="loop factory, module:callable (e.g. uvloop:new_event_loop)")
    g.add_argument("--compare", help="comma-separated loop factories; prints one Markdown table")
    ap.add_argument("--modules", help="comma-separated test_asyncio modules (default: %(default)s)",
                    default=",".join(DEFAULT_MODULES))
    ap.add_argument("--timeout", type=float, default=600,
                    help="wall-time limit per module in seconds (default 600)")
    ap.add_argument("--test-timeout", type=float, default=60,
                    help="a single test running longer is killed, reported as an error "
                         "and the module resumed after it (default 60; 0 = off)")
    ap.add_argument("--max-restarts", type=int, default=10,
                    help="resume a crashed/hung module at most this often (default 10)")
    ap.add_argument("--jobs", "-j", type=int, default=2, help="modules run in parallel (default 2)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter to run the tests with (default: this one)")
    ap.add_argument("--pythonpath", action="append", default=[],
                    help="extra sys.path entry for the workers (repeatable)")
    ap.add_argument("--floor", help="JSON file {\"python3.11\": {\"test_tasks\": 500}}; "
                                    "exit 1 if a module passes fewer tests")
    ap.add_argument("--write-floor", metavar="FILE",
                    help="write this run's passed counts as the floor for this Python version")
    ap.add_argument("--floor-margin", type=int, default=0,
                    help="with --write-floor: write passed-MARGIN (slack for flaky tests)")
    ap.add_argument("--floor-loop", action="append", default=[],
                    help="loop(s) the floor applies to / is written from (default: every loop "
                         "for --floor; the last loop for --write-floor)")
    ap.add_argument("--json", metavar="FILE", help="write all results as JSON")
    ap.add_argument("--list-failures", action="store_true", help="print failing test ids")
    ap.add_argument("--categories", action="store_true",
                    help="print the most common failure messages per loop")
    ap.add_argument("--log-dir", default=DEFAULT_LOG_DIR,
                    help="per-module logs go to LOG_DIR/<loop>-py<version>/ (default %(default)s)")
    args = ap.parse_args(argv)

    loops = [args.loop] if args.loop else [s.strip() for s in args.compare.split(",") if s.strip()]
    python = args.python
    pyinfo = probe_python(python)

    requested = [m.strip() for m in args.modules.split(",") if m.strip()]
    modules, missing = [], []
    for m in requested:
        m = m if m.startswith("test_") else "test_" + m
        (modules if os.path.exists(os.path.join(pyinfo["dir"], m + ".py")) else missing).append(m)
    if missing:
        say(f"skipping modules absent from Python {pyinfo['version']}: {', '.join(missing)}")
    if not modules:
        say("no modules to run")
        return 2

    floor = None
    if args.floor:
        if not os.path.exists(args.floor):
            # No floor recorded yet: not an error (scripts/test.sh passes
            # --floor before anyone has written one).
            say(f"WARNING: floor file {args.floor} not found; floor check skipped "
                "(record one with --write-floor)")
        else:
            with open(args.floor, encoding="utf-8") as f:
                floor = json.load(f)

    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.abspath(p) for p in args.pythonpath]
            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("PYTHONASYNCIODEBUG", None)

    enable_subreaper()

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    results = []
    t_all = time.monotonic()
    try:
        for loop in loops:
            res = run_loop(args, python, pyinfo, loop, modules, env)
            for r in res["modules"].values():
                r["zero_loops"] = (r["module"] not in NO_LOOP_MODULES
                                   and r["loops_created"] == 0 and r["ran"] > 0)
            results.append(res)
    except KeyboardInterrupt:
        STOP.set()
        with _active_lock:
            procs = list(_active)
        for p in procs:
            _kill_group(p)
        reap_orphans()
        say("interrupted")
        return 130

    rc = 0
    problems = []
    say("")
    for res in results:
        if "unavailable" in res:
            problems.append(f"{res['loop']}: unavailable: {res['unavailable']}")
            continue
        say(f"== {res['loop']} on Python {res['python']} ({res['wall_time']:.0f} s wall)")
        for r in res["modules"].values():
            say("  " + format_module_line(r))
            if r["zero_loops"]:
                problems.append(f"{res['loop']}: {r['module']}: the factory created no loop "
                                f"although {r['ran']} tests ran (injection broken?)")
        if res["totals"]["loops_created"] == 0:
            problems.append(f"{res['loop']}: the factory created no loop at all")
        if args.list_failures:
            for r in res["modules"].values():
                for f in r["failures"]:
                    sub = f" [{f['subtest']}]" if f.get("subtest") else ""
                    say(f"    {f['status'].upper():7} {f['id']}{sub}: {f.get('exception', '')}")
        if args.categories:
            say(f"  top failure messages for {res['loop']}:")
            cats = failure_categories(res)
            for n, k, ex in cats:
                say(f"    {n:5d}  {k}   (e.g. {ex})")
            if not cats:
                say("    (none)")

    say("")
    say(f"Python {pyinfo['version']}; cell = passed/failed/errors/skipped")
    say("")
    say(markdown_table(results, modules))
    say("")
    for res in results:
        say(summary_line(res))
    say(f"total wall time: {time.monotonic() - t_all:.0f} s")

    key = floor_key(pyinfo)
    if floor is not None:
        fp = check_floor(results, floor, key, set(args.floor_loop))
        for p in fp:
            say(f"FLOOR: {p}")
        if fp:
            problems.append(f"{len(fp)} module(s) below the floor in {args.floor} [{key}]")
        else:
            say(f"floor [{key}] in {args.floor}: ok")

    if args.write_floor:
        src = [r for r in results if "unavailable" not in r
               and (not args.floor_loop or r["loop"] in args.floor_loop)]
        if not src:
            say("--write-floor: no usable loop result")
            rc = 2
        else:
            write_floor(args.write_floor, src[-1], key, args.floor_margin)
            say(f"wrote floor [{key}] from {src[-1]['loop']} to {args.write_floor}")

    if args.json:
        payload = {"python": pyinfo["version"], "platform": pyinfo["platform"],
                   "modules": modules,
                   "argv": sys.argv[1:],
                   "results": {res["loop"]: res for res in results}}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)
        say(f"wrote {args.json}")

    for p in problems:
        say(f"FAIL: {p}")
    if problems:
        rc = rc or 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
