"""The results history at any SQLAlchemy URL (PostgreSQL for a team, an SQLite URL with a
driver or options): the store behind core/history.py's `History` when the URL is not a
plain SQLite file, which the standard library's sqlite3 serves (core/history_sqlite.py)
without SQLAlchemy's import (~15 MB of a session's peak). The tables here are the
schema both stores share. No pytest here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError

from pytest_madengine.core.history_store import (
    CONNECT_TIMEOUT_S,
    DEADLINE_S,
    LENGTHS,
    SQLITE_BUSY_MS,
    WRITE_ATTEMPTS,
    HistoryError,
    KeyRow,
    within_deadline,
)
from pytest_madengine.core.records import Status
from pytest_madengine.core.verdicts import ResultKey
from pytest_madengine.masking import MASK

T = TypeVar("T")

_metadata = sa.MetaData()
SESSIONS = sa.Table(
    "mad_history_sessions",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),  # insertion order
    sa.Column("session", sa.String(LENGTHS["session"]), nullable=False, unique=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("host", sa.String(LENGTHS["host"]), nullable=False, default=""),
    sa.Column("git_commit", sa.String(LENGTHS["git_commit"]), nullable=False, default=""),
)
RESULTS = sa.Table(
    "mad_history_results",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session", sa.String(LENGTHS["session"]), nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("args", sa.Text, nullable=False, default=""),
    sa.Column("docker_file", sa.Text, nullable=False, default=""),
    sa.Column(
        "gpu_architecture", sa.String(LENGTHS["gpu_architecture"]), nullable=False, default=""
    ),
    sa.Column("metric", sa.String(LENGTHS["metric"]), nullable=False, default=""),
    sa.Column("host", sa.String(LENGTHS["host"]), nullable=False, default=""),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("samples", sa.Text, nullable=False, default="[]"),  # JSON list of numbers
    sa.Column("status", sa.String(LENGTHS["status"]), nullable=False),
    sa.Index("mad_history_results_by_key", "model", "metric", "gpu_architecture"),
    sa.Index("mad_history_results_by_session", "session"),
)


def make_url(url: str) -> URL:
    """The parsed URL; a bare `postgresql://` uses psycopg 3 when psycopg2 is missing
    (the `history-postgres` extra installs psycopg 3)."""
    try:
        parsed = sa.engine.make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise HistoryError(f"not a database URL ({type(exc).__name__})") from None
    if parsed.host and "@" in parsed.host:  # the rest of a password was read as the host
        raise HistoryError("not a database URL (write an '@' of the password as %40)")
    if parsed.drivername == "postgresql" and not _importable("psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


# Query parameters that carry a secret: libpq's `password` and `sslpassword`, and the
# like of other drivers. Their values are masked wherever the URL is shown.
_SECRET_PARAMETER = re.compile(r"pass|secret|token", re.IGNORECASE)
_SECRET_IN_QUERY = re.compile(r"(?i)([?&][^=&#]*(?:pass|secret|token)[^=&#]*=)[^&#]*")
_HIDDEN = "maskedbypytestmadengine"  # stands for a masked value while SQLAlchemy renders


def masked_url(url: str) -> str:
    """The URL as it may be shown: its password and the values of its query's secret
    parameters masked (a URL that does not parse is shown with whatever sits between
    `:` and the last `@` masked)."""
    try:
        parsed = make_url(url)
    except HistoryError:
        head, at, tail = url.rpartition("@")
        if at:
            scheme, _, login = head.partition("://")
            url = f"{scheme}://{login.split(':', 1)[0]}:{MASK}@{tail}"
        return _SECRET_IN_QUERY.sub(rf"\g<1>{MASK}", url)
    hidden = {name: _HIDDEN for name in parsed.query if _SECRET_PARAMETER.search(name)}
    shown = parsed.update_query_dict(hidden).render_as_string(hide_password=True)
    return shown.replace(_HIDDEN, MASK)


def url_secrets(parsed: URL) -> list[str]:
    """The URL's password and its query's secret values, for masking messages."""
    found = [parsed.password or ""]
    for name, value in parsed.query.items():
        if _SECRET_PARAMETER.search(name):
            found += [value] if isinstance(value, str) else list(value)
    return [secret for secret in found if secret]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver: SQLAlchemy's `begin` below emits BEGIN itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    return sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)


def _locked(exc: SQLAlchemyError) -> bool:
    return isinstance(exc, OperationalError) and "locked" in str(exc.orig).lower()


class SqlAlchemyStore:
    """The history's rows at a parsed SQLAlchemy URL; its tables made when missing.
    Errors are the driver's: History says them in one line."""

    def __init__(self, url: URL, key: str, deadline_s: float = DEADLINE_S) -> None:
        self._key = key  # the URL as given: which database went silent, if one does
        self._deadline_s = deadline_s
        self._engine = _engine(url)
        self._retrying(lambda: _metadata.create_all(self._engine), creating=True)

    def _bounded(self, work: Callable[[], T]) -> T:
        return within_deadline(work, self._key, self._deadline_s)

    def _retrying(self, work: Callable[[], T], creating: bool = False) -> T:
        """`work`, tried again while SQLite says locked (past its busy timeout), or when
        two processes made the tables at once (the second finds them made)."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return self._bounded(work)
            except (OperationalError, IntegrityError, sa.exc.ProgrammingError) as exc:
                text = str(exc.orig).lower()
                racing = creating and ("exist" in text or "duplicate" in text)
                if attempt + 1 == WRITE_ATTEMPTS or not (_locked(exc) or racing):
                    raise
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def append(self, session: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> None:
        """The session (unless there) and its result rows, in one transaction."""
        rows = list(rows)

        def write() -> None:
            with self._engine.begin() as connection:
                known = connection.execute(
                    sa.select(SESSIONS.c.id).where(SESSIONS.c.session == session["session"])
                ).first()
                if known is None:
                    connection.execute(sa.insert(SESSIONS).values(**session))
                if rows:
                    connection.execute(sa.insert(RESULTS), rows)

        self._retrying(write)

    def _query(self, read: Callable[[Connection], T]) -> T:
        def read_once() -> T:
            with self._engine.connect() as connection:
                return read(connection)

        return self._bounded(read_once)

    def has_session(self, session: str) -> bool:
        query = sa.select(SESSIONS.c.id).where(SESSIONS.c.session == session)
        return self._query(lambda connection: connection.execute(query).first() is not None)

    def sessions(self) -> list[str]:
        query = sa.select(SESSIONS.c.session).order_by(SESSIONS.c.time, SESSIONS.c.id)
        return self._query(lambda connection: list(connection.execute(query).scalars()))

    def key_rows(
        self, key: ResultKey, *, exclude_session: str | None = None, session: str | None = None
    ) -> list[KeyRow]:
        """The SUCCESS values of `key` (session, value, samples), oldest session first
        (then as appended); without `exclude_session`, or of `session` alone."""
        query = _key_query(key)
        if exclude_session is not None:
            query = query.where(RESULTS.c.session != exclude_session)
        if session is not None:
            query = query.where(RESULTS.c.session == session)
        return self._query(
            lambda connection: [(row[0], row[1], row[2]) for row in connection.execute(query)]
        )

    def close(self) -> None:
        self._engine.dispose()


def _key_query(key: ResultKey) -> sa.Select[Any]:
    return (
        sa.select(RESULTS.c.session, RESULTS.c.value, RESULTS.c.samples)
        .join(SESSIONS, SESSIONS.c.session == RESULTS.c.session)
        .where(
            RESULTS.c.model == key.model,
            RESULTS.c.args == key.args,
            RESULTS.c.docker_file == key.docker_file,
            RESULTS.c.gpu_architecture == key.gpu_architecture,
            RESULTS.c.metric == key.metric,
            RESULTS.c.status == Status.SUCCESS.value,
            RESULTS.c.value.is_not(None),
        )
        .order_by(SESSIONS.c.time, SESSIONS.c.id, RESULTS.c.id)
    )
