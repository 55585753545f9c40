"""What the results history's two stores share (core/history_sqlite.py: a plain SQLite
file through the standard library; core/history_sql.py: any SQLAlchemy URL): the error,
the waits, and what a store does. core/history.py's `History` is the one interface over
them. No pytest here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from pytest_madengine.core.verdicts import ResultKey
from pytest_madengine.errors import MadError

SQLITE_BUSY_MS = 30_000  # a writer waits this long for another's transaction
CONNECT_TIMEOUT_S = 10  # a server that does not answer
WRITE_ATTEMPTS = 5  # "database is locked" past the busy timeout: tried again
KeyRow = tuple[str, float, str | None]  # a result of a key: its session, value, samples


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
