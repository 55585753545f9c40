"""The end-of-session results table and the JSON summary, from the tests' records."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
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


def build_counts(records: Sequence[TestRecord]) -> tuple[int, int]:
    """(images built, images reused) over the session: each image counted once."""
    built: set[str] = set()
    seen: set[str] = set()
    for record in records:
        if record.image is None:
            continue
        seen.add(record.image.name)
        if record.image.built:
            built.add(record.image.name)
    return len(built), len(seen - built)


def _judged(records: Sequence[TestRecord]) -> bool:
    return any(row.comparison for record in records for row in record.rows)


def table_rows(records: Sequence[TestRecord]) -> list[tuple[str, ...]]:
    """A row per result; with a verdict column when any result has a verdict."""
    rows: list[tuple[str, ...]] = []
    verdicts = _judged(records)
    for record in records:
        duration = record.duration
        for row in record.rows:
            cells: tuple[str, ...] = (
                row.name,
                row.status.value,
                row.shown_performance,
                row.metric,
                _versus_baseline(row),
                "" if duration is None else f"{duration:.1f}s",
            )
            if verdicts:
                cells += (_series(row), row.comparison.line if row.comparison else "")
            rows.append(cells)
    return rows


def _versus_baseline(row: ResultRow) -> str:
    if row.baseline_note:
        return row.baseline_note
    change = row.relative_change
    return "" if change is None else f"{change * 100:+.1f}%"


def _aligned(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]  # fmt: skip


def results_table(records: Sequence[TestRecord]) -> list[str]:
    """Aligned lines: a header, a row per result, and how many images were built."""
    header = (*COLUMNS, *VERDICT_COLUMNS) if _judged(records) else COLUMNS
    lines = _aligned([header, *table_rows(records)])
    built, reused = build_counts(records)
    lines.append(f"images: {built} built, {reused} reused")
    return lines


def summary_document(
    tests: Sequence[tuple[str, TestRecord]],
    session_id: str,
    hosts: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The --mad-summary JSON: counts, builds, every test's record, every result row and
    the hosts' status with its transitions (`hosts`: empty without a heartbeat)."""
    records = [record for _, record in tests]
    statuses = [row.status for record in records for row in record.rows]
    built, reused = build_counts(records)
    return {
        "session_id": session_id,
        "counts": {status.value: statuses.count(status) for status in Status},
        "images": {"built": built, "reused": reused},
        "hosts": [dict(host) for host in hosts],
        "tests": [
            {
                "nodeid": nodeid,
                "status": record.status.value,
                "properties": dict(record.junit_properties()),
                "record": record.to_dict(),
            }
            for nodeid, record in tests
        ],
        "results": [
            {
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
            for record in records
            for row in record.rows
        ],
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
