"""A file lock that threads of one process wait on without polling.

filelock makes other processes (xdist workers) wait, by polling the lock file every
50 ms; threads of this process (tests running at once) would poll too. A thread lock
in front lets them queue in this process and wake as soon as the holder is done: only
one thread of a process at a time asks for the file lock.
"""

from __future__ import annotations

import threading
from types import TracebackType


class SharedLock:
    def __init__(self, path: str) -> None:
        from filelock import FileLock  # here: listing tests (--collect-only) needs none

        self._threads = threading.Lock()
        self._file = FileLock(path)

    def __enter__(self) -> SharedLock:
        self._threads.acquire()
        try:
            self._file.acquire()
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
            self._file.release()
        finally:
            self._threads.release()
