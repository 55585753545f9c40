"""An HTML report of perf.csv files: pass/fail counts, a table per model and host,
performance across runs as SVG charts, and regressions against a baseline.

The page is one self-contained file (styles and charts inline, no script, nothing
fetched), so it opens offline, from a CI artifact or a mail. Needs the `report` extra
(pandas, Jinja2); the plugin imports this module only when --mad-html asks for it.

A run is one result of a model on a host: rows are read in file order, the files in
the order given, so the n-th row of a model on a host is its run n.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from pytest_madengine.core.records import Status
from pytest_madengine.errors import MadError
from pytest_madengine.reporting.charts import Point, line_chart

REQUIRED_COLUMNS = ("model", "performance", "metric", "status")
DEFAULT_TITLE = "MAD benchmark report"


def load_results(paths: Sequence[Path]) -> pd.DataFrame:
    """The rows of every perf.csv, all as text, with their file and run number."""
    frames = []
    for index, path in enumerate(paths):
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except FileNotFoundError:
            raise MadError(f"{path}: no such file") from None
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise MadError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
        frame.columns = [str(column).strip() for column in frame.columns]
        missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
        if missing:
            raise MadError(f"{path}: missing column(s) {', '.join(missing)} (not a perf.csv?)")
        frame["source"] = path.name
        frame["file_index"] = index
        frames.append(frame)
    if not frames:
        raise MadError("no perf.csv given")
    results = pd.concat(frames, ignore_index=True, sort=False).fillna("")
    if "machine_name" not in results.columns:
        results["machine_name"] = ""
    results["host"] = results["machine_name"].replace("", "(unknown host)")
    results["value"] = pd.to_numeric(results["performance"], errors="coerce")
    results["run"] = results.groupby(["model", "host"], sort=False).cumcount() + 1
    return results


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
class ReportData:
    title: str
    generated: str
    sources: tuple[str, ...]
    counts: Mapping[str, int]  # latest result per model and host, by status
    rows_total: int
    rows: tuple[ModelRow, ...]
    charts: tuple[Chart, ...]
    tolerance: float
    has_baseline: bool
    regressions: tuple[ModelRow, ...] = field(default=())


def _change(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0 or math.isnan(value):
        return None
    return (value - base) / abs(base)


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def report_data(
    results: pd.DataFrame,
    baseline: Mapping[str, float],
    tolerance: float,
    *,
    lower_is_better: Collection[str] = (),
    title: str = DEFAULT_TITLE,
    sources: Sequence[str] = (),
) -> ReportData:
    """What the page shows, computed from the rows (pandas does the grouping)."""
    rows = []
    for (model, host), group in results.groupby(["model", "host"], sort=False):
        latest = group.iloc[-1]
        numbers = group["value"].dropna()
        value = _float(latest["value"])
        previous = _float(numbers.iloc[-2]) if value is not None and len(numbers) > 1 else None
        base = baseline.get(str(model))
        change = _change(value, base)
        lower = str(latest["metric"]) in lower_is_better
        regression = change is not None and (change > tolerance if lower else change < -tolerance)
        rows.append(
            ModelRow(
                model=str(model), host=str(host), runs=len(group), status=str(latest["status"]),
                performance=str(latest["performance"]), metric=str(latest["metric"]),
                previous=previous, change_vs_previous=_change(value, previous), baseline=base,
                change_vs_baseline=change, regression=regression,
            )
        )  # fmt: skip
    counts = {status.value: 0 for status in Status}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    charts = []
    for model, group in results.groupby("model", sort=False):
        numeric = group.dropna(subset=["value"])
        if numeric.empty:
            continue
        series = {
            str(host): [
                Point(int(run), float(value), _point_label(source, build))
                for run, value, source, build in zip(
                    part["run"], part["value"], part["source"],
                    part.get("build_number", pd.Series([""] * len(part), index=part.index)),
                    strict=True,
                )
            ]
            for host, part in numeric.groupby("host", sort=False)
        }  # fmt: skip
        metric = str(numeric.iloc[-1]["metric"])
        svg = line_chart(series, title=str(model), y_label=metric,
                         reference=baseline.get(str(model)))  # fmt: skip
        charts.append(Chart(str(model), svg))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ReportData(
        title=title, generated=now, sources=tuple(sources), counts=counts,
        rows_total=len(results), rows=tuple(rows), charts=tuple(charts), tolerance=tolerance,
        has_baseline=bool(baseline), regressions=tuple(row for row in rows if row.regression),
    )  # fmt: skip


def _point_label(source: str, build: str) -> str:
    return f"build {build}, {source}" if build else source


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
) -> str:
    """The report's HTML."""
    results = load_results(paths)
    labels = source_labels or [str(path) for path in paths]
    data = report_data(results, baseline or {}, tolerance, lower_is_better=lower_is_better,
                       title=title, sources=labels)  # fmt: skip
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
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html, encoding="utf-8")
    return output


def _relative(path: Path, start: Path) -> str:
    relative = os.path.relpath(path.resolve(), start.resolve())
    return str(path) if relative.startswith("..") else relative
