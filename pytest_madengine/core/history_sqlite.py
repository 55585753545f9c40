"""The results history in a plain SQLite file (the default, `sqlite:///<path>`), through
the standard library's sqlite3: the same tables, columns and stored forms as SQLAlchemy's
(core/history_sql.py), so either store reads what the other wrote, without SQLAlchemy's
import (~15 MB of a fleet session's peak RSS). No pytest here.

As there: WAL mode with a busy timeout, every write transaction BEGIN IMMEDIATE (two
writers never deadlock upgrading a read lock), and a write still locked is retried.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pytest_madengine.core.history_store import LENGTHS, SQLITE_BUSY_MS, WRITE_ATTEMPTS, KeyRow
from pytest_madengine.core.records import Status
from pytest_madengine.core.verdicts import ResultKey

T = TypeVar("T")

# What SQLAlchemy's create_all makes on SQLite for core/history_sql.py's tables.
SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS mad_history_sessions (
	id INTEGER NOT NULL,
	session VARCHAR({LENGTHS["session"]}) NOT NULL,
	time DATETIME NOT NULL,
	host VARCHAR({LENGTHS["host"]}) NOT NULL,
	git_commit VARCHAR({LENGTHS["git_commit"]}) NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (session)
)""",
    f"""CREATE TABLE IF NOT EXISTS mad_history_results (
	id INTEGER NOT NULL,
	session VARCHAR({LENGTHS["session"]}) NOT NULL,
	model TEXT NOT NULL,
	args TEXT NOT NULL,
	docker_file TEXT NOT NULL,
	gpu_architecture VARCHAR({LENGTHS["gpu_architecture"]}) NOT NULL,
	metric VARCHAR({LENGTHS["metric"]}) NOT NULL,
	host VARCHAR({LENGTHS["host"]}) NOT NULL,
	value FLOAT,
	samples TEXT NOT NULL,
	status VARCHAR({LENGTHS["status"]}) NOT NULL,
	PRIMARY KEY (id)
)""",
    "CREATE INDEX IF NOT EXISTS mad_history_results_by_session ON mad_history_results (session)",
    "CREATE INDEX IF NOT EXISTS mad_history_results_by_key"
    " ON mad_history_results (model, metric, gpu_architecture)",
)
RESULT_COLUMNS = ("session", "model", "args", "docker_file", "gpu_architecture", "metric",
                  "host", "value", "samples", "status")  # fmt: skip
INSERT_RESULT = (
    f"INSERT INTO mad_history_results ({', '.join(RESULT_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in RESULT_COLUMNS)})"
)
KEY_QUERY = (
    "SELECT r.session, r.value, r.samples FROM mad_history_results AS r"
    " JOIN mad_history_sessions AS s ON s.session = r.session"
    " WHERE r.model = ? AND r.args = ? AND r.docker_file = ? AND r.gpu_architecture = ?"
    " AND r.metric = ? AND r.status = ? AND r.value IS NOT NULL"
)
KEY_ORDER = " ORDER BY s.time, s.id, r.id"


def stored_time(moment: datetime) -> str:
    """A (naive UTC) time as SQLAlchemy's SQLite DateTime stores it."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _locked(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower()


class SqliteStore:
    """The history's rows in the SQLite file at `path`; its tables made when missing.
    A connection per call, as SQLAlchemy's NullPool gave. Errors are sqlite3's: History
    says them in one line."""

    def __init__(self, path: str) -> None:
        self._path = path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._retrying(lambda: self._write(lambda connection: _create(connection)))

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        # Autocommit at the driver: each write says BEGIN IMMEDIATE itself.
        with closing(sqlite3.connect(self._path, timeout=SQLITE_BUSY_MS / 1000,
                                     isolation_level=None)) as connection:  # fmt: skip
            connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            yield connection

    def _write(self, work: Callable[[sqlite3.Connection], None]) -> None:
        """`work` in one write transaction, rolled back when it fails."""
        with self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                work(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    @staticmethod
    def _retrying(work: Callable[[], T]) -> T:
        """`work`, tried again while SQLite says locked (past its busy timeout)."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return work()
            except sqlite3.OperationalError as exc:
                if attempt + 1 == WRITE_ATTEMPTS or not _locked(exc):
                    raise
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def append(self, session: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> None:
        """The session (unless there) and its result rows, in one transaction."""
        # Tried again as a whole when locked; tuples: a fleet's session has 10,000 rows.
        values = [tuple(row[column] for column in RESULT_COLUMNS) for row in rows]

        def write(connection: sqlite3.Connection) -> None:
            known = connection.execute(
                "SELECT id FROM mad_history_sessions WHERE session = ?", (session["session"],)
            ).fetchone()
            if known is None:
                connection.execute(
                    "INSERT INTO mad_history_sessions (session, time, host, git_commit)"
                    " VALUES (?, ?, ?, ?)",
                    (session["session"], stored_time(session["time"]), session["host"],
                     session["git_commit"]),
                )  # fmt: skip
            connection.executemany(INSERT_RESULT, values)

        self._retrying(lambda: self._write(write))

    def has_session(self, session: str) -> bool:
        with self._connection() as connection:
            found = connection.execute(
                "SELECT id FROM mad_history_sessions WHERE session = ?", (session,)
            ).fetchone()
        return found is not None

    def sessions(self) -> list[str]:
        with self._connection() as connection:
            rows = connection.execute("SELECT session FROM mad_history_sessions ORDER BY time, id")
            return [row[0] for row in rows]

    def key_rows(
        self, key: ResultKey, *, exclude_session: str | None = None, session: str | None = None
    ) -> list[KeyRow]:
        """The SUCCESS values of `key` (session, value, samples), oldest session first
        (then as appended); without `exclude_session`, or of `session` alone."""
        query = KEY_QUERY
        values: list[Any] = [key.model, key.args, key.docker_file, key.gpu_architecture,
                             key.metric, Status.SUCCESS.value]  # fmt: skip
        if exclude_session is not None:
            query += " AND r.session != ?"
            values.append(exclude_session)
        if session is not None:
            query += " AND r.session = ?"
            values.append(session)
        with self._connection() as connection:
            rows = connection.execute(query + KEY_ORDER, values)
            return [(row[0], row[1], row[2]) for row in rows]

    def close(self) -> None:
        """Nothing held between calls."""


def _create(connection: sqlite3.Connection) -> None:
    for statement in SCHEMA:
        connection.execute(statement)
