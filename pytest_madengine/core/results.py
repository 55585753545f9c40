"""Benchmark results: the performance line, multiple_results CSVs, expectations and verdicts.

A model's log reports its result as `performance: <number> <metric>`, for example
`performance: 1234.5 samples_per_second`, possibly after a log prefix. The number may carry
a `/unit` or a comma before the metric (`performance: 12.5/s tokens_per_second`,
`performance: 99.1, images_per_second`).

When a log holds several `performance:` lines, THE LAST ONE COUNTS: benchmarks print
warm-up or per-epoch figures first and the final figure last. (madengine took the first.)
The log is streamed line by line and only the latest candidate is kept.

Pure logic: no pytest here, so the plugin and other front ends share one set of rules.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pytest_madengine.errors import (
    MAX_LINE_BYTES,
    MAX_TABLE_BYTES,
    MadError,
    UnreadableInput,
    open_input,
)

MARKER = "performance:"
DEFAULT_TOLERANCE = 0.05  # for `expect.reference` when the entry gives no tolerance
CSV_COLUMNS = ("model", "performance", "metric")
BASELINE_COLUMNS = ("model", "performance", "status")
EXPECT_KEYS = ("direction", "max", "min", "reference", "tolerance")
_SHOWN = 200  # longest log line or value quoted in a failure reason

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
# A number, an optional `/unit`, then a separator. `,(?!\d)` keeps `1,234.5` whole, so a
# thousands separator ends as a non-numeric value rather than as value 1, metric 234.5.
_NUMERIC_VALUE = re.compile(
    rf"(?P<value>{_NUMBER})(?:/[^\s,]*)?(?:,(?!\d)\s*|\s+|$)(?P<metric>[^\s,;]*)"
)
# Anything else (`N/A`, `fast`, `nan`): the first word, without a trailing comma.
_OTHER_VALUE = re.compile(r"(?P<value>\S*?),?(?:\s+(?P<metric>[^\s,;]*)|$)")
_NUMBER_ONLY = re.compile(_NUMBER)


class ResultError(MadError):
    """A benchmark result problem; its text is the test's one-line failure reason."""

    def __init__(self, message: str) -> None:
        # Quoted log lines and CSV cells may hold line breaks; the reason must stay one line.
        super().__init__(" ".join(message.splitlines()))


@dataclass(frozen=True)
class Measurement:
    name: str  # the test's name, with `_<row model>` for a multiple_results row
    performance: float | None  # None: a text value (kept as written) or an empty cell
    metric: str
    extra: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    text: str | None = None  # the value as written, when it is not a number
    row_model: str = ""  # the row's `model` (multiple_results)
    samples: tuple[float, ...] = ()  # each repetition's value; `performance` is their median


@dataclass(frozen=True)
class Expectation:
    minimum: float | None = None
    maximum: float | None = None
    reference: float | None = None
    tolerance: float | None = None  # for `reference` only; baselines use --mad-tolerance
    higher_is_better: bool = True


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str | None = None
    relative_change: float | None = None  # (value - baseline) / baseline, as a fraction


def format_number(value: float) -> str:
    """Compact, up to 6 significant digits: 900.0 -> 900, 0.000012 -> 1.2e-05."""
    return f"{value:g}"


def _signed_percent(fraction: float) -> str:
    return f"{fraction * 100:+.1f}%"


def _tolerance_text(tolerance: float) -> str:
    return f"{tolerance * 100:g}%"


def _number(text: str) -> float | None:
    """The finite float a text spells in plain decimal or e-notation, else None."""
    text = text.strip()
    if not _NUMBER_ONLY.fullmatch(text):
        return None  # also refuses `nan`, `inf`, `1_000` that float() would take
    value = float(text)
    return value if math.isfinite(value) else None  # `1e999` overflows to inf


def _cut(text: str) -> str:
    return text.strip()[:_SHOWN]


# Reading logs in bounded memory

MAX_LINE_CHARS = 64 * 1024


