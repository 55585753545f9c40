"""Results: performance lines, multiple_results CSVs, expectations, baselines, verdicts."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_madengine.core.results import (
    DEFAULT_TOLERANCE,
    Expectation,
    Measurement,
    ResultError,
    Verdict,
    find_performance,
    format_number,
    judge,
    judge_measurement,
    load_baseline,
    parse_expectation,
    parse_multiple_results,
    parse_performance_line,
    parse_tolerance,
)
from pytest_madengine.errors import MadError

# The header line madengine writes to perf.csv.
PERF_CSV_HEADER = (
    "model,n_gpus,nnodes,gpus_per_node,training_precision,pipeline,args,tags,docker_file,"
    "base_docker,docker_sha,docker_image,git_commit,machine_name,deployment_type,launcher,"
    "gpu_architecture,performance,metric,relative_change,status,build_duration,test_duration,"
    "dataname,data_provider_type,data_size,data_download_duration,build_number,"
    "additional_docker_run_options"
)


# The performance line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("performance: 1234.5 samples_per_second", (1234.5, "samples_per_second")),
        ("performance: 42 samples_per_second", (42.0, "samples_per_second")),
        ("performance: -3 loss_delta", (-3.0, "loss_delta")),
        ("performance: +2.5 speedup", (2.5, "speedup")),
        ("performance: .5 ratio", (0.5, "ratio")),
        ("performance: 1e3 tokens_per_second", (1000.0, "tokens_per_second")),
        ("performance: 1.5E-2 seconds", (0.015, "seconds")),
        ("performance: 12.5/s tokens_per_second", (12.5, "tokens_per_second")),
        ("performance: 99.1, images_per_second", (99.1, "images_per_second")),
        ("performance:\t7   fps\n", (7.0, "fps")),
        ("performance: 7 fps (mean of 10 iterations)", (7.0, "fps")),
    ],
)
def test_performance_line_formats(line: str, expected: tuple[float, str]) -> None:
    assert find_performance([line]) == expected


@pytest.mark.parametrize(
    "line",
    [
        "2024-05-01 12:00:01,123 INFO performance: 812.4 samples_per_second",
        "[rank0]: performance: 812.4 samples_per_second",
        "\x1b[32mINFO\x1b[0m | performance: 812.4 samples_per_second",
    ],
)
def test_text_before_the_marker_is_allowed(line: str) -> None:
    assert find_performance([line]) == (812.4, "samples_per_second")


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("epoch 3 loss 0.12", None),
        ("", None),
        ("performance: 1234.5 samples_per_second", ("1234.5", "samples_per_second")),
        ("performance: 12.5/s tokens_per_second", ("12.5", "tokens_per_second")),
        ("performance: N/A samples_per_second", ("N/A", "samples_per_second")),
        ("performance: fast samples", ("fast", "samples")),
        ("performance: nan fps", ("nan", "fps")),
        ("performance: 12", ("12", "")),
        ("performance:", ("", "")),
        ("performance: 1,234.5 fps", ("1,234.5", "fps")),
    ],
)
def test_parse_performance_line_gives_value_and_metric_text(
    line: str, parsed: tuple[str, str] | None
) -> None:
    assert parse_performance_line(line) == parsed


def test_the_last_performance_line_counts() -> None:
    log = [
        "warm-up",
        "performance: 100 samples_per_second",
        "epoch 1 done",
        "performance: 950 samples_per_second",
        "epoch 2 done",
        "performance: 1000 samples_per_second",
        "bye",
    ]
    assert find_performance(log) == (1000.0, "samples_per_second")


def test_the_last_performance_line_counts_even_when_an_earlier_one_is_broken() -> None:
    assert find_performance(["performance: N/A fps", "performance: 5 fps"]) == (5.0, "fps")


def test_the_last_marker_on_a_line_counts() -> None:
    # Progress bars rewrite one line with `\r`; its newest figure is the last one.
    assert find_performance(["performance: 1 fps\rperformance: 2 fps"]) == (2.0, "fps")


def test_the_log_is_streamed_from_any_iterable() -> None:
    read: list[str] = []

    def log() -> Iterator[str]:
        for line in ["start", "performance: 3 fps", "end"]:
            read.append(line)
            yield line + "\n"

    assert find_performance(line for line in log()) == (3.0, "fps")
    assert read == ["start", "performance: 3 fps", "end"]


def test_the_log_can_be_an_open_file(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    path.write_text("building\nperformance: 1 fps\nperformance: 2.5 fps\n")
    with path.open() as log:
        assert find_performance(log) == (2.5, "fps")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "no performance line in the log"),
        (["training...", "done"], "no performance line in the log"),
        (["performance: N/A samples_per_second"],
         "non-numeric performance 'N/A' (line: performance: N/A samples_per_second)"),
        (["performance: fast samples"],
         "non-numeric performance 'fast' (line: performance: fast samples)"),
        (["performance: nan fps"], "non-numeric performance 'nan' (line: performance: nan fps)"),
        (["performance: inf fps"], "non-numeric performance 'inf' (line: performance: inf fps)"),
        (["performance: 1e999 fps"],
         "non-numeric performance '1e999' (line: performance: 1e999 fps)"),
        (["performance: 1,234.5 fps"],
         "non-numeric performance '1,234.5' (line: performance: 1,234.5 fps)"),
        (["performance: 5 fps", "performance: N/A fps"],
         "non-numeric performance 'N/A' (line: performance: N/A fps)"),
        (["  performance: 12  \n"], "performance line has no metric (line: performance: 12)"),
        (["performance: 12.5/s"], "performance line has no metric (line: performance: 12.5/s)"),
        (["performance:"], "performance line has no value (line: performance:)"),
    ],
)  # fmt: skip
def test_performance_problems_are_one_line_reasons(lines: list[str], message: str) -> None:
    with pytest.raises(ResultError) as exc:
        find_performance(lines)
    assert str(exc.value) == message


def test_a_long_line_is_cut_to_200_characters_in_the_reason() -> None:
    line = "x" * 300 + " performance: N/A fps"
    with pytest.raises(ResultError) as exc:
        find_performance([line])
    assert str(exc.value) == f"non-numeric performance 'N/A' (line: {'x' * 200})"


def test_result_errors_are_mad_errors_and_always_one_line() -> None:
    error = ResultError("first\nsecond\r\nthird")
    assert isinstance(error, MadError)
    assert str(error) == "first second third"


# multiple_results CSV


def test_multiple_results_rows_are_named_after_the_model() -> None:
    text = "model,performance,metric\nresnet,812.4,images_per_second\nbert,95,seqs_per_second\n"
    assert parse_multiple_results(text, "dummy_multi", "perf_multi.csv") == [
        Measurement("dummy_multi_resnet", 812.4, "images_per_second", row_model="resnet"),
        Measurement("dummy_multi_bert", 95.0, "seqs_per_second", row_model="bert"),
    ]


def test_multiple_results_keep_extra_columns() -> None:
    text = "batch,model,performance,metric,precision\n64,resnet,812.4,fps,fp16\n"
    [row] = parse_multiple_results(text, "m", "p.csv")
    assert row == Measurement("m_resnet", 812.4, "fps", row_model="resnet")
    assert row.extra == {"batch": "64", "precision": "fp16"}


def test_measurements_compare_without_their_extra_columns() -> None:
    assert Measurement("a", 1.0, "fps", {"batch": "8"}) == Measurement("a", 1.0, "fps")


def test_multiple_results_tolerate_spaces_quotes_blank_lines_and_a_bom() -> None:
    text = '\ufeff model , performance , metric \n\n"resnet", 1e3 ,fps\n\n'
    assert parse_multiple_results(text, "m", "p.csv") == [
        Measurement("m_resnet", 1000.0, "fps", row_model="resnet")
    ]


def test_multiple_results_keep_text_values_as_written_and_empty_ones_as_failures() -> None:
    text = "model,performance,metric\ncpus,0-1,cpu_list\nodd,nan,fps\nnone,,fps\nok,5,fps\n"
    rows = parse_multiple_results(text, "m", "p.csv")
    assert [(row.performance, row.text) for row in rows] == [
        (None, "0-1"), (None, "nan"), (None, ""), (5.0, None)
    ]  # fmt: skip
    verdicts = [judge_measurement(row, None, None, 0.05) for row in rows]
    assert [v.passed for v in verdicts] == [True, True, False, True]
    assert verdicts[2].reason == "empty performance"
    # A text value cannot meet an expectation, and says so.
    verdict = judge_measurement(rows[0], Expectation(minimum=1), None, 0.05)
    assert verdict == Verdict(False, "performance '0-1' is not a number; 'expect' needs one")


def test_multiple_results_with_every_value_empty_fail_as_a_whole() -> None:
    with pytest.raises(ResultError) as exc:
        parse_multiple_results("model,performance,metric\na,,fps\nb, ,fps\n", "m", "p.csv")
    assert str(exc.value) == "p.csv: performance is empty in every row"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "p.csv: empty multiple_results CSV"),
        ("\n\n", "p.csv: empty multiple_results CSV"),
        ("model,perf\nx,1\n", "p.csv: missing column(s) metric, performance (have: model, perf)"),
        ("model,performance,metric\nx,1\n", "p.csv: row 2: expected 3 fields, got 2"),
        ("model,performance,metric\nx,1,fps,extra\n", "p.csv: row 2: expected 3 fields, got 4"),
        ("model,performance,metric\n", "p.csv: no result rows"),
        ("model,performance,metric\n\n\n", "p.csv: no result rows"),
    ],
)  # fmt: skip
def test_malformed_multiple_results(text: str, message: str) -> None:
    with pytest.raises(ResultError) as exc:
        parse_multiple_results(text, "m", "p.csv")
    assert str(exc.value) == message


def test_a_quoted_line_break_in_a_cell_keeps_the_reason_one_line() -> None:
    with pytest.raises(ResultError) as exc:
        parse_multiple_results('model,performance,metric\nx,"1\n2",fps,x\n', "m", "p.csv")
    assert str(exc.value) == "p.csv: row 2: expected 3 fields, got 4"


# Expectations


@pytest.mark.parametrize(
    ("value", "expectation"),
    [
        (None, None),
        ({"min": 100}, Expectation(minimum=100.0)),
        ({"max": 5.0}, Expectation(maximum=5.0)),
        ({"min": 1, "max": 2}, Expectation(minimum=1.0, maximum=2.0)),
        ({"reference": 1000}, Expectation(reference=1000.0)),
        ({"reference": 1000, "tolerance": "5%"}, Expectation(reference=1000.0, tolerance=0.05)),
        ({"reference": 1000, "tolerance": 0.1}, Expectation(reference=1000.0, tolerance=0.1)),
        ({"reference": 10, "direction": "lower"},
         Expectation(reference=10.0, higher_is_better=False)),
        ({"min": 1, "direction": "higher"}, Expectation(minimum=1.0)),
        # Direction alone still says which way a baseline comparison should look.
        ({"direction": "lower"}, Expectation(higher_is_better=False)),
    ],
)  # fmt: skip
def test_expectations_parse(value: object, expectation: Expectation | None) -> None:
    assert parse_expectation(value) == expectation


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1], "field 'expect' must be an object such as {\"min\": 100}, got [1]"),
        ("fast", "field 'expect' must be an object such as {\"min\": 100}, got 'fast'"),
        ({}, "field 'expect': empty"),
        ({"minimum": 1},
         "field 'expect': unknown key 'minimum'"
         " (known: direction, max, min, reference, tolerance)"),
        ({"min": "x"}, "field 'expect': 'min' must be a number, got 'x'"),
        ({"max": "5"}, "field 'expect': 'max' must be a number, got '5'"),
        ({"reference": True}, "field 'expect': 'reference' must be a number, got True"),
        ({"min": float("nan")}, "field 'expect': 'min' must be a number, got nan"),
        ({"min": 1, "direction": "up"},
         "field 'expect': 'direction' must be 'higher' or 'lower', got 'up'"),
        ({"min": 1, "tolerance": "5%"}, "field 'expect': 'tolerance' needs 'reference'"),
        ({"reference": 1, "tolerance": "x"},
         "field 'expect': 'tolerance': tolerance must be a fraction or a percentage like 5%,"
         " got 'x'"),
        ({"min": 10, "max": 5}, "field 'expect': 'min' 10 is above 'max' 5"),
    ],
)  # fmt: skip
def test_bad_expectations(value: object, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_expectation(value)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("text", "tolerance"),
    [("5%", 0.05), ("0.05", 0.05), (0.1, 0.1), ("10 %", 0.10), (0, 0.0), (" 2.5% ", 0.025)],
)
def test_tolerance_is_a_fraction_or_a_percentage(text: str | float, tolerance: float) -> None:
    assert parse_tolerance(text) == pytest.approx(tolerance)


@pytest.mark.parametrize(
    ("text", "shown"),
    [("x", "'x'"), ("-1%", "'-1%'"), ("-0.2", "'-0.2'"), (-0.1, "-0.1"), ("", "''"),
     ("nan", "'nan'"), (True, "True")],
)  # fmt: skip
def test_bad_tolerances(text: str | float, shown: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_tolerance(text)
    assert str(exc.value) == f"tolerance must be a fraction or a percentage like 5%, got {shown}"


def test_the_default_reference_tolerance_is_five_percent() -> None:
    assert DEFAULT_TOLERANCE == 0.05


# Baselines


def write_perf_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    """A madengine perf.csv whose rows set model, performance and status."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, PERF_CSV_HEADER.split(","), restval="")
        writer.writeheader()
        for model, performance, status in rows:
            writer.writerow(
                {"model": model, "performance": performance, "status": status, "metric": "fps"}
            )


