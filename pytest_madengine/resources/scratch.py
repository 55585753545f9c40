"""A session's scratch directory on this machine (workspaces, locks, notes), and the
removal of those whose session was killed before it could remove its own."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path

from pytest_madengine.resources.processes import process_identity

PREFIX = "mad-session-"
# Inside each directory: who made it (process_identity()), locked by that process for
# as long as it lives. The kernel drops the lock when the process ends, however it ends.
CONTROLLER_FILE = ".controller"
# This process's locks on the directories it made, held until it removes them.
_HELD: dict[Path, int] = {}


def new_session_dir(session_id: str, parent: Path | None = None) -> Path:
    """A new directory for the session, locked by this process; those of sessions
    killed earlier (`kill -9`: nothing of theirs ran at the end) are removed first."""
    remove_stale_session_dirs(parent)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{session_id}-", dir=parent))
    # Locked before it takes its name: a sweep never finds the marker unlocked.
    unnamed = path / f"{CONTROLLER_FILE}.new"
    marker = os.open(unnamed, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(marker, fcntl.LOCK_EX)
    os.write(marker, process_identity().encode())
    unnamed.rename(path / CONTROLLER_FILE)
    _HELD[path] = marker
    return path


def remove_session_dir(path: Path) -> None:
    """Removes a directory new_session_dir made, at the end of its session."""
    shutil.rmtree(path, ignore_errors=True)
    marker = _HELD.pop(path, None)
    if marker is not None:
        os.close(marker)


def remove_stale_session_dirs(parent: Path | None = None) -> int:
    """Removes this user's session directories whose controller is gone: nobody holds
    the lock of its marker. Unmarked ones, links and others' are left alone; how many."""
    parent = Path(parent or tempfile.gettempdir())
    try:
        names = [name for name in os.listdir(parent) if name.startswith(PREFIX)]
    except OSError:
        return 0
    removed = 0
    for name in names:
        path = parent / name
        try:
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue  # a link, a file, someone else's
            marker = os.open(path / CONTROLLER_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its controller runs
        finally:
            os.close(marker)
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed
