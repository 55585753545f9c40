"""--mad-compare's sources and the verdict wiring (core/compare.py): pure logic; the
results history is a stand-in module with core/history.py's interface."""

from __future__ import annotations

import csv
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_madengine.core.compare import (
    HistorySource,
    PerfCsvSource,
    compare,
    load_perf_csv_source,
    parse_compare,
)
from pytest_madengine.core.records import Comparison, ModelFacts, ResultRow, Status, TestRecord
from pytest_madengine.core.verdicts import HistoryPoint, ResultKey
from pytest_madengine.errors import UsageProblem
from pytest_madengine.reporting.charts import sparkline_svg
from pytest_madengine.reporting.summary import sparkline

KEY = ResultKey("noisy", "--batch 8", "docker/dummy", "gfx942", "fps")
COLUMNS = ["model", "args", "docker_file", "gpu_architecture", "metric", "performance", "status"]
STEADY = [99.0, 101.0, 100.5, 99.5, 100.0, 98.8, 101.2, 100.2, 99.8, 100.1]


def write_rows(path: Path, rows: list[dict[str, str]], columns: list[str] = COLUMNS) -> Path:
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        if handle.tell() == 0:
            writer.writeheader()
        writer.writerows(rows)
    return path


def row(value: object, status: str = "SUCCESS", **cells: str) -> dict[str, str]:
    facts = dict(zip(COLUMNS[:5], (KEY.model, KEY.args, KEY.docker_file,
                                   KEY.gpu_architecture, KEY.metric), strict=True))  # fmt: skip
    return {**facts, "performance": str(value), "status": status, **cells}


# ---- the perf.csv source ----


def test_each_success_row_of_the_same_result_is_one_point_oldest_first(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "perf.csv", [
        row(100), row(90, status="FAILURE"), row(101),
        row(500, model="other"), row(7, metric="ms"), row(8, args=""),
        row(9, gpu_architecture="gfx90a"), row(10, docker_file="docker/other"),
        row(0), row(-3), row("nan"), row("0-1"), row(102),
    ])  # fmt: skip
    source = load_perf_csv_source(path)
    assert source.points(KEY, "now") == [HistoryPoint(100.0), HistoryPoint(101.0),
                                         HistoryPoint(102.0)]  # fmt: skip
    assert source.points(ResultKey("absent", "", "", "", ""), "now") == []


def test_perf_super_csv_samples_come_with_their_point(tmp_path: Path) -> None:
    columns = [*COLUMNS, "samples"]
    rows = [row(100, samples="99 100 103"), row(98, samples="x y")]
    path = write_rows(tmp_path / "perf_super.csv", rows, columns)
    assert load_perf_csv_source(path).points(KEY, "now") == [
        HistoryPoint(100.0, (99.0, 100.0, 103.0)), HistoryPoint(98.0)
    ]  # fmt: skip


def test_rows_appended_after_the_file_was_read_are_never_history(tmp_path: Path) -> None:
    """The session appends its own rows to the perf.csv it compares with: a worker that
    reads it later reads only as far as the controller did (`upto`)."""
    path = write_rows(tmp_path / "perf.csv", [row(100), row(101)])
    at_start = load_perf_csv_source(path)
    write_rows(path, [row(60)])  # this session's own result
    on_a_worker = load_perf_csv_source(path, at_start.upto)
    assert on_a_worker.points(KEY, "now") == at_start.points(KEY, "now")
    assert len(load_perf_csv_source(path).points(KEY, "now")) == 3


def test_the_sessions_own_perf_csv_missing_before_its_first_session_is_an_empty_history(
    tmp_path: Path,
) -> None:
    own = tmp_path / "perf.csv"
    source = parse_compare("perf.csv", tmp_path, None, written_here=[own])
    assert isinstance(source, PerfCsvSource) and source.upto == 0
    assert source.points(KEY, "now") == [] and source.label == "perf.csv"
    write_rows(own, [row(100)])  # the session's first row: a worker reads none of it
    assert parse_compare("perf.csv", tmp_path, None, 0, [own]).points(KEY, "now") == []


# ---- parsing --mad-compare ----


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--mad-compare: empty (give history, history:N, a session id or a perf.csv)"),
        ("missing.csv", "--mad-compare {dir}/missing.csv: no such file"),
        ("history:0", "--mad-compare history:0: N in history:N must be a whole number from 1,"
                      " got '0'"),
        ("history:many", "--mad-compare history:many: N in history:N must be a whole number"
                         " from 1, got 'many'"),
    ],
)  # fmt: skip
def test_a_bad_source_is_one_usage_line(
    tmp_path: Path, text: str, message: str, stand_in_history: StandIn
) -> None:
    with pytest.raises(UsageProblem) as raised:
        parse_compare(text, tmp_path, "sqlite:///h.db")
    assert str(raised.value) == message.format(dir=tmp_path)


def test_a_csv_without_the_needed_columns_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("model,value\nnoisy,1\n")
    with pytest.raises(UsageProblem, match=r"bad.csv: missing column\(s\) performance, status"):
        parse_compare("bad.csv", tmp_path, None)


def test_a_session_the_history_does_not_hold_is_a_usage_error(
    tmp_path: Path, stand_in_history: StandIn
) -> None:
    with pytest.raises(UsageProblem, match="--mad-compare s99: neither a file nor a session"):
        parse_compare("s99", tmp_path, "sqlite:///h.db")


# ---- the history source, against a stand-in of core/history.py ----


