"""What a MAD tree of any shape gets without an engine: every layout of a scripts
directory reaches the model directory by each way of copying in (a bound workspace, an
archive, a ConfigMap); kept containers' names; the tree's own tools file; the result
columns of multiple_results rows in perf.csv."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from pytest_madengine.backends import RunSpec
from pytest_madengine.backends.collect import fill_workspace
from pytest_madengine.backends.docker.containers import kept_container_name, tar_directories
from pytest_madengine.backends.kubernetes.manifests import script_map
from pytest_madengine.core.records import ModelFacts, ResultRow, Status, TestRecord
from pytest_madengine.errors import MadError
from pytest_madengine.reporting.perf_csv import (
    PERF_COLUMNS,
    PERF_SUPER_COLUMNS,
    PerfCsv,
    perf_rows,
    perf_super_rows,
)
from pytest_madengine.tools import DEFAULT_TOOLS_FILE, load_toolbox
from pytest_madengine.workspace import WORKSPACE, ModelRun, render

# What the model checks in its directory; it prints the first thing missing.
CHECKS = """#!/bin/sh
for check in 'test -f docker/m.Dockerfile' 'test "$(cat "data files/a b.txt")" = spaced' \
  'test "$(cat deep/er/leaf.txt)" = leaf' 'test "$(cat leaf_link.txt)" = leaf' \
  'test -f __pycache__/get_models_json.cpython-311.pyc' 'test -L outside' \
  'test ! -e deep/up' 'test ! -e secret.json'; do
  eval "$check" || { echo "missing: $check"; exit 1; }
