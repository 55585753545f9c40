"""The end-of-session results table and the JSON summary, from the tests' records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_madengine.core.records import BuildRecord, ResultRow, Status, TestRecord

COLUMNS = ("model", "status", "performance", "metric", "vs baseline", "duration")


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


def table_rows(records: Sequence[TestRecord]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for record in records:
        duration = record.duration
        for row in record.rows:
            rows.append(
                (
                    row.name,
                    row.status.value,
                    row.shown_performance,
                    row.metric,
                    _versus_baseline(row),
                    "" if duration is None else f"{duration:.1f}s",
                )
            )
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
    lines = _aligned([COLUMNS, *table_rows(records)])
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
