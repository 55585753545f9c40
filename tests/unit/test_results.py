"""Performance lines, multiple_results CSVs, expectations, baselines and verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_madengine.results import (
    Expectation,
    Measurement,
    ResultError,
    find_performance,
    judge,
    load_baseline,
    parse_expectation,
    parse_multiple_results,
    parse_tolerance,
)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("performance: 1234.5 samples_per_second", (1234.5, "samples_per_second")),
        ("performance: -3 loss", (-3.0, "loss")),
        ("performance: +2.5 x", (2.5, "x")),
        ("performance: .5 x", (0.5, "x")),
        ("performance: 1e3 tokens", (1000.0, "tokens")),
        ("performance: 1.5E-2 s", (0.015, "s")),
        ("performance: 12.5/s tokens_per_second", (12.5, "tokens_per_second")),
        ("performance: 99.1, images_per_second", (99.1, "images_per_second")),
        ("[12:00:01] rank0: performance: 7 fps", (7.0, "fps")),
    ],
)
def test_performance_line_formats(line: str, expected: tuple[float, str]) -> None:
    assert find_performance([line]) == expected


def test_the_last_performance_line_counts_and_lines_are_streamed() -> None:
    lines = (text for text in ["warmup", "performance: 1 fps", "epoch 2", "performance: 3 fps"])
    assert find_performance(lines) == (3.0, "fps")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["nothing here"], "no performance line in the log"),
        (["performance: N/A samples_per_second"],
         "non-numeric performance 'N/A' (line: performance: N/A samples_per_second)"),
        (["performance: nan fps"], "non-numeric performance 'nan' (line: performance: nan fps)"),
        (["performance: 12"], "performance line has no metric (line: performance: 12)"),
    ],
)  # fmt: skip
def test_performance_problems_are_one_line(lines: list[str], message: str) -> None:
    with pytest.raises(ResultError) as caught:
        find_performance(lines)
    assert str(caught.value) == message


def test_multiple_results_rows_are_named_after_the_test_and_keep_extra_columns() -> None:
    text = "model,performance,metric,batch\nresnet,812.4,images_per_second,64\nbert,95,seq,8\n"
    rows = parse_multiple_results(text, "dummy_multi", "perf.csv")
    assert rows == [
        Measurement("dummy_multi_resnet", 812.4, "images_per_second"),
        Measurement("dummy_multi_bert", 95.0, "seq"),
    ]
    assert rows[0].extra == {"batch": "64"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "p.csv: empty multiple_results CSV"),
        ("model,perf\nx,1\n", "p.csv: missing column(s) metric, performance (have: model, perf)"),
        (
            "model,performance,metric\nx,1,a\ny,abc,a\n",
            "p.csv: row 3: non-numeric performance 'abc'",
        ),
        ("model,performance,metric\nx,1\n", "p.csv: row 2: expected 3 fields, got 2"),
        ("model,performance,metric\n", "p.csv: no result rows"),
    ],
)
def test_malformed_multiple_results(text: str, message: str) -> None:
    with pytest.raises(ResultError) as caught:
        parse_multiple_results(text, "m", "p.csv")
    assert str(caught.value) == message


def test_expectations_parse() -> None:
    assert parse_expectation(None) is None
    assert parse_expectation({"min": 100}) == Expectation(minimum=100.0)
    assert parse_expectation({"reference": 10, "tolerance": "10%", "direction": "lower"}) == (
        Expectation(reference=10.0, tolerance=0.1, higher_is_better=False)
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1], "field 'expect' must be an object such as {\"min\": 100}, got [1]"),
        ({}, "field 'expect': empty"),
        ({"minimum": 1}, "field 'expect': unknown key 'minimum' (known: direction, max, min,"
                         " reference, tolerance)"),
        ({"min": "x"}, "field 'expect': 'min' must be a number, got 'x'"),
        ({"min": 1, "direction": "up"}, "field 'expect': 'direction' must be 'higher' or 'lower',"
                                        " got 'up'"),
        ({"min": 1, "tolerance": "5%"}, "field 'expect': 'tolerance' needs 'reference'"),
    ],
)  # fmt: skip
def test_bad_expectations(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_expectation(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "value"), [("5%", 0.05), ("0.05", 0.05), (0.1, 0.1), ("10 %", 0.1)]
)
def test_tolerances(text: str | float, value: float) -> None:
    assert parse_tolerance(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["x", "-1%", "-0.2"])
def test_bad_tolerances(text: str) -> None:
    with pytest.raises(ValueError, match="tolerance must be a fraction or a percentage like 5%"):
        parse_tolerance(text)


@pytest.mark.parametrize(
    ("value", "expectation", "baseline", "reason"),
    [
        (812.4, Expectation(minimum=900), None,
         "performance 812.4 fps below min 900 (-9.7%)"),
        (5.5, Expectation(maximum=5), None, "performance 5.5 fps above max 5 (+10.0%)"),
        (900, Expectation(reference=1000), None,
         "performance 900 fps is 10.0% below reference 1000 (tolerance 5%)"),
        (1100, Expectation(reference=1000, higher_is_better=False), None,
         "performance 1100 fps is 10.0% above reference 1000 (tolerance 5%)"),
        (900, None, 1000.0, "regression: 900 fps vs baseline 1000 (-10.0%, tolerance 5%)"),
        (1100, Expectation(minimum=1, higher_is_better=False), 1000.0,
         "regression: 1100 fps vs baseline 1000 (+10.0%, tolerance 5%)"),
    ],
)  # fmt: skip
def test_misses_name_value_bound_and_difference(value, expectation, baseline, reason) -> None:
    verdict = judge(value, "fps", expectation, baseline, 0.05)
    assert not verdict.passed and verdict.reason == reason


@pytest.mark.parametrize(
    ("value", "expectation", "baseline"),
    [
        (900, Expectation(minimum=900), None),
        (960, Expectation(reference=1000), None),
        (1100, None, 1000.0),  # an improvement is no regression
        (960, None, 1000.0),
        (5, None, 0.0),  # a zero baseline cannot give a relative change
    ],
)
def test_passes(value: float, expectation: Expectation | None, baseline: float | None) -> None:
    assert judge(value, "fps", expectation, baseline, 0.05).passed


def test_relative_change_is_reported_against_the_baseline() -> None:
    assert judge(1100, "fps", None, 1000.0, 0.05).relative_change == pytest.approx(0.1)


def test_baseline_takes_the_last_success_row(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    path.write_text(
        "model,performance,metric,status\n"
        "a,10,fps,SUCCESS\nb,5,fps,SUCCESS\na,12,fps,SUCCESS\na,1,fps,FAILURE\nc,,fps,FAILURE\n"
    )
    assert load_baseline(path) == {"a": 12.0, "b": 5.0}


def test_baseline_errors(tmp_path: Path) -> None:
    with pytest.raises(ResultError, match=r"--mad-baseline .*nope.csv: no such file"):
        load_baseline(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("model,value\n")
    with pytest.raises(ResultError, match=r"bad.csv: missing column\(s\) performance, status"):
        load_baseline(bad)
