"""Benchmark results: the performance line, multiple_results CSVs, expectations, verdicts.

When a log holds several `performance:` lines, the LAST one counts: benchmarks print
warm-up or per-epoch figures first and the final figure last. (madengine took the first.)
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pytest_madengine.errors import MadError

DEFAULT_TOLERANCE = 0.05
_MARKER = re.compile(r"performance:\s*(.*)$")
# <number>[/unit][,] <metric>; the unit is split off below so that `N/A` stays whole.
_VALUE = re.compile(r"^(?P<value>[^\s,]+),?(?:\s+(?P<metric>\S+))?")
_LINE_SHOWN = 200


class ResultError(MadError):
    """A benchmark result problem; its text is the one-line failure reason."""


@dataclass(frozen=True)
class Measurement:
    name: str
    performance: float
    metric: str
    extra: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


def format_number(value: float) -> str:
    """Compact: 900.0 -> 900, 812.4 -> 812.4, 0.000012 -> 1.2e-05."""
    return f"{value:g}"


def _percent(fraction: float) -> str:
    return f"{fraction * 100:+.1f}%"


def _tolerance_text(tolerance: float) -> str:
    return f"{tolerance * 100:g}%"


def parse_performance_line(line: str) -> tuple[str, str] | None:
    """(value text, metric text) of a `performance:` line, or None for other lines."""
    found = _MARKER.search(line)
    if found is None:
        return None
    rest = _VALUE.match(found.group(1).strip())
    if rest is None:
        return "", ""
    value = rest.group("value")
    number, slash, _unit = value.partition("/")
    if slash and _to_number(number) is not None:
        value = number
    return value, rest.group("metric") or ""


def _to_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def find_performance(lines: Iterable[str]) -> tuple[float, str]:
    """(value, metric) of the last performance line; streams, keeping only that line."""
    last: tuple[str, str, str] | None = None
    for line in lines:
        parsed = parse_performance_line(line)
        if parsed is not None:
            last = (parsed[0], parsed[1], line)
    if last is None:
        raise ResultError("no performance line in the log")
    value_text, metric, line = last
    shown = line.strip()[:_LINE_SHOWN]
    value = _to_number(value_text)
    if value is None:
        raise ResultError(f"non-numeric performance '{value_text}' (line: {shown})")
    if not metric:
        raise ResultError(f"performance line has no metric (line: {shown})")
    return value, metric


REQUIRED_CSV_COLUMNS = ("model", "performance", "metric")


def parse_multiple_results(text: str, model_name: str, csv_name: str) -> list[Measurement]:
    """One Measurement per row of a multiple_results CSV, named `<model>_<row model>`."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or not any(cell.strip() for cell in header):
        raise ResultError(f"{csv_name}: empty multiple_results CSV")
    header = [cell.strip() for cell in header]
    missing = sorted(set(REQUIRED_CSV_COLUMNS) - set(header))
    if missing:
        raise ResultError(
            f"{csv_name}: missing column(s) {', '.join(missing)} (have: {', '.join(header)})"
        )
    measurements = []
    for number, cells in enumerate(reader, start=2):
        if not cells:
            continue
        if len(cells) != len(header):
            raise ResultError(
                f"{csv_name}: row {number}: expected {len(header)} fields, got {len(cells)}"
            )
        row = dict(zip(header, (cell.strip() for cell in cells), strict=True))
        value = _to_number(row["performance"])
        if value is None:
            raise ResultError(
                f"{csv_name}: row {number}: non-numeric performance '{row['performance']}'"
            )
        extra = {k: v for k, v in row.items() if k not in REQUIRED_CSV_COLUMNS}
        measurements.append(
            Measurement(f"{model_name}_{row['model']}", value, row["metric"], extra)
        )
    if not measurements:
        raise ResultError(f"{csv_name}: no result rows")
    return measurements


@dataclass(frozen=True)
class Expectation:
    minimum: float | None = None
    maximum: float | None = None
    reference: float | None = None
    tolerance: float | None = None
    higher_is_better: bool = True


_EXPECT_KEYS = ("direction", "max", "min", "reference", "tolerance")


