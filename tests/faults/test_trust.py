"""A model is not trusted (issue 20): whatever its run writes, the user's tree keeps its
files and nothing lands that the host would run, and no secret is at rest in anything
we write. Real sessions on the local engine (bound workspace) and an SSH host (archive).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import entry
from tests.e2e.test_k8s import k8s_args, namespace  # noqa: F401 - a fixture
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
        and path.name not in (".perf.csv.lock", ".perf_super.csv.lock")  # their writers' lock
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


# ---- no secret at rest, under every backend ----

SECRET = "pa55-Wd-" + "e1a9c0ffee"  # a credential.json password, and its forms below
# Echoes its credential every way a model might while it runs (plain, base64, in a
# multiple_results row's name), sleeping between, so the files can be read meanwhile.
ECHOER = """#!/bin/sh
for i in 1 2 3 4 5 6; do
  echo "try $i: login $MODEL_CRED_USERNAME:$MODEL_CRED_PASSWORD"
  printf '%s' "$MODEL_CRED_PASSWORD" | base64
  echo "$MODEL_CRED_PASSWORD" | base64
  sleep 0.5
done
printf 'model,performance,metric\\n%s,5,fps\\n' "$MODEL_CRED_PASSWORD" > ../secret_rows.csv
echo "performance: 7 fps"
"""


def _secret_forms() -> list[bytes]:
    import base64

    raw = SECRET.encode()
    return [raw, base64.b64encode(raw).rstrip(b"="), base64.b64encode(raw + b"\n")[:12]]


def _files_holding_a_secret(*roots: Path) -> list[str]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            try:
                data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            except OSError:  # gone meanwhile (a partial file moved in)
                continue
            if any(form in data for form in _secret_forms()):
                found.append(str(path))
    return found


def _secret_tree(pytester: pytest.Pytester, extra_credentials: dict | None = None) -> None:
    import json

    model = entry("echoer", scripts="scripts/dummy/echoer.sh", cred="MODEL_CRED",
                  args=f"--token {SECRET}")  # fmt: skip
    rows = entry("rows", scripts="scripts/dummy/echoer.sh", cred="MODEL_CRED",
                 multiple_results="secret_rows.csv")  # fmt: skip
    unique_tree(pytester, [model, rows], scripts(echoer=ECHOER))
    login = {"MODEL_CRED": {"username": "mad-user", "password": SECRET}}
    (pytester.path / "credential.json").write_text(
        json.dumps({**login, **(extra_credentials or {})})
    )


def _watched_session(pytester: pytest.Pytester, *args: str) -> tuple[int, str, list[str]]:
    """Runs a session, reading every file of the tree (the output below it) while it
    runs: (exit code, output, files that held a secret at some moment)."""
    import subprocess
    import sys
    import time

    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args]
    session = subprocess.Popen(argv, cwd=pytester.path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)  # fmt: skip
    seen: set[str] = set()
    deadline = time.monotonic() + 400
    while session.poll() is None and time.monotonic() < deadline:
        seen.update(_files_holding_a_secret(pytester.path))
        time.sleep(0.1)
    output, _ = session.communicate(timeout=60)
    text = output.decode(errors="replace")
    seen.update(_files_holding_a_secret(pytester.path))
    assert not any(form.decode() in text for form in _secret_forms()), "secret on the terminal"
    inputs = {str(pytester.path / name) for name in ("credential.json", "models.json")}
    return session.returncode, text, sorted(seen - inputs)  # the user's own files aside


SESSION_ARGS = ("--mad-tags", "echoer,rows", "--junitxml", "r.xml", "--mad-summary", "s.json")


@pytest.mark.parametrize("live", [False, True], ids=["quiet", "live"])
def test_no_secret_is_at_rest_under_docker(pytester: pytest.Pytester, live: bool) -> None:
    _secret_tree(pytester)
    code, output, leaked = _watched_session(
        pytester, *SESSION_ARGS, *(["--mad-live-output", "-s"] if live else [])
    )
    assert code == 0, output
    assert leaked == []
    assert "rows_***" in (pytester.path / "perf.csv").read_text()  # the row, masked


@pytest.mark.slurm
@pytest.mark.parametrize("live", [False, True], ids=["quiet", "live"])
def test_no_secret_is_at_rest_under_slurm(
    pytester: pytest.Pytester, slurm: dict, live: bool
) -> None:
    _secret_tree(pytester)
    code, output, leaked = _watched_session(
        pytester, *SESSION_ARGS, "--mad-deploy", "slurm",
        *(["--mad-live-output", "-s"] if live else []),
    )  # fmt: skip
    assert code == 0, output
    assert leaked == []
    assert ("try 6: login ***" in output) if live else ("rows" in output), output


def test_a_slurm_dry_run_writes_no_secret(pytester: pytest.Pytester, slurm: dict) -> None:
    _secret_tree(pytester)
    _, output, leaked = _watched_session(
        pytester, *SESSION_ARGS, "--mad-deploy", "slurm", "--mad-slurm-dry-run"
    )
    assert leaked == []
    assert "export MODEL_CRED_PASSWORD, MAD_SECRET_ARG_" in output


@pytest.mark.k8s
@pytest.mark.parametrize("live", [False, True], ids=["quiet", "live"])
def test_no_secret_is_at_rest_under_kubernetes(
    pytester: pytest.Pytester,
    live: bool,
    registry: tuple[str, dict[str, str]],
    namespace: str,  # noqa: F811 - the fixture imported above
    k8s_cluster: object,
) -> None:
    address, login = registry
    _secret_tree(pytester, {address: login})
    code, output, leaked = _watched_session(
        pytester, *SESSION_ARGS, *k8s_args(namespace, registry),
        *(["--mad-live-output", "-s"] if live else []),
    )  # fmt: skip
    assert code == 0, output
    assert leaked == []
