"""One perf.csv written by several sessions at once: every row and every column arrives,
none torn. Processes append as sessions do (a new writer each time, columns of their
own that widen the header), all released together; then whole sessions on one file."""

from __future__ import annotations

import csv
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_madengine.reporting.perf_csv import PERF_COLUMNS, PerfCsv
from tests.conftest import entry
from tests.e2e.test_run import unique_tree

WRITERS = 4
APPENDS = 15


def _write(path: str, writer: int, start: multiprocessing.synchronize.Barrier) -> None:
    start.wait()
    for number in range(APPENDS):
        # A session of its own each time, with a result column no other has yet.
        perf = PerfCsv(Path(path), grow=True)
        perf.append([{"model": f"w{writer}-{number}", "status": "SUCCESS",
                      f"col_{writer}_{number}": f"{writer}.{number}"}])  # fmt: skip


def read(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as handle:
        header, *rows = csv.reader(handle)
    return header, rows


@pytest.mark.parametrize("existing", [False, True], ids=["new file", "file of other columns"])
def test_writers_at_once_lose_no_row_and_no_column(tmp_path: Path, existing: bool) -> None:
    path = tmp_path / "perf.csv"
    if existing:
        path.write_text("theirs,model\nkept,earlier\n")
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(WRITERS)
    writers = [context.Process(target=_write, args=(str(path), n, start)) for n in range(WRITERS)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
    assert [process.exitcode for process in writers] == [0] * WRITERS
    header, rows = read(path)
    assert all(len(row) == len(header) for row in rows)  # none torn, none short
    models = [row[header.index("model")] for row in rows]
    expected = [f"w{w}-{n}" for w in range(WRITERS) for n in range(APPENDS)]
    assert sorted(models) == sorted(expected + (["earlier"] if existing else []))
    assert set(PERF_COLUMNS) <= set(header)
    for row in rows:  # each row's own column holds its value
        model = row[header.index("model")]
        if model != "earlier":
            writer, number = model[1:].split("-")
            assert row[header.index(f"col_{writer}_{number}")] == f"{writer}.{number}"
    if existing:
        assert header[:2] == ["theirs", "model"] and rows[models.index("earlier")][0] == "kept"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]


MULTI = "#!/bin/sh\nprintf 'model,performance,metric,{column}\\na,1,fps,{value}\\n' > out.csv\n"


@pytest.mark.docker
@pytest.mark.usefixtures("docker_client")
def test_sessions_at_once_share_one_perf_csv(pytester: pytest.Pytester) -> None:
    """Three real sessions, each with results of a column of its own, on one perf.csv."""
    sessions = ("s0", "s1", "s2")
    unique_tree(
        pytester,
        [entry(name, scripts=f"scripts/dummy/{name}.sh", multiple_results="out.csv")
         for name in sessions],
        {f"scripts/dummy/{name}.sh": MULTI.format(column=f"col_{name}", value=name)
         for name in sessions},
    )  # fmt: skip
    shared = pytester.path / "shared" / "perf.csv"
    pytest_argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    runs = [
        subprocess.Popen(
            [*pytest_argv, "--mad-tags", name, "--mad-perf-csv", str(shared),
             "--mad-output", f"out_{name}"],
            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name in sessions
    ]  # fmt: skip
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], "\n".join(outputs)
    header, rows = read(shared)
    by_model = {row[header.index("model")]: row for row in rows}
    assert sorted(by_model) == ["s0_a", "s1_a", "s2_a"]
    for name in sessions:
        assert by_model[f"{name}_a"][header.index(f"col_{name}")] == name
