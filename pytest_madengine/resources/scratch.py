"""A session's scratch directory on this machine (workspaces, locks, notes), and the
removal of those whose session was killed before it could remove its own."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from pytest_madengine.resources.processes import identity_gone, process_identity

PREFIX = "mad-session-"
# Inside each directory: who made it, as process_identity() tells it.
CONTROLLER_FILE = ".controller"


def new_session_dir(session_id: str, parent: Path | None = None) -> Path:
    """A new directory for the session, marked with this process as its controller;
    those of sessions killed earlier (`kill -9`: nothing of theirs ran at the end) are
    removed first."""
    remove_stale_session_dirs(parent)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{session_id}-", dir=parent))
    (path / CONTROLLER_FILE).write_text(process_identity(), encoding="utf-8")
    return path


def remove_stale_session_dirs(parent: Path | None = None) -> int:
    """Removes this user's session directories whose controller was a process of this
    machine that is gone; how many. Unmarked ones (or others') are left alone."""
    parent = Path(parent or tempfile.gettempdir())
    removed = 0
    try:
        names = [name for name in os.listdir(parent) if name.startswith(PREFIX)]
    except OSError:
        return 0
    for name in names:
        path = parent / name
        try:
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue  # a link, a file, someone else's
            identity = (path / CONTROLLER_FILE).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if identity and identity_gone(identity):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed
