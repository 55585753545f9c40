"""An HTML report of perf.csv files: pass/fail counts, a table per model and host,
performance across runs as SVG charts, and regressions against a baseline.

The page is one self-contained file (styles and charts inline, no script, nothing
fetched), so it opens offline, from a CI artifact or a mail. Needs the `report` extra
(pandas, Jinja2); the plugin imports this module only when --mad-html asks for it.

A run is one result of a model on a host: rows are read in file order, the files in
the order given, so the n-th row of a model on a host is its run n. Files are streamed
in chunks, and what the page draws is bounded (ReportLimits): memory and page size do
not grow with the input's length.
"""

from __future__ import annotations

import datetime
import io
import itertools
import math
import os
from array import array
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jinja2
import numpy as np
import pandas as pd

from pytest_madengine.core.records import Status, TestRecord
from pytest_madengine.errors import (
    MAX_LINE_BYTES,
    MAX_TABLE_BYTES,
    MadError,
    first_line,
    open_input,
)
from pytest_madengine.reporting.charts import PALETTE, Point, line_chart, sparkline_svg

REQUIRED_COLUMNS = ("model", "performance", "metric", "status")
# The only columns kept from a perf.csv: a wide file costs no more memory than a narrow one.
READ_COLUMNS = frozenset((*REQUIRED_COLUMNS, "machine_name", "build_number"))
DEFAULT_TITLE = "MAD benchmark report"
UNKNOWN_HOST = "(unknown host)"
_CHUNK_ROWS = 50_000


@dataclass(frozen=True)
class ReportLimits:
    """What a report reads and draws at most, so that its memory and its page stay
    bounded whatever the input: past an input bound it is refused in one line; past a
    drawing bound the page shows less and says what it left out or aggregated."""

    max_rows: int = 10_000_000  # result rows of all files together
    max_series: int = 100_000  # model and host pairs
    max_file_bytes: int = MAX_TABLE_BYTES
    max_line_bytes: int = MAX_LINE_BYTES  # a CSV line; /dev/zero has none
    points_per_chart: int = 400  # longer series: consecutive runs drawn as one point
    hosts_per_chart: int = len(PALETTE)
    charts: int = 100
    table_rows: int = 1000


class Series:
    """One model on one host, accumulated row by row: a count, the latest result, and
    its numeric results in compact arrays (run number, value, label of file and build)."""

    __slots__ = ("host", "labels", "latest", "model", "runs", "values", "x")

    def __init__(self, model: str, host: str) -> None:
        self.model, self.host = model, host
        self.runs = 0
        self.latest: tuple[str, str, str] = ("", "", "")  # status, performance, metric
        self.x, self.values, self.labels = array("q"), array("d"), array("q")

    @property
    def latest_value(self) -> float | None:
        """The latest result's number, None when it was text (or empty)."""
        return self.values[-1] if self.x and self.x[-1] == self.runs else None


@dataclass(frozen=True)
class Results:
    """What a report needs of its perf.csv files, in the order their rows came."""

    series: Mapping[tuple[str, str], Series]
    point_labels: Sequence[str]  # by a Series' label index
    rows_total: int


def load_results(paths: Sequence[Path], limits: ReportLimits = ReportLimits()) -> Results:
    """The rows of every perf.csv, streamed in chunks into one Series per model and
    host (the n-th row of a model on a host is its run n)."""
    if not paths:
        raise MadError("no perf.csv given")
    series: dict[tuple[str, str], Series] = {}
    labels: dict[str, int] = {}
    rows = 0
    for path in paths:
        for chunk in _chunks(path, limits):
            rows += len(chunk)
            if rows > limits.max_rows:
                raise MadError(f"{path}: more than {limits.max_rows} result rows in all"
                               " (a report reads at most that many)")  # fmt: skip
            _accumulate(chunk, path.name, series, labels)
            if len(series) > limits.max_series:
                raise MadError(f"{path}: more than {limits.max_series} model and host pairs"
                               " (a report shows at most that many)")  # fmt: skip
    return Results(series, tuple(labels), rows)


def _chunks(path: Path, limits: ReportLimits) -> Iterator[pd.DataFrame]:
    """The file's rows, a chunk at a time, read through the bounded input reader (no
    wait on a FIFO nobody writes; /dev/zero refused at its first too-long line)."""
    if not os.path.lexists(path):
        raise MadError(f"{path}: no such file")
    raw = open_input(path, max_bytes=limits.max_file_bytes, max_line_bytes=limits.max_line_bytes)
    text = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8-sig", newline="")
    with text:
        try:
            reader = pd.read_csv(text, dtype=str, keep_default_na=False, chunksize=_CHUNK_ROWS,
                                 usecols=lambda column: column.strip() in READ_COLUMNS)  # fmt: skip
            with reader:
                for chunk in reader:
                    chunk.columns = [str(column).strip() for column in chunk.columns]
                    missing = [name for name in REQUIRED_COLUMNS if name not in chunk.columns]
                    if missing:
                        raise MadError(f"{path}: missing column(s) {', '.join(missing)}"
                                       " (not a perf.csv?)")  # fmt: skip
                    yield chunk
        except pd.errors.EmptyDataError:
            raise MadError(f"{path}: empty, where a perf.csv was expected") from None
        except (ValueError, pd.errors.ParserError) as exc:
            raise MadError(f"{path}: not a readable CSV ({first_line(exc)})") from None


def _accumulate(
    chunk: pd.DataFrame, source: str, series: dict[tuple[str, str], Series],
    labels: dict[str, int],
) -> None:  # fmt: skip
    if "machine_name" not in chunk.columns:
        chunk["machine_name"] = ""
    chunk["machine_name"] = chunk["machine_name"].replace("", UNKNOWN_HOST)
    values = pd.to_numeric(chunk["performance"], errors="coerce").to_numpy(dtype="float64")
    builds = chunk["build_number"].to_numpy() if "build_number" in chunk.columns else None
    groups = chunk.groupby(["model", "machine_name"], sort=False).indices
    for key, positions in groups.items():
        model, host = cast("tuple[str, str]", key)  # grouped by these two columns
        one = series.get((model, host))
        if one is None:
            one = series[model, host] = Series(str(model), str(host))
        numeric = ~np.isnan(values[positions])  # positions are in row order
        one.x.extend((one.runs + 1 + np.flatnonzero(numeric)).tolist())
        one.values.extend(values[positions[numeric]].tolist())
        kinds = builds[positions[numeric]] if builds is not None else np.full(numeric.sum(), "")
        codes, distinct = pd.factorize(kinds)
        ids = [labels.setdefault(f"build {build}, {source}" if build else source, len(labels))
               for build in distinct]  # fmt: skip
        one.labels.extend(np.asarray(ids, dtype="int64")[codes].tolist())
        one.runs += len(positions)
        last = int(positions[-1])
        one.latest = (str(chunk["status"].iat[last]), str(chunk["performance"].iat[last]),
                      str(chunk["metric"].iat[last]))  # fmt: skip


@dataclass(frozen=True)
class ModelRow:
    """The latest result of a model on a host, against its previous run and the baseline."""

    model: str
    host: str
    runs: int
    status: str
    performance: str  # as written (may be text, e.g. a CPU list)
    metric: str
    previous: float | None
    change_vs_previous: float | None
    baseline: float | None
    change_vs_baseline: float | None
    regression: bool

    @property
    def css_class(self) -> str:
        if self.regression:
            return "regression"
        return {"FAILURE": "failure", "SKIPPED": "skipped"}.get(self.status, "")


@dataclass(frozen=True)
class Chart:
    model: str
    svg: str


@dataclass(frozen=True)
class VerdictRow:
    """A result of this session judged against its history (--mad-compare)."""

    model: str
    outcome: str
    line: str
    svg: str  # the history's medians and the current one, as a sparkline

    @property
    def css_class(self) -> str:
        return {"regression": "regression", "improvement": "improvement"}.get(self.outcome, "")


def verdict_rows(records: Iterable[TestRecord]) -> tuple[VerdictRow, ...]:
    """A row per judged result of the session's records, in their order."""
    rows = []
    for record in records:
        for row in record.rows:
            judged = row.comparison
            if judged is None or judged.current is None:
                continue  # not compared: no series to draw
            svg = sparkline_svg(judged.history, judged.current, judged.outcome)
            rows.append(VerdictRow(row.name, judged.outcome, judged.line, svg))
    return tuple(rows)


@dataclass(frozen=True)
class ReportData:
    title: str
    generated: str
    sources: tuple[str, ...]
    counts: Mapping[str, int]  # latest result per model and host, by status
    rows_total: int
    rows: tuple[ModelRow, ...]  # those the table shows
    charts: tuple[Chart, ...]
    tolerance: float
    has_baseline: bool
    regressions: tuple[ModelRow, ...] = field(default=())  # all of them
    listed_regressions: tuple[ModelRow, ...] = field(default=())  # those the list shows
    notes: tuple[str, ...] = field(default=())  # what the page left out or aggregated
    verdicts: tuple[VerdictRow, ...] = field(default=())  # this session's, against history
    # The session's hosts (heartbeat): status, round trip, transitions as lines.
    hosts: tuple[HostRow, ...] = field(default=())


