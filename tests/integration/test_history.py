"""The results history (core/history.py) on SQLite and on the bootstrap's PostgreSQL:
what goes in comes back per session, oldest first; writers at once lose nothing; a URL
that does not open says so in one line without its password."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pytest_madengine.core.history import (
    History,
    HistoryError,
    HistoryResult,
    SessionStamp,
)
from pytest_madengine.core.verdicts import HistoryPoint, ResultKey

KEY = ResultKey("dummy", "--bs 8", "docker/dummy.ubuntu.amd.Dockerfile", "gfx942", "fps")
OTHER = ResultKey("dummy", "--bs 16", "docker/dummy.ubuntu.amd.Dockerfile", "gfx942", "fps")
START = datetime(2026, 12, 1, tzinfo=timezone.utc)
WRITERS = 4
SESSIONS_EACH = 10


@pytest.fixture(params=["sqlite", "sqlite-sqlalchemy", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":  # a plain file: the standard library's sqlite3
        return f"sqlite:///{tmp_path / 'history.sqlite'}"
    if request.param == "sqlite-sqlalchemy":  # a driver named: SQLAlchemy
        return f"sqlite+pysqlite:///{tmp_path / 'history.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


def stamp(session: str, minutes: int) -> SessionStamp:
    return SessionStamp(session, START + timedelta(minutes=minutes), "ctl", "abc123")


def result(value: float | None, key: ResultKey = KEY, status: str = "SUCCESS",
           samples: tuple[float, ...] = ()) -> HistoryResult:  # fmt: skip
    return HistoryResult(key, "node1", value, samples, status)


def test_points_are_one_per_session_oldest_first(url: str) -> None:
    history = History(url)
    # Appended out of time order: the points follow the sessions' times.
    history.append(stamp("b", 2), [result(20.0, samples=(19.0, 20.0, 21.0)), result(5.0, OTHER)])
    history.append(stamp("a", 1), [result(10.0)])
    history.append(stamp("c", 3), [result(None, status="FAILURE")])  # no point
    history.append(stamp("d", 4), [result(30.0), result(34.0)])  # twice in one session
    assert history.points(KEY) == [
        HistoryPoint(10.0),
        HistoryPoint(20.0, (19.0, 20.0, 21.0)),
        HistoryPoint(32.0),
    ]
    assert history.points(OTHER) == [HistoryPoint(5.0)]
    assert history.sessions() == ["a", "b", "c", "d"]
    history.close()


def test_limit_takes_the_newest_and_exclude_leaves_a_session_out(url: str) -> None:
    history = History(url)
    for minute in range(6):
        history.append(stamp(f"s{minute}", minute), [result(float(minute))])
    assert [p.median for p in history.points(KEY, limit=3)] == [3.0, 4.0, 5.0]
    assert [p.median for p in history.points(KEY, limit=3, exclude_session="s5")] == [2, 3, 4]
    assert history.points(KEY, limit=0) == []
    assert history.session_points(KEY, "s2") == [HistoryPoint(2.0)]
    assert history.session_points(OTHER, "s2") == []
    history.close()


def test_a_second_history_on_the_same_url_sees_the_first(url: str) -> None:
    first = History(url)
    first.append(stamp("one", 1), [result(1.5, samples=(1.4, 1.5, 1.6))])
    first.close()
    second = History(url)  # the tables are there: made once, kept
    assert second.points(KEY) == [HistoryPoint(1.5, (1.4, 1.5, 1.6))]
    assert second.has_session("one") and not second.has_session("two")
    second.close()


def _append_sessions(url: str, writer: int, start: multiprocessing.synchronize.Barrier) -> None:
    start.wait()
    history = History(url)  # each opens (and may make the tables) at the same moment
    for number in range(SESSIONS_EACH):
        results = [result(float(writer * 100 + number)), result(1.0, OTHER)]
        history.append(stamp(f"w{writer}-{number}", number), results)
    history.close()


def test_writers_at_once_lose_nothing(url: str) -> None:
    """Four processes (two sessions with `-n 2` each would be no more) open the same new
    history at once and append ten sessions each."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(WRITERS)
    writers = [
        context.Process(target=_append_sessions, args=(url, writer, start))
        for writer in range(WRITERS)
    ]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
    assert [process.exitcode for process in writers] == [0] * WRITERS
    history = History(url)
    expected = {f"w{w}-{n}" for w in range(WRITERS) for n in range(SESSIONS_EACH)}
    assert set(history.sessions()) == expected
    values = sorted(point.median for point in history.points(KEY))
    assert values == sorted(
        float(w * 100 + n) for w in range(WRITERS) for n in range(SESSIONS_EACH)
    )
    assert len(history.points(OTHER)) == WRITERS * SESSIONS_EACH
    history.close()