@dataclass
class StandIn:
    """core/history.py's History: what it was asked, and what it answers."""

    calls: list[tuple[object, ...]]
    by_session: dict[str, list[HistoryPoint]]

    def __call__(self, url: str) -> StandIn:
        self.calls.append(("open", url))
        return self

    def points(self, key, *, limit=None, exclude_session=None):
        self.calls.append(("points", key, limit, exclude_session))
        kept = [p for s, ps in self.by_session.items() if s != exclude_session for p in ps]
        return kept[-limit:] if limit else kept

    def session_points(self, key, session):
        return self.by_session[session]

    def sessions(self):
        return list(self.by_session)


@pytest.fixture
def stand_in_history(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    history = StandIn([], {f"s{i}": [HistoryPoint(v)] for i, v in enumerate(STEADY)})
    history.by_session["reps"] = [HistoryPoint(100.0, (99.0, 100.0, 101.0, 100.5, 99.5))]
    module = types.ModuleType("pytest_madengine.core.history")
    module.History = history  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pytest_madengine.core.history", module)
    return history


def test_history_n_asks_for_the_last_n_sessions_but_never_the_current_one(
    tmp_path: Path, stand_in_history: StandIn
) -> None:
    source = parse_compare("history:3", tmp_path, "sqlite:///h.db")
    assert isinstance(source, HistorySource) and source.label == "history:3"
    assert source.points(KEY, "reps") == [HistoryPoint(v) for v in STEADY[7:]]
    expected_key = ResultKey("noisy", "--batch 8", "docker/dummy", "gfx942", "fps")
    assert stand_in_history.calls == [("open", "sqlite:///h.db"),
                                      ("points", expected_key, 3, "reps")]  # fmt: skip
    assert len(parse_compare("history", tmp_path, "x").points(KEY, "now")) == len(STEADY) + 1


def test_a_session_source_takes_that_sessions_repetitions_as_points(
    tmp_path: Path, stand_in_history: StandIn
) -> None:
    source = parse_compare("reps", tmp_path, "sqlite:///h.db")
    assert source.label == "session reps"
    assert [p.median for p in source.points(KEY, "now")] == [99.0, 100.0, 101.0, 100.5, 99.5]


def test_a_history_that_fails_midway_is_not_compared_and_fails_nothing(
    stand_in_history: StandIn,
) -> None:
    def broken(*args, **kwargs):
        raise OSError("database is locked")

    source = HistorySource(types.SimpleNamespace(points=broken))
    judged = compare(source, KEY, [100.0], tolerance=0.05, higher_is_better=True,
                     current_session="now")  # fmt: skip
    assert judged.outcome == "not compared" and not judged.fails
    assert judged.line == "not compared: the results history failed: OSError: database is locked"


# ---- the verdict wiring ----


def source_of(*medians: float) -> PerfCsvSource:
    return PerfCsvSource(Path("perf.csv"), None, {KEY: tuple(HistoryPoint(m) for m in medians)})


def test_a_ten_percent_fall_is_a_regression_naming_its_history() -> None:
    judged = compare(source_of(*STEADY), KEY, [90.2, 89.5, 90.8, 90.0, 89.9], tolerance=0.05,
                     higher_is_better=True, current_session="now")  # fmt: skip
    assert judged.fails and judged.outcome == "regression"
    assert judged.line.startswith("regression: -10.0% (99% CI ")
    assert judged.line.endswith("the median of 10 earlier sessions (tolerance 5%);"
                                " history: perf.csv")  # fmt: skip
    assert (judged.history, judged.current) == (tuple(STEADY), 90.0)


def test_for_a_lower_is_better_metric_the_same_fall_is_an_improvement() -> None:
    judged = compare(source_of(*STEADY), KEY, [90.2, 89.5, 90.8, 90.0, 89.9], tolerance=0.05,
                     higher_is_better=False, current_session="now")  # fmt: skip
    assert judged.outcome == "improvement" and not judged.fails


def test_noise_and_short_histories_pass() -> None:
    same = compare(source_of(*STEADY), KEY, [100.4, 99.1, 100.9], tolerance=0.05,
                   higher_is_better=True, current_session="now")  # fmt: skip
    short = compare(source_of(100, 101), KEY, [50.0], tolerance=0.05, higher_is_better=True,
                    current_session="now")  # fmt: skip
    assert (same.outcome, short.outcome) == ("no change", "not enough history")
    assert not same.fails and not short.fails
    assert short.line.startswith("not enough history: 2 earlier sessions (verdicts need 5+)")


def test_a_value_that_is_no_positive_number_is_not_compared() -> None:
    judged = compare(source_of(*STEADY), KEY, [0.0], tolerance=0.05, higher_is_better=True,
                     current_session="now")  # fmt: skip
    assert (judged.outcome, judged.line) == (
        "not compared", "not compared: verdicts need positive values, got 0"
    )  # fmt: skip


def test_a_comparison_crosses_xdist_in_its_record_and_reaches_junit() -> None:
    judged = Comparison("no change", "no change: +0.1%", (1.0, 2.0), 1.5)
    result = ResultRow("noisy", Status.SUCCESS, 1.5, comparison=judged)
    record = TestRecord("noisy", Status.SUCCESS, ModelFacts("noisy", 1), rows=(result,))
    assert TestRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert ("verdict", "no change: +0.1%") in record.junit_properties()


# ---- the series, drawn ----


def test_the_terminal_sparkline_runs_from_lowest_to_highest() -> None:
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, 5, 5]) == "▅▅▅"


def test_the_svg_sparkline_colours_the_current_point_by_its_verdict() -> None:
    regression = sparkline_svg(STEADY, 90.0, "regression")
    assert 'class="current"' in regression and '"#b00020"' in regression
    assert '"#1a7f37"' in sparkline_svg(STEADY, 110.0, "improvement")
    assert "<script" not in regression
    assert "<circle" in sparkline_svg([], 100.0, "not enough history")  # no history: a dot
