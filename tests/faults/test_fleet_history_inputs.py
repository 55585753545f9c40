"""The fleet's and the history's options (issues 23 and 24) as a hostile user writes
them: --mad-heartbeat, --mad-placement, models.json's host labels, --mad-history and
--mad-compare. A bad value is one usage line before any test; a password in a history
URL is never shown, wherever it is written."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa

from pytest_madengine.core.compare import HistorySource, compare
from pytest_madengine.core.history import (
    RESULTS,
    History,
    HistoryError,
    HistoryResult,
    SessionStamp,
    masked_url,
    now,
)
from pytest_madengine.core.verdicts import HistoryPoint, ResultKey
from tests.conftest import entry, write_tree
from tests.e2e.test_run import read_perf, run, unique_tree
from tests.faults.test_cli_and_reports import USAGE, madengine, said
from tests.faults.test_inputs import collect, one_collection_error


def _usage_error(result: pytest.RunResult, line: str) -> None:
    """Exit code 4 with one ERROR line, no traceback, and no test run."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    errors = [text for text in result.stderr.lines if text.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr.str()
    result.stderr.fnmatch_lines([line])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        # Past what a thread can wait: the heartbeat's thread died with a traceback.
        ("1e10", "ERROR: --mad-heartbeat: expected 0 (off) or seconds from 0.1 to 86400,"
                 " got '1e10'"),
        # A ping round after round, as fast as the hosts answer.
        ("1e-9", "ERROR: --mad-heartbeat: expected 0 (off) or seconds from 0.1 to 86400,"
                 " got '1e-9'"),
        ("nan", "ERROR: --mad-heartbeat: expected 0 (off) or seconds from 0.1 to 86400,"
                " got 'nan'"),
    ],
)  # fmt: skip
def test_a_heartbeat_out_of_range_is_a_usage_error(
    pytester: pytest.Pytester, value: str, message: str
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--mad-heartbeat", value,
                                           "--mad-history", "none", timeout=120)  # fmt: skip
    _usage_error(result, message)
    assert not (pytester.path / "perf.csv").exists()


def test_a_heartbeat_out_of_range_in_the_ini_file_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    write_tree(pytester.path, [entry("alpha")], {"pytest.ini": "[pytest]\nmad_heartbeat = 1e12\n"})
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", timeout=120)
    _usage_error(result, "ERROR: --mad-heartbeat: expected 0 (off) or seconds from 0.1 to"
                         " 86400, got '1e12'")  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # A number: placement failed every test with a TypeError and its traceback.
        ({"host_labels": 5}, "*model 'alpha': field 'host_labels' must be a list of host"
                             " labels, got 5"),
        # A string: each of its letters was a label the host had to carry.
        ({"host_labels": "gpu"}, "*model 'alpha': field 'host_labels' must be a list of host"
                                 " labels, got 'gpu'"),
        # Found only once the test was placed (its image built), not at collection.
        ({"host_affinity": "mi300x"}, "*model 'alpha': field 'host_affinity' must be a list"
                                      " of host labels, got 'mi300x'"),
        ({"host_affinity": [1, "x"]}, "*model 'alpha': field 'host_affinity' must be a list"
                                      " of host labels, got [[]1, 'x']"),
        ({"host_affinity": ["fast", " "]}, "*model 'alpha': field 'host_affinity' must be a"
                                           " list of host labels, got [[]'fast', ' ']"),
        ({"host_affinity": 0}, "*model 'alpha': field 'host_affinity' must be a list of host"
                               " labels, got 0"),
    ],
)  # fmt: skip
def test_host_label_fields_that_are_no_lists_of_labels_are_collection_errors(
    pytester: pytest.Pytester, fields: dict, message: str
) -> None:
    write_tree(pytester.path, [{**entry("alpha"), **fields}])
    one_collection_error(collect(pytester, "--mad-tags", "all"), message)


