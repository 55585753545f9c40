"""The results history: every session's results in one database, for verdicts against
comparable earlier sessions (core/verdicts.py) and for teams that share results.

SQLite by default (a file beside the session's output, no server), any SQLAlchemy URL
otherwise (PostgreSQL for a team). Two tables: one row per session (its id, time, the
controller's host and the MAD tree's commit), one row per result (the key that makes two
results comparable, the host that ran it, the value, the repetitions' samples as JSON
text, the status). Only the controller of a session appends (xdist workers never do),
once, at the end, in one transaction: a session is in the history whole or not at all.

Concurrent writers (two sessions at once, each with `-n 4`) lose nothing: SQLite runs in
WAL mode with a busy timeout, a write transaction takes the write lock at its start
(BEGIN IMMEDIATE, so two writers never deadlock upgrading a read lock), and a write that
still finds the database locked is retried. No pytest here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError

from pytest_madengine.core.history_url import default_history_url
from pytest_madengine.core.records import Status, TestRecord
from pytest_madengine.core.verdicts import HistoryPoint, ResultKey
from pytest_madengine.errors import MadError
from pytest_madengine.masking import MASK, mask_text

SQLITE_BUSY_MS = 30_000  # a writer waits this long for another's transaction
CONNECT_TIMEOUT_S = 10  # a server that does not answer
WRITE_ATTEMPTS = 5  # "database is locked" past the busy timeout: tried again
# Each attempt at a read or write ends within this: a server that stopped answering
# (a stopped process, a network that drops without a reset) is waited on no longer.
# Above SQLite's busy timeout, so that a writer waiting on another is not cut short.
DEADLINE_S = 60.0
# URLs whose database did not answer within the deadline, and the line to say: every
# History of the process on one (the verdicts', the controller's) asks it no more.
_SILENT: dict[str, str] = {}
T = TypeVar("T")


class HistoryError(MadError):
    """The history cannot be opened, read or written; one line, no password in it."""


@dataclass(frozen=True)
class SessionStamp:
    """One session: its id, when it ended, the controller's host, the MAD tree's commit."""

    session: str
    time: datetime
    host: str
    git_commit: str


@dataclass(frozen=True)
class HistoryResult:
    """One result of a session: the value is the median of `samples` when repeated."""

    key: ResultKey
    host: str  # the host that ran it
    value: float | None  # None: failed or skipped, or no number
    samples: tuple[float, ...]
    status: str  # SUCCESS, FAILURE, SKIPPED


_metadata = sa.MetaData()
SESSIONS = sa.Table(
    "mad_history_sessions",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),  # insertion order
    sa.Column("session", sa.String(200), nullable=False, unique=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("host", sa.String(255), nullable=False, default=""),
    sa.Column("git_commit", sa.String(64), nullable=False, default=""),
)
RESULTS = sa.Table(
    "mad_history_results",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session", sa.String(200), nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("args", sa.Text, nullable=False, default=""),
    sa.Column("docker_file", sa.Text, nullable=False, default=""),
    sa.Column("gpu_architecture", sa.String(100), nullable=False, default=""),
    sa.Column("metric", sa.String(200), nullable=False, default=""),
    sa.Column("host", sa.String(255), nullable=False, default=""),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("samples", sa.Text, nullable=False, default="[]"),  # JSON list of numbers
    sa.Column("status", sa.String(20), nullable=False),
    sa.Index("mad_history_results_by_key", "model", "metric", "gpu_architecture"),
    sa.Index("mad_history_results_by_session", "session"),
)


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


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0]


def _samples_json(samples: Sequence[float]) -> str:
    return json.dumps([value for value in samples if math.isfinite(value)])


def _samples_of(text: str | None) -> tuple[float, ...]:
    try:
        values = json.loads(text or "[]")
    except ValueError:
        return ()
    if not isinstance(values, list):
        return ()
    return tuple(float(value) for value in values if isinstance(value, int | float))


class History:
    """The results history at a SQLAlchemy URL; its tables are made when missing."""

    def __init__(self, url: str, deadline_s: float = DEADLINE_S) -> None:
        self.url = masked_url(url)  # what messages show
        self.deadline_s = deadline_s
        self._key = url  # in _SILENT
        try:
            parsed = make_url(url)
        except HistoryError as exc:
            raise HistoryError(f"{self.url}: {exc}") from None
        self._secrets = url_secrets(parsed)
        if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
            # Each connection has a database of its own: the tables made were gone.
            raise HistoryError(
                f"{self.url}: an in-memory database keeps nothing; give a file or a server's URL"
            )
        try:
            self._engine = _engine(parsed)
            self._retrying(lambda: _metadata.create_all(self._engine), creating=True)
        except HistoryError:
            raise
        # Any error, not only SQLAlchemy's: a driver's own error escapes SQLAlchemy's
        # wrapping when its module was imported twice (pytester's in-process runs drop
        # the modules a session imported), and a URL must still fail in one line.
        except Exception as exc:
            raise self._error("cannot open", exc) from None

    @staticmethod
    def default_url(output_dir: Path) -> str:
        """An SQLite file beside the session's output: `<output>/history.sqlite`."""
        return default_history_url(output_dir)

    def _error(self, doing: str, exc: BaseException) -> HistoryError:
        line = mask_text(_first_line(exc), self._secrets)
        return HistoryError(f"{self.url}: {doing}: {line}")

    def _retrying(self, work: Callable[[], T], creating: bool = False) -> T:
        """`work`, tried again while SQLite says locked (past its busy timeout), or when
        two processes made the tables at once (the second finds them made)."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return self._within_deadline(work)
            except (OperationalError, IntegrityError, sa.exc.ProgrammingError) as exc:
                text = str(exc.orig).lower()
                racing = creating and ("exist" in text or "duplicate" in text)
                if attempt + 1 == WRITE_ATTEMPTS or not (_locked(exc) or racing):
                    raise
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def _within_deadline(self, work: Callable[[], T]) -> T:
        """`work`'s outcome, on a thread of its own that is waited on `deadline_s` at
        most: the driver has no deadline for a server that stops answering mid-query.
        Past it, TimeoutError now and for every later call on the URL, of any History
        (the thread is left to the socket: a daemon, it does not hold the process at
        its exit)."""
        if self._key in _SILENT:
            raise TimeoutError(_SILENT[self._key])
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append((True, work()))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append((False, exc))

        worker = threading.Thread(target=run, name="mad-history", daemon=True)
        worker.start()
        worker.join(self.deadline_s)
        if not outcome:
            _SILENT[self._key] = f"no answer within {self.deadline_s:g} s"
            raise TimeoutError(_SILENT[self._key])
        done, value = outcome[0]
        if not done:
            raise value
        return value  # type: ignore[no-any-return]

    def append(self, stamp: SessionStamp, results: Sequence[HistoryResult]) -> None:
        """The session and its results, in one transaction. A session already there
        (an import done twice) gets the results added, its stamp kept."""

        def write() -> None:
            with self._engine.begin() as connection:
                known = connection.execute(
                    sa.select(SESSIONS.c.id).where(SESSIONS.c.session == stamp.session)
                ).first()
                if known is None:
                    connection.execute(sa.insert(SESSIONS).values(
                        session=stamp.session, time=_utc(stamp.time),
                        host=_fit(SESSIONS.c.host, stamp.host),
                        git_commit=_fit(SESSIONS.c.git_commit, stamp.git_commit),
                    ))  # fmt: skip
                if results:
                    connection.execute(sa.insert(RESULTS), [_row(stamp, r) for r in results])

        try:
            self._retrying(write)
        except Exception as exc:  # as in __init__: whatever the driver raised, one line
            raise self._error("cannot append", exc) from None

    def has_session(self, session: str) -> bool:
        query = sa.select(SESSIONS.c.id).where(SESSIONS.c.session == session)
        return self._read(lambda connection: connection.execute(query).first() is not None)

    def sessions(self) -> list[str]:
        """Every session's id, oldest first."""
        query = sa.select(SESSIONS.c.session).order_by(SESSIONS.c.time, SESSIONS.c.id)
        return self._read(lambda connection: list(connection.execute(query).scalars()))

    def points(
        self, key: ResultKey, *, limit: int | None = None, exclude_session: str | None = None
    ) -> list[HistoryPoint]:
        """One point per earlier session with a SUCCESS value for `key`, oldest first:
        the newest `limit` of them (all when None), without `exclude_session`."""
        query = _key_query(key)
        if exclude_session is not None:
            query = query.where(RESULTS.c.session != exclude_session)
        rows = self._read(lambda connection: list(connection.execute(query)))
        grouped = _by_session(rows)
        chosen = grouped if limit is None else grouped[-limit:] if limit > 0 else []
        return [_point(values) for values in chosen]

    def session_points(self, key: ResultKey, session: str) -> list[HistoryPoint]:
        """The point of `session` for `key` (empty when it has no SUCCESS value)."""
        query = _key_query(key).where(RESULTS.c.session == session)
        rows = self._read(lambda connection: list(connection.execute(query)))
        return [_point(values) for values in _by_session(rows)]

    def _read(self, work: Callable[[Connection], T]) -> T:
        def read() -> T:
            with self._engine.connect() as connection:
                return work(connection)

        try:
            return self._within_deadline(read)
        except Exception as exc:  # as in __init__: whatever the driver raised, one line
            raise self._error("cannot read", exc) from None

    def close(self) -> None:
        self._engine.dispose()


