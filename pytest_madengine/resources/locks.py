"""A file lock that threads of one process wait on without polling.

Other processes (xdist workers, other sessions) wait on an flock(2) of the lock file;
threads of this process (tests running at once) queue on a thread lock in front, so
only one thread of a process at a time asks for the file lock. flock is taken straight
from the kernel: a placement and a release each take this lock, thousands of times in
a fleet's session, and a lock library's own bookkeeping cost more than the placing did.
"""

from __future__ import annotations

import fcntl
import os
import threading
from types import TracebackType


class SharedLock:
    """With `keep_open`, the lock file stays open between uses (a lock taken per test
    costs no open) until `close`; else each use opens and closes it."""

    def __init__(self, path: str, keep_open: bool = False) -> None:
        self._path = path
        self._keep_open = keep_open
        self._threads = threading.Lock()
        self._fd: int | None = None

    def __enter__(self) -> SharedLock:
        self._threads.acquire()
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # blocks; a signal's exception ends the wait
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._keep_open and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            else:
                fd, self._fd = self._fd, None
                if fd is not None:
                    os.close(fd)  # closing the only descriptor ends the flock
        finally:
            self._threads.release()

    def close(self) -> None:
        with self._threads:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)