def test_empty_host_label_fields_are_no_labels(pytester: pytest.Pytester) -> None:
    models = [{**entry("alpha"), "host_labels": [], "host_affinity": None},
              {**entry("beta"), "host_labels": None, "host_affinity": []}]  # fmt: skip
    write_tree(pytester.path, models)
    result = collect(pytester, "--mad-tags", "all", "--mad-placement", "affinity")
    result.stdout.fnmatch_lines(["*2 tests collected*"])


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://mad@127.0.0.1:1/h?password=qs3cret-pw",
         "postgresql+psycopg://mad@127.0.0.1:1/h?password=***"),
        ("postgresql+psycopg://mad@127.0.0.1:1/h?sslpassword=qs3cret-pw&application_name=x",
         "postgresql+psycopg://mad@127.0.0.1:1/h?application_name=x&sslpassword=***"),
        # An `@` of the password not written %40: the rest of it was shown as the host.
        ("postgresql+psycopg://mad:qs3cret@pw@127.0.0.1:1/h",
         "postgresql+psycopg://mad:***@127.0.0.1:1/h"),
        ("postgresql+psycopg://mad:qs3cret%40pw@127.0.0.1:1/h",
         "postgresql+psycopg://mad:***@127.0.0.1:1/h"),
    ],
)  # fmt: skip
def test_every_password_of_a_history_url_is_masked(url: str, shown: str) -> None:
    assert masked_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://mad@127.0.0.1:1/h?password=qs3cret-pw",
        "postgresql+psycopg://mad:qs3cret@pw@127.0.0.1:1/h",
    ],
)
def test_a_history_url_that_does_not_open_never_shows_its_password(
    pytester: pytest.Pytester, url: str
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--mad-history", url,
                                           timeout=120)  # fmt: skip
    _usage_error(result, "ERROR: --mad-history postgresql+psycopg://mad*@127.0.0.1:1/h*")
    assert "s3cret" not in result.stdout.str() + result.stderr.str()
    assert "pw@" not in result.stderr.str()


def test_an_in_memory_history_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """`sqlite://` keeps nothing: every session ran and then lost its results with
    'no such table'."""
    write_tree(pytester.path, [entry("alpha")])
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--mad-history", "sqlite://",
                                           timeout=120)  # fmt: skip
    _usage_error(result, "ERROR: --mad-history sqlite://: an in-memory database keeps"
                         " nothing; give a file or a server's URL")  # fmt: skip


def _password_in_query(url: str) -> tuple[str, str]:
    """The URL with its password moved into the query (libpq's `password=`)."""
    parts = urlsplit(url)
    login, _, host = parts.netloc.rpartition("@")
    user, _, password = login.partition(":")
    query = f"{parts.query}&password={password}" if parts.query else f"password={password}"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}", query=query)), password


@pytest.mark.docker
def test_a_password_in_the_query_of_a_history_url_is_in_no_output(
    pytester: pytest.Pytester, postgres_url: str
) -> None:
    """A whole session that appends to PostgreSQL and judges against it: its password,
    given as libpq's `password=`, is in no output and no file the session writes."""
    url, password = _password_in_query(postgres_url)
    unique_tree(pytester, [entry("alpha")])
    result = run(pytester, "--mad-tags", "alpha", "--mad-history", url, "--mad-compare", "history",
                 "--junitxml=out/junit.xml", "--mad-summary=out/summary.json")  # fmt: skip
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["madengine: history postgresql*password=[*][*][*]: 1 result(s)"
                                 " appended"])  # fmt: skip
    assert password not in result.stdout.str() + result.stderr.str()
    written = [path for path in pytester.path.rglob("*") if path.is_file()]
    assert [path for path in written if password.encode() in path.read_bytes()] == []


def test_report_import_never_shows_a_password_in_the_query(pytester: pytest.Pytester) -> None:
    perf = pytester.path / "perf.csv"
    perf.write_text("model,performance,metric,status\nalpha,1,fps,SUCCESS\n")
    url = "postgresql+psycopg://mad@127.0.0.1:1/h?password=qs3cret-pw"
    result = madengine(pytester, "report", "import", str(perf), "--history", url)
    assert result.ret == USAGE, said(result)
    assert "qs3cret" not in said(result) and "Traceback" not in said(result)
    result.stderr.fnmatch_lines(["*--history postgresql+psycopg://mad@127.0.0.1:1/h?password=***:"
                                 " cannot open*"])  # fmt: skip


