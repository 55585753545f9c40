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
    def __init__(self, path: str) -> None:
        self._path = path
        self._threads = threading.Lock()
        self._fd: int | None = None

    def __enter__(self) -> SharedLock:
        self._threads.acquire()
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # blocks; a signal's exception ends the wait
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
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
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.close(fd)  # closing the only descriptor ends the flock
        finally:
            self._threads.release()
