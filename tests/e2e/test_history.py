"""The results history (--mad-history) of whole sessions on the real Docker engine: every
session appends its results, the next one finds them, xdist workers lose none, and a
URL that does not open stops the session before any test, without its password."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from pytest_madengine.core.history import RESULTS, SESSIONS, History
from tests.conftest import entry
from tests.e2e.test_run import junit_properties, run, scripts, unique_tree
from tests.e2e.test_verdicts import COUNTING

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]
VALUE = '#!/bin/sh\necho "performance: ${1:-100} fps"\n'


def history_rows(url: str) -> list[dict[str, Any]]:
    """Every result row of the history, with its session's commit, oldest first."""
    engine = sa.create_engine(url)
    query = (
        sa.select(RESULTS, SESSIONS.c.git_commit, SESSIONS.c.host.label("controller"))
        .join(SESSIONS, SESSIONS.c.session == RESULTS.c.session)
        .order_by(SESSIONS.c.id, RESULTS.c.id)
    )
    with engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
    engine.dispose()
    return rows


def default_url(pytester: pytest.Pytester) -> str:
    return History.default_url(pytester.path / "mad_output")


def test_each_session_appends_and_the_next_sees_the_first(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [entry("counted", args="--bs 8", scripts="scripts/dummy/counted.sh")],
                scripts(counted=COUNTING))  # fmt: skip
    for _ in range(2):
        result = run(pytester, "--mad-tags", "counted", "--mad-repeat", "3", "--mad-warmup", "1")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["madengine: history sqlite:///*history.sqlite: 1 result(s)*"])
    rows = history_rows(default_url(pytester))
    assert [(row["model"], row["args"], row["value"], json.loads(row["samples"]))
            for row in rows] == [("counted", "--bs 8", 20.0, [10, 30, 20])] * 2  # fmt: skip
    assert rows[0]["session"] != rows[1]["session"]
    assert {row["status"] for row in rows} == {"SUCCESS"} and rows[0]["metric"] == "fps"
    history = History(default_url(pytester))
    (first, second) = history.sessions()
    key = _key_of(rows[0])
    # What a verdict of the second session reads: the first session's point.
    assert [p.median for p in history.points(key, exclude_session=second)] == [20.0]
    assert history.session_points(key, first)[0].samples == (10.0, 30.0, 20.0)
    history.close()


def _key_of(row: dict[str, Any]) -> Any:
    from pytest_madengine.core.verdicts import ResultKey

    return ResultKey(row["model"], row["args"], row["docker_file"], row["gpu_architecture"],
                     row["metric"])  # fmt: skip


def test_an_xdist_session_appends_every_result_once(pytester: pytest.Pytester) -> None:
    models = [entry(f"m{n}", args=str(n), scripts="scripts/dummy/value.sh") for n in range(4)]
    unique_tree(pytester, models, scripts(value=VALUE))
    result = run(pytester, "--mad-tags", "dummies", "-n", "2")
    result.assert_outcomes(passed=4)
    rows = history_rows(default_url(pytester))
    assert sorted((row["model"], row["value"]) for row in rows) == [
        (f"m{n}", float(n)) for n in range(4)
    ]
    assert len({row["session"] for row in rows}) == 1


def test_two_xdist_sessions_at_once_lose_nothing(pytester: pytest.Pytester) -> None:
    """Two sessions with `-n 2` each, started together, on one history file."""
    models = [entry(f"m{n}", args=str(n), scripts="scripts/dummy/value.sh") for n in range(6)]
    unique_tree(pytester, models, scripts(value=VALUE))
    shared = pytester.path / "shared" / "history.sqlite"
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2",
            "--mad-history", str(shared)]  # fmt: skip
    runs = [
        subprocess.Popen(
            [*argv, "--mad-tags", tags, "--mad-output", f"out{index}"],
            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for index, tags in enumerate(("m0,m1,m2", "m3,m4,m5"))
    ]  # fmt: skip
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(outputs)
    rows = history_rows(f"sqlite:///{shared}")
    assert sorted((row["model"], row["value"]) for row in rows) == [
        (f"m{n}", float(n)) for n in range(6)
    ]
    assert len({row["session"] for row in rows}) == 2


def test_none_keeps_no_history_and_a_file_is_one(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [entry("dummy", scripts="scripts/dummy/value.sh")],
                scripts(value=VALUE))  # fmt: skip
    run(pytester, "--mad-tags", "dummy", "--mad-history", "none").assert_outcomes(passed=1)
    assert not (pytester.path / "mad_output" / "history.sqlite").exists()
    run(pytester, "--mad-tags", "dummy", "--mad-history", "h/r.db").assert_outcomes(passed=1)
    assert [row["value"] for row in history_rows(f"sqlite:///{pytester.path}/h/r.db")] == [100.0]


def test_a_default_history_that_is_no_database_is_a_note(pytester: pytest.Pytester) -> None:
    """The default history opens at the end (no SQLAlchemy at start-up): a file there
    that is no database costs the session nothing but its history."""
    unique_tree(pytester, [entry("dummy", scripts="scripts/dummy/value.sh")],
                scripts(value=VALUE))  # fmt: skip
    (pytester.path / "mad_output").mkdir()
    (pytester.path / "mad_output" / "history.sqlite").write_text("not a database, " * 512)
    result = run(pytester, "--mad-tags", "dummy")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["madengine: --mad-history sqlite:///*history.sqlite: cannot"
                                 " open: *; this session's results are not in it"])  # fmt: skip
    assert "Traceback" not in result.stdout.str()