def test_baseline_takes_the_last_success_row_of_each_model(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    write_perf_csv(
        path,
        [
            ("resnet", "900", "SUCCESS"),
            ("bert", "50", "SUCCESS"),
            ("resnet", "1000", "SUCCESS"),
            ("resnet", "1", "FAILURE"),  # a failed run is no baseline
            ("bert", "", "SUCCESS"),  # nor is one without a number
            ("llama", "", "FAILURE"),
        ],
    )
    baseline = load_baseline(path)
    assert (baseline.lookup("resnet"), baseline.lookup("bert"), baseline.lookup("llama")) == (
        1000.0, 50.0, None
    )  # fmt: skip


def test_baseline_tells_variants_apart_by_args_and_dockerfile(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    path.write_text(
        "model,args,docker_file,performance,status\n"
        "m,--batch_size 256,docker/m.amd.Dockerfile,100,SUCCESS\n"
        "m,--batch_size 512,docker/m.amd.Dockerfile,200,SUCCESS\n"
        "m,--batch_size 512,docker/m.rocm7.Dockerfile,300,SUCCESS\n"
        "other,,,7,SUCCESS\n"  # written by hand: any variant of `other`
    )
    baseline = load_baseline(path)
    assert baseline.lookup("m", "--batch_size 512", "docker/m.amd.Dockerfile") == 200
    assert baseline.lookup("m", "--batch_size 512", "docker/m.rocm7.Dockerfile") == 300
    assert baseline.lookup("m", "--batch_size 1", "docker/m.amd.Dockerfile") is None
    assert baseline.lookup("other", "--x 1", "docker/o.Dockerfile") == 7


def test_baseline_of_a_perf_csv_with_only_a_header_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    write_perf_csv(path, [])
    assert len(load_baseline(path)) == 0


def test_missing_baseline_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(ResultError) as exc:
        load_baseline(path)
    assert str(exc.value) == f"--mad-baseline {path}: no such file"


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ("model,value\nresnet,1\n", "performance, status"),
        ("", "model, performance, status"),
    ],
)
def test_baseline_missing_columns(tmp_path: Path, text: str, missing: str) -> None:
    path = tmp_path / "perf.csv"
    path.write_text(text)
    with pytest.raises(ResultError) as exc:
        load_baseline(path)
    assert str(exc.value) == f"--mad-baseline {path}: missing column(s) {missing}"


