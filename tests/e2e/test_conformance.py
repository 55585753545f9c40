"""A MAD tree written for madengine (tests/mad_conformance) runs as madengine runs it:
credentials of every shape, every fitting Dockerfile, the workspace, multiple_results,
the timeout line, pre/post scripts and tools, the run options, live build output and
`url` models, each through real containers."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_madengine.backends.docker.containers import KEEP_ALIVE_LABEL
from tests.conftest import DEBIAN_BASE, TEST_IMAGE_LABEL_LINE

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

TREE = Path(__file__).resolve().parents[1] / "mad_conformance"
SECRETS = ("conf-Pa55-word-not-real", "minio-Pa55-not-real", "nas-Pa55-a-not-real")


def conformance_tree(pytester: pytest.Pytester, **placeholders: str) -> Path:
    """Our MAD tree at the session's working directory (madengine's layout: the tree is
    the workspace), with Dockerfiles unique to the test right after FROM, so that
    images do not collide and every RUN runs (and prints) again."""
    root = pytester.path
    shutil.copytree(TREE, root, dirs_exist_ok=True)
    marker = f"{TEST_IMAGE_LABEL_LINE}\nENV CONFORMANCE_TEST={uuid.uuid4().hex}\n"
    for dockerfile in (root / "docker").glob("*.Dockerfile"):
        head, sep, rest = dockerfile.read_text().partition("FROM $BASE_DOCKER\n")
        dockerfile.write_text(head + sep + marker + rest)
    models = root / "models.json"
    text = models.read_text()
    for key, value in placeholders.items():
        text = text.replace(key, value)
    models.write_text(text)
    return root


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args, timeout=300)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def logs(root: Path) -> dict[str, str]:
    """Each model log of the session by its test name (the file name's first part)."""
    found = {}
    for path in (root / "mad_output" / "logs").rglob("*.log"):
        found[path.name.rsplit(".", 2)[0]] = path.read_text()
    return found


def everything_written(root: Path, result: pytest.RunResult) -> str:
    """Terminal, logs, build logs, perf.csv, perf_super.csv, JUnit: all we write."""
    texts = [result.stdout.str(), result.stderr.str()]
    for path in root.rglob("*"):
        shown = path.suffix in (".log", ".csv", ".xml", ".json", ".txt")
        if path.is_file() and shown and path.name != "credential.json":
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


def test_a_mad_tree_runs_as_madengine_runs_it(pytester: pytest.Pytester) -> None:
    root = conformance_tree(pytester)
    (root / "ctx_test").write_text("conformance\n")  # madengine's detected ctx_test
    context = {
        "docker_cpus": "0", "docker_gpus": "1", "gpu_architecture": "gfx90a",
        "docker_build_arg": {"BASE_DOCKER": "mad-base/busybox:latest"},
    }  # fmt: skip
    result = run(
        pytester, "--mad-tags", "conformance", "--mad-context", json.dumps(context),
        "--mad-disable-skip-gpu-arch", "--junitxml", "r.xml",
    )  # fmt: skip
    result.assert_outcomes(passed=12, failed=2)
    result.stdout.fnmatch_lines_random([
        # 1. An entry of the wrong shape fails the model that uses it, by name only.
        "*/credential.json: credential 'NAS_NODES' (model 'cred_list': cred): must be an"
        " object, not a list",
        # 2. Every fitting Dockerfile is a test of its own.
        "PASSED models.json::twin[[]rocm.amd[]]",
        "PASSED models.json::twin[[]ubuntu.amd[]]",
        # 4. A text value cannot meet an expectation.
        "multi_expect_cpus: performance '0-1' is not a number; 'expect' needs one",
        "FAILED models.json::multi_expect - Failed: multi_expect_cpus*",
    ])  # fmt: skip
    perf = rows(root / "perf.csv")
    by_model: dict[str, list[dict[str, str]]] = {}
    for row in perf:
        by_model.setdefault(row["model"], []).append(row)

    # 1. cred: X gives X_<KEY> to the build and the run; no secret in anything we write.
    log = logs(root)
    assert "user=conf-user" in log["cred_user"] and "secret=***" in log["cred_user"]
    assert "password=***" in log["cred_upper"]
    build_log = (root / "mad_output/builds/ci-cred_user_secret.build.log").read_text()
    assert "CONF_CRED_USERNAME=conf-user CONF_CRED_PASSWORD=***" in build_log
    written = everything_written(root, result)
    assert not [secret for secret in SECRETS if secret in written]

    # 2. Dockerfiles: both twins under madengine's name, told apart by docker_file;
    # ctx_test chose the marked Dockerfile; BASE_DOCKER from the context is recorded.
    assert sorted((r["docker_file"], r["metric"]) for r in by_model["twin"]) == [
        ("docker/twin.rocm.amd.Dockerfile", "rocm"),
        ("docker/twin.ubuntu.amd.Dockerfile", "ubuntu"),
    ]
    assert [r["metric"] for r in by_model["ctx"]] == ["marked"]
    assert by_model["based"][0]["base_docker"] == "mad-base/busybox:latest"
    assert {r["launcher"] for r in perf} == {"docker"}

    # 3. The workspace: a fresh run_directory each run, removed after; what the runs
    # copied to its parent and madengine's *_output.csv files reach the host.
    assert "pwd=/myworkspace/run_directory" in log["workspace[n=1]"]
    assert (root / "copied_to_parent_1.txt").read_text() == "run 1\n"
    assert (root / "copied_to_parent_2.txt").read_text() == "run 2\n"
    assert (root / "probe_output.csv").exists() and not (root / "run_directory").exists()
    assert [r["model"] for r in perf if r["model"].startswith("workspace")] == ["workspace"] * 2

    # 4. multiple_results: text kept as written, names as madengine writes them, extra
    # columns in perf_super.csv, the CSV left in the working directory.
    multi = {r["model"]: r for r in perf if r["model"].startswith("multi_")}
    cpus = multi["multi_cpus"]
    assert (cpus["performance"], cpus["metric"], cpus["status"]) == ("0-1", "cpu_list", "SUCCESS")
    assert multi["multi_tput"]["performance"] == "812.5"
    assert multi["multi_parent_parent"]["performance"] == "7"
    assert (root / "perf_conf_multi.csv").exists() and (root / "perf_conf_parent.csv").exists()
    super_rows = {r["model"]: r for r in rows(root / "perf_super.csv")}
    assert json.loads(super_rows["multi_cpus"]["multi_results"]) == {"temperature": "40"}
    # madengine's last two columns, then ours for repeats (empty for a single run) and
    # the verdict against a history (empty without --mad-compare).
    assert list(super_rows["twin"])[-6:] == [
        "configs", "multi_results", "samples", "cv", "ci95", "verdict"
    ]  # fmt: skip
    columns = ("samples", "cv", "ci95", "verdict")
    assert [super_rows["twin"][column] for column in columns] == ["", "", "", ""]

    # 5. The timeout line, first in the model's log.
    lines = log["timeout_line"].splitlines()
    assert lines[0] == "Setting timeout to 45 seconds." and "model starts" in lines[1:]

    # 7. docker_cpus pins the CPUs, docker_gpus picks the GPU; skip_gpu_arch is waived.
    assert by_model["env"][0]["metric"] == "cpus=0_gpus=1"


def test_pre_and_post_scripts_and_tools_run_in_madengines_order(
    pytester: pytest.Pytester,
) -> None:
    root = conformance_tree(pytester)
    context = {
        "tools": [{"name": "tool_A"}, {"name": "tool_B"}],
        "pre_scripts": [{"path": "scripts/common/pre_scripts/note.sh", "args": "ctx pre"}],
        "post_scripts": [{"path": "scripts/common/post_scripts/note.sh", "args": "ctx post"}],
    }
    result = run(pytester, "--mad-tags", "scripts", "--mad-context", json.dumps(context),
                 "--mad-tools-config", "tools/echo_tools.json")  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)
    assert (root / "order_scripted.txt").read_text().splitlines() == [
        "pre B", "pre A", "ctx pre", "model pre", "cmd_B", "cmd_A",
        "model --epochs 1 TOOL_A=on", "model post", "ctx post", "post A", "post B",
    ]  # fmt: skip
    result.stdout.fnmatch_lines(
        ["pre script scripts/common/pre_scripts/refuse.sh failed (exit code 3)"]
    )
    assert "refusing to set up: no GPU here" in result.stdout.str()  # the log's tail
    assert "model" not in (root / "order_prefail.txt").read_text()


