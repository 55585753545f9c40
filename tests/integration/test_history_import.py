"""`madengine report import`: perf.csv files into the results history, cut into sessions
where a run changes or a result comes again; a file imported again adds nothing."""

from __future__ import annotations

import csv
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from pytest_madengine.core.history import History
from pytest_madengine.core.verdicts import HistoryPoint, ResultKey
from pytest_madengine.reporting.history_import import perf_csv_sessions

COLUMNS = ["model", "args", "docker_file", "git_commit", "machine_name", "gpu_architecture",
           "performance", "metric", "status", "build_number", "pipeline"]  # fmt: skip
KEY = ResultKey("bert", "--bs 8", "docker/bert.Dockerfile", "gfx942", "tokens/s")


def row(value: str, model: str = "bert", commit: str = "c1", status: str = "SUCCESS",
        build: str = "") -> list[str]:  # fmt: skip
    return [model, "--bs 8", "docker/bert.Dockerfile", commit, "node1", "gfx942", value,
            "tokens/s", status, build, ""]  # fmt: skip


def write(path: Path, rows: list[list[str]], columns: list[str] = COLUMNS) -> Path:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([columns, *rows])
    return path


def madengine(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_madengine", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_rows_are_cut_into_sessions_where_a_run_changes_or_a_result_repeats(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "perf.csv", [
        row("100"), row("50", model="gpt"),          # run 1
        row("102"), row("51", model="gpt"),          # the same results again: run 2
        row("98", commit="c2"),                      # another commit: run 3
        row("", commit="c2", status="FAILURE", model="gpt"),
        row("97", commit="c2", build="7"),           # another build: run 4
    ])  # fmt: skip
    sessions = perf_csv_sessions(path)
    assert [len(results) for _, results in sessions] == [2, 2, 2, 1]
    assert [stamp.git_commit for stamp, _ in sessions] == ["c1", "c1", "c2", "c2"]
    assert len({stamp.session for stamp, _ in sessions}) == 4
    failed = sessions[2][1][1]
    assert (failed.status, failed.value) == ("FAILURE", None)


def test_import_then_import_again_after_more_runs(tmp_path: Path) -> None:
    path = write(tmp_path / "perf.csv", [row("100"), row("102")])
    database = tmp_path / "h.sqlite"
    done = madengine("report", "import", str(path), "--history", str(database), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 session(s) with 2 result(s) imported, 0 already there" in done.stdout
    with path.open("a", newline="") as handle:  # a later run appends to the same file
        csv.writer(handle).writerow(row("104"))
    done = madengine("report", "import", str(path), "--history", str(database), cwd=tmp_path)
    assert "1 session(s) with 1 result(s) imported, 2 already there" in done.stdout
    history = History(f"sqlite:///{database}")
    assert history.points(KEY) == [HistoryPoint(100.0), HistoryPoint(102.0), HistoryPoint(104.0)]
    history.close()


def test_perf_super_csv_brings_its_samples(tmp_path: Path) -> None:
    path = write(tmp_path / "perf_super.csv", [[*row("20"), "10 30 20"]], [*COLUMNS, "samples"])
    done = madengine("report", "import", str(path), cwd=tmp_path)  # the default history
    assert done.returncode == 0, done.stderr
    history = History(History.default_url(tmp_path / "mad_output"))
    assert history.points(KEY) == [HistoryPoint(20.0, (10.0, 30.0, 20.0))]
    history.close()


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["nothere.csv"], 1, "madengine: PERF_CSV nothere.csv: *"),
        (["bad.csv"], 1, "madengine: PERF_CSV bad.csv: missing column(s) performance, status"),
        (["ok.csv", "--history", "postgresql+psycopg://u:s3cret-pw@127.0.0.1:1/h"], 4,
         "madengine: --history postgresql+psycopg://u:***@127.0.0.1:1/h: cannot open: *"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], code: int, said: str) -> None:
    (tmp_path / "bad.csv").write_text("model,metric\nbert,fps\n")
    write(tmp_path / "ok.csv", [row("1")])
    done = madengine("report", "import", *args, cwd=tmp_path)
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "s3cret-pw" not in done.stdout + done.stderr
    assert fnmatch(lines[0], said), lines
