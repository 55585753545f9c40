"""The lock of the files that processes of a session share (placement, perf.csv)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pytest_madengine.resources.locks import SharedLock

# Another process asks for the lock without waiting: exit 0 when it got it.
TRY_ELSEWHERE = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "except BlockingIOError:\n    sys.exit(1)\n"
)


def taken_elsewhere(path: Path) -> bool:
    return subprocess.run([sys.executable, "-c", TRY_ELSEWHERE, str(path)]).returncode == 0


def test_another_process_gets_the_lock_only_once_it_is_given_back(tmp_path: Path) -> None:
    lock = SharedLock(str(tmp_path / "x.lock"))
    with lock:
        assert not taken_elsewhere(tmp_path / "x.lock")
    assert taken_elsewhere(tmp_path / "x.lock")
    with lock:  # again, and again given back
        assert not taken_elsewhere(tmp_path / "x.lock")
    assert taken_elsewhere(tmp_path / "x.lock")


def test_a_failed_take_leaves_the_lock_free_for_the_next(tmp_path: Path) -> None:
    lock = SharedLock(str(tmp_path / "missing" / "x.lock"))  # no such directory
    for _ in range(2):
        try:
            with lock:
                raise AssertionError("taken without its directory")
        except FileNotFoundError:
            pass
    (tmp_path / "missing").mkdir()
    with lock:
        assert not taken_elsewhere(tmp_path / "missing" / "x.lock")