done
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A scripts directory beside a `docker/` link, with folders, spaces, links in the
    tree and out of it, a link back up, a link to an excluded file and a __pycache__."""
    root = tmp_path / "mad"
    files = {
        "docker/m.Dockerfile": "FROM x\n", "scripts/m/run.sh": CHECKS,
        "scripts/m/get_models_json.py": "", "scripts/m/data files/a b.txt": "spaced\n",
        "scripts/m/deep/er/leaf.txt": "leaf\n", "credential.json": "{}",
        "scripts/m/__pycache__/get_models_json.cpython-311.pyc": "compiled",
    }  # fmt: skip
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    links = {"docker": "../../docker", "leaf_link.txt": "deep/er/leaf.txt",
             "outside": "/nonexistent/outside-the-tree", "deep/up": "..",
             "secret.json": "../../credential.json"}  # fmt: skip
    for relative, target in links.items():
        (root / "scripts/m" / relative).symlink_to(target)
    return root


def spec_of(tree: Path) -> RunSpec:
    spec = RunSpec(image="img", command=(), workdir=WORKSPACE, log_path=tree / "log",
                   copy_excludes=(tree / "credential.json",), copy_within=tree)  # fmt: skip
    run = ModelRun(spec=spec, tree_root=tree, script_dir="scripts/m", argv=("sh", "run.sh"))
    return render(run)


def run_in(workspace: Path, spec: RunSpec) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(spec.command), cwd=workspace, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **spec.env})  # fmt: skip


def test_every_layout_reaches_the_model_directory_in_a_bound_workspace(
    tree: Path, tmp_path: Path
) -> None:
    spec = spec_of(tree)
    workspace = tmp_path / "ws"
    fill_workspace(spec.copies, spec.copy_excludes, workspace, WORKSPACE, spec.copy_within)
    done = run_in(workspace, spec)
    assert done.returncode == 0, done.stdout + done.stderr
    # The link stays a link on the host too: its target's files were never copied.
    assert os.readlink(workspace / "scripts/m/outside") == "/nonexistent/outside-the-tree"


def test_every_layout_reaches_the_model_directory_through_an_archive(
    tree: Path, tmp_path: Path
) -> None:
    spec = spec_of(tree)
    root = tmp_path / "container"
    archive = tar_directories(spec.copies, spec.copy_excludes, spec.copy_within)
    with archive, tarfile.open(fileobj=archive) as opened:
        names = opened.getnames()
        opened.extractall(root, filter="tar")
    assert not [name for name in names if "secret" in name or "credential" in name]
    done = run_in(root / WORKSPACE.lstrip("/"), spec)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_configmap_holds_the_trees_files_and_nothing_from_outside_it(tree: Path) -> None:
    spec = spec_of(tree)
    scripts = script_map(tree / "scripts/m", "/myworkspace/scripts/m", "s", spec.copy_excludes,
                         spec.copy_within)  # fmt: skip
    assert sorted(file.path for file in scripts.files) == [
        "__pycache__/get_models_json.cpython-311.pyc", "data files/a b.txt",
        "deep/er/leaf.txt", "docker/m.Dockerfile", "get_models_json.py", "leaf_link.txt",
        "run.sh",
    ]  # fmt: skip


def test_what_a_copy_puts_in_does_not_come_back_however_it_got_there(tree: Path) -> None:
    skip = spec_of(tree).collect_skip
    assert {"scripts/m/docker/m.Dockerfile", "scripts/m/leaf_link.txt",
            "scripts/m/data files/a b.txt"} <= skip  # fmt: skip


@pytest.mark.parametrize(
    ("image", "nth", "name"),
    [
        ("ci-dummy_dummy.ubuntu.amd", 1, "container_ci-dummy_dummy.ubuntu.amd"),
        ("ci-dummy_dummy.ubuntu.amd", 2, "container_ci-dummy_dummy.ubuntu.amd_2"),
        ("localhost:5000/ci-m_x:v1", 1, "container_localhost_5000_ci-m_x_v1"),
        ("reg/ci-m@sha256:ab", 1, "container_reg_ci-m_sha256_ab"),
    ],
)
def test_a_kept_container_is_named_as_madengine_names_it(image: str, nth: int, name: str) -> None:
    assert kept_container_name(image, nth) == name


def write_tools(path: Path, tools: dict) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"tools": tools}))
    return path


def test_a_trees_tools_file_is_read_unasked_and_its_entries_win(tmp_path: Path) -> None:
    root = tmp_path / "mad"
    (root / "scripts/common/pre_scripts").mkdir(parents=True)
    (root / "scripts/common/pre_scripts/t.sh").write_text("echo t\n")
    write_tools(root / "scripts/common/tools.json", {
        "test_tools_A": {"pre_scripts": [{"path": "scripts/common/pre_scripts/t.sh"}],
                         "cmd": "tree_a"},
        "rocprof": {"cmd": "tree_rocprof"},
    })  # fmt: skip
    box = load_toolbox(tree_root=root)
    assert {"test_tools_A", "rocprof", "rocprofv3"} <= set(box.tools)  # the tree's and ours
    spec = RunSpec(image="i", command=(), workdir=WORKSPACE, log_path=tmp_path / "log")
    run = ModelRun(spec=spec, tree_root=root, script_dir="scripts/m", argv=("true",))
    applied = box.apply(run, [{"name": "test_tools_A"}, {"name": "rocprof"}])
    assert applied.wrappers == ("tree_rocprof", "tree_a")
    assert applied.pre_scripts[0].source == root / "scripts/common/pre_scripts/t.sh"
    with pytest.raises(MadError, match=r"unknown tool 'x' in .*scripts/common/tools.json over"):
        box.names([{"name": "x"}])
    # A tools file named on the command line replaces the tree's, as madengine's option does.
    named = load_toolbox(write_tools(tmp_path / "mine.json", {"B": {}}), tree_root=root)
    assert set(named.tools) == {"B"}
    assert load_toolbox(tree_root=tmp_path / "no-tree").source == str(DEFAULT_TOOLS_FILE)


MULTI = TestRecord(
    "multi", Status.SUCCESS, ModelFacts("multi", 1),
    rows=(
        ResultRow("multi_a", Status.SUCCESS, 1.0, "fps", extra={"temperature": "61"}),
        ResultRow("multi_b", Status.SUCCESS, 2.0, "fps",
                  extra={"temperature": "62", "power": "300", "status": "hot"}),
    ),
)  # fmt: skip


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_multiple_results_columns_widen_perf_csv_as_madengine_does(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    path.write_text(",".join(PERF_COLUMNS) + "\nearlier" + "," * (len(PERF_COLUMNS) - 1) + "\n")
    rows = perf_rows(MULTI, machine="m")
    PerfCsv(path, grow=True).append(rows)
    written = read(path)
    assert list(written[0]) == [*PERF_COLUMNS, "temperature", "power"]
    assert [(r["model"], r["temperature"], r["power"], r["status"]) for r in written] == [
        ("earlier", "", "", ""), ("multi_a", "61", "", "SUCCESS"),
        ("multi_b", "62", "300", "SUCCESS"),  # a result's `status` never rewrites ours
    ]  # fmt: skip
    supers = perf_super_rows(MULTI, rows)
    assert [list(row) for row in supers] == [list(PERF_SUPER_COLUMNS)] * 2
    assert supers[1]["multi_results"] == '{"temperature": "62", "power": "300", "status": "hot"}'


def test_a_perf_csv_through_a_symlink_is_widened_in_place(tmp_path: Path) -> None:
    real = tmp_path / "shared" / "perf.csv"
    real.parent.mkdir()
    real.write_text("model\nold\n")
    real.chmod(0o664)
    link = tmp_path / "perf.csv"
    link.symlink_to(real)
    PerfCsv(link, grow=True).append(perf_rows(dataclasses.replace(MULTI, rows=MULTI.rows[:1]),
                                              machine="m"))  # fmt: skip
    assert link.is_symlink() and real.stat().st_mode & 0o777 == 0o664
    assert [row["model"] for row in read(real)] == ["old", "multi_a"]
    assert not [path for path in real.parent.iterdir() if path.name.endswith(".partial")]
