"""The end-of-session results table and the JSON summary, from the tests' records."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from pytest_madengine.core.records import BuildRecord, ResultRow, Status, TestRecord

COLUMNS = ("model", "status", "performance", "metric", "vs baseline", "duration")
# Shown when a result was judged against a history: its series and the verdict.
VERDICT_COLUMNS = ("series", "verdict")
_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float]) -> str:
    """The values as a line of block characters, lowest to highest (flat: the middle)."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return _BARS[len(_BARS) // 2] * len(values)
    top = len(_BARS) - 1
    return "".join(_BARS[round((value - low) / (high - low) * top)] for value in values)


def _series(row: ResultRow) -> str:
    """The history's medians, then `|` and the current median."""
    comparison = row.comparison
    if comparison is None or comparison.current is None:
        return ""
    line = sparkline([*comparison.history, comparison.current])
    return f"{line[:-1]}|{line[-1]}"


class ImageCounts:
    """Images built and reused over the session, each image counted once."""

    def __init__(self) -> None:
        self._built: set[str] = set()
        self._seen: set[str] = set()

    def add(self, record: TestRecord) -> None:
        if record.image is None:
            return
        self._seen.add(record.image.name)
        if record.image.built:
            self._built.add(record.image.name)

    @property
    def counts(self) -> tuple[int, int]:
        """(built, reused)"""
        return len(self._built), len(self._seen - self._built)


def build_counts(records: Iterable[TestRecord]) -> tuple[int, int]:
    """(images built, images reused) over the session: each image counted once."""
    images = ImageCounts()
    for record in records:
        images.add(record)
    return images.counts


def _record_rows(record: TestRecord) -> Iterator[tuple[str, ...]]:
    """A row per result of the record, with its series and verdict cells."""
    duration = record.duration
    for row in record.rows:
        yield (
            row.name,
            row.status.value,
            row.shown_performance,
            row.metric,
            _versus_baseline(row),
            "" if duration is None else f"{duration:.1f}s",
            _series(row),
            row.comparison.line if row.comparison else "",
        )


def table_rows(records: Iterable[TestRecord]) -> list[tuple[str, ...]]:
    """A row per result; with a verdict column when any result has a verdict."""
    return _table(records, ImageCounts())[0]


def _table(
    records: Iterable[TestRecord], images: ImageCounts
) -> tuple[list[tuple[str, ...]], bool]:
    """The rows and whether any result was judged, in one pass over the records (which
    may be read back one at a time: plugin/reporter.py keeps them compressed)."""
    rows: list[tuple[str, ...]] = []
    judged = False
    for record in records:
        images.add(record)
        judged = judged or any(row.comparison for row in record.rows)
        rows.extend(_record_rows(record))
    width = len(COLUMNS) + (len(VERDICT_COLUMNS) if judged else 0)
    return [cells[:width] for cells in rows], judged


def _versus_baseline(row: ResultRow) -> str:
    if row.baseline_note:
        return row.baseline_note
    change = row.relative_change
    return "" if change is None else f"{change * 100:+.1f}%"


def _aligned(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]  # fmt: skip


def results_table(records: Iterable[TestRecord]) -> list[str]:
    """Aligned lines: a header, a row per result, and how many images were built."""
    images = ImageCounts()
    rows, judged = _table(records, images)
    header = (*COLUMNS, *VERDICT_COLUMNS) if judged else COLUMNS
    lines = _aligned([header, *rows])
    built, reused = images.counts
    lines.append(f"images: {built} built, {reused} reused")
    return lines


def _result_entry(row: ResultRow) -> dict[str, Any]:
    return {
        "model": row.name,
        "status": row.status.value,
        # A number, or a text value as written (a CPU list such as 0-1).
        "performance": row.performance if row.performance is not None else row.text,
        "metric": row.metric,
        "relative_change": row.relative_change,
        "reason": row.reason,
        "baseline_note": row.baseline_note,
        # --mad-repeat: the repetitions' values (performance is their median).
        "samples": list(row.samples),
        **{key: value for key, value in row.spread().items() if key != "samples"},
        # --mad-compare: outcome, line, the history's medians and the current one.
        "verdict": dataclasses.asdict(row.comparison) if row.comparison else None,
    }


def summary_document(
    tests: Iterable[tuple[str, TestRecord]],
    session_id: str,
    hosts: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The --mad-summary JSON: counts, builds, every test's record, every result row and
    the hosts' status with its transitions (`hosts`: empty without a heartbeat). One
    pass over `tests`."""
    images = ImageCounts()
    counts = dict.fromkeys((status.value for status in Status), 0)
    entries, results = [], []
    for nodeid, record in tests:
        images.add(record)
        entries.append({
            "nodeid": nodeid,
            "status": record.status.value,
            "properties": dict(record.junit_properties()),
            "record": record.to_dict(),
        })  # fmt: skip
        for row in record.rows:
            counts[row.status.value] += 1
            results.append(_result_entry(row))
    built, reused = images.counts
    return {
        "session_id": session_id,
        "counts": counts,
        "images": {"built": built, "reused": reused},
        "hosts": [dict(host) for host in hosts],
        "tests": entries,
        "results": results,
    }


BUILD_COLUMNS = ("image", "status", "build", "duration", "registry image")


def build_table(records: Sequence[BuildRecord]) -> list[str]:
    """Aligned lines of a build-only session: a row per image, then the counts."""
    rows = [BUILD_COLUMNS]
    for record in records:
        image = record.image
        how = "" if image is None else ("built" if image.built else "reused")
        duration = f"{image.build_duration:.1f}s" if image and image.built else ""
        where = record.registry_image or (f"not pushed: {record.reference}" if record.reference
                                          else "local")  # fmt: skip
        rows.append((record.name, record.status.value, how, duration, where))
    lines = _aligned(rows)
    built = sum(1 for record in records if record.image and record.image.built)
    pushed = sum(1 for record in records if record.pushed)
    lines.append(f"images: {built} built, {len(records) - built} not built, {pushed} pushed")
    return lines