# Verdicts


@pytest.mark.parametrize(
    ("value", "text"),
    [(900.0, "900"), (812.4, "812.4"), (0.000012, "1.2e-05"), (1234567.0, "1.23457e+06"),
     (-3.0, "-3")],
)  # fmt: skip
def test_numbers_print_compactly(value: float, text: str) -> None:
    assert format_number(value) == text


@pytest.mark.parametrize(
    ("value", "metric", "expectation", "reason"),
    [
        (812.4, "samples_per_second", Expectation(minimum=900),
         "performance 812.4 samples_per_second below min 900 (-9.7%)"),
        (5.5, "ms", Expectation(maximum=5), "performance 5.5 ms above max 5 (+10.0%)"),
        (-1, "fps", Expectation(minimum=0), "performance -1 fps below min 0"),
        (900, "samples_per_second", Expectation(reference=1000),
         "performance 900 samples_per_second is 10.0% below reference 1000 (tolerance 5%)"),
        (1100, "ms", Expectation(reference=1000, higher_is_better=False),
         "performance 1100 ms is 10.0% above reference 1000 (tolerance 5%)"),
        (850, "fps", Expectation(reference=1000, tolerance=0.1),
         "performance 850 fps is 15.0% below reference 1000 (tolerance 10%)"),
        (1, "fps", Expectation(reference=-1, tolerance=0.5, higher_is_better=False),
         "performance 1 fps is 200.0% above reference -1 (tolerance 50%)"),
    ],
)  # fmt: skip
def test_expectation_misses_name_value_bound_and_difference(
    value: float, metric: str, expectation: Expectation, reason: str
) -> None:
    assert judge(value, metric, expectation, None, 0.05) == Verdict(False, reason)


