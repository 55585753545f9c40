"""Work done once per session across processes: builds, image shipping, pulls.

xdist workers are separate processes, so a session-scoped fixture runs once per worker.
`Once` makes one of them do a piece of work (under a file lock in a directory every
worker of the session shares) and notes its result beside the lock; the others wait
and read the note. A failure is noted too, so the others fail at once with the same
one-line reason instead of trying again. Failures marked `transient` (a host that went
away) are not noted: the work may succeed elsewhere or later.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_madengine.errors import MadError
from pytest_madengine.resources.locks import SharedLock

Result = dict[str, Any]  # JSON-able, so it can be noted for the other processes


def note_key(*parts: str) -> str:
    """A short file-name-safe key from any strings (host names, image references...)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


class Once:
    """Runs each keyed action once per session; the result, or the failure, is shared."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._memo: dict[str, Result] = {}  # this process's answers: no lock on a re-ask
        self._locks: dict[str, SharedLock] = {}
        self._locks_lock = threading.Lock()

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        base = self.directory / key
        return base.with_suffix(".lock"), base.with_suffix(".done"), base.with_suffix(".failed")

    def run(self, key: str, action: Callable[[], Result]) -> tuple[Result, bool]:
        """(the action's result, whether this call ran it). Raises MadError with the
        noted reason when the action failed in any process of the session."""
        if key in self._memo:
            return self._memo[key], False
        self.directory.mkdir(parents=True, exist_ok=True)
        lock, done, failed = self._paths(key)
        ran = False
        with self._locks_lock:
            if key not in self._locks:
                self._locks[key] = SharedLock(str(lock))
            shared = self._locks[key]
        with shared:
            if failed.exists():
                raise MadError(failed.read_text(encoding="utf-8"))
            if done.exists():
                result = json.loads(done.read_text(encoding="utf-8"))
            else:
                try:
                    result = action()
                except MadError as exc:
                    if not getattr(exc, "transient", False):
                        failed.write_text(str(exc), encoding="utf-8")
                    raise
                done.write_text(json.dumps(result), encoding="utf-8")
                ran = True
        self._memo[key] = result
        return result, ran

    def forget(self, key: str) -> None:
        """Lets the work run again (this process and the others): a result went stale."""
        self._memo.pop(key, None)
        _, done, _ = self._paths(key)
        done.unlink(missing_ok=True)
