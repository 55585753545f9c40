"""perf.csv appending and the end-of-session table and summary."""

from __future__ import annotations

import csv
from pathlib import Path

from pytest_madengine.reporting.perf_csv import PERF_COLUMNS, PerfCsv
from pytest_madengine.reporting.summary import build_counts, results_table, summary_document


def test_perf_csv_writes_header_once_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    PerfCsv(path).append([{"model": "a", "status": "SUCCESS", "performance": 1.5}])
    PerfCsv(path).append([{"model": "b", "status": "FAILURE", "performance": None}])
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(PERF_COLUMNS)
    assert [(r["model"], r["status"], r["performance"]) for r in rows] == [
        ("a", "SUCCESS", "1.5"), ("b", "FAILURE", "")
    ]  # fmt: skip


def test_perf_csv_keeps_the_column_order_of_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    path.write_text("status,model,performance\nSUCCESS,old,3\n")
    PerfCsv(path).append([{"model": "new", "status": "SUCCESS", "performance": 4, "x": "y"}])
    assert path.read_text().splitlines() == ["status,model,performance", "SUCCESS,old,3",
                                             "SUCCESS,new,4"]  # fmt: skip


RESULTS = [
    {"properties": {"image": "ci-a", "image_built": "true", "test_duration": "1.25"},
     "rows": [{"model": "a", "status": "SUCCESS", "performance": "10", "metric": "fps",
               "relative_change": "-0.1"}]},
    {"properties": {"image": "ci-b", "image_built": "false"},
     "rows": [{"model": "b", "status": "FAILURE"}]},
    {"properties": {}, "rows": [{"model": "c", "status": "SKIPPED"}]},
]  # fmt: skip


def test_build_counts_each_image_once() -> None:
    assert build_counts(RESULTS) == (1, 1)


def test_results_table_is_aligned_and_counts_builds() -> None:
    assert results_table(RESULTS) == [
        "model  status   performance  metric  vs baseline  duration",
        "a      SUCCESS  10           fps     -10.0%       1.2s",
        "b      FAILURE",
        "c      SKIPPED",
        "images: 1 built, 1 reused",
    ]


def test_summary_document_counts_statuses() -> None:
    document = summary_document(RESULTS, "sid")
    assert document["counts"] == {"SUCCESS": 1, "FAILURE": 1, "SKIPPED": 1}
    assert document["images"] == {"built": 1, "reused": 1}
    assert len(document["results"]) == 3 and document["session_id"] == "sid"