def test_a_url_that_does_not_open_stops_the_session_without_its_password(
    pytester: pytest.Pytester,
) -> None:
    unique_tree(pytester, [entry("dummy", scripts="scripts/dummy/value.sh")],
                scripts(value=VALUE))  # fmt: skip
    url = "postgresql+psycopg://mad:s3cret-pw@127.0.0.1:1/history"
    result = run(pytester, "--mad-tags", "dummy", "--mad-history", url)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "s3cret-pw" not in result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(
        ["ERROR: --mad-history postgresql+psycopg://mad:***@127.0.0.1:1/history: cannot open:*"]
    )
    assert "Traceback" not in result.stderr.str()
    assert not (pytester.path / "perf.csv").exists()  # no test ran


def test_a_session_appends_to_postgresql(pytester: pytest.Pytester, postgres_url: str) -> None:
    unique_tree(pytester, [entry("dummy", args="7", scripts="scripts/dummy/value.sh")],
                scripts(value=VALUE))  # fmt: skip
    result = run(pytester, "--mad-tags", "dummy", "--mad-history", postgres_url)
    result.assert_outcomes(passed=1)
    password = sa.engine.make_url(postgres_url).password or ""
    assert password and password not in result.stdout.str()
    result.stdout.fnmatch_lines(["madengine: history postgresql+psycopg://mad:***@*: 1 result(s)*"])
    assert [row["value"] for row in history_rows(postgres_url)] == [7.0]


# Each repetition prints the level the tree's `level` file holds, moved by a little.
LEVELLED = """#!/bin/sh
count=$(cat /tmp/runs 2>/dev/null || echo 0)
count=$((count + 1))
echo "$count" > /tmp/runs
set -- 0 -1 1 0 -2 2
shift $((count - 1))
echo "performance: $(( $(cat "$(dirname "$0")/level") + $1 )) fps"
"""


def test_compare_judges_against_the_history_and_against_one_session_of_it(
    pytester: pytest.Pytester,
) -> None:
    """--mad-compare history and --mad-compare SESSION read the store the sessions append
    to: a session at the same level passes with no change, a 20 % fall fails in one line
    that names the history it was judged against."""
    from pytest_madengine.core.history import HistoryResult, SessionStamp

    tree = unique_tree(pytester, [entry("levelled", scripts="scripts/dummy/levelled.sh")],
                       scripts(levelled=LEVELLED))  # fmt: skip
    level = tree / "scripts" / "dummy" / "level"
    level.write_text("100\n")
    repeat = ("--mad-tags", "levelled", "--mad-repeat", "5")
    run(pytester, *repeat).assert_outcomes(passed=1)
    url = default_url(pytester)
    (row,) = history_rows(url)
    assert json.loads(row["samples"]) == [100, 99, 101, 100, 98]
    # Five more earlier sessions of the same result, as other machines' sessions would be.
    history = History(url)
    (first,) = history.sessions()
    for n in range(5):
        stamp = SessionStamp(f"earlier-{n}", datetime.now(timezone.utc), "elsewhere", "")
        samples = tuple(value + n % 2 for value in (100.0, 99.0, 101.0, 100.0, 98.0))
        result = HistoryResult(_key_of(row), "elsewhere", statistics.median(samples), samples,
                               "SUCCESS")  # fmt: skip
        history.append(stamp, [result])
    history.close()

    same = run(pytester, *repeat, "--mad-compare", "history", "--junitxml", "same.xml")
    same.assert_outcomes(passed=1)
    verdict = junit_properties(pytester.path / "same.xml")["levelled"]["verdict"]
    assert verdict.startswith("no change: ") and "of 6 earlier sessions" in verdict, verdict

    level.write_text("80\n")
    # The last 6 sessions of the 7 there now; one session's 5 repetitions.
    for source, label in (("history:6", "history:6"), (first, f"session {first}")):
        slower = run(pytester, *repeat, "--mad-compare", source)
        slower.assert_outcomes(failed=1)
        (reason,) = [line for line in slower.stdout.lines if line.startswith("regression:")]
        assert reason.startswith("regression: -2"), reason
        assert reason.endswith(f"history: {label}"), reason
        if source == "history:6":
            assert "the median of 6 earlier sessions" in reason, reason
