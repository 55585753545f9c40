"""The `madengine` command as users call it (a subprocess): build, push, run, report,
madengine's exit codes, and no secret anywhere."""

from __future__ import annotations

import json
import sys
import uuid

import docker
import pytest

from tests.conftest import entry
from tests.e2e.test_build import login_file, remove_images
from tests.e2e.test_run import FAIL, read_perf, run, scripts, unique_tree

pytestmark = pytest.mark.docker
IMAGE = "ci-{model}_dummy.ubuntu.amd"


def madengine(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(sys.executable, "-m", "pytest_madengine", *args, timeout=300)


def output_of(result: pytest.RunResult) -> str:
    return result.stdout.str() + result.stderr.str()


def test_run_builds_then_runs_and_writes_the_rows_pytest_writes(
    pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    unique_tree(pytester, [entry("dummy")])
    result = madengine(pytester, "run", "--tags", "dummy", "-o", "cli.csv")
    assert result.ret == 0, output_of(result)
    result.stdout.fnmatch_lines(["*Build results*", "*Execution results*",
                                 "*dummy*SUCCESS*42*samples_per_second*"])  # fmt: skip
    assert json.loads((pytester.path / "build_manifest.json").read_text())["built_images"]
    run(pytester, "--mad-tags=dummy", "--mad-perf-csv", "plugin.csv").assert_outcomes(passed=1)
    (cli,) = read_perf(pytester.path / "cli.csv")
    (plugin,) = read_perf(pytester.path / "plugin.csv")
    assert list(cli) == list(plugin)
    durations = ("build_duration", "test_duration")  # when a run is timed differs, not its shape
    assert {k: v for k, v in cli.items() if k not in durations} == {
        k: v for k, v in plugin.items() if k not in durations
    }
    assert cli["test_duration"] and plugin["test_duration"]


def test_build_push_delete_run_round_trip_leaks_no_secret(
    pytester: pytest.Pytester,
    docker_client: docker.DockerClient,
    registry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CI split: a build server pushes, a GPU node without the images pulls and runs.
    The registry password and an unused canary appear in no file and no output."""
    address, login = registry
    unique_tree(pytester, [entry("m0"), entry("m1")])
    canary = f"canary-{uuid.uuid4().hex}"
    login_file(pytester.path, address, login)
    credentials = json.loads((pytester.path / "credential.json").read_text())
    credentials["unused"] = {"username": "nobody", "password": canary}
    (pytester.path / "credential.json").write_text(json.dumps(credentials))
    monkeypatch.setenv("MAD_DOCKERHUB_PASSWORD", canary + "-hub")
    built = madengine(pytester, "build", "--tags", "dummies", "--registry", address,
                      "--summary-output", "build.json", "--live-output")  # fmt: skip
    assert built.ret == 0, output_of(built)
    manifest = json.loads((pytester.path / "build_manifest.json").read_text())
    pushed = [image["registry_image"] for image in manifest["built_images"].values()]
    assert len(pushed) == 2 and all(ref.startswith(f"{address}/") for ref in pushed), pushed
    remove_images(docker_client, *(IMAGE.format(model=m) for m in ("m0", "m1")), *pushed)
    ran = madengine(pytester, "run", "--manifest-file", "build_manifest.json",
                    "--summary-output", "run.json", "--", "--junitxml", "r.xml")  # fmt: skip
    assert ran.ret == 0, output_of(ran)
    assert [row["status"] for row in read_perf(pytester.path / "perf.csv")] == ["SUCCESS"] * 2
    secrets = [login["password"], canary, canary + "-hub"]
    for text in (output_of(built), output_of(ran)):
        assert not [secret for secret in secrets if secret in text]
    written = [path for path in pytester.path.rglob("*")
               if path.is_file() and path.name != "credential.json"]  # fmt: skip
    assert len(written) > 8  # logs, build logs, manifest, summaries, perf.csv, JUnit
    for path in written:
        content = path.read_bytes()
        assert not [s for s in secrets if s.encode() in content], path


def test_a_manifest_in_madengine_format_runs(
    pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    """Every field madengine writes, extras included; the image built without us."""
    root = unique_tree(pytester, [entry("m0")])
    name = IMAGE.format(model="m0")
    docker_client.images.build(path=str(root / "docker"), tag=name, rm=True,
                               dockerfile="dummy.ubuntu.amd.Dockerfile")  # fmt: skip
    build_info = {
        "model": "m0", "docker_image": name, "dockerfile": "docker/dummy.ubuntu.amd.Dockerfile",
        "base_docker": "mad-base/busybox:latest", "docker_sha": "", "build_duration": 2.25,
        "build_command": f"docker build --network=host -t {name} --pull -f x docker",
        "log_file": "m0_dummy.ubuntu.amd.build.live.log", "gpu_vendor": "AMD",
    }  # fmt: skip
    document = {
        "built_images": {name: build_info},
        "built_models": {name: {**entry("m0"), "owner": "", "training_precision": "", "args": "",
                                "cred": "", "env_vars": {"DOCKER_IMAGE_NAME": name}}},
        "context": {"docker_env_vars": {}, "docker_mounts": {}, "docker_build_arg": {},
                    "gpu_vendor": "AMD", "guest_os": "UBUNTU", "docker_gpus": ""},
        "credentials_required": [],
        "summary": {"successful_builds": [build_info], "failed_builds": [],
                    "total_build_time": 2.25, "successful_pushes": [], "failed_pushes": []},
        "deployment_config": {"target": "local"},
    }  # fmt: skip
    (pytester.path / "madengine_manifest.json").write_text(json.dumps(document, indent=2))
    result = madengine(pytester, "run", "--manifest-file", "madengine_manifest.json")
    assert result.ret == 0, output_of(result)
    (row,) = read_perf(pytester.path / "perf.csv")
    assert (row["model"], row["status"], row["build_duration"]) == ("m0", "SUCCESS", "2.25")


BROKEN = "FROM mad-base/busybox:latest\nRUN false\n"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "--tags", "m0"], 0, "*m0*SUCCESS*"),
        (["report", "html", "missing.csv"], 1, "*missing.csv: no such file*"),
        (["build", "--tags", "broken"], 2, "*broken*FAILURE*"),
        (["run", "--tags", "fails"], 3, "*fails*FAILURE*exit code 1*"),
        (["run", "--tags", "m0", "--timeout", "-5"], 4, "*--timeout: -1 *"),
        (["run", "--tags", "nothing"], 4, "*'nothing' selects no model*"),
        (["build", "--tags", "m0", "--batch-manifest", "b.json"], 4, "*give one*"),
        (["run", "--no-such-option"], 4, "*No such option*"),
    ],
)  # fmt: skip
def test_each_exit_code_of_madengine(
    pytester: pytest.Pytester, docker_client: docker.DockerClient,
    args: list[str], code: int, message: str,
) -> None:  # fmt: skip
    models = [entry("m0"), entry("broken", dockerfile="docker/broken"),
              entry("fails", scripts="scripts/dummy/fail.sh")]  # fmt: skip
    files = {"docker/broken.ubuntu.amd.Dockerfile": BROKEN, **scripts(fail=FAIL)}
    unique_tree(pytester, models, files)
    result = madengine(pytester, *args)
    assert result.ret == code, output_of(result)
    pytest.LineMatcher(output_of(result).splitlines()).fnmatch_lines([message])


def test_data_config_names_the_data_file_that_models_read(pytester: pytest.Pytester) -> None:
    """madengine's --data-config: the data sources come from that file, not from the
    tree's data.json (which here points nowhere); a missing file is exit 4 at once.
    --ignore-deprecated and --cleanup-perf are taken and change nothing: a model marked
    deprecated runs, and perf.csv stays."""
    need = '#!/bin/sh\ntest -f "$MAD_DATAHOME/README.txt" || exit 4\necho "performance: 1 ok"\n'
    model = entry("needs_data", data="d", scripts="scripts/dummy/need.sh", is_deprecated=True)
    unique_tree(pytester, [model], scripts(need=need))
    (pytester.path / "dataset").mkdir()
    (pytester.path / "dataset" / "README.txt").write_text("sample\n")
    nowhere = {"d": {"local": {"path": str(pytester.path / "nowhere")}}}
    (pytester.path / "data.json").write_text(json.dumps(nowhere))
    (pytester.path / "other").mkdir()
    there = {"d": {"local": {"path": str(pytester.path / "dataset")}}}
    (pytester.path / "other" / "data.json").write_text(json.dumps(there))
    missing = madengine(pytester, "run", "-t", "needs_data", "--data-config", "nope.json")
    assert missing.ret == 4, output_of(missing)
    missing.stderr.fnmatch_lines(["madengine: --data-config nope.json: No such file*"])
    assert "Build results" not in output_of(missing)
    result = madengine(pytester, "run", "-t", "needs_data", "--data-config", "other/data.json",
                       "--ignore-deprecated", "--cleanup-perf")  # fmt: skip
    assert result.ret == 0, output_of(result)
    (row,) = read_perf(pytester.path / "perf.csv")
    assert (row["status"], row["dataname"], row["data_provider_type"]) == ("SUCCESS", "d", "local")
