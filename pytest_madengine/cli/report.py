"""`madengine report`: HTML from perf.csv files, and merges of the JUnit and perf.csv
files that many nodes wrote. madengine's own `to-html`, `to-email` and `update-perf`
are here too."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from pytest_madengine.cli.driver import ExitCode
from pytest_madengine.cli.output import console, fail
from pytest_madengine.core.options import appendable_perf_csv, writable_file
from pytest_madengine.errors import MadError, UsageProblem

report_app = typer.Typer(
    name="report",
    help="Reports from perf.csv files; merges of JUnit and perf.csv files.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

Inputs = Annotated[list[Path], typer.Argument(help="input files, in order", show_default=False)]


def _writable(output: Path, option: str) -> None:
    """The output checked before any input is read: exit 4 and one line if it cannot be
    written (the same check as the plugin's output options)."""
    try:
        writable_file(output, option)
    except UsageProblem as exc:
        raise fail(str(exc), ExitCode.INVALID_ARGS) from None


def _appendable(perf_csv: Path, option: str) -> None:
    """As _writable, for a perf.csv that rows are appended to (see appendable_perf_csv)."""
    try:
        appendable_perf_csv(perf_csv, option)
    except UsageProblem as exc:
        raise fail(str(exc), ExitCode.INVALID_ARGS) from None


def _html(output: Path, inputs: list[Path], baseline: Path | None, tolerance: str,
          title: str, lower_is_better: list[str] | None,
          output_option: str = "--output") -> None:  # fmt: skip
    from pytest_madengine.core.results import ResultError, load_baseline, parse_tolerance
    from pytest_madengine.reporting.html import write_report

    try:
        fraction = parse_tolerance(tolerance)
    except ValueError as exc:
        raise fail(f"--tolerance: {exc}", ExitCode.INVALID_ARGS) from None
    _writable(output, output_option)
    try:
        values = load_baseline(baseline, "--baseline").by_model() if baseline else {}
        write_report(output, inputs, values, fraction, title=title,
                     lower_is_better=tuple(lower_is_better or ()))  # fmt: skip
    except (MadError, ResultError) as exc:
        raise fail(str(exc), ExitCode.FAILURE) from None
    console.print(f"HTML report: {output}")


@report_app.command("html")
def html(
    inputs: Inputs,
    output: Annotated[Path, typer.Option("--output", "-o", help="the HTML file")] = Path(
        "report.html"
    ),
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="perf.csv of the runs to compare with")
    ] = None,
    tolerance: Annotated[
        str, typer.Option("--tolerance", help="allowed regression against the baseline")
    ] = "5%",
    title: Annotated[str, typer.Option("--title")] = "MAD benchmark report",
    lower_is_better: Annotated[
        list[str] | None,
        typer.Option("--lower-is-better", help="a metric where lower is better (repeatable)"),
    ] = None,
) -> None:
    """One HTML page from perf.csv files (each file, in order, a later run): pass/fail
    counts, a table per model and host, charts across runs, regressions highlighted."""
    _html(output, inputs, baseline, tolerance, title, lower_is_better)