def test_skip_model_run_and_keep_model_dir_from_ini_keys(pytester: pytest.Pytester) -> None:
    root = conformance_tree(pytester)
    pytester.makeini("[pytest]\nmad_skip_model_run = true\nmad_keep_model_dir = true\n")
    result = run(pytester, "--mad-tags", "scripted")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*skip-model-run: the container and its scripts ran*"])
    assert (root / "order_scripted.txt").read_text().splitlines() == ["model pre", "model post"]
    kept = root / "run_directory"
    assert (kept / "scripted.sh").exists() and (kept / "note.sh").exists()
    assert rows(root / "perf.csv")[0]["status"] == "SKIPPED"


def test_keep_alive_leaves_the_container_running(pytester: pytest.Pytester, docker_client) -> None:
    root = conformance_tree(pytester)
    result = run(pytester, "--mad-tags", "timeout_line", "--mad-keep-alive", "--junitxml", "r.xml")
    result.assert_outcomes(passed=1)
    name = next(line.split()[2] for line in logs(root)["timeout_line"].splitlines()
                if line.startswith("keep-alive: container"))  # fmt: skip
    container = docker_client.containers.get(name)
    try:
        assert container.status == "running" and KEEP_ALIVE_LABEL in container.labels
        done = container.exec_run(["cat", "/myworkspace/run_directory/slow_start.sh"])
        assert done.exit_code == 0 and b"model starts" in done.output
        assert (root / "run_directory" / "slow_start.sh").exists()  # kept on the host too
        assert f'name="container" value="{name}"' in (root / "r.xml").read_text()
    finally:
        container.remove(force=True)