def bounded_lines(handle: TextIO, limit: int = MAX_LINE_CHARS) -> Iterator[str]:
    """The lines of a text stream, each cut to its last `limit` characters: a model that
    prints one line of hundreds of megabytes (progress bars joined by `\r`) costs no
    more memory than any other. The end is kept since the newest output is there."""
    while True:
        line = handle.readline(limit)
        if not line:
            return
        while not line.endswith("\n"):
            more = handle.readline(limit)
            if not more:
                break
            line = (line + more)[-limit:]
        yield line


# The performance line


def parse_performance_line(line: str) -> tuple[str, str] | None:
    """(value text, metric text) of a `performance:` line; None for any other line.

    The metric text is "" when the line names none; the value text is returned as written
    (without a `/unit`) and may be non-numeric, such as `N/A`.
    """
    # The last marker on the line: progress output joined by `\r` ends with the newest one.
    at = line.rfind(MARKER)
    if at < 0:
        return None
    rest = line[at + len(MARKER) :].strip()
    found = _NUMERIC_VALUE.match(rest) or _OTHER_VALUE.match(rest)
    if found is None:  # unreachable: the second pattern matches any text
        return rest, ""
    return found.group("value"), found.group("metric") or ""


def find_performance(lines: Iterable[str]) -> tuple[float, str]:
    """(value, metric) of the last performance line of a log, read as a stream."""
    last: tuple[str, str, str] | None = None  # value text, metric text, line as shown
    for line in lines:
        parsed = parse_performance_line(line)
        if parsed is not None:
            last = (parsed[0], parsed[1], _cut(line))
    if last is None:
        raise ResultError("no performance line in the log")
    value_text, metric, shown = last
    if not value_text:
        raise ResultError(f"performance line has no value (line: {shown})")
    value = _number(value_text)
    if value is None:
        raise ResultError(f"non-numeric performance '{value_text[:_SHOWN]}' (line: {shown})")
    if not metric:
        raise ResultError(f"performance line has no metric (line: {shown})")
    return value, metric


def find_repeated_performance(
    lines: Iterable[str], repeat: int, repetition_marker: str, warmup_marker: str
) -> tuple[list[float], str]:
    """(each timed repetition's value, metric) of a repeated run's log: a repetition's
    value is its last performance line after its marker line; warm-ups are dropped."""
    segments: list[list[str]] = []  # per repetition, its last performance line
    kept: list[str] | None = None
    for line in lines:
        text = line.strip()
        if text.startswith(repetition_marker):
            kept = []
            segments.append(kept)
        elif text.startswith(warmup_marker):
            kept = None
        elif kept is not None and MARKER in line:
            kept[:] = [line]
    if len(segments) != repeat:
        raise ResultError(f"{len(segments)} of {repeat} repetitions ran")
    samples, metrics = [], []
    for number, segment in enumerate(segments, start=1):
        try:
            value, metric = find_performance(segment)
        except ResultError as exc:
            raise ResultError(f"repetition {number} of {repeat}: {exc}") from None
        samples.append(value)
        metrics.append(metric)
    if len(set(metrics)) > 1:
        raise ResultError(
            f"repetitions report different metrics: {', '.join(dict.fromkeys(metrics))}"
        )
    return samples, metrics[0]


# multiple_results CSV


def _records(reader: Iterator[list[str]]) -> Iterator[tuple[int, list[str]]]:
    """Non-blank records with their row number, the first record being row 1."""
    for number, cells in enumerate(reader, start=1):
        if any(cell.strip() for cell in cells):
            yield number, cells


