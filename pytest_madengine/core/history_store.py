"""What the results history's two stores share (core/history_sqlite.py: a plain SQLite
file through the standard library; core/history_sql.py: any SQLAlchemy URL): the error,
the waits, and what a store does. core/history.py's `History` is the one interface over
them. No pytest here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from pytest_madengine.core.verdicts import ResultKey
from pytest_madengine.errors import MadError

SQLITE_BUSY_MS = 30_000  # a writer waits this long for another's transaction
CONNECT_TIMEOUT_S = 10  # a server that does not answer
WRITE_ATTEMPTS = 5  # "database is locked" past the busy timeout: tried again
KeyRow = tuple[str, float, str | None]  # a result of a key: its session, value, samples
T = TypeVar("T")
# URLs whose database did not answer within the deadline, and the line to say: every
# History of the process on one (the verdicts', the controller's) asks it no more.
_SILENT: dict[str, str] = {}
# Each attempt at a read or write of a server's database ends within this: one that
# stopped answering (a stopped process, a network that drops without a reset) is
# waited on no longer. Above SQLite's busy timeout: a writer waiting on another is not
# cut short.
DEADLINE_S = 60.0
# The text columns of bounded length, both stores alike (core/history_sql.py's tables,
# core/history_sqlite.py's schema): values are cut to them (see `fit`).
LENGTHS = {
    "session": 200, "host": 255, "git_commit": 64, "gpu_architecture": 100, "metric": 200,
    "status": 20,
}  # fmt: skip


def fit(column: str, value: str) -> str:
    """`value` as its column can keep it on any database: without NUL characters and
    cut to the column's length. PostgreSQL refuses either (a model's metric word, a
    host's name), and with it every result of the session, where SQLite keeps them.
    Made alike when written and when asked, a key finds what it wrote."""
    value = value.replace("\x00", "")
    length = LENGTHS.get(column)
    return value[:length] if length else value


class HistoryError(MadError):
    """The history cannot be opened, read or written; one line, no password in it."""


class Store(Protocol):
    """Where the rows are: the standard library's sqlite3 for a plain SQLite file
    (core/history_sqlite.py), SQLAlchemy for any other URL (core/history_sql.py)."""

    def append(self, session: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> None: ...

    def has_session(self, session: str) -> bool: ...

    def sessions(self) -> list[str]: ...

    def key_rows(
        self, key: ResultKey, *, exclude_session: str | None = None, session: str | None = None
    ) -> list[KeyRow]: ...

    def close(self) -> None: ...


def within_deadline(work: Callable[[], T], url: str, deadline_s: float) -> T:
    """`work`'s outcome, on a thread of its own that is waited on `deadline_s` at most:
    a driver has no deadline for a server that stops answering mid-query. Past it,
    TimeoutError now and for every later call on the URL, of any History (the thread is
    left to the socket: a daemon, it does not hold the process at its exit)."""
    if url in _SILENT:
        raise TimeoutError(_SILENT[url])
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="mad-history", daemon=True)
    worker.start()
    worker.join(deadline_s)
    if not outcome:
        _SILENT[url] = f"no answer within {deadline_s:g} s"
        raise TimeoutError(_SILENT[url])
    done, value = outcome[0]
    if not done:
        raise value
    return value  # type: ignore[no-any-return]