@pytest.mark.parametrize(
    "value",
    [900, 1000, 5000],
)
def test_min_passes_at_or_above_the_bound(value: float) -> None:
    assert judge(value, "fps", Expectation(minimum=900), None, 0.05) == Verdict(True)


@pytest.mark.parametrize("value", [0.1, 5])
def test_max_passes_at_or_below_the_bound(value: float) -> None:
    assert judge(value, "ms", Expectation(maximum=5), None, 0.05) == Verdict(True)


@pytest.mark.parametrize("value", [950, 1000, 2000])
def test_higher_is_better_reference_passes_within_tolerance_or_above(value: float) -> None:
    assert judge(value, "fps", Expectation(reference=1000), None, 0.05).passed


@pytest.mark.parametrize("value", [1, 1000, 1050])
def test_lower_is_better_reference_passes_within_tolerance_or_below(value: float) -> None:
    expectation = Expectation(reference=1000, higher_is_better=False)
    assert judge(value, "ms", expectation, None, 0.05).passed


def test_the_reference_uses_its_own_tolerance_not_the_baseline_one() -> None:
    assert judge(920, "fps", Expectation(reference=1000, tolerance=0.1), None, 0.0).passed


def test_the_first_failing_check_wins() -> None:
    expectation = Expectation(minimum=950, reference=1000)
    assert judge(800, "fps", expectation, 2000.0, 0.05).reason == (
        "performance 800 fps below min 950 (-15.8%)"
    )


