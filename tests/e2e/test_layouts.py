"""A MAD tree of every shape users give us (tests/mad_layouts), run through pytest and
through the `madengine` command alike: a scripts directory with folders, a linked
Dockerfile folder, files with spaces, links and a `__pycache__`; the tree's own tools
file; multiple_results columns in perf.csv; and `--keep-alive` containers named as
madengine names them."""

from __future__ import annotations

import contextlib
import csv
import json
import py_compile
import shutil
import sys
import uuid
from pathlib import Path

import docker
import pytest

from pytest_madengine.backends.docker.containers import KEEP_ALIVE_LABEL
from pytest_madengine.reporting.perf_csv import PERF_COLUMNS
from tests.conftest import TEST_IMAGE_LABEL_LINE

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

TREE = Path(__file__).resolve().parents[1] / "mad_layouts"
TOOLS = json.dumps({"tools": [{"name": "layout_tool"}, {"name": "rocprof"}]})


def layouts_tree(pytester: pytest.Pytester, keeper: str = "keeper") -> Path:
    """Our tree at the session's directory, links kept as links, a `__pycache__` beside
    the discovery file (as importing it leaves one), and a Dockerfile unique to the test
    (its own image, every RUN again)."""
    root = pytester.path
    shutil.copytree(TREE, root, symlinks=True, dirs_exist_ok=True)
    py_compile.compile(str(root / "scripts/nested/get_models_json.py"), doraise=True)
    dockerfile = root / "docker/layouts.Dockerfile"
    dockerfile.write_text(f"{dockerfile.read_text()}{TEST_IMAGE_LABEL_LINE}\n# {uuid.uuid4()}\n")
    models = root / "models.json"
    models.write_text(models.read_text().replace("KEEPER", keeper))
    return root


def pytest_run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args, timeout=300)


def madengine_run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(sys.executable, "-m", "pytest_madengine", "run", *args, timeout=300)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def logs(root: Path) -> str:
    return "\n".join(path.read_text() for path in (root / "mad_output").rglob("*.log"))


def check_layouts(root: Path, perf: Path, output: str) -> None:
    """Items 1, 3 and 4 of the issue, as one session left them."""
    by_model = {row["model"]: row for row in rows(perf)}
    assert {m: by_model[m]["status"] for m in ("nested/nested", "tooled")} == {
        "nested/nested": "SUCCESS", "tooled": "SUCCESS"
    }, output  # fmt: skip
    text = logs(root)
    assert "layout missing" not in text
    # The tree's tools file, read unasked: its own tool, and its rocprof over ours.
    assert "layout_tool pre: ready" in text
    assert "tool=on wrapped=yes profiler=tree" in text
    # multiple_results columns go to perf.csv after madengine's; perf_super.csv keeps them.
    header = list(by_model["multi_small"])
    assert header[: len(PERF_COLUMNS)] == list(PERF_COLUMNS) and header[-1] == "temperature"
    assert (by_model["multi_small"]["temperature"], by_model["multi_large"]["temperature"]) == (
        "61", "64"
    )  # fmt: skip
    assert by_model["tooled"]["temperature"] == ""
    supers = {row["model"]: row for row in rows(perf.with_name("perf_super.csv"))}
    assert json.loads(supers["multi_large"]["multi_results"]) == {"temperature": "64"}
    assert "temperature" not in supers["multi_large"]


def test_every_layout_the_trees_tools_and_result_columns_through_pytest(
    pytester: pytest.Pytester,
) -> None:
    root = layouts_tree(pytester)
    # A perf.csv from before: its rows stay whole when the result columns widen it.
    (root / "perf.csv").write_text(
        ",".join(PERF_COLUMNS) + "\nearlier" + "," * (len(PERF_COLUMNS) - 1) + "\n"
    )
    result = pytest_run(pytester, "--mad-tags", "layouts", "--mad-context", TOOLS)
    result.assert_outcomes(passed=3)
    check_layouts(root, root / "perf.csv", result.stdout.str())
    earlier = rows(root / "perf.csv")[0]
    assert earlier["model"] == "earlier" and earlier["temperature"] == ""


def test_every_layout_the_trees_tools_and_result_columns_through_madengine(
    pytester: pytest.Pytester,
) -> None:
    root = layouts_tree(pytester)
    result = madengine_run(pytester, "--tags", "layouts", "--additional-context", TOOLS,
                           "-o", "cli.csv")  # fmt: skip
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == 0, output
    check_layouts(root, root / "cli.csv", output)


def test_keep_alive_names_the_container_as_madengine_does(
    pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    """`container_<image>`, so that `docker exec -it container_<image> bash` finds it; a
    second kept run of the image (here through the `madengine` command) takes `_2`."""
    keeper = f"keeper_{uuid.uuid4().hex[:8]}"
    layouts_tree(pytester, keeper)
    name = f"container_ci-{keeper}_layouts"
    try:
        pytest_run(pytester, "--mad-tags", "keeper", "--mad-keep-alive").assert_outcomes(passed=1)
        first = docker_client.containers.get(name)
        assert first.status == "running" and KEEP_ALIVE_LABEL in first.labels
        assert f"keep-alive: container {name} left running" in logs(pytester.path)
        again = madengine_run(pytester, "--tags", "keeper", "--keep-alive")
        assert again.ret == 0, again.stdout.str() + again.stderr.str()
        second = docker_client.containers.get(f"{name}_2")
        assert second.status == "running" and second.id != first.id
        done = second.exec_run(["cat", "/myworkspace/run_directory/keeper.sh"])
        assert done.exit_code == 0 and b"kept:" in done.output
    finally:
        for kept in (name, f"{name}_2"):
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.containers.get(kept).remove(force=True)