def _utc(moment: datetime) -> datetime:
    """Stored as naive UTC: SQLite keeps no zone, and sessions compare across hosts."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _fit(column: sa.Column[Any], value: str) -> str:
    """`value` as its column can keep it on any database: without NUL characters and
    cut to the column's length. PostgreSQL refuses either (a model's metric word, a
    host's name), and with it every result of the session, where SQLite keeps them.
    Made alike when written and when asked, a key finds what it wrote."""
    value = value.replace("\x00", "")
    length = getattr(column.type, "length", None)
    return value[:length] if length else value


def _row(stamp: SessionStamp, result: HistoryResult) -> dict[str, Any]:
    value = result.value if result.value is not None and math.isfinite(result.value) else None
    texts = {
        "session": stamp.session, "host": result.host, "status": result.status,
        **dataclasses.asdict(result.key),
    }  # fmt: skip
    fitted = {name: _fit(RESULTS.c[name], text) for name, text in texts.items()}
    return {**fitted, "value": value, "samples": _samples_json(result.samples)}


def _key_query(key: ResultKey) -> sa.Select[Any]:
    """The SUCCESS values of `key`, oldest session first (then as appended)."""
    return (
        sa.select(RESULTS.c.session, RESULTS.c.value, RESULTS.c.samples)
        .join(SESSIONS, SESSIONS.c.session == RESULTS.c.session)
        .where(
            *(
                RESULTS.c[name] == _fit(RESULTS.c[name], text)
                for name, text in dataclasses.asdict(key).items()
            ),
            RESULTS.c.status == Status.SUCCESS.value,
            RESULTS.c.value.is_not(None),
        )
        .order_by(SESSIONS.c.time, SESSIONS.c.id, RESULTS.c.id)
    )


def _by_session(rows: Iterable[Any]) -> list[list[tuple[float, tuple[float, ...]]]]:
    """Rows grouped by session, in the order of their first row."""
    groups: dict[str, list[tuple[float, tuple[float, ...]]]] = {}
    for session, value, samples in rows:
        groups.setdefault(session, []).append((float(value), _samples_of(samples)))
    return list(groups.values())


def _point(values: Sequence[tuple[float, tuple[float, ...]]]) -> HistoryPoint:
    """A session's point: its value (the median, when it measured the key more than
    once), and all its samples."""
    median = statistics.median(value for value, _ in values)
    return HistoryPoint(median, tuple(sample for _, samples in values for sample in samples))


def key_of(record: TestRecord, row_index: int = 0) -> ResultKey:
    """The key of a record's result (`row_index`: which of its multiple_results rows)."""
    row, facts = record.rows[row_index], record.facts
    return ResultKey(
        model=row.perf_model or row.name,
        args=facts.args,
        docker_file=facts.docker_file,
        gpu_architecture=facts.gpu_architecture,
        metric=row.metric,
    )


def results_of(record: TestRecord, machine: str) -> list[HistoryResult]:
    """A record's results as the history keeps them (`machine`: the host when the
    record names none)."""
    return [
        HistoryResult(
            key=key_of(record, index),
            host=record.host or machine,
            value=row.performance,
            samples=row.samples,
            status=row.status.value,
        )
        for index, row in enumerate(record.rows)
    ]


def now() -> datetime:
    return datetime.now(timezone.utc)
