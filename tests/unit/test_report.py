"""The HTML report's data and charts, and the JUnit and perf.csv merges."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from xml.etree import ElementTree

import pytest

from pytest_madengine.core.records import Comparison, ModelFacts, ResultRow, Status, TestRecord
from pytest_madengine.errors import MadError
from pytest_madengine.reporting.charts import Point, line_chart, nice_ticks
from pytest_madengine.reporting.html import (
    load_results,
    render_report,
    report_data,
    verdict_rows,
)
from pytest_madengine.reporting.merge import merge_csv, merge_junit
from pytest_madengine.reporting.perf_csv import PERF_COLUMNS


def perf_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PERF_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def row(model: str, host: str, value: str, status: str = "SUCCESS", metric: str = "fps") -> dict:
    return {"model": model, "machine_name": host, "performance": value, "metric": metric,
            "status": status}  # fmt: skip


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    first = perf_csv(tmp_path / "run1.csv", [row("a", "n1", "100"), row("a", "n2", "90"),
                                             row("lat", "n1", "5", metric="ms"),
                                             row("b", "n1", "", "FAILURE", "")])  # fmt: skip
    second = perf_csv(tmp_path / "run2.csv", [row("a", "n1", "104"), row("a", "n2", "80"),
                                              row("lat", "n1", "6", metric="ms"),
                                              row("b", "n1", "", "FAILURE", ""),
                                              row("c", "n1", "0-1")])  # fmt: skip
    return [first, second]


def test_latest_result_per_model_and_host_with_changes_and_regressions(two_runs) -> None:
    results = load_results(two_runs)
    assert [list(results.series["a", host].x) for host in ("n1", "n2")] == [[1, 2], [1, 2]]
    data = report_data(results, {"a": 100.0, "lat": 5.0}, 0.05, lower_is_better={"ms"})
    rows = {(r.model, r.host): r for r in data.rows}
    assert rows["a", "n1"].change_vs_previous == pytest.approx(0.04)
    assert not rows["a", "n1"].regression
    assert rows["a", "n2"].regression and rows["a", "n2"].change_vs_baseline == pytest.approx(-0.2)
    assert rows["lat", "n1"].regression  # 6 ms against 5 ms, where lower is better
    assert rows["c", "n1"].performance == "0-1" and rows["c", "n1"].change_vs_previous is None
    assert data.counts == {"SUCCESS": 4, "FAILURE": 1, "SKIPPED": 0}
    assert [chart.model for chart in data.charts] == ["a", "lat"]  # numbers only
    assert {r.model for r in data.regressions} == {"a", "lat"}


def test_the_page_is_self_contained_and_marks_regressions(two_runs) -> None:
    html = render_report(two_runs, {"a": 100.0}, 0.05, title="Nightly <MI300>")
    assert "Nightly &lt;MI300&gt;" in html  # escaped
    assert html.count('<tr class="regression">') == 1
    assert html.count("<svg") == 2
    for external in ("http://", "https://", "<script", "src="):
        assert external not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_a_file_that_is_not_a_perf_csv_is_named(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("name,value\na,1\n")
    with pytest.raises(MadError, match=r"x.csv: missing column\(s\) model, performance"):
        load_results([tmp_path / "x.csv"])
    with pytest.raises(MadError, match=r"nope\.csv: no such file"):
        load_results([tmp_path / "nope.csv"])


def test_chart_is_valid_svg_with_escaped_labels_and_ticks_covering_the_values() -> None:
    assert nice_ticks(80, 104) == [80, 90, 100, 110]
    assert nice_ticks(5.1, 5.5) == [5.0, 5.2, 5.4, 5.6]
    svg = line_chart({"host <1>": [Point(1, 80), Point(2, 104, "build 7")]}, title="a & b",
                     y_label="fps", reference=100)  # fmt: skip
    root = ElementTree.fromstring(svg)
    titles = [element.text for element in root.iter("{http://www.w3.org/2000/svg}title")]
    assert titles == ["a & b", "host <1>, run 1: 80 fps", "host <1>, run 2: 104 fps (build 7)"]


def junit(path: Path, name: str, host: str, failures: int) -> Path:
    cases = "".join(
        f'<testcase classname="models.json" name="{name}{i}" time="1.0">'
        f'<properties><property name="performance" value="{i}"/></properties>'
        + ('<failure message="exit code 1">tail</failure>' if i < failures else "")
        + "</testcase>"
        for i in range(2)
    )
    path.write_text(
        f'<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" '
        f'hostname="{host}" tests="2" failures="{failures}" errors="0" skipped="0" time="2">'
        f"{cases}</testsuite></testsuites>"
    )
    return path


def test_junit_merge_keeps_every_suite_and_property_and_recounts(tmp_path: Path) -> None:
    files = [junit(tmp_path / "a.xml", "a", "node1", 1), junit(tmp_path / "b.xml", "b", "node2", 0)]
    totals = merge_junit(files, tmp_path / "all.xml")
    assert (totals.suites, totals.tests, totals.failures) == (2, 4, 1)
    root = ElementTree.parse(tmp_path / "all.xml").getroot()
    assert root.tag == "testsuites" and root.get("tests") == "4"
    assert [s.get("hostname") for s in root.iter("testsuite")] == ["node1", "node2"]
    assert len(list(root.iter("property"))) == 4
    (tmp_path / "bad.xml").write_text("<testsuites>")
    with pytest.raises(MadError, match=r"bad\.xml: not a JUnit XML file"):
        merge_junit([tmp_path / "bad.xml"], tmp_path / "x.xml")


def test_csv_merge_keeps_rows_in_order_and_every_column(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("model,performance\na,1\n")
    (tmp_path / "b.csv").write_text("model,performance,temperature\nb,2,70\n")
    assert merge_csv([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "all.csv") == 2
    assert (tmp_path / "all.csv").read_text().splitlines() == [
        "model,performance,temperature", "a,1,", "b,2,70"
    ]  # fmt: skip


# `madengine report update-perf` (madengine 1's): results from files appended to perf.csv.


def update_perf(tmp_path: Path, *args: str) -> list[dict[str, str]]:
    from pytest_madengine.cli.app import invoke

    assert invoke(["report", "update-perf", "--perf-csv", str(tmp_path / "p.csv"), *args]) == 0
    with (tmp_path / "p.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_update_perf_appends_a_perf_entry_as_a_row_adding_the_columns_it_lacks(
    tmp_path: Path,
) -> None:
    perf_csv(tmp_path / "p.csv", [row("earlier", "n1", "1")])
    entry = {"model": "dummy", "n_gpus": 1, "tags": ["pyt", "dummies"], "performance": 42.5,
             "metric": "fps", "status": "SUCCESS", "git_commit": None, "temperature": 40,
             "configs": [{"a": 1}], "nested": {"k": "v"}}  # fmt: skip
    (tmp_path / "entry.json").write_text(json.dumps(entry))
    earlier, added = update_perf(tmp_path, "--single_result", str(tmp_path / "entry.json"))
    assert list(added) == [*PERF_COLUMNS, "temperature", "nested"]  # no `configs` column
    assert (earlier["model"], earlier["temperature"]) == ("earlier", "")
    assert (added["model"], added["n_gpus"], added["tags"], added["performance"]) == (
        "dummy", "1", "pyt,dummies", "42.5")  # fmt: skip
    assert (added["git_commit"], added["nested"], added["machine_name"]) == ("", '{"k": "v"}', "")
    # madengine's perf_entry.json of multiple results is a list: each entry a row.
    (tmp_path / "entries.json").write_text(json.dumps([{"model": "x"}, {"model": "y"}]))
    rows = update_perf(tmp_path, "--exception-result", str(tmp_path / "entries.json"))
    assert [r["model"] for r in rows] == ["earlier", "dummy", "x", "y"]


def test_update_perf_adds_multiple_results_under_the_model_name_with_common_columns(
    tmp_path: Path,
) -> None:
    (tmp_path / "common.json").write_text(json.dumps(
        {"n_gpus": 8, "machine_name": "node1", "tags": ["multi"], "metric": "overridden"}
    ))  # fmt: skip
    (tmp_path / "multi.csv").write_text(
        "model, performance ,metric,temperature\n"
        "r1,1234567.891,tokens/s,40\n\nr2,,tokens/s,41\nr3,0-1,cpus,42\n"
    )
    rows = update_perf(tmp_path, "--multiple-results", str(tmp_path / "multi.csv"),
                       "--model-name", "vllm",
                       "--common-info", str(tmp_path / "common.json"))  # fmt: skip
    assert list(rows[0]) == [*PERF_COLUMNS, "temperature"]  # a new file: madengine's header
    assert [(r["model"], r["performance"], r["metric"], r["status"], r["temperature"])
            for r in rows] == [
        ("vllm_r1", "1234567.891", "tokens/s", "SUCCESS", "40"),  # as written
        ("vllm_r2", "", "tokens/s", "FAILURE", "41"),
        ("vllm_r3", "0-1", "cpus", "SUCCESS", "42"),
    ]  # fmt: skip
    assert {(r["n_gpus"], r["machine_name"], r["tags"]) for r in rows} == {("8", "node1", "multi")}


def test_update_perf_without_a_result_file_appends_nothing(tmp_path: Path) -> None:
    from pytest_madengine.cli.app import invoke

    assert invoke(["report", "update-perf", "--perf-csv", str(tmp_path / "p.csv")]) == 0
    assert not (tmp_path / "p.csv").exists()


def test_the_sessions_verdicts_are_listed_with_a_sparkline_of_their_series(two_runs) -> None:
    def judged(name: str, comparison: Comparison | None) -> TestRecord:
        result = ResultRow(name, Status.SUCCESS, 90.0, "fps", comparison=comparison)
        return TestRecord(name, Status.SUCCESS, ModelFacts(name, 1), rows=(result,))

    history = (100.0, 101.0, 99.0, 100.5, 99.5)
    records = [
        judged("a", Comparison("regression", "regression: -10.0% <x>", history, 90.0)),
        judged("b", Comparison("no change", "no change: +0.1%", history, 100.1)),
        judged("c", None),  # not judged: no row
        judged("d", Comparison("not compared", "not compared: the results history failed")),
    ]
    rows = verdict_rows(records)
    assert [(r.model, r.outcome) for r in rows] == [("a", "regression"), ("b", "no change")]
    html = render_report(two_runs, verdicts=rows)
    assert "Verdicts against the history" in html
    assert "regression: -10.0% &lt;x&gt;" in html  # the line escaped, the SVG kept
    assert html.count('class="current"') == 2 and '<tr class="regression">' in html
    for external in ("http://", "https://", "<script", "src="):
        assert external not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "Verdicts against the history" not in render_report(two_runs)
