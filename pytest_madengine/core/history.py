"""The results history: every session's results in one database, for verdicts against
comparable earlier sessions (core/verdicts.py) and for teams that share results.

SQLite by default (a file beside the session's output, no server; written through the
standard library's sqlite3, core/history_sqlite.py), any SQLAlchemy URL otherwise
(PostgreSQL for a team; core/history_sql.py, which alone imports SQLAlchemy). Two
tables: one row per session (its id, time, the controller's host and the MAD tree's
commit), one row per result (the key that makes two results comparable, the host that
ran it, the value, the repetitions' samples as JSON text, the status). Only the
controller of a session appends (xdist workers never do), once, at the end, in one
transaction: a session is in the history whole or not at all.

Concurrent writers (two sessions at once, each with `-n 4`) lose nothing: SQLite runs in
WAL mode with a busy timeout, a write transaction takes the write lock at its start
(BEGIN IMMEDIATE, so two writers never deadlock upgrading a read lock), and a write that
still finds the database locked is retried. No pytest here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from pytest_madengine.core.history_store import DEADLINE_S, Store, fit
from pytest_madengine.core.history_store import HistoryError as HistoryError  # re-exported
from pytest_madengine.core.history_url import default_history_url, sqlite_file
from pytest_madengine.core.records import TestRecord
from pytest_madengine.core.verdicts import HistoryPoint, ResultKey
from pytest_madengine.masking import mask_text

T = TypeVar("T")


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


def __getattr__(name: str) -> Any:
    """The SQLAlchemy tables and URL parser, imported when asked for (tests read the
    history through them)."""
    if name in ("SESSIONS", "RESULTS", "make_url"):
        from pytest_madengine.core import history_sql

        return getattr(history_sql, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def masked_url(url: str) -> str:
    """The URL as it may be shown: its password and its query's secret values masked
    (core/history_sql.py). A plain SQLite file's has none."""
    if sqlite_file(url) is not None:
        return url
    from pytest_madengine.core import history_sql

    return history_sql.masked_url(url)


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
    """The results history at a database URL; its tables are made when missing."""

    def __init__(self, url: str, deadline_s: float = DEADLINE_S) -> None:
        self.url = masked_url(url)  # what messages show
        self._secrets: list[str] = []
        try:
            self._store = self._open(url, deadline_s)
        except HistoryError:
            raise
        # Any error, not only the driver's: a driver's own error escapes SQLAlchemy's
        # wrapping when its module was imported twice (pytester's in-process runs drop
        # the modules a session imported), and a URL must still fail in one line.
        except Exception as exc:
            raise self._error("cannot open", exc) from None

    def _open(self, url: str, deadline_s: float) -> Store:
        path = sqlite_file(url)
        if path is not None:
            from pytest_madengine.core.history_sqlite import SqliteStore

            return SqliteStore(path)
        from pytest_madengine.core.history_sql import SqlAlchemyStore, make_url, url_secrets

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
        return SqlAlchemyStore(parsed, url, deadline_s)

    @staticmethod
    def default_url(output_dir: Path) -> str:
        """An SQLite file beside the session's output: `<output>/history.sqlite`."""
        return default_history_url(output_dir)

    def _error(self, doing: str, exc: BaseException) -> HistoryError:
        line = mask_text(_first_line(exc), self._secrets)
        return HistoryError(f"{self.url}: {doing}: {line}")

    def append(self, stamp: SessionStamp, results: Iterable[HistoryResult]) -> None:
        """The session and its results, in one transaction. A session already there
        (an import done twice) gets the results added, its stamp kept."""
        session = {"session": fit("session", stamp.session), "time": _utc(stamp.time),
                   "host": fit("host", stamp.host),
                   "git_commit": fit("git_commit", stamp.git_commit)}  # fmt: skip
        try:
            self._store.append(session, (_row(stamp, result) for result in results))
        except Exception as exc:  # as in __init__: whatever the driver raised, one line
            raise self._error("cannot append", exc) from None

    def has_session(self, session: str) -> bool:
        return self._read(lambda: self._store.has_session(session))

    def sessions(self) -> list[str]:
        """Every session's id, oldest first."""
        return self._read(self._store.sessions)

    def points(
        self, key: ResultKey, *, limit: int | None = None, exclude_session: str | None = None
    ) -> list[HistoryPoint]:
        """One point per earlier session with a SUCCESS value for `key`, oldest first:
        the newest `limit` of them (all when None), without `exclude_session`."""
        fitted = _fitted(key)
        rows = self._read(lambda: self._store.key_rows(fitted, exclude_session=exclude_session))
        grouped = _by_session(rows)
        chosen = grouped if limit is None else grouped[-limit:] if limit > 0 else []
        return [_point(values) for values in chosen]

    def session_points(self, key: ResultKey, session: str) -> list[HistoryPoint]:
        """The point of `session` for `key` (empty when it has no SUCCESS value)."""
        fitted = _fitted(key)
        rows = self._read(lambda: self._store.key_rows(fitted, session=session))
        return [_point(values) for values in _by_session(rows)]

    def _read(self, work: Callable[[], T]) -> T:
        try:
            return work()
        except Exception as exc:  # as in __init__: whatever the driver raised, one line
            raise self._error("cannot read", exc) from None

    def close(self) -> None:
        self._store.close()


def _utc(moment: datetime) -> datetime:
    """Stored as naive UTC: SQLite keeps no zone, and sessions compare across hosts."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _fitted(key: ResultKey) -> ResultKey:
    """The key as its columns keep it (see history_store.fit): asked as it was written."""
    return ResultKey(**{name: fit(name, text) for name, text in dataclasses.asdict(key).items()})


def _row(stamp: SessionStamp, result: HistoryResult) -> dict[str, Any]:
    value = result.value if result.value is not None and math.isfinite(result.value) else None
    texts = {
        "session": stamp.session, "host": result.host, "status": result.status,
        **dataclasses.asdict(result.key),
    }  # fmt: skip
    fitted = {name: fit(name, text) for name, text in texts.items()}
    return {**fitted, "value": value, "samples": _samples_json(result.samples)}


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