@pytest.mark.parametrize("first", ["sqlite", "sqlite+pysqlite"])
def test_either_sqlite_store_reads_what_the_other_wrote(tmp_path: Path, first: str) -> None:
    """A plain SQLite file is written through the standard library, an SQLite URL with a
    driver or options through SQLAlchemy: one file, one schema, whichever wrote it."""
    path = tmp_path / "h" / "history.sqlite"
    second = "sqlite+pysqlite" if first == "sqlite" else "sqlite"
    writer = History(f"{first}:///{path}")
    writer.append(stamp("b", 2), [result(20.0, samples=(19.0, 21.0))])
    writer.append(stamp("a", 1), [result(10.0), result(None, status="FAILURE")])
    writer.close()
    reader = History(f"{second}:///{path}")
    reader.append(stamp("c", 3), [result(30.0)])
    assert reader.sessions() == ["a", "b", "c"]
    assert reader.points(KEY) == [HistoryPoint(10.0), HistoryPoint(20.0, (19.0, 21.0)),
                                  HistoryPoint(30.0)]  # fmt: skip
    reader.close()
    again = History(f"{first}:///{path}")
    assert again.sessions() == ["a", "b", "c"] and again.has_session("c")
    again.close()


def test_the_default_history_needs_no_sqlalchemy(tmp_path: Path) -> None:
    """A plain SQLite file is opened, appended to and read without importing SQLAlchemy
    (~15 MB of a fleet session's peak memory)."""
    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    script = f"""
import sys
from datetime import datetime, timezone
from pytest_madengine.core.history import History, HistoryResult, SessionStamp
from pytest_madengine.core.verdicts import ResultKey
history = History({url!r})
key = ResultKey("m", "", "d", "gfx942", "fps")
history.append(SessionStamp("s", datetime.now(timezone.utc), "h", ""),
               [HistoryResult(key, "h", 1.0, (), "SUCCESS")])
assert [point.median for point in history.points(key)] == [1.0]
history.close()
print(sorted(name for name in sys.modules if name.startswith("sqlalchemy")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "postgresql+psycopg://mad:s3cret-pw@127.0.0.1:1/nothing",  # no server there
        "nosuchdb://mad:s3cret-pw@host/db",  # no such dialect
        "postgresql+psycopg://mad:s3cret-pw@[::1",  # does not parse
    ],
)
def test_a_url_that_does_not_open_is_one_line_without_its_password(bad: str) -> None:
    with pytest.raises(HistoryError) as raised:
        History(bad)
    message = str(raised.value)
    assert "s3cret-pw" not in message
    assert "mad:***@" in message
    assert "\n" not in message


def test_the_bootstraps_url_is_for_root_alone(postgres_url: str) -> None:
    """The URL holds the password: its file is readable by root alone."""
    from tests.conftest import POSTGRES_URL_FILE

    assert POSTGRES_URL_FILE.stat().st_mode & 0o777 == 0o600
    assert postgres_url.startswith(POSTGRES_URL_FILE.read_text().strip())
