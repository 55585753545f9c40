"""Session scratch directories: marked with their controller, and those of sessions
killed before they could clean up removed by the next one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pytest_madengine.resources.processes import process_identity
from pytest_madengine.resources.scratch import (
    CONTROLLER_FILE,
    new_session_dir,
    remove_stale_session_dirs,
)


def gone_identity() -> str:
    """The identity of a process that ran and ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return f"{os.uname().nodename}:{done.stdout.strip()}:1"


def marked(parent: Path, name: str, identity: str) -> Path:
    path = parent / name
    path.mkdir()
    (path / CONTROLLER_FILE).write_text(identity)
    (path / "workspaces").mkdir()
    return path


def test_a_new_directory_names_this_process_as_its_controller(tmp_path: Path) -> None:
    path = new_session_dir("abc", tmp_path)
    assert path.name.startswith("mad-session-abc-")
    assert (path / CONTROLLER_FILE).read_text() == process_identity()


def test_only_directories_of_gone_controllers_of_this_machine_are_removed(
    tmp_path: Path,
) -> None:
    dead = marked(tmp_path, "mad-session-dead-1", gone_identity())
    alive = marked(tmp_path, "mad-session-alive-1", process_identity())
    elsewhere = marked(tmp_path, "mad-session-far-1", "another-host:1:1")
    unmarked = tmp_path / "mad-session-old-1"
    unmarked.mkdir()
    other = marked(tmp_path, "not-ours", gone_identity())
    link = tmp_path / "mad-session-link"
    link.symlink_to(other)
    assert remove_stale_session_dirs(tmp_path) == 1
    assert not dead.exists()
    assert alive.exists() and elsewhere.exists() and unmarked.exists() and other.exists()
    assert link.is_symlink()


def test_a_new_session_removes_those_left_by_a_killed_one(tmp_path: Path) -> None:
    dead = marked(tmp_path, "mad-session-dead-2", gone_identity())
    new_session_dir("new", tmp_path)
    assert not dead.exists()