@dataclass(frozen=True)
class HostRow:
    host: str
    status: str
    rtt: str
    transitions: tuple[str, ...]


def _host_rows(hosts: Sequence[Mapping[str, Any]]) -> tuple[HostRow, ...]:
    """The summary's host rows (see resources/health.py), with each transition a line."""
    rows = []
    for host in hosts:
        changes = []
        for change in host.get("transitions", ()):
            at = datetime.datetime.fromtimestamp(change["at"]).strftime("%H:%M:%S")
            why = f" ({change['reason']})" if change.get("reason") else ""
            changes.append(f"{change['status']} at {at}{why}")
        rtt = host.get("rtt_ms")
        shown = f"{rtt:.1f} ms" if rtt is not None else "-"
        rows.append(HostRow(str(host["host"]), str(host["status"]), shown, tuple(changes)))
    return tuple(rows)


def _change(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0 or math.isnan(value):
        return None
    return (value - base) / abs(base)


def _model_row(
    one: Series, baseline: Mapping[str, float], tolerance: float, lower_is_better: Collection[str]
) -> ModelRow:
    status, performance, metric = one.latest
    value = one.latest_value
    previous = one.values[-2] if value is not None and len(one.values) > 1 else None
    base = baseline.get(one.model)
    change = _change(value, base)
    lower = metric in lower_is_better
    regression = change is not None and (change > tolerance if lower else change < -tolerance)
    return ModelRow(
        model=one.model, host=one.host, runs=one.runs, status=status, performance=performance,
        metric=metric, previous=previous, change_vs_previous=_change(value, previous),
        baseline=base, change_vs_baseline=change, regression=regression,
    )  # fmt: skip


def _first_of(rows: Sequence[ModelRow], limit: int) -> tuple[ModelRow, ...]:
    """At most `limit` rows, in their order: regressions first chosen, then failures."""
    if len(rows) <= limit:
        return tuple(rows)
    rank = sorted(
        range(len(rows)), key=lambda i: (not rows[i].regression, rows[i].status != "FAILURE", i)
    )
    return tuple(rows[i] for i in sorted(rank[:limit]))


def report_data(
    results: Results,
    baseline: Mapping[str, float],
    tolerance: float,
    *,
    lower_is_better: Collection[str] = (),
    title: str = DEFAULT_TITLE,
    sources: Sequence[str] = (),
    limits: ReportLimits = ReportLimits(),
    verdicts: Sequence[VerdictRow] = (),
    hosts: Sequence[Mapping[str, Any]] = (),
) -> ReportData:
    """What the page shows, within `limits`, with notes on what it left out."""
    rows = [_model_row(one, baseline, tolerance, lower_is_better)
            for one in results.series.values()]  # fmt: skip
    counts = {status.value: 0 for status in Status}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    regressions = tuple(row for row in rows if row.regression)
    charts, notes = _charts(results, baseline, limits)
    shown = _first_of(rows, limits.table_rows)
    if len(shown) < len(rows):
        notes.append(f"The table shows {len(shown)} of {len(rows)} model and host pairs"
                     " (regressions and failures first).")  # fmt: skip
    if len(regressions) > limits.table_rows:
        notes.append(f"The list shows {limits.table_rows} of {len(regressions)} regressions.")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ReportData(
        title=title, generated=now, sources=tuple(sources), counts=counts,
        rows_total=results.rows_total, rows=shown, charts=tuple(charts), tolerance=tolerance,
        has_baseline=bool(baseline), regressions=regressions,
        listed_regressions=regressions[: limits.table_rows], notes=tuple(notes),
        verdicts=tuple(verdicts[: limits.table_rows]),
        hosts=_host_rows(hosts),
    )  # fmt: skip


def _charts(
    results: Results, baseline: Mapping[str, float], limits: ReportLimits
) -> tuple[list[Chart], list[str]]:
    """A chart per model with numeric results (a series per host), within `limits`."""
    by_model: dict[str, list[Series]] = {}
    for one in results.series.values():
        if one.values:
            by_model.setdefault(one.model, []).append(one)
    charts, aggregated, hosts_left = [], 0, 0
    for model, hosts in itertools.islice(by_model.items(), limits.charts):
        drawn = hosts[: limits.hosts_per_chart]
        hosts_left += len(hosts) - len(drawn)
        budget = max(2, limits.points_per_chart // len(drawn))
        series, runs_per_point = {}, 1
        for one in drawn:
            series[one.host], per_point = _points(one, results.point_labels, budget)
            runs_per_point = max(runs_per_point, per_point)
        aggregated += sum(1 for one in drawn if len(one.values) > budget)
        note = f"up to {runs_per_point} runs a point: median, bar min to max"
        # The metric as the latest result that names one says it (a failure names none).
        metric = next((one.latest[2] for one in reversed(drawn) if one.latest[2]), "")
        svg = line_chart(series, title=model, y_label=metric,
                         reference=baseline.get(model),
                         note=note if runs_per_point > 1 else "")  # fmt: skip
        charts.append(Chart(model, svg))
    notes = []
    if aggregated:
        notes.append(
            f"Charts draw at most {limits.points_per_chart} points each: in {aggregated}"
            " series with more runs, each point is the median of consecutive runs, with a"
            " bar from their minimum to their maximum."
        )
    if len(by_model) > limits.charts:
        notes.append(f"Charts of {len(by_model) - limits.charts} more model(s) are not drawn"
                     f" (at most {limits.charts}).")  # fmt: skip
    if hosts_left:
        notes.append(f"{hosts_left} more host series are not drawn"
                     f" (at most {limits.hosts_per_chart} hosts a chart).")  # fmt: skip
    return charts, notes


def _points(one: Series, labels: Sequence[str], budget: int) -> tuple[list[Point], int]:
    """The series' points, at most `budget`: consecutive runs bucketed when more (by run
    order), each bucket its median with its min and max. Also the most runs in a point."""
    count = len(one.values)
    if count <= budget:
        return [Point(x, y, labels[label])
                for x, y, label in zip(one.x, one.values, one.labels, strict=True)], 1  # fmt: skip
    runs = np.frombuffer(one.x, dtype=np.int64)
    values = np.frombuffer(one.values, dtype=np.float64)
    edges = np.linspace(0, count, budget + 1).astype(np.int64)
    points = []
    for start, stop in itertools.pairwise(edges.tolist()):
        part = values[start:stop]
        low, high = float(part.min()), float(part.max())
        label = f"median of runs {runs[start]}-{runs[stop - 1]}, min {low:g}, max {high:g}"
        points.append(Point(int(runs[stop - 1]), float(np.median(part)), label, low, high))
    return points, int(np.max(np.diff(edges)))


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value * 100:+.1f}%"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pytest_madengine.reporting", "templates"),
        autoescape=jinja2.select_autoescape(("html", "j2")),
        undefined=jinja2.StrictUndefined,  # a typo in the template fails the tests
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["percent"] = _percent
    environment.filters["number"] = _number
    return environment


