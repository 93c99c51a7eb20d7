"""Subprocesses: loop.subprocess_exec/_shell and asyncio.create_subprocess_*,
stdio redirections, the subprocess transport API, the SubprocessProtocol
callbacks and their order, signals, back-pressure, and loops in threads."""

import asyncio
import gc
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from loopsupport import exc_signature, rss_bytes, run_on_asyncio

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL
STDOUT = asyncio.subprocess.STDOUT

# A Python child without site-packages starts in half the time.
PY = (sys.executable, "-S", "-c")


@pytest.fixture
def run(run_collecting):
    """run_until_complete, then a garbage collection (conftest.run_collecting)."""
    return run_collecting


class RecordingSubprocessProtocol(asyncio.SubprocessProtocol):
    """Records the callbacks: ('connection_made',), ('pipe_data_received', fd),
    ('pipe_connection_lost', fd, exc), ('process_exited', returncode),
    ('connection_lost', exc)."""

    def __init__(self, loop):
        self.loop = loop
        self.events = []
        self.data = {1: bytearray(), 2: bytearray()}
        self.transport = None
        self.made = loop.create_future()
        self.exited = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append(("connection_made",))
        self.made.set_result(None)

    def pipe_data_received(self, fd, data):
        assert isinstance(data, bytes)
        self.events.append(("pipe_data_received", fd))
        self.data[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe_connection_lost", fd, exc_signature(exc)))

    def process_exited(self):
        rc = self.transport.get_returncode()
        self.events.append(("process_exited", rc))
        self.exited.set_result(rc)

    def connection_lost(self, exc):
        self.events.append(("connection_lost", exc_signature(exc)))
        self.lost.set_result(exc)


def check_callback_order(events, fds=(0, 1, 2)):
    """The ordering constraints asyncio guarantees."""
    kinds = [e[0] for e in events]
    assert kinds[0] == "connection_made", events
    assert kinds.count("connection_made") == 1, events
    assert kinds[-1] == "connection_lost", events
    assert kinds.count("connection_lost") == 1, events
    assert kinds.count("process_exited") == 1, events
    for fd in fds:
        lost = [i for i, e in enumerate(events) if e[:2] == ("pipe_connection_lost", fd)]
        assert len(lost) == 1, (fd, events)
        data = [i for i, e in enumerate(events) if e[:2] == ("pipe_data_received", fd)]
        assert all(i < lost[0] for i in data), (fd, events)
    assert sum(1 for k in kinds if k == "pipe_connection_lost") == len(fds), events


def collapse(events):
    """Events with consecutive pipe_data_received for one fd merged."""
    out = []
    for e in events:
        if e[0] == "pipe_data_received" and out and out[-1] == e:
            continue
        out.append(e)
    return out


# ---------------------------------------------------------------------------
# asyncio.create_subprocess_exec / _shell
# ---------------------------------------------------------------------------

def test_create_subprocess_exec_communicate(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            *PY, "import sys; d = sys.stdin.buffer.read(); "
                 "sys.stdout.buffer.write(d.upper()); sys.stderr.write('err'); sys.exit(4)",
            stdin=PIPE, stdout=PIPE, stderr=PIPE)
        assert isinstance(proc.pid, int) and proc.pid > 0
        assert proc.returncode is None
        out, err = await asyncio.wait_for(proc.communicate(b"hello child"), 10)
        assert out == b"HELLO CHILD"
        assert err == b"err"
        assert proc.returncode == 4
        assert await proc.wait() == 4

    run(main())


def test_create_subprocess_shell(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "echo out; echo err >&2; exit 3", stdout=PIPE, stderr=PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
        assert (out, err, proc.returncode) == (b"out\n", b"err\n", 3)

    run(main())


def test_communicate_large_both_ways(loop, run):
    """4 MiB in through stdin and back out through `cat`, no deadlock, bytes
    intact."""
    data = os.urandom(4 * 1024 * 1024)

    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        out, err = await asyncio.wait_for(proc.communicate(data), 20)
        assert err is None
        assert len(out) == len(data)
        assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
        assert proc.returncode == 0

    run(main())


def test_stream_readline_and_write(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            *PY, "import sys\nfor line in sys.stdin:\n"
                 "    sys.stdout.write(line[::-1].strip() + '\\n'); sys.stdout.flush()",
            stdin=PIPE, stdout=PIPE)
        for word in (b"abc", b"glassloop", b"xyz"):
            proc.stdin.write(word + b"\n")
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert line == word[::-1] + b"\n"
        proc.stdin.close()
        await proc.stdin.wait_closed()
        assert await asyncio.wait_for(proc.stdout.read(), 10) == b""
        assert await asyncio.wait_for(proc.wait(), 10) == 0

    run(main())


def test_devnull(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            *PY, "import sys; print(repr(sys.stdin.read())); print('x', file=sys.stderr)",
            stdin=DEVNULL, stdout=PIPE, stderr=DEVNULL)
        assert proc.stdin is None
        assert proc.stderr is None
        out, err = await asyncio.wait_for(proc.communicate(), 10)
        assert out == b"''\n"
        assert err is None
        proc = await asyncio.create_subprocess_shell("echo hidden", stdout=DEVNULL)
        assert proc.stdout is None
        assert await asyncio.wait_for(proc.communicate(), 10) == (None, None)
        assert proc.returncode == 0

    run(main())


def test_stderr_to_stdout(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "echo one; echo two >&2; echo three", stdout=PIPE, stderr=STDOUT)
        assert proc.stderr is None
        out, err = await asyncio.wait_for(proc.communicate(), 10)
        assert out == b"one\ntwo\nthree\n"
        assert err is None

    run(main())


def test_file_objects_and_fds(loop, run, tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"from a file\n" * 100)
    out_path = tmp_path / "out.txt"
    err_path = tmp_path / "err.txt"

    async def main():
        with open(src, "rb") as fin, open(out_path, "wb") as fout:
            errfd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                proc = await asyncio.create_subprocess_shell(
                    "cat; echo to-stderr >&2", stdin=fin, stdout=fout, stderr=errfd)
                assert proc.stdin is None and proc.stdout is None and proc.stderr is None
                assert await asyncio.wait_for(proc.wait(), 10) == 0
            finally:
                os.close(errfd)
        assert out_path.read_bytes() == b"from a file\n" * 100
        assert err_path.read_bytes() == b"to-stderr\n"
        # an fd for stdin, a PIPE for stdout
        infd = os.open(src, os.O_RDONLY)
        try:
            proc = await asyncio.create_subprocess_exec("cat", stdin=infd, stdout=PIPE)
        finally:
            os.close(infd)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        assert out == b"from a file\n" * 100

    run(main())


def test_cwd_env(loop, run, tmp_path):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            *PY, "import os; print(os.getcwd()); print(os.environ.get('GLASS')); "
                 "print(os.environ.get('HOME', 'no-home'))",
            stdout=PIPE, cwd=str(tmp_path), env={"GLASS": "loop"})
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        cwd, glass, home = out.decode().splitlines()
        assert os.path.realpath(cwd) == os.path.realpath(str(tmp_path))
        assert glass == "loop"
        assert home == "no-home"
        proc = await asyncio.create_subprocess_shell(
            "pwd; echo $GLASS", stdout=PIPE, cwd=tmp_path,
            env={"GLASS": "shell", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        pwd, glass = out.decode().splitlines()
        assert os.path.realpath(pwd) == os.path.realpath(str(tmp_path))
        assert glass == "shell"

    run(main())


def test_start_new_session(loop, run):
    async def main():
        code = "import os; print(os.getpid(), os.getsid(0), os.getpgid(0))"
        proc = await asyncio.create_subprocess_exec(*PY, code, stdout=PIPE, start_new_session=True)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        pid, sid, pgid = map(int, out.split())
        assert pid == proc.pid
        assert sid == pid and pgid == pid
        assert sid != os.getsid(0)
        proc = await asyncio.create_subprocess_exec(*PY, code, stdout=PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        pid, sid, pgid = map(int, out.split())
        assert sid == os.getsid(0)

    run(main())


def test_pass_fds(loop, run):
    async def main():
        r, w = os.pipe()
        r2, w2 = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *PY, "import os, sys\n"
                     "os.write(int(sys.argv[1]), b'via passed fd')\n"
                     "try:\n    os.write(int(sys.argv[2]), b'x')\nexcept OSError as e:\n"
                     "    print('not inherited', e.errno)",
                str(w), str(w2), stdout=PIPE, pass_fds=(w,))
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
            os.close(w)
            w = None
            assert os.read(r, 100) == b"via passed fd"
            assert out.startswith(b"not inherited 9")  # EBADF: w2 was not passed
        finally:
            for fd in (r, w, r2, w2):
                if fd is not None:
                    os.close(fd)

    run(main())


def test_child_not_found(loop, run):
    async def scenario(lp):
        with pytest.raises(FileNotFoundError) as ei:
            await asyncio.create_subprocess_exec("/nonexistent/glassloop-child", stdout=PIPE)
        return exc_signature(ei.value)

    assert run(scenario(loop)) == run_on_asyncio(scenario)


def test_wait_returncodes(loop, run):
    async def main():
        procs = [await asyncio.create_subprocess_shell("exit %d" % i) for i in range(6)]
        codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 10)
        assert codes == list(range(6))
        assert [p.returncode for p in procs] == list(range(6))

    run(main())


def test_many_concurrent_children(loop, run):
    async def main():
        async def one(i):
            proc = await asyncio.create_subprocess_shell("echo %d" % i, stdout=PIPE)
            out, _ = await proc.communicate()
            return int(out), proc.returncode

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(30))), 20)
        assert results == [(i, 0) for i in range(30)]

    run(main())


