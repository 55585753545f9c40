"""Which process runs a session, told so that another process can check it is gone;
and the helper processes a session starts, which must outlive a signal to its group
but not the session itself."""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat),
    which tells it apart from a later process that got the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def process_identity(pid: int | None = None) -> str:
    """`host:pid:start time` of a process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{os.uname().nodename}:{pid}:{_start_time(pid) or ''}"


def identity_gone(identity: str) -> bool:
    """True when the identity names a process of this host that no longer runs; False
    when it runs, or belongs to another host (we cannot tell there)."""
    host, _, rest = identity.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != os.uname().nodename or not pid_text.isdigit():
        return False
    return _start_time(int(pid_text)) != started or not started


PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    # Looked up here, not in the child: between fork and exec only the call is safe.
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _end_with(parent: int) -> Callable[[], None]:
    """The child's last step before exec: SIGTERM when its parent ends, however it ends."""

    def in_child() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return in_child


class _Spawner:
    """Starts helpers from one thread that lasts as long as the process: the kernel
    sends the parent-death signal when the *thread* that forked a child ends, so a
    helper started from a short-lived pool thread would die with that thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def call(self, start: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="mad-spawner", daemon=True)
                self._thread.start()
        done: Future[Any] = Future()
        self._requests.put((start, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            start, done = self._requests.get()
            try:
                done.set_result(start())
            except BaseException as exc:  # the caller gets it, this thread goes on
                done.set_exception(exc)


_SPAWNER = _Spawner()


def start_helper(argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Starts a helper process that the session's own cleanup needs (an SSH tunnel to a
    host whose containers it removes). It runs in a session of its own, outside this
    process's group, so a signal to the group (Ctrl-C in a terminal, `timeout`, a CI
    runner's SIGTERM) or a hang-up reaches only the session, which stops and closes it;
    and it gets SIGTERM when this process ends however it ends (kill -9 included)."""
    preexec = _end_with(os.getpid())
    return _SPAWNER.call(
        lambda: subprocess.Popen(list(argv), start_new_session=True, preexec_fn=preexec, **popen)
    )
