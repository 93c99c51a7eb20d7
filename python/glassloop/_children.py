"""Child processes: how a loop learns that a subprocess it started has exited.

asyncio hands this job to the policy's child watcher: on 3.11 a
`ThreadedChildWatcher` (a thread blocked in `waitpid()` per child), on 3.12 and
3.13 a `PidfdChildWatcher` when the kernel allows it; the watcher API is
deprecated from 3.12 on and gone in 3.14. glassloop keeps the job in the loop
instead, the same way on every Python version:

- `os.pidfd_open(pid)` gives a file descriptor that becomes readable when the
  child exits; the loop watches it with its own reactor (`_add_reader`), like
  any socket, so no thread waits for any child.
- When it is readable, `os.waitpid(pid, os.WNOHANG)` collects that child's
  status, and only that child's: the loop never calls `waitpid(-1)`, so it never
  reaps a process it did not start (a `subprocess.Popen` elsewhere in the
  program keeps its exit status).
- The transport hears of it through `_process_exited(returncode)`, in the loop.

Without pidfds (not Linux, a kernel before 5.3, or a seccomp policy that
refuses the call) each child gets a thread blocked in `waitpid(pid, 0)`, as
asyncio's `ThreadedChildWatcher` does; see `_wait_in_thread` for why.
"""

from __future__ import annotations

import errno
import os
import threading
from asyncio import events, unix_events
from asyncio.log import logger
from typing import Any

__all__ = ["Children", "chosen_child_watcher"]

# Errors that say pidfds cannot work in this process at all (no syscall, or a
# security policy refusing it): stop trying after the first one.
_PIDFD_UNSUPPORTED = (errno.ENOSYS, errno.EPERM, errno.EACCES)

# Cleared when pidfd_open turns out to be unusable here; tests clear it to run
# the thread fallback.
pidfd_open = getattr(os, "pidfd_open", None)

# The watchers asyncio's default policy makes on its own (when anything calls
# get_child_watcher()); a program that installed any other one chose it.
_DEFAULT_WATCHERS = tuple(
    cls for cls in (getattr(unix_events, "ThreadedChildWatcher", None),
                    getattr(unix_events, "PidfdChildWatcher", None))
    if cls is not None
)


def chosen_child_watcher() -> Any:
    """The child watcher the program installed itself with
    `asyncio.set_child_watcher()` (Safe, Fast, MultiLoop or its own), or None.

    Such a watcher is honoured: subprocesses then go through asyncio's own
    path and that watcher. The policy's defaults (Threaded, Pidfd), which it
    creates lazily for anyone who asks, are replaced by glassloop's own. The
    policy's attribute is read directly, since the watcher API warns on 3.12+.
    """
    policy = events._event_loop_policy
    watcher = getattr(policy, "_watcher", None)
    if watcher is None or type(watcher) in _DEFAULT_WATCHERS:
        return None
    return watcher


def _taken_elsewhere(pid: int, transport: Any) -> int:
    """The returncode of a child whose status someone else collected.

    Usually that was the child's own `Popen` (asyncio's `send_signal()`,
    `kill()` and `close()` call `Popen.poll()` first, which reaps an exited
    child), and it kept the code. Otherwise (a `waitpid(-1)` elsewhere in the
    program) the status is lost: 255 with a warning, as asyncio reports it.
    """
    popen = transport._proc
    if popen is not None and popen.returncode is not None:
        return popen.returncode
    logger.warning("child process pid %d exit status already read: will report returncode 255", pid)
    return 255


class Children:
    """The children one loop started and is waiting for, by pid."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        # pid -> (pidfd, transport) for children watched through the reactor.
        self._pidfds: dict[int, tuple[int, Any]] = {}

    def watch(self, transport: Any) -> None:
        """Report `transport`'s child's exit to it (`_process_exited`), in the loop."""
        global pidfd_open
        pid = transport.get_pid()
        if pidfd_open is not None:
            try:
                pidfd = pidfd_open(pid)
            except ProcessLookupError:
                # Already exited and reaped by someone else before we looked.
                self._loop.call_soon(self._exited, transport, _taken_elsewhere(pid, transport))
                return
            except OSError as exc:
                if exc.errno in _PIDFD_UNSUPPORTED:
                    pidfd_open = None
                # Out of fds or refused: this child still needs watching.
                _wait_in_thread(self._loop, pid, transport)
                return
            try:
                self._loop._add_reader(pidfd, self._pidfd_ready, pid)
            except BaseException:
                os.close(pidfd)
                raise
            self._pidfds[pid] = (pidfd, transport)
            return
        _wait_in_thread(self._loop, pid, transport)

    def _pidfd_ready(self, pid: int) -> None:
        pidfd, transport = self._pidfds[pid]
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            returncode = _taken_elsewhere(pid, transport)
        else:
            if reaped == 0:
                return  # not a zombie yet: the reader stays, the next poll reports it again
            returncode = os.waitstatus_to_exitcode(status)
        del self._pidfds[pid]
        self._loop._remove_reader(pidfd)
        os.close(pidfd)
        self._exited(transport, returncode)

    def _exited(self, transport: Any, returncode: int) -> None:
        if self._loop.get_debug():
            logger.debug("process %s exited with returncode %s", transport.get_pid(), returncode)
        transport._process_exited(returncode)

    def close(self) -> None:
        """Stop watching (the loop is closing) and close every pidfd.

        A child still running is left to its `Popen` object, whose `poll()`,
        `wait()` or finalizer reaps it, as for any `Popen` nobody waited for;
        no thread is started for it. Children watched by threads stay so: their
        thread reaps them and drops the news, since the loop is gone.
        """
        pidfds, self._pidfds = self._pidfds, {}
        for pidfd, _ in pidfds.values():
            self._loop._remove_reader(pidfd)
            os.close(pidfd)


def _wait_in_thread(loop: Any, pid: int, transport: Any) -> None:
    """Watch one child with a thread blocked in `waitpid(pid, 0)`: the fallback.

    Without a pidfd there is no file descriptor for a child's exit, and the
    other ways to learn of it are worse here: SIGCHLD is process-wide, handled
    only in the main thread (so not for loops in other threads), and says
    neither which child exited nor whether it was ours, so it leads to
    `waitpid(-1)` (which reaps other code's children) or to polling every child
    on every signal. A thread per child is what asyncio's ThreadedChildWatcher
    does: it waits for exactly one pid, from any thread, and costs a thread
    while the child runs.
    """

    def wait() -> None:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            returncode = None  # taken elsewhere: decided in the loop, where Popen.poll() ran
        else:
            returncode = os.waitstatus_to_exitcode(status)
        try:
            loop.call_soon_threadsafe(_thread_reported, loop, pid, transport, returncode)
        except RuntimeError:
            pass  # the loop closed while the child ran: nobody is left to tell

    threading.Thread(target=wait, name=f"glassloop-waitpid-{pid}", daemon=True).start()


def _thread_reported(loop: Any, pid: int, transport: Any, returncode: int | None) -> None:
    if returncode is None:
        returncode = _taken_elsewhere(pid, transport)
    if loop.get_debug():
        logger.debug("process %s exited with returncode %s", pid, returncode)
    transport._process_exited(returncode)