def multiple_results_rows(text: str, csv_name: str) -> list[dict[str, str]]:
    """The rows of a multiple_results CSV as written (cells stripped, blank lines
    skipped), each {column: cell}; ResultError naming the file for a missing
    model/performance/metric column or a row of another length."""
    # utf-8-sig files read as text keep their BOM, which would spoil the first column name.
    records = _records(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    first = next(records, None)
    if first is None:
        raise ResultError(f"{csv_name}: empty multiple_results CSV")
    header = [cell.strip() for cell in first[1]]
    missing = sorted(set(CSV_COLUMNS) - set(header))
    if missing:
        raise ResultError(
            f"{csv_name}: missing column(s) {', '.join(missing)} (have: {', '.join(header)})"
        )
    rows = []
    for number, cells in records:
        if len(cells) != len(header):
            raise ResultError(
                f"{csv_name}: row {number}: expected {len(header)} fields, got {len(cells)}"
            )
        rows.append(dict(zip(header, (cell.strip() for cell in cells), strict=True)))
    return rows


def parse_multiple_results(text: str, model_name: str, csv_name: str) -> list[Measurement]:
    """One Measurement per row of a multiple_results CSV, named `<model_name>_<row model>`.

    As madengine reads it: a value that is no number (a CPU list `0-1`) is kept as
    written; extra columns are kept with the row; an empty value makes that row a
    failure, and only a CSV whose every row is empty fails as a whole.
    """
    measurements = []
    for row in multiple_results_rows(text, csv_name):
        value = _number(row["performance"])
        # Unnamed columns (a trailing comma in the header) carry nothing worth keeping.
        extra = {key: cell for key, cell in row.items() if key and key not in CSV_COLUMNS}
        measurements.append(
            Measurement(
                f"{model_name}_{row['model']}", value, row["metric"], extra,
                text=None if value is not None else row["performance"], row_model=row["model"],
            )
        )  # fmt: skip
    if not measurements:
        raise ResultError(f"{csv_name}: no result rows")
    if all(m.performance is None and not m.text for m in measurements):
        raise ResultError(f"{csv_name}: performance is empty in every row")
    return measurements


# Expectations (our models.json extension `expect`)


def parse_tolerance(text: str | float | int) -> float:
    """A fraction or a percentage: `5%` -> 0.05, `0.05` -> 0.05, `10 %` -> 0.1."""
    problem = ValueError(f"tolerance must be a fraction or a percentage like 5%, got {text!r}")
    percent = False
    if isinstance(text, str):
        raw = text.strip()
        percent = raw.endswith("%")
        value = _number(raw.removesuffix("%"))
    elif isinstance(text, int | float) and not isinstance(text, bool):  # JSON true is no 100%
        value = float(text)
    else:
        raise problem  # models.json may put anything here
    if value is None or not math.isfinite(value) or value < 0:
        raise problem
    return value / 100 if percent else value


def _expect_number(entry: Mapping[str, object], key: str) -> float | None:
    if key not in entry:
        return None
    value = entry[key]
    # bool is an int subclass: `"min": true` is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"field 'expect': '{key}' must be a number, got {value!r}")
    return float(value)


def parse_expectation(value: object) -> Expectation | None:
    """The `expect` object of a models.json entry: min, max, reference, tolerance, direction."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(
            f"field 'expect' must be an object such as {{\"min\": 100}}, got {value!r}"
        )
    if not value:
        raise ValueError("field 'expect': empty")
    for key in value:
        if key not in EXPECT_KEYS:
            known = ", ".join(EXPECT_KEYS)
            raise ValueError(f"field 'expect': unknown key '{key}' (known: {known})")
    minimum = _expect_number(value, "min")
    maximum = _expect_number(value, "max")
    reference = _expect_number(value, "reference")
    direction = value.get("direction", "higher")
    if direction not in ("higher", "lower"):
        raise ValueError(
            f"field 'expect': 'direction' must be 'higher' or 'lower', got {direction!r}"
        )
    tolerance = None
    if "tolerance" in value:
        if reference is None:
            raise ValueError("field 'expect': 'tolerance' needs 'reference'")
        try:
            tolerance = parse_tolerance(value["tolerance"])
        except ValueError as exc:
            raise ValueError(f"field 'expect': 'tolerance': {exc}") from None
    if minimum is not None and maximum is not None and minimum > maximum:
        raise ValueError(
            f"field 'expect': 'min' {format_number(minimum)} is above"
            f" 'max' {format_number(maximum)}"
        )
    return Expectation(minimum, maximum, reference, tolerance, direction == "higher")


# Baselines


@dataclass(frozen=True)
class Baseline:
    """Performance of the last SUCCESS row with a number, by (model, args, docker_file).

    perf.csv names a model as madengine does, so its variants (tag parameters, several
    Dockerfiles) are told apart by args and docker_file. A row that leaves those blank
    (a baseline written by hand) stands for every variant of its model.
    """

    values: Mapping[tuple[str, str, str], float] = field(default_factory=dict)
    # The last SUCCESS value of a key that has no usable one (`nan`, `inf`, `0`: no
    # relative change can be taken from them), as written: said, not silently skipped.
    unusable: Mapping[tuple[str, str, str], str] = field(default_factory=dict)

    def lookup(self, model: str, args: str = "", docker_file: str = "") -> float | None:
        key = self._key(self.values, model, args, docker_file)
        return None if key is None else self.values[key]

    def unusable_value(self, model: str, args: str = "", docker_file: str = "") -> str | None:
        """The value of the baseline row a test would compare with, when there is one
        and it cannot be compared with (see `unusable`); None otherwise."""
        if self.lookup(model, args, docker_file) is not None:
            return None
        key = self._key(self.unusable, model, args, docker_file)
        return None if key is None else self.unusable[key]

    @staticmethod
    def _key(
        known: Mapping[tuple[str, str, str], Any], model: str, args: str, docker_file: str
    ) -> tuple[str, str, str] | None:
        for key in ((model, args, docker_file), (model, args, ""), (model, "", docker_file),
                    (model, "", "")):  # fmt: skip
            if key in known:
                return key
        return None

    def __len__(self) -> int:
        return len(self.values)

    def by_model(self) -> dict[str, float]:
        """model -> its last value, whatever the variant: for views that show models only
        (the HTML report)."""
        return {model: value for (model, _, _), value in self.values.items()}


def load_baseline(path: Path, option: str = "--mad-baseline") -> Baseline:
    """The baseline of an earlier perf.csv (ours or madengine's); `option` is the
    command-line option that named it, for the messages."""
    values: dict[tuple[str, str, str], float] = {}
    unusable: dict[tuple[str, str, str], str] = {}
    for row in success_rows(path, option):
        key = (row["model"], row.get("args", ""), row.get("docker_file", ""))
        value = _number(row["performance"])
        if value is not None and value != 0:
            values[key] = value
        else:
            unusable[key] = row["performance"][:_SHOWN]
    return Baseline(values, {key: text for key, text in unusable.items() if key not in values})


class _Prefix(io.RawIOBase):
    """The first `limit` bytes of a raw stream (all of it for None)."""

    def __init__(self, raw: io.RawIOBase, limit: int | None) -> None:
        super().__init__()
        self.raw, self.left = raw, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        if self.left is not None:
            view = view[: self.left]
        if not len(view):
            return 0
        count = self.raw.readinto(view) or 0
        if self.left is not None:
            self.left -= count
        return count

    def close(self) -> None:
        self.raw.close()
        super().close()


# Why rows are not appended to a file: appending would rewrite it under our header
# (see reporting/perf_csv.py), and a file that is no perf.csv would lose its content.
NOT_A_PERF_CSV = "not a perf.csv (its first line names no 'model' column)"


def names_perf_columns(header: Iterable[str]) -> bool:
    """Whether a header line is a perf.csv's (ours, madengine's): it names `model`."""
    return "model" in {name.lstrip("\ufeff").strip() for name in header}


def not_a_perf_csv(path: Path) -> str | None:
    """NOT_A_PERF_CSV for a regular file whose first line (read bounded) names no
    `model` column; None for a perf.csv, and for a file missing or empty (one to start)
    or no regular file (writing it says what is wrong)."""
    try:
        if not path.is_file():
            return None
        with path.open("rb") as handle:
            first = handle.readline(MAX_LINE_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    if not first.strip():
        return None
    return None if names_perf_columns(next(csv.reader([first]), [])) else NOT_A_PERF_CSV


def success_rows(path: Path, option: str, upto: int | None = None) -> Iterator[dict[str, str]]:
    """The SUCCESS rows with a performance of a perf.csv (ours or madengine's), cells
    stripped, streamed from its first `upto` bytes (all for None). ResultError naming
    `option` and the path for a file that is missing, unreadable or lacks a column."""
    if not path.exists():
        raise ResultError(f"{option} {path}: no such file")
    try:
        # Bounded: a perf.csv grows by a row per test and run, over months of CI.
        raw = open_input(path, option, max_bytes=MAX_TABLE_BYTES, max_line_bytes=MAX_LINE_BYTES)
        prefix = _Prefix(raw, upto)
        with io.TextIOWrapper(
            io.BufferedReader(prefix), encoding="utf-8-sig", errors="replace", newline=""
        ) as handle:
            reader = csv.DictReader(handle)
            columns = {name.strip() for name in reader.fieldnames or ()}
            missing = sorted(set(BASELINE_COLUMNS) - columns)
            if missing:
                raise ResultError(f"{option} {path}: missing column(s) {', '.join(missing)}")
            for cells in reader:
                # Short rows read as None cells; surplus cells land under the key None.
                row = {key.strip(): (cell or "").strip() for key, cell in cells.items() if key}
                if row["status"] == "SUCCESS" and row["performance"]:
                    yield row
    except csv.Error as exc:  # a cell past the csv module's size limit, a NUL...
        raise ResultError(f"{option} {path}: unreadable CSV: {exc}") from None
    except UnreadableInput as exc:  # a directory, a FIFO that stays silent, /dev/zero...
        raise ResultError(str(exc)) from None


# The verdict


def _change(value: float, base: float) -> float | None:
    """(value - base) / |base|; |base| keeps the sign meaning `went up` for negative bases."""
    return None if base == 0 else (value - base) / abs(base)


def _differs_by(value: float, bound: float) -> str:
    change = _change(value, bound)
    return "" if change is None else f" ({_signed_percent(change)})"


def judge(
    value: float,
    metric: str,
    expectation: Expectation | None,
    baseline: float | None,
    tolerance: float,
) -> Verdict:
    """Checks min, max, reference, then the baseline; the first miss is the reason.

    `tolerance` (--mad-tolerance) applies to the baseline; the reference check uses the
    expectation's own tolerance, else DEFAULT_TOLERANCE.
    """
    expect = expectation or Expectation()
    change = None if baseline is None else _change(value, baseline)
    shown = f"{format_number(value)} {metric}"

    def miss(reason: str) -> Verdict:
        return Verdict(False, reason, change)

    if expect.minimum is not None and value < expect.minimum:
        bound = format_number(expect.minimum)
        return miss(f"performance {shown} below min {bound}{_differs_by(value, expect.minimum)}")
    if expect.maximum is not None and value > expect.maximum:
        bound = format_number(expect.maximum)
        return miss(f"performance {shown} above max {bound}{_differs_by(value, expect.maximum)}")
    if expect.reference is not None:
        reference = expect.reference
        allowed = DEFAULT_TOLERANCE if expect.tolerance is None else expect.tolerance
        # How far the value falls short on the worse side; negative when it does better.
        shortfall = reference - value if expect.higher_is_better else value - reference
        if shortfall > abs(reference) * allowed:
            side = "below" if expect.higher_is_better else "above"
            gap = _change(value, reference)
            by = "" if gap is None else f" {abs(gap) * 100:.1f}%"
            return miss(
                f"performance {shown} is{by} {side} reference {format_number(reference)}"
                f" (tolerance {_tolerance_text(allowed)})"
            )
    if baseline is not None and change is not None:
        worse = -change if expect.higher_is_better else change
        if worse > tolerance:
            return miss(
                f"regression: {shown} vs baseline {format_number(baseline)}"
                f" ({_signed_percent(change)}, tolerance {_tolerance_text(tolerance)})"
            )
    return Verdict(True, None, change)


def judge_measurement(
    measurement: Measurement,
    expectation: Expectation | None,
    baseline: float | None,
    tolerance: float,
) -> Verdict:
    """`judge` for a number; a text value passes as written unless an expectation
    needs a number, and an empty one fails."""
    if measurement.performance is not None:
        return judge(measurement.performance, measurement.metric, expectation, baseline, tolerance)
    if not measurement.text:
        return Verdict(False, "empty performance")
    if expectation is not None:
        shown = measurement.text[:_SHOWN]
        return Verdict(False, f"performance '{shown}' is not a number; 'expect' needs one")
    return Verdict(True)