# ---------------------------------------------------------------------------
# Killing and signals
# ---------------------------------------------------------------------------

def test_kill_terminate_send_signal(loop, run):
    async def main():
        results = {}
        for how in ("kill", "terminate", "send_signal"):
            proc = await asyncio.create_subprocess_exec("sleep", "30")
            if how == "send_signal":
                proc.send_signal(signal.SIGINT)
            else:
                getattr(proc, how)()
            results[how] = await asyncio.wait_for(proc.wait(), 10)
        assert results == {"kill": -signal.SIGKILL, "terminate": -signal.SIGTERM,
                           "send_signal": -signal.SIGINT}

    run(main())


def test_child_killed_by_signal(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_shell("kill -9 $$", stdout=PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        assert out == b""
        assert proc.returncode == -9
        proc = await asyncio.create_subprocess_exec(
            *PY, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
        assert await asyncio.wait_for(proc.wait(), 10) == -9

    run(main())


def test_child_handles_signal(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            *PY, "import signal, sys, time\n"
                 "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(7))\n"
                 "print('ready', flush=True)\n"
                 "time.sleep(30)",
            stdout=PIPE)
        assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"ready\n"
        proc.send_signal(signal.SIGUSR1)
        assert await asyncio.wait_for(proc.wait(), 10) == 7

    run(main())


def test_signal_after_exit(loop, run):
    """Once the transport is finished, signalling raises ProcessLookupError
    (as asyncio does)."""
    async def scenario(lp):
        proc = await asyncio.create_subprocess_exec("true")
        await asyncio.wait_for(proc.wait(), 10)
        # wait() can return before the transport finishes: when the exit was seen
        # before wait() was called, it returns the code at once while the
        # transport's connection_lost is still queued (call_soon). Let it run.
        for _ in range(3):
            await asyncio.sleep(0)
        out = []
        for how in ("send_signal", "terminate", "kill"):
            try:
                if how == "send_signal":
                    proc.send_signal(signal.SIGTERM)
                else:
                    getattr(proc, how)()
                out.append(None)
            except Exception as e:
                out.append(type(e).__name__)
        return out

    got = run(scenario(loop))
    assert got == ["ProcessLookupError"] * 3
    assert got == run_on_asyncio(scenario)


def test_signal_between_exit_and_connection_lost(loop, run):
    """In process_exited() the child is reaped but the transport not finished:
    kill(), terminate() and send_signal() do nothing (the Popen knows its
    returncode); after connection_lost() they raise ProcessLookupError."""
    async def scenario(lp):
        out = []

        class Proto(asyncio.SubprocessProtocol):
            def connection_made(self, transport):
                self.transport = transport
                self.done = lp.create_future()

            def process_exited(self):
                for how in ("send_signal", "terminate", "kill"):
                    try:
                        if how == "send_signal":
                            self.transport.send_signal(signal.SIGTERM)
                        else:
                            getattr(self.transport, how)()
                        out.append(("exited", how, None))
                    except Exception as e:
                        out.append(("exited", how, type(e).__name__))

            def connection_lost(self, exc):
                self.done.set_result(None)

        tr, proto = await lp.subprocess_exec(Proto, "sh", "-c", "exit 3", stdin=DEVNULL, stdout=PIPE, stderr=DEVNULL)
        await asyncio.wait_for(proto.done, 10)
        for how in ("send_signal", "terminate", "kill"):
            try:
                if how == "send_signal":
                    tr.send_signal(signal.SIGTERM)
                else:
                    getattr(tr, how)()
                out.append(("lost", how, None))
            except Exception as e:
                out.append(("lost", how, type(e).__name__))
        out.append(tr.get_returncode())
        tr.close()
        return out

    got = run(scenario(loop))
    assert got == [("exited", "send_signal", None), ("exited", "terminate", None), ("exited", "kill", None),
                   ("lost", "send_signal", "ProcessLookupError"), ("lost", "terminate", "ProcessLookupError"),
                   ("lost", "kill", "ProcessLookupError"), 3]
    assert got == run_on_asyncio(scenario)


# ---------------------------------------------------------------------------
# loop.subprocess_exec / _shell and the transport API
# ---------------------------------------------------------------------------

def test_subprocess_exec_transport_api(loop, run):
    async def main():
        proto = RecordingSubprocessProtocol(loop)
        tr, pr = await loop.subprocess_exec(
            lambda: proto, *PY,
            "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d.upper()); "
            "sys.stderr.buffer.write(b'E'); sys.exit(5)")
        assert pr is proto
        assert isinstance(tr, asyncio.SubprocessTransport)
        await proto.made
        pid = tr.get_pid()
        popen = tr.get_extra_info("subprocess")
        assert isinstance(popen, subprocess.Popen)
        assert popen.pid == pid
        assert tr.get_returncode() is None
        stdin = tr.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        assert isinstance(tr.get_pipe_transport(1), asyncio.ReadTransport)
        assert isinstance(tr.get_pipe_transport(2), asyncio.ReadTransport)
        assert tr.get_pipe_transport(3) is None
        assert tr.is_closing() is False
        stdin.write(b"shout")
        stdin.close()
        assert await asyncio.wait_for(proto.exited, 10) == 5
        await asyncio.wait_for(proto.lost, 10)
        assert tr.get_returncode() == 5
        assert bytes(proto.data[1]) == b"SHOUT"
        assert bytes(proto.data[2]) == b"E"
        check_callback_order(proto.events)
        assert proto.events[-1] == ("connection_lost", None)
        tr.close()
        assert tr.is_closing() is True

    run(main())


def test_subprocess_shell_transport(loop, run):
    async def main():
        proto = RecordingSubprocessProtocol(loop)
        tr, _ = await loop.subprocess_shell(
            lambda: proto, "echo shell-out; echo shell-err >&2; exit 2",
            stdin=DEVNULL)
        assert tr.get_pipe_transport(0) is None
        await asyncio.wait_for(proto.lost, 10)
        assert tr.get_returncode() == 2
        assert bytes(proto.data[1]) == b"shell-out\n"
        assert bytes(proto.data[2]) == b"shell-err\n"
        check_callback_order(proto.events, fds=(1, 2))
        tr.close()

    run(main())


def test_subprocess_callbacks_order_same_as_reference(loop, run):
    """The same set of callbacks as on asyncio, under the same ordering
    constraints; the data per fd identical."""
    code = ("import sys, time; sys.stdout.write('o' * 100000); sys.stdout.flush(); "
            "sys.stderr.write('e' * 1000); sys.stderr.flush(); d = sys.stdin.read(); "
            "sys.stdout.write(d); sys.exit(9)")

    async def scenario(lp):
        proto = RecordingSubprocessProtocol(lp)
        tr, _ = await lp.subprocess_exec(lambda: proto, *PY, code)
        await proto.made
        tr.get_pipe_transport(0).write(b"input!")
        tr.get_pipe_transport(0).write_eof()
        await asyncio.wait_for(proto.lost, 10)
        tr.close()
        check_callback_order(proto.events)
        kinds = sorted(set((e[0], e[1]) if e[0] in ("pipe_data_received", "pipe_connection_lost",
                                                    "process_exited") else (e[0],)
                           for e in proto.events))
        return kinds, bytes(proto.data[1]), bytes(proto.data[2])

    got = run(scenario(loop))
    assert got[1] == b"o" * 100000 + b"input!"
    assert got[2] == b"e" * 1000
    assert ("process_exited", 9) in got[0]
    assert got == run_on_asyncio(scenario)


def test_subprocess_child_closes_pipes_early(loop, run):
    """The child closes stdout and stderr, then lives on: the pipes' loss is
    reported before process_exited, and connection_lost comes last."""
    async def scenario(lp):
        proto = RecordingSubprocessProtocol(lp)
        tr, _ = await lp.subprocess_exec(
            lambda: proto, *PY,
            "import os, sys, time; sys.stdout.write('bye'); sys.stdout.flush(); "
            "os.close(1); os.close(2); time.sleep(0.4); sys.exit(0)",
            stdin=DEVNULL)
        await asyncio.wait_for(proto.lost, 10)
        tr.close()
        ev = collapse(proto.events)
        return ev

    ev = run(scenario(loop))
    check_callback_order(ev, fds=(1, 2))
    kinds = [e[0] for e in ev]
    exited = kinds.index("process_exited")
    for fd in (1, 2):
        assert ev.index(("pipe_connection_lost", fd, None)) < exited
    # the same callbacks as on asyncio (fds 1 and 2 may be lost in either order)
    assert sorted(ev, key=repr) == sorted(run_on_asyncio(scenario), key=repr)


def test_streams_child_closes_stdout_early(loop, run):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            *PY, "import os, time; os.write(1, b'early'); os.close(1); time.sleep(0.4)",
            stdout=PIPE)
        out = await asyncio.wait_for(proc.stdout.read(), 10)
        assert out == b"early"
        assert proc.returncode is None  # EOF came while the child still runs
        assert await asyncio.wait_for(proc.wait(), 10) == 0

    run(main())


def test_child_stops_reading_stdin(loop, run):
    """The child exits without reading its stdin: communicate() with a big
    input does not fail (broken pipe is ignored, as on asyncio)."""
    async def scenario(lp):
        proc = await asyncio.create_subprocess_exec(
            *PY, "import os; os.close(0); print('done')", stdin=PIPE, stdout=PIPE)
        out, err = await asyncio.wait_for(proc.communicate(b"x" * (4 * 1024 * 1024)), 10)
        return out, err, proc.returncode

    got = run(scenario(loop))
    assert got == (b"done\n", None, 0)
    assert got == run_on_asyncio(scenario)


RESET_AND_SLEEP = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)


def test_transport_kill_terminate_send_signal(loop, run):
    async def main():
        out = {}
        for how in ("kill", "terminate", "send_signal"):
            proto = RecordingSubprocessProtocol(loop)
            # The child puts SIGHUP and SIGTERM back to their default action first:
            # a test run under nohup (or any parent ignoring them) would otherwise
            # hand it SIG_IGN, and the signal would never end it.
            tr, _ = await loop.subprocess_exec(lambda: proto, sys.executable, "-c", RESET_AND_SLEEP, stdin=DEVNULL)
            await proto.made
            async def ready():
                while b"ready" not in proto.data[1]:
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(ready(), 30)
            if how == "send_signal":
                tr.send_signal(signal.SIGHUP)
            else:
                getattr(tr, how)()
            out[how] = await asyncio.wait_for(proto.exited, 10)
            await asyncio.wait_for(proto.lost, 10)
            assert tr.get_returncode() == out[how]
            tr.close()
        assert out == {"kill": -9, "terminate": -15, "send_signal": -signal.SIGHUP}

    run(main())


def test_transport_close_kills_running_child(loop, run):
    async def main():
        proto = RecordingSubprocessProtocol(loop)
        tr, _ = await loop.subprocess_exec(lambda: proto, "sleep", "30")
        await proto.made
        pid = tr.get_pid()
        tr.close()
        assert tr.is_closing()
        rc = await asyncio.wait_for(proto.exited, 10)
        await asyncio.wait_for(proto.lost, 10)
        assert rc == -9
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped
        check_callback_order(proto.events)

    run(main())


def test_subprocess_exec_argument_validation(loop, run):
    async def scenario(lp):
        out = []
        bad = [dict(universal_newlines=True), dict(shell=True), dict(bufsize=1),
               dict(text=True), dict(encoding="utf-8"), dict(errors="strict")]
        for kw in bad:
            try:
                await lp.subprocess_exec(asyncio.SubprocessProtocol, "true", **kw)
                out.append(None)
            except ValueError as e:
                out.append(str(e))
        for kw in [dict(universal_newlines=True), dict(shell=False), dict(bufsize=1)]:
            try:
                await lp.subprocess_shell(asyncio.SubprocessProtocol, "true", **kw)
                out.append(None)
            except ValueError as e:
                out.append(str(e))
        try:
            await lp.subprocess_shell(asyncio.SubprocessProtocol, ["true"])
            out.append(None)
        except ValueError as e:
            out.append(str(e))
        return out

    got = run(scenario(loop))
    assert "universal_newlines must be False" in got
    assert "cmd must be a string" in got
    assert got == run_on_asyncio(scenario)


def test_pipe_transport_pause_reading_blocks_child(loop, run):
    """Pausing the stdout pipe transport stops the data; the child blocks on
    the full pipe and cannot finish until reading resumes."""
    total = 8 * 1024 * 1024

    async def main():
        proto = RecordingSubprocessProtocol(loop)
        tr, _ = await loop.subprocess_exec(
            lambda: proto, *PY,
            "import sys; b = b'p' * 65536\nfor i in range(%d): sys.stdout.buffer.write(b)"
            % (total // 65536),
            stdin=DEVNULL, stderr=DEVNULL)
        await proto.made
        out = tr.get_pipe_transport(1)
        out.pause_reading()
        assert out.is_reading() is False
        await asyncio.sleep(0.5)
        assert len(proto.data[1]) < total // 4
        assert tr.get_returncode() is None  # blocked on the full pipe
        out.resume_reading()
        await asyncio.wait_for(proto.lost, 20)
        assert len(proto.data[1]) == total
        assert tr.get_returncode() == 0
        tr.close()

    run(main())


def test_stdout_flood_backpressure_bounded_memory(loop, run):
    """A child writes 50 MiB to stdout while the parent does not read for a
    while: the child blocks (pipe back-pressure through the StreamReader's
    limit), the parent's memory stays bounded; then everything is read intact."""
    mib = 1024 * 1024
    n = 50
    block = hashlib.sha512(b"flood").digest() * (mib // 64)
    want = hashlib.sha256()
    for i in range(n):
        want.update(i.to_bytes(4, "big") + block[4:])
    want = want.hexdigest()

    async def main():
        gc.collect()
        before = rss_bytes()
        proc = await asyncio.create_subprocess_exec(
            *PY, "import sys, hashlib\n"
                 "block = hashlib.sha512(b'flood').digest() * (%d // 64)\n"
                 "out = sys.stdout.buffer\n"
                 "for i in range(%d):\n"
                 "    out.write(i.to_bytes(4, 'big') + block[4:])\n"
                 "out.flush()" % (mib, n),
            stdout=PIPE, stdin=DEVNULL)
        await asyncio.sleep(1.0)
        during = rss_bytes()
        still_running = proc.returncode is None
        h = hashlib.sha256()
        got = 0
        while True:
            chunk = await asyncio.wait_for(proc.stdout.read(mib), 20)
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
        rc = await asyncio.wait_for(proc.wait(), 10)
        return before, during, still_running, got, h.hexdigest(), rc

    before, during, still_running, got, digest, rc = run(main())
    assert still_running is True, "the child wrote 50 MiB without anyone reading"
    assert during - before < 16 * mib, "RSS grew by {:.1f} MiB".format((during - before) / mib)
    assert got == n * mib
    assert digest == want
    assert rc == 0


# ---------------------------------------------------------------------------
# Loops in other threads
# ---------------------------------------------------------------------------

async def _thread_job(tag):
    proc = await asyncio.create_subprocess_exec(
        *PY, "import sys; sys.stdout.write(sys.stdin.read() * 2)", stdin=PIPE, stdout=PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(tag.encode()), 20)
    shell = await asyncio.create_subprocess_shell("exit 6")
    rc = await asyncio.wait_for(shell.wait(), 20)
    killed = await asyncio.create_subprocess_exec("sleep", "30")
    killed.kill()
    krc = await asyncio.wait_for(killed.wait(), 20)
    return out, proc.returncode, rc, krc


def test_subprocess_in_non_main_thread(loop_factory):
    results = {}

    def worker(tag):
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                results[tag] = runner.run(_thread_job(tag))
        except BaseException as e:
            results[tag] = e

    threads = [threading.Thread(target=worker, args=("t%d" % i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    for i in range(3):
        tag = "t%d" % i
        assert results[tag] == ((tag * 2).encode(), 0, 6, -9), results[tag]


def test_subprocess_thread_and_main_loop_together(loop, run, loop_factory):
    """A loop in a thread and the main thread's loop run children at the same
    time; each gets its own exit statuses."""
    results = {}

    def worker():
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                results["thread"] = runner.run(_thread_job("thr"))
        except BaseException as e:
            results["thread"] = e

    t = threading.Thread(target=worker)
    t.start()
    results["main"] = run(_thread_job("main"))
    t.join(60)
    assert results["thread"] == (b"thrthr", 0, 6, -9)
    assert results["main"] == (b"mainmain", 0, 6, -9)


# ---------------------------------------------------------------------------
# How the loop learns that a child exited: one pid at a time, no thread per
# child on glassloop (a pidfd on the reactor), never reaping other children
# ---------------------------------------------------------------------------

def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def _open_pidfds():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink("/proc/self/fd/" + fd) == "anon_inode:[pidfd]"
        except FileNotFoundError:  # listdir's own fd
            pass
    return n


def _is_zombie(pid):
    """True once `pid` has exited and waits to be reaped."""
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def _wait_until_zombie(pid):
    deadline = time.monotonic() + 10
    while not _is_zombie(pid):
        assert time.monotonic() < deadline, "child %d did not exit" % pid
        time.sleep(0.005)


def _make_default_child_watcher():
    """Make asyncio's default policy create its own child watcher now (asyncio's
    loops do so on their first subprocess), as a program mixing loops would."""
    import warnings
    if hasattr(asyncio, "get_child_watcher"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.get_event_loop_policy().get_child_watcher()


def test_children_not_ours_keep_their_status(loop, run):
    """A child started with plain subprocess.Popen is not reaped by the loop
    while the loop's own children come and go: its wait() gets its status."""
    foreign = subprocess.Popen(["sh", "-c", "sleep 0.3; exit 3"])
    early = subprocess.Popen(["sh", "-c", "exit 4"])
    _wait_until_zombie(early.pid)  # a zombie that is not the loop's, from the start

    async def main():
        async def one(i):
            proc = await asyncio.create_subprocess_shell("sleep %s; exit %d" % (0.1 * (i % 7), i))
            return await asyncio.wait_for(proc.wait(), 20)
        codes = await asyncio.gather(*(one(i) for i in range(20)))
        assert codes == list(range(20))
        assert _is_zombie(early.pid)  # still there for its Popen
        return codes

    run(main())
    assert foreign.wait(10) == 3
    assert early.wait(10) == 4


def test_no_fd_left_after_children(loop, run):
    async def main():
        before = _open_fds()
        procs = [await asyncio.create_subprocess_exec("sleep", "0.2") for _ in range(20)]
        assert await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 20) == [0] * 20
        return before, _open_fds()

    before, after = run(main())
    assert after == before


def test_no_child_watcher_deprecation_warning(loop, run):
    import warnings

    async def main():
        proc = await asyncio.create_subprocess_exec("true")
        return await asyncio.wait_for(proc.wait(), 10)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(main()) == 0
    assert [str(w.message) for w in caught if "watcher" in str(w.message)] == []


@pytest.mark.skipif(not hasattr(asyncio, "set_child_watcher"), reason="no child watchers in this Python")
def test_child_watcher_chosen_by_program_is_used(loop, run, restore_policy):
    """A child watcher the program installed itself is the one that watches."""
    import warnings

    with warnings.catch_warnings():  # the watcher classes and API are deprecated from 3.12 on
        warnings.simplefilter("ignore", DeprecationWarning)

        class Recording(asyncio.ThreadedChildWatcher):
            def __init__(self):
                super().__init__()
                self.pids = []

            def add_child_handler(self, pid, callback, *args):
                self.pids.append(pid)
                super().add_child_handler(pid, callback, *args)

        watcher = Recording()
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
        asyncio.set_child_watcher(watcher)

    async def main():
        proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 3")
        return proc.pid, await asyncio.wait_for(proc.wait(), 10)

    pid, rc = run(main())
    assert rc == 3
    assert watcher.pids == [pid]


def test_glassloop_no_thread_per_child(glassloop):
    """20 children running at once add no thread, even with asyncio's default
    child watcher already made (glassloop does not use it)."""
    _make_default_child_watcher()

    async def main():
        threads = threading.active_count()
        procs = [await asyncio.create_subprocess_exec("sleep", "0.5") for _ in range(20)]
        during = threading.active_count()
        assert all(p.returncode is None for p in procs)
        codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 20)
        return threads, during, codes

    with asyncio.Runner(loop_factory=glassloop.new_event_loop) as runner:
        threads, during, codes = runner.run(main())
    assert codes == [0] * 20
    assert during == threads


def test_glassloop_child_in_thread_loop_adds_no_thread(glassloop):
    results = {}

    def worker():
        async def main():
            threads = threading.active_count()
            procs = [await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.3; exit 2") for _ in range(10)]
            during = threading.active_count()
            return threads, during, await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 20)
        with asyncio.Runner(loop_factory=glassloop.new_event_loop) as runner:
            results["out"] = runner.run(main())

    t = threading.Thread(target=worker)
    t.start()
    t.join(60)
    threads, during, codes = results["out"]
    assert codes == [2] * 10
    assert during == threads


def test_glassloop_child_zombie_before_watch(glassloop, monkeypatch):
    """A child that has already exited (a zombie) when its pidfd is opened is
    reported with its own status."""
    from glassloop import _children
    real = _children.pidfd_open
    seen = []

    def late_pidfd_open(pid, *args):
        _wait_until_zombie(pid)
        seen.append(pid)
        return real(pid, *args)

    monkeypatch.setattr(_children, "pidfd_open", late_pidfd_open)

    async def main():
        proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 6", stdout=PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        killed = await asyncio.create_subprocess_exec(*PY, "import os; os.kill(os.getpid(), 9)")
        return proc.pid, out, proc.returncode, killed.pid, await asyncio.wait_for(killed.wait(), 10)

    with asyncio.Runner(loop_factory=glassloop.new_event_loop) as runner:
        pid, out, rc, kpid, krc = runner.run(main())
    assert seen == [pid, kpid]
    assert (out, rc, krc) == (b"", 6, -9)


def test_glassloop_child_reaped_before_watch(glassloop, monkeypatch, caplog):
    """A child someone else reaped before the loop could open its pidfd
    (ESRCH): its status is lost, reported as 255 with a warning (as asyncio's
    watchers report a status read elsewhere); the loop goes on."""
    from glassloop import _children
    real = _children.pidfd_open

    def reaped_first(pid, *args):
        os.waitpid(pid, 0)
        return real(pid, *args)

    async def main():
        monkeypatch.setattr(_children, "pidfd_open", reaped_first)
        lost = await asyncio.create_subprocess_exec("sh", "-c", "exit 3")
        monkeypatch.setattr(_children, "pidfd_open", real)
        ok = await asyncio.create_subprocess_exec("sh", "-c", "exit 4")
        return await asyncio.wait_for(asyncio.gather(lost.wait(), ok.wait()), 10), lost.pid

    with caplog.at_level("WARNING", logger="asyncio"):
        with asyncio.Runner(loop_factory=glassloop.new_event_loop) as runner:
            codes, pid = runner.run(main())
    assert codes == [255, 4]
    assert "pid %d exit status already read" % pid in caplog.text


def test_glassloop_status_collected_by_popen_first(glassloop):
    """The child exits and, before the loop hears of it, send_signal() makes
    the Popen collect the status (Popen.poll()): wait() still returns the
    child's own code. (asyncio's PidfdChildWatcher reports 255 here.)"""
    async def main():
        proc = await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.2; exit 5")
        _wait_until_zombie(proc.pid)  # no await: the loop cannot look meanwhile
        proc.send_signal(signal.SIGTERM)  # Popen.poll() reaps; no signal is sent
        return await asyncio.wait_for(proc.wait(), 10)

    with asyncio.Runner(loop_factory=glassloop.new_event_loop) as runner:
        assert runner.run(main()) == 5


def test_glassloop_close_with_children_running(glassloop):
    """Closing the loop while children run closes their pidfds (no fd left);
    the children stay the Popen objects' to kill and reap."""
    loop = glassloop.new_event_loop()
    try:
        async def start():
            return [(await loop.subprocess_exec(
                asyncio.SubprocessProtocol, "sleep", "30", stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL))[0]
                    for _ in range(5)]

        before, pidfds_before = _open_fds(), _open_pidfds()
        transports = loop.run_until_complete(start())
        assert (_open_fds(), _open_pidfds()) == (before + 5, pidfds_before + 5)  # a pidfd per child
    finally:
        loop.close()
    assert _open_pidfds() == pidfds_before
    for tr in transports:
        tr.kill()
        assert tr.get_extra_info("subprocess").wait(10) == -signal.SIGKILL
        tr.close()


@pytest.mark.parametrize("unavailable", ["missing", "ENOSYS"])
def test_glassloop_fallback_without_pidfd(glassloop, monkeypatch, unavailable):
    """Without pidfds each child is watched by a thread blocked in
    waitpid(pid): exits, signals, communicate() and loops in threads work the
    same, and only the loop's own children are reaped."""
    import errno
    from glassloop import _children

    if unavailable == "missing":
        monkeypatch.setattr(_children, "pidfd_open", None)
    else:
        def enosys(pid, *args):
            raise OSError(errno.ENOSYS, "Function not implemented")
        monkeypatch.setattr(_children, "pidfd_open", enosys)

    foreign = subprocess.Popen(["sh", "-c", "sleep 0.2; exit 3"])

    async def main():
        threads = threading.active_count()
        procs = [await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.3; exit %d" % i) for i in range(5)]
        during = threading.active_count()
        codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 20)
        return (threads, during, codes) + await _thread_job("fb")

    with asyncio.Runner(loop_factory=glassloop.new_event_loop) as runner:
        threads, during, codes, *job = runner.run(main())
    assert during == threads + 5
    assert codes == list(range(5))
    assert job == [b"fbfb", 0, 6, -9]
    assert foreign.wait(10) == 3
    assert _children.pidfd_open is None  # ENOSYS: not tried again


def test_64mib_through_cat_intact(loop, run):
    """64 MiB through `cat` in uneven writes, read back in uneven reads, while
    both pipes fill and drain: every byte arrives once, in order."""
    import random
    rng = random.Random(64)
    data = rng.randbytes(64 * 1024 * 1024)

    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)

        async def send():
            view = memoryview(data)
            pos = 0
            while pos < len(data):
                size = rng.choice((1, 517, 4096, 65536, 1 << 20))
                proc.stdin.write(view[pos:pos + size])
                pos += size
                await proc.stdin.drain()
            proc.stdin.close()

        async def receive():
            h, n = hashlib.sha256(), 0
            while True:
                chunk = await proc.stdout.read(rng.choice((1000, 65536, 1 << 20)))
                if not chunk:
                    return h.digest(), n
                h.update(chunk)
                n += len(chunk)

        _, (digest, n) = await asyncio.wait_for(asyncio.gather(send(), receive()), 60)
        return digest, n, await proc.wait()

    assert run(main()) == (hashlib.sha256(data).digest(), len(data), 0)