def test_a_baseline_regression_fails() -> None:
    verdict = judge(900, "samples_per_second", None, 1000.0, 0.05)
    assert verdict == Verdict(
        False,
        "regression: 900 samples_per_second vs baseline 1000 (-10.0%, tolerance 5%)",
        pytest.approx(-0.1),
    )


def test_a_baseline_regression_when_lower_is_better() -> None:
    verdict = judge(1100, "ms", Expectation(higher_is_better=False), 1000.0, 0.05)
    assert verdict.reason == "regression: 1100 ms vs baseline 1000 (+10.0%, tolerance 5%)"
    assert verdict.relative_change == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("value", "expectation", "change"),
    [
        (1100, None, 0.1),  # faster
        (960, None, -0.04),  # slower, within tolerance
        (950, None, -0.05),  # slower by exactly the tolerance
        (900, Expectation(higher_is_better=False), -0.1),  # less time
    ],
)
def test_baseline_improvements_and_small_changes_pass_and_report_the_change(
    value: float, expectation: Expectation | None, change: float
) -> None:
    verdict = judge(value, "fps", expectation, 1000.0, 0.05)
    assert verdict == Verdict(True, None, pytest.approx(change))


def test_the_baseline_tolerance_comes_from_the_argument() -> None:
    assert judge(900, "fps", None, 1000.0, 0.2).passed
    assert judge(990, "fps", None, 1000.0, 0.0).reason == (
        "regression: 990 fps vs baseline 1000 (-1.0%, tolerance 0%)"
    )


def test_the_change_is_reported_even_when_an_expectation_fails() -> None:
    verdict = judge(800, "fps", Expectation(minimum=900), 1000.0, 0.05)
    assert not verdict.passed
    assert verdict.relative_change == pytest.approx(-0.2)


def test_a_zero_baseline_is_not_compared() -> None:
    assert judge(5, "fps", None, 0.0, 0.05) == Verdict(True)
    assert judge(-5, "fps", None, 0.0, 0.05) == Verdict(True)


def test_no_expectation_and_no_baseline_passes() -> None:
    assert judge(1.0, "fps", None, None, 0.05) == Verdict(True)