# A file that is no perf.csv (models.json given by mistake, random bytes) was "widened":
# rewritten as a CSV under its first line and our columns, its content lost.
NOT_CSV = {
    "json": b'[\n  {"name": "alpha", "tags": ["a", "b"]}\n]\n',
    "bytes": bytes(range(256)) * 8,
}


@pytest.mark.parametrize("content", NOT_CSV.values(), ids=NOT_CSV.keys())
def test_update_perf_never_rewrites_a_file_that_is_no_perf_csv(
    pytester: pytest.Pytester, content: bytes
) -> None:
    target = pytester.path / "models.json"
    target.write_bytes(content)
    entry_json = pytester.path / "entry.json"
    entry_json.write_text('{"model": "x", "performance": 1, "metric": "fps", "status": "SUCCESS"}')
    result = madengine(pytester, "report", "update-perf", "--single_result", str(entry_json),
                       "--perf-csv", str(target))  # fmt: skip
    assert result.ret == USAGE, said(result)
    result.stderr.fnmatch_lines(["*--perf-csv */models.json: not a perf.csv (its first line"
                                 " names no 'model' column); nothing written"])  # fmt: skip
    assert "Traceback" not in said(result)
    assert target.read_bytes() == content


def test_a_session_never_rewrites_a_perf_csv_that_is_no_perf_csv(
    pytester: pytest.Pytester,
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    before = (pytester.path / "models.json").read_bytes()
    result = pytester.runpytest_subprocess(
        "--mad-tags", "alpha", "--mad-history", "none", "--mad-perf-csv", "models.json",
        timeout=120,
    )  # fmt: skip
    _usage_error(result, "ERROR: --mad-perf-csv */models.json: not a perf.csv (its first line"
                         " names no 'model' column); nothing written")  # fmt: skip
    assert (pytester.path / "models.json").read_bytes() == before


# Replaces perf.csv with bytes that are no CSV once the first test has finished.
SPOILER = """
import os

def pytest_runtest_logfinish(nodeid, location):
    if nodeid.endswith("::alpha"):
        with open("perf.csv", "wb") as handle:
            handle.write(bytes(range(256)) * 8)
"""


@pytest.mark.docker
def test_a_perf_csv_spoilt_mid_session_is_kept_and_the_rows_go_aside(
    pytester: pytest.Pytester,
) -> None:
    unique_tree(pytester, [entry("alpha"), entry("beta")], {"conftest.py": SPOILER})
    result = run(pytester, "--mad-tags", "alpha,beta", "--mad-history", "none",
                 "--junitxml=junit.xml")  # fmt: skip
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "*perf.csv */perf.csv: cannot write (not a perf.csv (its first line names no 'model'"
        " column)); rows go to *perf.*.csv"
    ])  # fmt: skip
    assert (pytester.path / "perf.csv").read_bytes() == bytes(range(256)) * 8
    (aside,) = (pytester.path / "mad_output").glob("perf.*.csv")
    assert [row["model"] for row in read_perf(aside)] == ["beta"]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        # Digits to str.isdigit, not to int(): an INTERNALERROR with a traceback.
        ("--mad-compare", "history:\u00b2", "ERROR: --mad-compare history:\u00b2: N in history:N"
                                            " must be a whole number from 1, got '\u00b2'"),
        ("--mad-compare", "history:\u0663", "ERROR: --mad-compare history:\u0663: N in history:N"
                                            " must be a whole number from 1, got '\u0663'"),
        ("--mad-gpus", "\u00b2", "ERROR: --mad-gpus '\u00b2': expected a count or ids like 0,2-3,"
                                 " got '\u00b2'"),
    ],
)  # fmt: skip
def test_digits_that_are_no_ascii_digits_are_a_usage_error(
    pytester: pytest.Pytester, option: str, value: str, message: str
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", option, value, timeout=120)
    _usage_error(result, message)


class StallingProxy:
    """A TCP proxy in front of a server that, once `stall()` is called, keeps every
    connection open and forwards nothing more: a server that stopped answering (a
    stopped process, a network that drops without resetting)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.stalled = threading.Event()
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                return
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.stalled.is_set():
                    self.closing.wait()  # holds what came, forwards nothing
                    return
                sink.sendall(data)
        except OSError:
            return

    def stall(self) -> None:
        self.stalled.set()

    def close(self) -> None:
        self.closing.set()
        for each in self.sockets:
            each.close()


def test_a_history_server_that_stops_answering_is_one_line_within_the_deadline(
    postgres_url: str,
) -> None:
    """A PostgreSQL history that stopped answering mid-session hung the session at its
    end for good (each read and write waited on the socket without a deadline)."""
    parts = urlsplit(postgres_url)
    proxy = StallingProxy(parts.port or 5432)
    try:
        url = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.port}",
                                                                    f":{proxy.port}")))  # fmt: skip
        history = History(url, deadline_s=2)
        assert history.sessions() == []
        proxy.stall()
        stamp = SessionStamp("s-stalled", now(), "ctl", "")
        with pytest.raises(HistoryError) as stalled:
            history.append(stamp, [])
        assert str(stalled.value) == f"{masked_url(url)}: cannot append: no answer within 2 s"
        # Asked again (the next test's verdict, the controller's own History): at once.
        with pytest.raises(HistoryError, match="cannot read: no answer within 2 s"):
            history.sessions()
        with pytest.raises(HistoryError, match="cannot open: no answer within 2 s"):
            History(url, deadline_s=2)
        history.close()
    finally:
        proxy.close()


@pytest.mark.docker
def test_history_and_compare_files_in_the_ini_file_are_relative_to_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As every path of the ini file: run from a subdirectory, the session compares
    with the tree's perf.csv and appends to the tree's history, not to a second one."""
    unique_tree(pytester, [entry("alpha")])
    (pytester.path / "base.csv").write_text("model,performance,metric,status\n")
    pytester.makeini("[pytest]\nmad_root = .\nmad_history = team/history.db\n"
                     "mad_compare = base.csv\nmad_output = out\n")  # fmt: skip
    (pytester.path / "sub").mkdir()
    monkeypatch.chdir(pytester.path / "sub")
    result = run(pytester, "--mad-tags", "alpha")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*history: {pytester.path}/base.csv*",
                                 f"madengine: history sqlite:///{pytester.path}/team/history.db:"
                                 " 1 result(s) appended"])  # fmt: skip
    assert not (pytester.path / "sub" / "team").exists()