def test_mad_container_image_runs_that_image_without_a_build(pytester: pytest.Pytester) -> None:
    root = conformance_tree(pytester)
    context = {"MAD_CONTAINER_IMAGE": "mad-base/busybox:latest"}
    result = run(pytester, "--mad-tags", "workspace", "--mad-context", json.dumps(context))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["images: 0 built*"])
    assert {(r["docker_image"], r["docker_file"]) for r in rows(root / "perf.csv")} == {
        ("mad-base/busybox:latest", "")
    }
    assert not list((root / "mad_output").glob("builds/*.log"))


def test_live_output_streams_the_build_masked(pytester: pytest.Pytester) -> None:
    conformance_tree(pytester)
    result = run(pytester, "--mad-tags", "cred_user", "--mad-live-output")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "build sees CONF_CRED_USERNAME=conf-user CONF_CRED_PASSWORD=[*][*][*]",
        "*secret=[*][*][*]",
    ])  # fmt: skip
    assert "conf-Pa55-word-not-real" not in result.stdout.str()


def test_the_default_tools_file_samples_gpu_power(pytester: pytest.Pytester) -> None:
    root = conformance_tree(pytester)
    context = {"tools": [{"name": "gpu_info_power_profiler"}]}
    result = run(pytester, "--mad-tags", "sampled", "--mad-context", json.dumps(context))
    result.assert_outcomes(passed=1)
    samples = (root / "gpu_info_power_profiler_output.csv").read_text().splitlines()
    assert any(line.endswith(",0,321") for line in samples), samples


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def git_daemon(tmp_path: Path, docker_client) -> Iterator[tuple[int, str]]:
    """A bare repository served by `git daemon` on loopback: (port, its HEAD commit)."""
    if docker_client.containers.run(DEBIAN_BASE, ["sh", "-c", "command -v git || true"],
                                    remove=True).strip() == b"":  # fmt: skip
        pytest.skip(f"{DEBIAN_BASE} has no git: run scripts/bootstrap base-images")
    work, repos = tmp_path / "work", tmp_path / "repos"
    work.mkdir()
    (work / "VALUE").write_text("77\n")
    git = ["git", "-c", "user.name=conformance", "-c", "user.email=c@example.invalid"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "VALUE"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "model"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(repos / "model_repo.git")],
                   check=True)  # fmt: skip
    head = subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    port = _free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={repos}",
         "--listen=127.0.0.1", f"--port={port}", str(repos)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"git://127.0.0.1:{port}/model_repo.git"
        for _ in range(50):
            if subprocess.run(["git", "ls-remote", url], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        yield port, head
    finally:
        daemon.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.wait(timeout=10)


def test_a_url_model_is_cloned_in_the_container_and_runs_there(
    pytester: pytest.Pytester, git_daemon: tuple[int, str]
) -> None:
    port, head = git_daemon
    root = conformance_tree(pytester, GIT_PORT=str(port))
    result = run(pytester, "--mad-tags", "url")
    result.assert_outcomes(passed=1)
    log = logs(root)["from_repo"]
    assert f"madengine: git clone git://127.0.0.1:{port}/model_repo.git" in log
    assert "repo says 77" in log
    [row] = rows(root / "perf.csv")
    assert (row["performance"], row["metric"], row["git_commit"]) == ("77", "from_repo", head)
    assert not (root / "model_repo").exists()  # the clone is the model directory: removed
