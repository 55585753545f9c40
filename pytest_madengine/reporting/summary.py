"""The end-of-session results table and the JSON summary, from the collected reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

COLUMNS = ("model", "status", "performance", "metric", "vs baseline", "duration")


def _change(row: Mapping[str, Any]) -> str:
    text = str(row.get("relative_change") or "")
    if not text:
        return ""
    return f"{float(text) * 100:+.1f}%"


def build_counts(results: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(images built, images reused) over the session: each image counted once."""
    built: set[str] = set()
    seen: set[str] = set()
    for result in results:
        properties = result.get("properties", {})
        image = properties.get("image")
        if not image:
            continue
        seen.add(image)
        if properties.get("image_built") == "true":
            built.add(image)
    return len(built), len(seen - built)


def table_rows(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    rows = []
    for result in results:
        duration = result.get("properties", {}).get("test_duration") or ""
        for row in result.get("rows", []):
            rows.append(
                (
                    str(row.get("model", "")),
                    str(row.get("status", "")),
                    str(row.get("performance", "")),
                    str(row.get("metric", "")),
                    _change(row),
                    f"{float(duration):.1f}s" if duration else "",
                )
            )
    return rows


def results_table(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Aligned lines: a header, a row per result, and how many images were built."""
    rows = [COLUMNS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    built, reused = build_counts(results)
    lines.append(f"images: {built} built, {reused} reused")
    return lines


def summary_document(results: Sequence[Mapping[str, Any]], session_id: str) -> dict[str, Any]:
    """The --mad-summary JSON: counts, builds and every result row."""
    rows = [row for result in results for row in result.get("rows", [])]
    statuses = [str(row.get("status")) for row in rows]
    built, reused = build_counts(results)
    return {
        "session_id": session_id,
        "counts": {status: statuses.count(status) for status in ("SUCCESS", "FAILURE", "SKIPPED")},
        "images": {"built": built, "reused": reused},
        "tests": [
            {
                "nodeid": result.get("nodeid"),
                "outcome": result.get("outcome"),
                "properties": result.get("properties", {}),
            }
            for result in results
        ],
        "results": rows,
    }
