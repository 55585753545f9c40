"""Run phases from a build manifest: images pulled from a registry that wants a login."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import docker
import pytest

from tests.conftest import entry
from tests.e2e.test_run import junit_properties, run, unique_tree

pytestmark = pytest.mark.docker
MODELS = ("m0", "m1")
IMAGE = "ci-{model}_dummy.ubuntu.amd"


def manifest(path: Path, references: dict[str, str | None], registry: str | None) -> None:
    """A build_manifest.json as madengine writes it, for models sharing one Dockerfile."""
    images = {}
    for model, reference in references.items():
        images[IMAGE.format(model=model)] = {
            "model": model, "docker_image": IMAGE.format(model=model),
            "dockerfile": "docker/dummy.ubuntu.amd.Dockerfile", "base_docker": "mad-base/busybox",
            "docker_sha": "", "build_duration": 1.5, "build_command": "docker build ...",
            "log_file": f"{model}.build.live.log", "gpu_vendor": "AMD",
            "registry": registry, "registry_image": reference,
        }  # fmt: skip
    document = {
        "built_images": images,
        "built_models": {IMAGE.format(model=m): entry(m) for m in references},
        "context": {"gpu_vendor": "AMD", "docker_env_vars": {}, "docker_mounts": {}},
        "credentials_required": [],
        "summary": {"successful_builds": list(images), "failed_builds": [], "total_build_time": 3},
    }
    path.write_text(json.dumps(document, indent=2))


@pytest.fixture
def pushed(pytester: pytest.Pytester, docker_client: docker.DockerClient, registry) -> str:
    """The tree's image, built here and pushed to the registry, then removed from this
    engine: a host can only get it from the registry. Returns its registry reference."""
    address, login = registry
    root = unique_tree(pytester, [entry(model) for model in MODELS])
    image, _ = docker_client.images.build(
        path=str(root / "docker"), dockerfile="dummy.ubuntu.amd.Dockerfile", rm=True
    )
    reference = f"{address}/pytest-madengine-test/{uuid.uuid4().hex[:10]}:v1"
    image.tag(reference)
    output = docker_client.images.push(reference, auth_config=login)
    assert '"error"' not in output, output
    docker_client.images.remove(reference)
    return reference


def test_a_manifest_run_pulls_each_image_from_the_registry_onto_every_host(
    pytester: pytest.Pytester, pushed: str, registry, test_hosts: Path, real_home: None
) -> None:
    address, login = registry
    manifest(pytester.path / "build_manifest.json", dict.fromkeys(MODELS, pushed), address)
    (pytester.path / "credential.json").write_text(json.dumps({address: login}))
    result = run(pytester, "--mad-manifest=build_manifest.json", f"--mad-hosts={test_hosts}",
                 "-n", "2", "--junitxml", "r.xml")  # fmt: skip
    result.assert_outcomes(passed=2)  # no --mad-tags: the manifest's models ran
    properties = junit_properties(pytester.path / "r.xml")
    assert {props["image"] for props in properties.values()} == {pushed}
    assert {props["image_pulled"] for props in properties.values()} == {"true"}
    assert login["password"] not in result.stdout.str() + result.stderr.str()


def test_a_wrong_login_fails_each_test_in_one_line_without_showing_it(
    pytester: pytest.Pytester, pushed: str, registry
) -> None:
    address, login = registry
    manifest(pytester.path / "build_manifest.json", {"m0": pushed}, address)
    wrong = "not-" + login["password"]
    (pytester.path / "credential.json").write_text(
        json.dumps({address: {"username": login["username"], "password": wrong}})
    )
    result = run(pytester, "--mad-manifest=build_manifest.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"pulling {pushed} on * failed: *"])
    assert wrong not in result.stdout.str() + result.stderr.str()


def test_a_model_the_manifest_did_not_build_fails_and_names_the_manifest(
    pytester: pytest.Pytester, pushed: str, registry
) -> None:
    address, _ = registry
    manifest(pytester.path / "build_manifest.json", {"m0": pushed}, address)
    result = run(pytester, "--mad-manifest=build_manifest.json", "--mad-tags", "m1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["ci-m1_dummy.ubuntu.amd is not in the build manifest"
         " */build_manifest.json (built: ci-m0_dummy.ubuntu.amd)"]
    )  # fmt: skip


def test_an_entry_without_registry_image_runs_the_local_build(
    pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    root = unique_tree(pytester, [entry("m0")])
    name = IMAGE.format(model="m0")
    docker_client.images.build(
        path=str(root / "docker"), dockerfile="dummy.ubuntu.amd.Dockerfile", tag=name, rm=True
    )
    manifest(pytester.path / "build_manifest.json", {"m0": None}, None)
    result = run(pytester, "--mad-manifest=build_manifest.json", "--junitxml", "r.xml")
    result.assert_outcomes(passed=1)
    properties = junit_properties(pytester.path / "r.xml")["m0"]
    assert (properties["image"], properties["image_pulled"]) == (name, "false")