def test_history_words_and_urls_in_the_ini_file_are_kept(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    pytester.makeini("[pytest]\nmad_root = .\nmad_history = none\nmad_compare = history:3\n")
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", timeout=120)
    _usage_error(result, "ERROR: --mad-compare history:3: no results history to compare with")
    pytester.makeini("[pytest]\nmad_root = .\nmad_history = sqlite://\n")
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", timeout=120)
    _usage_error(result, "ERROR: --mad-history sqlite://: an in-memory database keeps nothing*")


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


def test_values_no_column_can_keep_lose_no_result(history_url: str) -> None:
    """A model's metric word, a context's gpu_architecture, an inventory's host name:
    one longer than its column (200, 100, 255), or with a NUL in it, failed the whole
    session's append on PostgreSQL ('value too long', 'cannot contain NUL'), while
    SQLite kept it. Each is kept, alike on both, and its key still finds it."""
    long_key = ResultKey("m", "", "docker/d", "gfx" * 50, "samples_per_" * 30)
    nul_key = ResultKey("m\x00", "--x \x00", "docker/d", "gfx942", "f\x00ps")
    short_key = ResultKey("m", "", "docker/d", "gfx942", "fps")
    history = History(history_url)
    results = [HistoryResult(long_key, "node-" * 60, 10.0, (9.0, 11.0), "SUCCESS"),
               HistoryResult(nul_key, "h", 30.0, (), "SUCCESS"),
               HistoryResult(short_key, "h", 20.0, (), "SUCCESS")]  # fmt: skip
    history.append(SessionStamp("s-long", now(), "c" * 300, "f" * 70), results)
    assert history.points(long_key) == [HistoryPoint(10.0, (9.0, 11.0))]
    assert history.points(short_key) == [HistoryPoint(20.0, ())]
    assert history.points(nul_key) == [HistoryPoint(30.0, ())]
    assert history.sessions() == ["s-long"]
    history.close()


def test_report_import_of_a_csv_with_an_unclosed_quote_imports_nothing(
    pytester: pytest.Pytester,
) -> None:
    """An unclosed quote swallowed the rest of the file into one cell, and that cell
    went into the history as a model named 'alpha,40\\nbeta...'."""
    perf = pytester.path / "perf.csv"
    perf.write_text('model,performance,metric,status\n"alpha,40,fps,SUCCESS\nbeta,41,fps,SUCCESS\n')
    database = pytester.path / "h.sqlite"
    result = madengine(pytester, "report", "import", str(perf), "--history", str(database))
    assert result.ret == 1, said(result)
    result.stderr.fnmatch_lines(["*PERF_CSV */perf.csv: unreadable CSV: *unexpected end of data*"])
    assert "Traceback" not in said(result)
    history = History(f"sqlite:///{database}")
    assert history.sessions() == []
    history.close()


ZERO_THEN_100 = '#!/bin/sh\necho "performance: 0 fps"\n'


@pytest.mark.docker
def test_a_zero_in_the_history_is_no_point_and_no_traceback(pytester: pytest.Pytester) -> None:
    """A session whose model printed 0 (a broken run that still printed its line) is in
    the history: every later verdict of the model failed its test with a ValueError."""
    unique_tree(pytester, [entry("zero", scripts="scripts/dummy/v.sh")],
                {"scripts/dummy/v.sh": ZERO_THEN_100})  # fmt: skip
    run(pytester, "--mad-tags", "zero").assert_outcomes(passed=1)
    (pytester.path / "scripts/dummy/v.sh").write_text(ZERO_THEN_100.replace(": 0", ": 100"))
    result = run(pytester, "--mad-tags", "zero", "--mad-compare", "history")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["zero *SUCCESS*100*not enough history: 0 earlier sessions*"])
    assert "Traceback" not in result.stdout.str() and "ValueError" not in result.stdout.str()


