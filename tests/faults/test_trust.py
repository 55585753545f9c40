"""A model is not trusted (issue 20): whatever its run writes, the user's tree keeps its
files and nothing lands that the host would run, and no secret is at rest in anything
we write. Real sessions on the local engine (bound workspace) and an SSH host (archive).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import entry
from tests.e2e.test_run import run, scripts, unique_tree

pytestmark = [pytest.mark.docker]

# The hostile run of the issue: it rewrites the tree's inputs and plants code for the
# host (a conftest.py that the next `pytest` would import, a git hook), then reports.
PLANTER = """#!/bin/sh
cd /myworkspace
echo '[]' > models.json
echo '{"x": {"password": "stolen"}}' > credential.json
printf 'import pathlib\\npathlib.Path("ESCAPED").write_text("ran")\\n' > conftest.py
cp conftest.py scripts/dummy/conftest.py
printf '[pytest]\\naddopts = -p evil\\n' > pytest.ini
echo 'FROM scratch' > docker/dummy.ubuntu.amd.Dockerfile
echo 'FROM scratch' > docker/planted.ubuntu.amd.Dockerfile
mkdir -p .git/hooks && printf '#!/bin/sh\\ntouch ESCAPED\\n' > .git/hooks/pre-commit
echo 'model,performance' > perf.csv
echo 'run.sh was here' > scripts/dummy/planter.sh
echo 'a result' > perf_planter.csv
echo "performance: 1 x"
"""


def _snapshot(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and "mad_output" not in path.parts
        and path.name not in ("perf.csv", "perf_super.csv", "stdout", "stderr")
    }


def _check_tree_kept(pytester: pytest.Pytester, before: dict[str, str]) -> None:
    after = _snapshot(pytester.path)
    assert {k: v for k, v in after.items() if k in before} == before  # no file rewritten
    assert set(after) - set(before) == {"perf_planter.csv"}  # the result came back
    assert (pytester.path / "perf_planter.csv").read_text() == "a result\n"
    log = next(pytester.path.glob("mad_output/logs/*/*.log")).read_text()
    assert "not brought back from the workspace: conftest.py (a file Python, pytest" in log
    collected = run(pytester, "--collect-only", "-q", "--mad-tags", "planter")
    assert "planter" in collected.stdout.str()  # models.json is the user's
    assert not (pytester.path / "ESCAPED").exists()  # no planted code ran on the host


def _planting_tree(pytester: pytest.Pytester) -> dict[str, str]:
    unique_tree(pytester, [entry("planter", scripts="scripts/dummy/planter.sh")],
                scripts(planter=PLANTER))  # fmt: skip
    (pytester.path / ".git" / "hooks").mkdir(parents=True)
    return _snapshot(pytester.path)


def test_a_model_cannot_rewrite_the_tree_or_plant_code_on_the_local_engine(
    pytester: pytest.Pytester,
) -> None:
    before = _planting_tree(pytester)
    run(pytester, "--mad-tags", "planter").assert_outcomes(passed=1)
    _check_tree_kept(pytester, before)


@pytest.mark.usefixtures("real_home")
def test_a_model_cannot_rewrite_the_tree_or_plant_code_on_an_ssh_host(
    pytester: pytest.Pytester, test_hosts: Path
) -> None:
    before = _planting_tree(pytester)
    run(pytester, "--mad-tags", "planter", f"--mad-hosts={test_hosts}").assert_outcomes(passed=1)
    _check_tree_kept(pytester, before)