@report_app.command("to-html")
def to_html(
    csv_file_path: Annotated[Path, typer.Option("--csv-file-path", "--csv-file")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """madengine's: the report of one CSV, written beside it as <name>.html."""
    _html(csv_file_path.with_suffix(".html"), [csv_file_path], None, "5%",
          f"MAD benchmark report: {csv_file_path.name}", None,
          output_option="the report of --csv-file-path")  # fmt: skip


@report_app.command("to-email")
def to_email(
    directory: Annotated[Path, typer.Option("--directory", "--dir")] = Path("."),
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("run_results.html"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """madengine's: one report of every CSV in a directory (by name), for a mail."""
    _writable(output, "--output")
    inputs = sorted(directory.glob("*.csv"))
    if not inputs:
        raise fail(f"--directory {directory}: no CSV file", ExitCode.FAILURE)
    _html(output, inputs, None, "5%", "MAD benchmark report", None)


@report_app.command("junit-merge")
def junit_merge(
    inputs: Inputs,
    output: Annotated[Path, typer.Option("--output", "-o", help="the merged file")],
) -> None:
    """One JUnit XML file from many (each node's): all their test suites, recounted."""
    from pytest_madengine.reporting.merge import merge_junit

    _writable(output, "--output")
    try:
        totals = merge_junit(inputs, output)
    except MadError as exc:
        raise fail(str(exc), ExitCode.FAILURE) from None
    console.print(f"{output}: {totals.suites} suite(s), {totals.tests} test(s),"
                  f" {totals.failures} failure(s), {totals.errors} error(s),"
                  f" {totals.skipped} skipped")  # fmt: skip


@report_app.command("csv-merge")
def csv_merge(
    inputs: Inputs,
    output: Annotated[Path, typer.Option("--output", "-o", help="the merged perf.csv")],
) -> None:
    """One perf.csv from many: rows in file order, every column of every file."""
    from pytest_madengine.reporting.merge import merge_csv

    _writable(output, "--output")
    try:
        rows = merge_csv(inputs, output)
    except MadError as exc:
        raise fail(str(exc), ExitCode.FAILURE) from None
    console.print(f"{output}: {rows} row(s)")


# `report update-perf`: madengine's way of adding results to perf.csv from files.
ResultFile = Annotated[Path | None, typer.Option(show_default=False)]
ENTRY_OPTIONS = ("--single_result", "--exception-result", "--failed-result")
NOT_COLUMNS = ("configs",)  # a perf entry's parsed config files: no cell of perf.csv


def _cell(value: Any) -> str:
    """A JSON value as a perf.csv cell: a list as `a,b` (madengine's tags), an object
    as JSON, null as empty."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(_cell(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _json_object(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise MadError(f"{where}: expected a JSON object of perf.csv columns")
    return {str(key): _cell(item) for key, item in value.items() if key not in NOT_COLUMNS}


def entry_rows(path: Path, option: str) -> list[dict[str, str]]:
    """A perf entry JSON (what madengine writes as perf_entry.json): one object, or a
    list of them (its multiple results), each a row."""
    from pytest_madengine.errors import read_json

    data = read_json(path, option)
    entries = data if isinstance(data, list) else [data]
    return [_json_object(entry, f"{option} {path}") for entry in entries]


def multiple_result_rows(
    path: Path, model_name: str, common: Mapping[str, str]
) -> list[dict[str, str]]:
    """A multiple_results CSV's rows as madengine adds them: the common columns, the
    row's own over them, `model` as `<model-name>_<row's model>`, and the status
    SUCCESS where the row has a performance, else FAILURE."""
    from pytest_madengine.core.results import multiple_results_rows
    from pytest_madengine.errors import read_text

    rows = multiple_results_rows(read_text(path, "--multiple-results"),
                                 f"--multiple-results {path}")  # fmt: skip
    return [
        {
            **common,
            **{key: cell for key, cell in row.items() if key},
            "model": f"{model_name}_{row['model']}",
            "status": "SUCCESS" if row["performance"] else "FAILURE",
        }
        for row in rows
    ]


def _update_perf_rows(
    entries: dict[str, Path | None], multiple_results: Path | None,
    model_name: str | None, common_info: Path | None,
) -> list[dict[str, str]]:  # fmt: skip
    from pytest_madengine.errors import read_json

    given = [option for option, path in entries.items() if path is not None]
    if multiple_results is not None:
        given.append("--multiple-results")
    if len(given) > 1:
        raise UsageProblem(f"{' and '.join(given)}: give one result file at a time")
    if multiple_results is None:
        return [row for option, path in entries.items() if path for row in entry_rows(path, option)]
    if not model_name:
        raise UsageProblem("--multiple-results needs --model-name (the rows' name prefix)")
    common = _json_object(read_json(common_info, "--common-info"),
                          f"--common-info {common_info}") if common_info else {}  # fmt: skip
    return multiple_result_rows(multiple_results, model_name, common)


@report_app.command("update-perf")
def update_perf(
    single_result: Annotated[Path | None, typer.Option(
        "--single_result", "--single-result", help="a perf entry JSON: its row (a list: each)",
    )] = None,
    exception_result: Annotated[Path | None, typer.Option(
        "--exception-result", help="a failed run's perf entry JSON: its row",
    )] = None,
    failed_result: Annotated[Path | None, typer.Option(
        "--failed-result", help="the same, as madengine 1 spells it",
    )] = None,
    multiple_results: Annotated[Path | None, typer.Option(
        "--multiple-results", help="a multiple_results CSV (model, performance, metric, ...)",
    )] = None,
    perf_csv: Annotated[Path, typer.Option("--perf-csv", help="the perf.csv appended to")] = Path(
        "perf.csv"
    ),
    model_name: Annotated[str | None, typer.Option(
        "--model-name", help="--multiple-results: rows are named <model-name>_<model>",
    )] = None,
    common_info: Annotated[Path | None, typer.Option(
        "--common-info", help="--multiple-results: JSON of the columns every row shares",
    )] = None,
) -> None:  # fmt: skip
    """madengine's: append the result of a run, from its perf entry JSON or its
    multiple_results CSV, to perf.csv (columns it lacks are added)."""
    from pytest_madengine.reporting.perf_csv import PerfCsv

    entries = {"--single_result": single_result, "--exception-result": exception_result,
               "--failed-result": failed_result}  # fmt: skip
    try:
        rows = _update_perf_rows(entries, multiple_results, model_name, common_info)
    except UsageProblem as exc:
        raise fail(str(exc), ExitCode.INVALID_ARGS) from None
    except MadError as exc:
        raise fail(str(exc), ExitCode.FAILURE) from None
    _appendable(perf_csv, "--perf-csv")
    problem = PerfCsv(perf_csv, label="--perf-csv", grow=True).append(rows)
    if problem:
        raise fail(problem, ExitCode.FAILURE)
    console.print(f"{perf_csv}: {len(rows)} row(s) appended")


@report_app.command("import")
def import_csv(
    inputs: Inputs,
    history: Annotated[
        str | None,
        typer.Option(
            "--history",
            help="the results history: a SQLAlchemy URL or an SQLite file"
            " (default: mad_output/history.sqlite, as a session's)",
        ),
    ] = None,
) -> None:
    """Earlier perf.csv (or perf_super.csv) files into the results history: their rows
    cut into sessions where pipeline, build_number or git_commit changes or a result
    comes again; a file imported again adds only the sessions not there yet."""
    from pytest_madengine.core.history import History, HistoryError
    from pytest_madengine.core.history_url import resolve_history_url
    from pytest_madengine.core.options import DEFAULT_OUTPUT
    from pytest_madengine.reporting.history_import import import_perf_csv

    cwd = Path.cwd()
    url = resolve_history_url(history, cwd, cwd / DEFAULT_OUTPUT)
    if url is None:
        raise fail(f"--history {history}: nothing to import into", ExitCode.INVALID_ARGS)
    try:
        store = History(url)
    except HistoryError as exc:
        raise fail(f"--history {exc}", ExitCode.INVALID_ARGS) from None
    try:
        for path in inputs:
            count = import_perf_csv(store, path)
            console.print(f"{path}: {count.added} session(s) with {count.results} result(s)"
                          f" imported, {count.known} already there", markup=False,
                          soft_wrap=True)  # fmt: skip
    except (MadError, HistoryError) as exc:
        raise fail(str(exc), ExitCode.FAILURE) from None
    finally:
        store.close()
    console.print(f"history: {store.url}", markup=False, soft_wrap=True)