def test_history_points_no_verdict_can_use_are_left_out(tmp_path: Path) -> None:
    """Values and samples that are not positive numbers (written by another tool or an
    import; JSON's NaN and Infinity) are no points, as a perf.csv's rows are not."""
    key = ResultKey("m", "", "docker/d", "gfx942", "fps")
    history = History(f"sqlite:///{tmp_path / 'h.sqlite'}")
    values = [(100.0, (99.0, 101.0)), (0.0, ()), (-5.0, ()), (102.0, (0.0, 101.0)), (98.0, ())]
    for index, (value, samples) in enumerate(values):
        stamp = SessionStamp(f"s{index}", now(), "ctl", "")
        history.append(stamp, [HistoryResult(key, "h", value, samples, "SUCCESS")])
    database = sa.create_engine(f"sqlite:///{tmp_path / 'h.sqlite'}")
    with database.begin() as connection:  # as another writer may have: JSON's NaN, Infinity
        connection.execute(sa.update(RESULTS).where(RESULTS.c.session == "s4")
                           .values(samples="[Infinity, NaN]"))  # fmt: skip
    database.dispose()
    source = HistorySource(history)
    assert source.points(key, "current") == [
        HistoryPoint(100.0, (99.0, 101.0)),
        HistoryPoint(102.0),
        HistoryPoint(98.0),
    ]
    assert HistorySource(history, session="s3").points(key, "current") == [HistoryPoint(102.0)]
    verdict = compare(source, key, [100.0, 101.0], tolerance=0.05, higher_is_better=True,
                      current_session="current")  # fmt: skip
    assert verdict.outcome == "not enough history"
    history.close()