def render_report(
    paths: Sequence[Path],
    baseline: Mapping[str, float] | None = None,
    tolerance: float = 0.05,
    *,
    lower_is_better: Collection[str] = (),
    title: str = DEFAULT_TITLE,
    source_labels: Sequence[str] | None = None,
    limits: ReportLimits = ReportLimits(),
    verdicts: Sequence[VerdictRow] = (),
    hosts: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The report's HTML; `verdicts`: a session's results judged against history;
    `hosts`: the session's host rows (status and transitions)."""
    results = load_results(paths, limits)
    labels = source_labels or [str(path) for path in paths]
    data = report_data(results, baseline or {}, tolerance, lower_is_better=lower_is_better,
                       title=title, sources=labels, limits=limits, verdicts=verdicts,
                       hosts=hosts)  # fmt: skip
    return _environment().get_template("report.html.j2").render(report=data)


def write_report(
    output: Path,
    paths: Sequence[Path],
    baseline: Mapping[str, float] | None = None,
    tolerance: float = 0.05,
    **options: Any,
) -> Path:
    # Inputs named as seen from the report, so the page reads the same wherever it is.
    labels = [_relative(path, output.parent) for path in paths]
    html = render_report(paths, baseline, tolerance, source_labels=labels, **options)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(html, encoding="utf-8")
    except OSError as exc:  # checked up front; this is what changed since
        raise MadError(f"{output}: cannot write ({exc.strerror or exc})") from None
    return output


def _relative(path: Path, start: Path) -> str:
    relative = os.path.relpath(path.resolve(), start.resolve())
    return str(path) if relative.startswith("..") else relative
