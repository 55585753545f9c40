"""Session scratch directories: marked and locked by their controller, and those of
sessions killed before they could clean up removed by the next one."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from pytest_madengine.resources.processes import process_identity
from pytest_madengine.resources.scratch import (
    CONTROLLER_FILE,
    new_session_dir,
    remove_session_dir,
    remove_stale_session_dirs,
)


def marked(parent: Path, name: str, held: bool) -> Path:
    """A session directory as a controller leaves it; `held`: its controller still runs
    (this test process holds the lock, as another process would)."""
    path = parent / name
    path.mkdir()
    marker = os.open(path / CONTROLLER_FILE, os.O_WRONLY | os.O_CREAT)
    os.write(marker, process_identity().encode())
    if held:
        fcntl.flock(marker, fcntl.LOCK_EX)
        HELD.append(marker)
    else:
        os.close(marker)
    (path / "workspaces").mkdir()
    return path


HELD: list[int] = []


def test_a_new_directory_names_and_locks_this_process_as_its_controller(
    tmp_path: Path,
) -> None:
    path = new_session_dir("abc", tmp_path)
    assert path.name.startswith("mad-session-abc-")
    assert (path / CONTROLLER_FILE).read_text() == process_identity()
    assert remove_stale_session_dirs(tmp_path) == 0  # locked: its controller runs
    assert path.exists()
    remove_session_dir(path)
    assert not path.exists()


def test_a_directory_whose_controller_was_killed_is_removed(tmp_path: Path) -> None:
    # A process that made its directory and was killed with kill -9.
    code = (
        "import os, signal, sys; from pathlib import Path;"
        "from pytest_madengine.resources.scratch import new_session_dir;"
        "new_session_dir('killed', Path(sys.argv[1]));"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    (killed,) = tmp_path.glob("mad-session-killed-*")
    new_session_dir("next", tmp_path)
    assert not killed.exists()


def test_only_unlocked_directories_of_this_user_are_removed(tmp_path: Path) -> None:
    dead = marked(tmp_path, "mad-session-dead-1", held=False)
    alive = marked(tmp_path, "mad-session-alive-1", held=True)
    unmarked = tmp_path / "mad-session-old-1"
    unmarked.mkdir()
    other = marked(tmp_path, "not-ours", held=False)
    link = tmp_path / "mad-session-link"
    link.symlink_to(other)
    try:
        assert remove_stale_session_dirs(tmp_path) == 1
        assert not dead.exists()
        assert alive.exists() and unmarked.exists() and other.exists() and link.is_symlink()
    finally:
        while HELD:
            os.close(HELD.pop())