def parse_tolerance(text: str | float | int) -> float:
    """`5%` -> 0.05, `0.05` -> 0.05."""
    raw = str(text).strip()
    percent = raw.endswith("%")
    number = _to_number(raw.rstrip("%").strip())
    if number is None or number < 0 or isinstance(text, bool):
        raise ValueError(f"tolerance must be a fraction or a percentage like 5%, got {text!r}")
    return number / 100 if percent else number


def _number_field(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"field 'expect': '{key}' must be a number, got {value!r}")
    return float(value)


def parse_expectation(value: object) -> Expectation | None:
    """Our models.json extension `expect`: min, max, reference (+tolerance), direction."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(
            f"field 'expect' must be an object such as {{\"min\": 100}}, got {value!r}"
        )
    if not value:
        raise ValueError("field 'expect': empty")
    for key in value:
        if key not in _EXPECT_KEYS:
            raise ValueError(
                f"field 'expect': unknown key '{key}' (known: {', '.join(_EXPECT_KEYS)})"
            )
    direction = value.get("direction", "higher")
    if direction not in ("higher", "lower"):
        raise ValueError(
            f"field 'expect': 'direction' must be 'higher' or 'lower', got {direction!r}"
        )
    if "tolerance" in value and "reference" not in value:
        raise ValueError("field 'expect': 'tolerance' needs 'reference'")
    tolerance = None
    if "tolerance" in value:
        try:
            tolerance = parse_tolerance(value["tolerance"])
        except ValueError as exc:
            raise ValueError(f"field 'expect': {exc}") from None
    return Expectation(
        minimum=_number_field(value["min"], "min") if "min" in value else None,
        maximum=_number_field(value["max"], "max") if "max" in value else None,
        reference=_number_field(value["reference"], "reference") if "reference" in value else None,
        tolerance=tolerance,
        higher_is_better=direction == "higher",
    )


def load_baseline(path: Path) -> dict[str, float]:
    """model -> performance of its last SUCCESS row in an earlier perf.csv."""
    if not path.exists():
        raise ResultError(f"--mad-baseline {path}: no such file")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = sorted({"model", "performance", "status"} - set(reader.fieldnames or ()))
        if missing:
            raise ResultError(f"--mad-baseline {path}: missing column(s) {', '.join(missing)}")
        baseline: dict[str, float] = {}
        for row in reader:
            value = _to_number(row.get("performance") or "")
            if row.get("status") == "SUCCESS" and value is not None:
                baseline[row["model"]] = value
    return baseline


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str | None = None
    relative_change: float | None = None


def _relative(value: float, base: float) -> float | None:
    return None if base == 0 else (value - base) / base


def judge(
    value: float,
    metric: str,
    expectation: Expectation | None,
    baseline: float | None,
    tolerance: float,
) -> Verdict:
    """The first failed check wins; each reason names value, bound and difference."""
    shown = f"{format_number(value)} {metric}"
    change = _relative(value, baseline) if baseline is not None else None
    expect = expectation or Expectation()
    if expect.minimum is not None and value < expect.minimum:
        diff = _relative(value, expect.minimum)
        suffix = f" ({_percent(diff)})" if diff is not None else ""
        reason = f"performance {shown} below min {format_number(expect.minimum)}{suffix}"
        return Verdict(False, reason, change)
    if expect.maximum is not None and value > expect.maximum:
        diff = _relative(value, expect.maximum)
        suffix = f" ({_percent(diff)})" if diff is not None else ""
        reason = f"performance {shown} above max {format_number(expect.maximum)}{suffix}"
        return Verdict(False, reason, change)
    if expect.reference is not None:
        tol = DEFAULT_TOLERANCE if expect.tolerance is None else expect.tolerance
        diff = _relative(value, expect.reference)
        if diff is not None:
            worse = -diff if expect.higher_is_better else diff
            if worse > tol:
                side = "below" if expect.higher_is_better else "above"
                reason = (
                    f"performance {shown} is {abs(diff) * 100:.1f}% {side} reference"
                    f" {format_number(expect.reference)} (tolerance {_tolerance_text(tol)})"
                )
                return Verdict(False, reason, change)
    if change is not None:
        worse = -change if expect.higher_is_better else change
        if worse > tolerance:
            reason = (
                f"regression: {shown} vs baseline {format_number(baseline or 0)}"
                f" ({_percent(change)}, tolerance {_tolerance_text(tolerance)})"
            )
            return Verdict(False, reason, change)
    return Verdict(True, None, change)
