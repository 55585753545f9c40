"""The steps of a run (madengine's order), tools files and their stacking, and the
container runner script itself, run here with sh in a directory laid out as the
container's workspace (no engine needed)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from pytest_madengine import workspace
from pytest_madengine.backends import RunSpec, collected
from pytest_madengine.backends.collect import Landing, extract_workspace, refusal
from pytest_madengine.contract import base_docker_of
from pytest_madengine.errors import MadError
from pytest_madengine.tools import DEFAULT_TOOLS_FILE, load_toolbox
from pytest_madengine.tools.files import load_tools_file
from pytest_madengine.workspace import (
    WORKSPACE,
    CopyListings,
    ModelRun,
    Script,
    parse_scripts,
    render,
    step_failure,
    steps,
    timeout_line,
)

NOTE = '#!/bin/sh\necho "$*" >> ../order.txt\n'
MODEL = '#!/bin/sh\necho "model $*" >> ../order.txt\necho "performance: 1 ok"\n'


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "mad"
    for path, text in {
        "scripts/m/run.sh": MODEL,
        "scripts/common/pre_scripts/note.sh": NOTE,
        "scripts/common/post_scripts/note.sh": NOTE,
        "scripts/common/pre_scripts/refuse.sh": "#!/bin/sh\nexit 3\n",
    }.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def model_run(tree: Path, **fields) -> ModelRun:
    spec = RunSpec(image="img", command=(), workdir=WORKSPACE, log_path=tree / "log")
    values = {"spec": spec, "tree_root": tree, "script_dir": "scripts/m",
              "argv": ("bash", "run.sh", "--epochs", "1"), **fields}  # fmt: skip
    return ModelRun(**values)


def note(tree: Path, kind: str, args: str) -> Script:
    path = f"scripts/common/{kind}_scripts/note.sh"
    return Script(path, tuple(args.split()), tree / path)


def run_here(spec: RunSpec, workspace: Path) -> subprocess.CompletedProcess[str]:
    """The spec run as a process backend would: its copies under `workspace`."""
    for host, container in spec.copies:
        target = workspace / Path(container).relative_to(WORKSPACE)
        target.parent.mkdir(parents=True, exist_ok=True)
        if host.is_dir():
            shutil.copytree(host, target, dirs_exist_ok=True)
        else:
            shutil.copy(host, target)
    return subprocess.run(
        list(spec.command), cwd=workspace, capture_output=True, text=True, timeout=60,
        env={**os.environ, **spec.env},
    )  # fmt: skip


def test_the_runner_keeps_madengines_order_and_cleans_up(tree: Path, tmp_path: Path) -> None:
    run = model_run(
        tree, timeout_line=timeout_line(45), pre_scripts=(note(tree, "pre", "ctx pre"),),
        post_scripts=(note(tree, "post", "ctx post"),), wrappers=("echo cmd_B >> ../order.txt &&",
        "echo cmd_A >> ../order.txt &&"),
    )  # fmt: skip
    workspace = tmp_path / "ws"
    done = run_here(render(run), workspace)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "Setting timeout to 45 seconds."
    assert (workspace / "order.txt").read_text().splitlines() == [
        "ctx pre", "cmd_B", "cmd_A", "model --epochs 1", "ctx post"
    ]  # fmt: skip
    assert not (workspace / "run_directory").exists()  # removed: keep-model-dir not asked


def test_a_failing_pre_script_stops_the_run_and_names_itself(tree: Path, tmp_path: Path) -> None:
    refuse = Script("scripts/common/pre_scripts/refuse.sh", (), None)
    run = model_run(tree, pre_scripts=(refuse,), keep_model_dir=True)
    workspace = tmp_path / "ws"
    done = run_here(render(run), workspace)
    assert done.returncode == 3
    failure = step_failure((workspace / ".madengine/failed").read_text())
    assert failure is not None
    assert failure.reason() == (
        "pre script scripts/common/pre_scripts/refuse.sh failed (exit code 3)"
    )
    assert not (workspace / "order.txt").exists()  # the model never ran
    assert (workspace / "run_directory" / "refuse.sh").exists()  # kept, as asked


def test_skip_model_run_runs_everything_but_the_model(tree: Path, tmp_path: Path) -> None:
    run = model_run(tree, skip_model=True, pre_scripts=(note(tree, "pre", "p"),),
                    post_scripts=(note(tree, "post", "q"),))  # fmt: skip
    workspace = tmp_path / "ws"
    done = run_here(render(run), workspace)
    assert done.returncode == 0 and "Skipping model run" in done.stdout
    assert (workspace / "order.txt").read_text().split() == ["p", "q"]


def test_args_with_shell_characters_stay_words(tree: Path, tmp_path: Path) -> None:
    run = model_run(tree, argv=("bash", "run.sh", "$(touch pwned)", "a b;c"))
    workspace = tmp_path / "ws"
    assert run_here(render(run), workspace).returncode == 0
    assert (workspace / "order.txt").read_text() == "model $(touch pwned) a b;c\n"
    assert not list(workspace.rglob("pwned"))


def test_render_copies_what_the_run_needs_and_leaves_it_out_of_the_way_back(tree: Path) -> None:
    spec = render(model_run(tree, pre_scripts=(note(tree, "pre", "x"),), result_file="r.csv"))
    containers = {container for _, container in spec.copies}
    assert {"/myworkspace/scripts/m", "/myworkspace/scripts/common",
            "/myworkspace/.madengine/run.sh"} <= containers  # fmt: skip
    assert spec.result_files[:2] == ("/myworkspace/r.csv", "/myworkspace/run_directory/r.csv")
    # Nothing we put in comes back, nor the run directory unless kept; the rest does.
    for path in ("scripts/m/run.sh", "scripts/common/pre_scripts/note.sh", ".madengine/failed",
                 "run_directory/out.txt"):  # fmt: skip
        assert not collected(path, spec.collect_skip), path
    assert collected("copied_up.txt", spec.collect_skip)
    assert collected("scripts/m/new_file", spec.collect_skip)
    kept = render(model_run(tree, keep_model_dir=True))
    assert collected("run_directory/out.txt", kept.collect_skip)


def test_a_sessions_listings_walk_each_copied_folder_once(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of tests share a few script folders (issue #23): the session walks each
    once, and every test's spec is the same as one rendered on its own."""
    walked: list[Path] = []
    real_entries = workspace.copy_entries

    def counted(host: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        walked.append(host)
        return real_entries(host, *args, **kwargs)

    monkeypatch.setattr(workspace, "copy_entries", counted)
    listings = CopyListings()
    specs = [render(model_run(tree), listings) for _ in range(5)]
    assert sorted(walked) == [tree / "scripts/common", tree / "scripts/m"]
    assert all(spec == render(model_run(tree)) for spec in specs)


def test_a_dockerfiles_base_is_read_again_once_it_changed(tmp_path: Path) -> None:
    dockerfile = tmp_path / "m.Dockerfile"
    dockerfile.write_text("ARG BASE_DOCKER=one:1\nFROM $BASE_DOCKER\n")
    assert base_docker_of(dockerfile, {}) == "one:1" == base_docker_of(dockerfile, {})
    dockerfile.write_text("ARG BASE_DOCKER=another:22\nFROM $BASE_DOCKER\n")
    assert base_docker_of(dockerfile, {}) == "another:22"
    assert base_docker_of(dockerfile, {"BASE_DOCKER": "given:3"}) == "given:3"


def test_timeout_lines() -> None:
    assert timeout_line(7200) == "Setting timeout to 7200 seconds."
    assert timeout_line(90.0) == "Setting timeout to 90 seconds."
    assert timeout_line(None) == "Setting timeout to 0 seconds."


def test_script_lists_are_checked_with_the_place_they_came_from(tree: Path) -> None:
    assert parse_scripts([{"path": "scripts/common/pre_scripts/note.sh", "args": "a 'b c'"}],
                         "context 'pre_scripts'", tree)[0].args == ("a", "b c")  # fmt: skip
    for value, message in [
        ({"path": "x"}, "expected a list"),
        ([{"path": "../outside.sh"}], "must stay inside the MAD tree"),
        ([{"path": "scripts/missing.sh"}], "script 'scripts/missing.sh' not found"),
        ([{"path": "scripts/m/run.sh", "args": {"a": 1}}], "'args' must be a string or a list"),
    ]:
        with pytest.raises(MadError, match=message):
            parse_scripts(value, "model 'm': 'pre_scripts'", tree)


def write_tools(path: Path, tools: dict) -> Path:
    path.write_text(json.dumps({"tools": tools}))
    return path


def test_tools_stack_in_madengines_order(tree: Path, tmp_path: Path) -> None:
    pre, post = "scripts/common/pre_scripts/note.sh", "scripts/common/post_scripts/note.sh"
    tools_file = write_tools(tmp_path / "tools.json", {
        name: {"pre_scripts": [{"path": pre, "args": f"pre {name}"}], "cmd": f"cmd_{name}",
               "env_vars": {f"VAR_{name}": "1"},
               "post_scripts": [{"path": post, "args": f"post {name}"}]}
        for name in ("A", "B")
    })  # fmt: skip
    box = load_toolbox(tools_file)
    base = model_run(tree, pre_scripts=(note(tree, "pre", "ctx"),),
                     post_scripts=(note(tree, "post", "ctx"),))  # fmt: skip
    run = box.apply(base, [{"name": "A"}, {"name": "B"}])
    assert [script.args for script in run.pre_scripts] == [("pre", "B"), ("pre", "A"), ("ctx",)]
    assert [script.args for script in run.post_scripts] == [("ctx",), ("post", "A"), ("post", "B")]
    assert run.wrappers == ("cmd_B", "cmd_A")
    assert run.spec.env == {"VAR_A": "1", "VAR_B": "1"}
    # A context item overrides the command and adds variables; a prefix is put on once.
    again = box.apply(base, [{"name": "A", "cmd": "other", "env_vars": {"X": "2"}},
                             {"name": "B", "cmd": "other"}])  # fmt: skip
    assert again.wrappers == ("other",) and again.spec.env["X"] == "2"


def test_unknown_and_malformed_tools_name_the_file_and_the_tool(tmp_path: Path) -> None:
    box = load_toolbox(write_tools(tmp_path / "t.json", {"A": {"cmd": "a"}}))
    with pytest.raises(MadError, match=r"unknown tool 'rocprof' in .*t.json \(known: A\)"):
        box.names([{"name": "rocprof"}])
    with pytest.raises(MadError, match=r"t2.json: tool 'bad': 'env_vars' must be an object"):
        load_tools_file(write_tools(tmp_path / "t2.json", {"bad": {"env_vars": ["x"]}}))
    (tmp_path / "t3.json").write_text('{"nothing": 1}')
    with pytest.raises(MadError, match=r"t3.json: expected \{\"tools\""):
        load_tools_file(tmp_path / "t3.json")


def test_our_default_tools_file_knows_the_profilers_and_brings_its_scripts(tree: Path) -> None:
    box = load_toolbox()
    assert box.source == str(DEFAULT_TOOLS_FILE)
    for name in ("rocprof", "rocprofv3", "rpd", "rccl_trace", "miopen_trace",
                 "gpu_info_power_profiler", "gpu_info_vram_profiler"):  # fmt: skip
        assert name in box.tools
    run = box.apply(model_run(tree), [{"name": "gpu_info_power_profiler"}])
    [start] = run.pre_scripts
    assert start.source is not None and start.source.is_file()  # beside the tools file
    assert start.args == ("start", "power") and run.spec.env["MAD_SAMPLER_INTERVAL"] == "0.1"
    # Every tool of the file applies to a tree that has none of its scripts.
    for name in box.tools:
        box.apply(model_run(tree), [{"name": name}])


def _tar(entries: dict[str, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.SYMTYPE
                info.linkname = "/etc/passwd"
                archive.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o755
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_workspace_extraction_brings_back_only_safe_new_files(tmp_path: Path) -> None:
    archive = _tar({
        "myworkspace/left.txt": b"left", "myworkspace/sub/deep.csv": b"a,b",
        "myworkspace/scripts/m/run.sh": b"ours", "myworkspace/run_directory/big.bin": b"x",
        "myworkspace/../escape.txt": b"no", "myworkspace/link": None,
    })  # fmt: skip
    chunks = [archive[i : i + 100] for i in range(0, len(archive), 100)]
    skip = frozenset({"scripts/m/run.sh", "run_directory/"})
    written = extract_workspace(chunks, Landing(tmp_path / "host"), skip).written
    assert sorted(written) == ["left.txt", "sub/deep.csv"]
    assert (tmp_path / "host/sub/deep.csv").read_bytes() == b"a,b"
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "host/link").exists()


def test_a_run_with_nothing_to_copy_in_still_renders(tree: Path) -> None:
    spec = render(dataclasses.replace(model_run(tree), script_dir="scripts/absent"))
    assert ("copy", "1") not in zip(spec.command, spec.command[1:], strict=False)


@pytest.mark.parametrize(
    "relative",
    ["conftest.py", "run_directory/conftest.py", "tests/test_x.py", "yaml.py", "a/b.pth",
     "pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini", "models.json",
     "scripts/d/models.json", "credential.json", "data.json", "scripts/common/tools.json",
     "docker/evil.ubuntu.amd.Dockerfile", "Dockerfile", ".git/hooks/pre-commit",
     "x/.hidden", "perf.csv", "out/perf_super.csv", "__pycache__/m.cpython-311.pyc",
     "ctx_test"],
)  # fmt: skip
def test_a_run_never_writes_what_python_pytest_or_the_tree_reads(relative: str) -> None:
    assert refusal(relative) is not None


@pytest.mark.parametrize("relative", ["perf_dummy.csv", "run_directory/out.log", "x/y.json"])
def test_result_files_may_come_back(relative: str) -> None:
    assert refusal(relative) is None


def test_a_landing_keeps_the_trees_files_and_replaces_only_its_own(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "outside").mkdir(parents=True)
    (tree / "notes.txt").write_text("the user's")
    (tree / "via").symlink_to(tree / "outside")
    landing = Landing(tree, keep_out=((tree / "mad_output").resolve(),),
                      ledger=tmp_path / "collected.json")  # fmt: skip

    def bring(files: dict[str, bytes]) -> list[tuple[str, str]]:
        archive = _tar({f"myworkspace/{name}": data for name, data in files.items()})
        return extract_workspace([archive], landing, frozenset()).refused

    refused = bring({"notes.txt": b"model's", "via/x.txt": b"x", "mad_output/logs/a.log": b"a",
                     "perf_dummy.csv": b"1", "run.sh": b"#!/bin/sh"})  # fmt: skip
    refused_paths = sorted(path for path, _ in refused)
    assert refused_paths == ["mad_output/logs/a.log", "notes.txt", "via/x.txt"]
    assert (tree / "notes.txt").read_text() == "the user's"
    assert not (tree / "outside" / "x.txt").exists()
    assert (tree / "run.sh").stat().st_mode & 0o111 == 0  # nothing executable lands
    # A later run's result replaces the file we brought back, not one the user changed.
    assert bring({"perf_dummy.csv": b"2"}) == []
    assert (tree / "perf_dummy.csv").read_bytes() == b"2"
    (tree / "perf_dummy.csv").write_bytes(b"edited by the user")
    assert [path for path, _ in bring({"perf_dummy.csv": b"3"})] == ["perf_dummy.csv"]
    assert (tree / "perf_dummy.csv").read_bytes() == b"edited by the user"


def test_a_log_stream_masks_a_secret_split_across_chunks_before_it_reaches_the_file(
    tmp_path: Path,
) -> None:
    from pytest_madengine.runlog import LogStream

    seen: list[bytes] = []
    log = LogStream(tmp_path / "x.log", ("hunter22",), seen.append, header=b"notes\n")
    with log.open() as stream:
        stream.write(b"login hun")
        assert b"hun" not in (tmp_path / "x.log").read_bytes()  # held back: it may be one
        stream.write(b"ter22 ok\nnext ")
    assert (tmp_path / "x.log").read_bytes() == b"login *** ok\nnext "
    assert b"".join(seen) == b"login *** ok\nnext "
    log.rewrite([b"again hunter", b"22\n"])
    assert (tmp_path / "x.log").read_bytes() == b"notes\nagain ***\n"


def test_a_repeated_model_runs_its_warmups_then_its_repetitions_each_after_a_marker(
    tmp_path: Path,
) -> None:
    run = model_run(tmp_path, argv=("./run.sh",), repeat=2, warmup=1)
    model = ["model", "2", "", "./run.sh"]
    assert steps(run)[-(2 + 3 * 7) :] == [
        "say", "1", "pytest-madengine: warmup run 1 of 1", *model,
        "say", "1", "pytest-madengine: repetition 1 of 2", *model,
        "say", "1", "pytest-madengine: repetition 2 of 2", *model,
        "collect", "0",
    ]  # fmt: skip
