"""perf.csv appending and the end-of-session table and summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pytest_madengine.core.record_log import BLOCK, RecordLog
from pytest_madengine.core.records import (
    Comparison,
    DataFacts,
    ImageFacts,
    ModelFacts,
    ResultRow,
    Status,
    TestRecord,
)
from pytest_madengine.reporting import perf_csv
from pytest_madengine.reporting.perf_csv import PERF_COLUMNS, PerfCsv, perf_rows
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
    header = ",".join(PERF_COLUMNS[::-1])
    path.write_text(f"{header}\n")
    PerfCsv(path).append([{"model": "new", "status": "SUCCESS", "performance": 4, "x": "y"}])
    rows = list(csv.DictReader(path.open(newline="")))
    assert path.read_text().splitlines()[0] == header
    assert (rows[0]["model"], rows[0]["performance"]) == ("new", "4")


def test_a_perf_csv_of_other_columns_gets_ours_added_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    path.write_text("foo,bar,model\n1,2,old\n")
    PerfCsv(path).append([{"model": "new", "status": "FAILURE", "performance": 4, "metric": "x"}])
    lines = path.read_text().splitlines()
    assert lines[0] == "foo,bar,model," + ",".join(c for c in PERF_COLUMNS if c != "model")
    rows = list(csv.DictReader(path.open(newline="")))
    assert (rows[0]["foo"], rows[0]["model"], rows[0]["status"]) == ("1", "old", "")
    assert (rows[1]["model"], rows[1]["performance"], rows[1]["status"]) == ("new", "4", "FAILURE")


def test_a_last_row_without_newline_is_not_glued_to_ours(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    path.write_text(",".join(PERF_COLUMNS) + "\nold" + "," * (len(PERF_COLUMNS) - 1))
    PerfCsv(path).append([{"model": "new"}])
    assert [row["model"] for row in csv.DictReader(path.open(newline=""))] == ["old", "new"]


def test_rows_go_to_the_fallback_when_perf_csv_cannot_be_written(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    writer = PerfCsv(path, fallback=tmp_path / "out" / "perf.s1.csv")
    assert writer.append([{"model": "a"}]) is None
    path.unlink()
    path.mkdir()  # the file became a directory mid-session
    problem = writer.append([{"model": "b"}])
    assert (
        problem
        and problem.startswith(f"perf.csv {path}: cannot write")
        and "perf.s1.csv" in problem
    )
    assert writer.append([{"model": "c"}]) is None
    saved = list(csv.DictReader((tmp_path / "out" / "perf.s1.csv").open(newline="")))
    assert [row["model"] for row in saved] == ["b", "c"]


FACTS = ModelFacts("m", 1)
RECORDS = [
    TestRecord(
        "a", Status.SUCCESS, FACTS,
        rows=(ResultRow("a", Status.SUCCESS, 10.0, "fps", -0.1),),
        image=ImageFacts("ci-a", "sha256:1", built=True), started_at=100.0, ended_at=101.25,
    ),
    TestRecord(
        "b", Status.FAILURE, FACTS, "exit code 1", rows=(ResultRow("b", Status.FAILURE),),
        image=ImageFacts("ci-b", "sha256:2"),
    ),
    TestRecord("c", Status.SKIPPED, FACTS, rows=(ResultRow("c", Status.SKIPPED),)),
]  # fmt: skip


def test_a_record_crosses_xdist_as_a_dict_and_back() -> None:
    for record in RECORDS:
        data = record.to_dict()
        assert json.loads(json.dumps(data)) == data  # plain data only
        assert TestRecord.from_dict(data) == record


def test_junit_properties_come_from_the_record() -> None:
    properties = dict(RECORDS[0].junit_properties())
    assert properties["status"] == "SUCCESS" and properties["performance"] == "10"
    assert properties["image_built"] == "true" and properties["test_duration"] == "1.25"
    assert dict(RECORDS[1].junit_properties())["failure_reason"] == "exit code 1"


def test_perf_rows_of_a_record() -> None:
    rows = perf_rows(RECORDS[0], machine="box", git_commit="abc", build_number="7")
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["status"], row["performance"], row["relative_change"]) == (
        "a", "SUCCESS", "10", "-0.1"
    )  # fmt: skip
    assert (row["machine_name"], row["git_commit"], row["test_duration"]) == ("box", "abc", "1.25")
    assert set(row) == set(PERF_COLUMNS)


def test_build_counts_each_image_once() -> None:
    assert build_counts(RECORDS) == (1, 1)


def test_results_table_is_aligned_and_counts_builds() -> None:
    assert results_table(RECORDS) == [
        "model  status   performance  metric  vs baseline  duration",
        "a      SUCCESS  10           fps     -10.0%       1.2s",
        "b      FAILURE",
        "c      SKIPPED",
        "images: 1 built, 1 reused",
    ]


def test_summary_document_counts_statuses() -> None:
    document = summary_document([(record.name, record) for record in RECORDS], "sid")
    assert document["counts"] == {"SUCCESS": 1, "FAILURE": 1, "SKIPPED": 1}
    assert document["images"] == {"built": 1, "reused": 1}
    assert len(document["results"]) == 3 and document["session_id"] == "sid"


def test_a_writer_reads_the_header_again_after_another_session_widened_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "perf.csv"
    ours, theirs = PerfCsv(path, grow=True), PerfCsv(path, grow=True)
    ours.append([{"model": "a"}])
    theirs.append([{"model": "b", "temperature": "40"}])  # widens: the file is rewritten
    ours.append([{"model": "c"}])
    header, *rows = list(csv.reader(path.open(newline="")))
    assert header[-1] == "temperature"
    assert all(len(row) == len(header) for row in rows)  # none short: "c" is under the new header
    assert [row[header.index("model")] for row in rows] == ["a", "b", "c"]


def test_a_writer_sees_a_row_another_tool_left_without_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    ours = PerfCsv(path)
    ours.append([{"model": "a"}])
    with path.open("a") as handle:  # another tool's row, its newline missing
        handle.write("other" + "," * (len(PERF_COLUMNS) - 1))
    ours.append([{"model": "c"}])
    assert [row["model"] for row in csv.DictReader(path.open(newline=""))] == ["a", "other", "c"]


def test_a_writer_reads_the_header_once_while_only_it_writes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    read_header = perf_csv._existing_header
    monkeypatch.setattr(perf_csv, "_existing_header", lambda p: reads.append(p) or read_header(p))
    path = tmp_path / "perf.csv"
    path.write_text(",".join(PERF_COLUMNS) + "\n")
    ours = PerfCsv(path)
    for model in ("a", "b", "c"):
        ours.append([{"model": model}])
    assert reads == [path]
    assert [row["model"] for row in csv.DictReader(path.open(newline=""))] == ["a", "b", "c"]


def test_a_writer_opens_the_file_once_while_the_path_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row per test of a fleet's thousands: no open and close each (issue #23). A file
    put in its place (removed by the user, widened by another writer) is opened anew."""
    path = tmp_path / "perf.csv"
    opened: list[str] = []
    real_open = Path.open

    def counted(self: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if self == path:
            opened.append(str(args[0] if args else kwargs.get("mode", "r")))
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", counted)
    ours = PerfCsv(path)
    for model in ("a", "b", "c"):
        ours.append([{"model": model}])
    assert opened == ["a"]
    path.unlink()  # the user starts a fresh file mid-session
    ours.append([{"model": "d"}])
    assert opened == ["a", "a"]
    ours.close()
    monkeypatch.undo()
    assert [row["model"] for row in csv.DictReader(path.open(newline=""))] == ["d"]


FULL = TestRecord(
    "d[batch=8]", Status.FAILURE,
    ModelFacts("d", 2, "--batch 8", ("perf", "nightly"), "docker/d.Dockerfile", "ci-d", "fp16",
               "gfx942", "imagenet", "s3", "abc123", "torchrun"),
    "missed: fps < 50", "tail of the log\nsecond line",
    rows=(
        ResultRow("d_a", Status.FAILURE, 42.5, "fps", float("inf"), "missed", {"k": "v"},
                  perf_model="d_a", baseline_note="no baseline", samples=(41.0, 42.5, 44.0),
                  comparison=Comparison("regression", "-12% (-15..-9)", (48.0, 49.5), 42.5)),
        ResultRow("d_b", Status.SUCCESS, None, "cpus", text="0-1", perf_model="d_b"),
    ),
    image=ImageFacts("ci-d", "sha256:3", "rocm/pytorch", built=True, build_duration=3.5,
                     log_path="/logs/build.log"),
    backend="slurm", host="node-7", gpus=(0, 1), started_at=1.5, ended_at=9.25,
    log_path="/logs/d.log", retried_after=("node-3 lost",), properties={"job": "17"},
    data=DataFacts("imagenet", "s3", "s3://b/i", 1024, 0.5, True, "checksum differs"),
)  # fmt: skip


def test_the_record_log_gives_back_every_record_equal_and_in_order() -> None:
    """The reporter keeps the session's records compressed: what it reads back at the
    end must be what arrived, every field of it, also past a block and read twice."""
    arrived = [(f"models.json::m{i}", RECORDS[i % 3]) for i in range(BLOCK + 5)]
    arrived.insert(7, ("models.json::d[batch=8]", FULL))
    log = RecordLog()
    for nodeid, record in arrived:
        log.append(nodeid, record)
    assert len(log) == len(arrived)
    assert list(log) == arrived and list(log) == arrived
    records = [record for _, record in arrived]
    assert results_table(log.records()) == results_table(records)
    assert summary_document(log, "sid") == summary_document(arrived, "sid")


def test_junit_values_many_tests_share_are_one_text_and_any_backend_value_is_kept() -> None:
    # Texts made apart, as each test's run makes its own.
    first, second = (
        TestRecord(name, Status.SUCCESS, FACTS,
                   rows=(ResultRow(name, Status.SUCCESS, 1.0, "".join(["f", "ps"])),),
                   host="".join(["node", "-1"]), properties={"job": 17})  # type: ignore[dict-item]
        for name in ("a", "b")
    )  # fmt: skip
    one, other = dict(first.junit_properties()), dict(second.junit_properties())
    assert one["metric"] is other["metric"] and one["image_built"] is other["image_built"]
    assert one["host"] is other["host"] == "node-1" and one["job"] == 17
    # pytest keeps every test's (name, value) pairs too: those are shared alike.
    pairs = [{pair[0]: pair for pair in record.junit_properties()} for record in (first, second)]
    assert pairs[0]["metric"] is pairs[1]["metric"] and pairs[0]["host"] is pairs[1]["host"]
