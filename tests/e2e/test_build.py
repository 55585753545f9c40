"""Build-only sessions: one test per image, pushes to a registry that wants a login,
and the build manifest a run phase reads."""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

import docker
import pytest

from tests.conftest import entry
from tests.e2e.test_run import junit_properties, run, unique_tree

pytestmark = pytest.mark.docker
IMAGE = "ci-{model}_dummy.ubuntu.amd"


def login_file(directory: Path, address: str, login: dict[str, str], **extra: str) -> str:
    """credential.json with the registry's login and a repository of this test's own
    (other sessions push to the same registry); returns that repository."""
    repository = f"pytest-madengine-test/{uuid.uuid4().hex[:10]}"
    entry_ = {**login, "repository": repository, **extra}
    (directory / "credential.json").write_text(json.dumps({address: entry_}))
    return repository


def remove_images(client: docker.DockerClient, *names: str) -> None:
    for name in names:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(name, force=True)


def test_models_sharing_a_dockerfile_are_built_once_and_listed_in_the_manifest(
    pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    unique_tree(pytester, [entry("m0"), entry("m1"), entry("other", tags=["others"])])
    result = run(pytester, "--mad-build-only", "--mad-tags", "dummies", "--junitxml", "r.xml")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "*madengine builds*", "images: 1 built, 1 not built, 0 pushed",
        "madengine: build manifest */build_manifest.json: 2 image(s)",
    ])  # fmt: skip
    properties = junit_properties(pytester.path / "r.xml")
    names = [IMAGE.format(model=model) for model in ("m0", "m1")]
    assert sorted(properties) == names
    assert sorted(p["image_built"] for p in properties.values()) == ["false", "true"]
    assert len({p["docker_sha"] for p in properties.values()}) == 1
    manifest = json.loads((pytester.path / "build_manifest.json").read_text())
    assert sorted(manifest["built_images"]) == names
    assert manifest["built_images"][names[0]]["registry_image"] is None
    assert [m["name"] for m in manifest["built_models"].values()] == ["m0", "m1"]
    assert not (pytester.path / "perf.csv").exists()  # nothing ran
    # The run half of the split: the local images, by their names in the manifest.
    result = run(pytester, "--mad-manifest=build_manifest.json")
    result.assert_outcomes(passed=2)


def test_pushed_images_run_from_the_manifest_once_the_local_ones_are_gone(
    pytester: pytest.Pytester, docker_client: docker.DockerClient, registry
) -> None:
    address, login = registry
    unique_tree(pytester, [entry("m0"), entry("m1")])
    repository = login_file(pytester.path, address, login)
    result = run(pytester, "--mad-build-only", "--mad-tags", "dummies", f"--mad-registry={address}",
                 "--mad-manifest-output", "out/manifest.json")  # fmt: skip
    result.assert_outcomes(passed=2)
    reference = f"{address}/{repository}:{IMAGE.format(model='m0')}"
    result.stdout.fnmatch_lines([f"push {reference}: * Preparing",
                                 f"push {reference}: pushed, digest sha256:*"])  # fmt: skip
    manifest = json.loads((pytester.path / "out" / "manifest.json").read_text())
    image = manifest["built_images"][IMAGE.format(model="m0")]
    assert (image["registry"], image["registry_image"]) == (address, reference)
    names = [IMAGE.format(model=m) for m in ("m0", "m1")]
    pushed = [image["registry_image"] for image in manifest["built_images"].values()]
    remove_images(docker_client, *names, *pushed)
    result = run(pytester, "--mad-manifest=out/manifest.json", "--junitxml", "r.xml")
    result.assert_outcomes(passed=2)
    assert junit_properties(pytester.path / "r.xml")["m0"]["image_pulled"] == "true"
    assert login["password"] not in result.stdout.str() + result.stderr.str()


def test_a_refused_push_fails_its_item_with_the_registry_reason(
    pytester: pytest.Pytester, docker_client: docker.DockerClient, registry
) -> None:
    address, login = registry
    unique_tree(pytester, [entry("m0")])
    wrong = f"canary-{uuid.uuid4().hex}"
    login_file(pytester.path, address, {**login, "password": wrong})
    result = run(pytester, "--mad-build-only", "--mad-tags", "m0", f"--mad-registry={address}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"*pushing ci-m0_dummy.ubuntu.amd to {address}/*:ci-m0_dummy.ubuntu.amd failed: *"]
    )
    assert wrong not in result.stdout.str() + result.stderr.str()
    manifest = json.loads((pytester.path / "build_manifest.json").read_text())
    assert manifest["push_failures"][0]["image"] == "ci-m0_dummy.ubuntu.amd"
    assert manifest["built_images"]["ci-m0_dummy.ubuntu.amd"]["registry_image"] is None
    assert wrong not in (pytester.path / "build_manifest.json").read_text()


def test_a_batch_manifest_builds_its_build_new_entries_and_lists_all(
    pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    unique_tree(pytester, [entry("m0"), entry("m1"), entry("m2")])
    stable = "registry.example:5000/stable/m1:v1"
    batch = [{"model_name": "m0", "build_new": True},
             {"model_name": "m1", "build_new": False, "registry_image": stable}]  # fmt: skip
    (pytester.path / "batch.json").write_text(json.dumps(batch))
    result = run(pytester, "--mad-build-only", "--mad-batch-manifest", "batch.json")
    result.assert_outcomes(passed=1)
    manifest = json.loads((pytester.path / "build_manifest.json").read_text())
    assert sorted(manifest["built_images"]) == [IMAGE.format(model=m) for m in ("m0", "m1")]
    listed = manifest["built_images"][IMAGE.format(model="m1")]
    assert (listed["registry_image"], listed["build_duration"]) == (stable, 0)
    assert [s["model"] for s in manifest["summary"]["successful_builds"]] == ["m0"]


def test_a_failed_build_fails_its_item_and_the_manifest_says_so(
    pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    broken = "FROM mad-base/busybox:latest\nRUN false\n"
    unique_tree(pytester, [entry("m0", dockerfile="docker/broken")],
                {"docker/broken.ubuntu.amd.Dockerfile": broken})  # fmt: skip
    result = run(pytester, "--mad-build-only", "--mad-tags", "m0")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*image ci-m0_broken.ubuntu.amd failed to build: *"])
    manifest = json.loads((pytester.path / "build_manifest.json").read_text())
    assert manifest["built_images"] == {}
    assert manifest["summary"]["failed_builds"][0]["docker_image"] == "ci-m0_broken.ubuntu.amd"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mad-build-only", "--mad-tags", "m0", "--mad-manifest", "m.json"],
         "*--mad-build-only with --mad-manifest*"),
        (["--mad-tags", "m0", "--mad-batch-manifest", "b.json"],
         "*--mad-batch-manifest needs --mad-build-only*"),
        (["--mad-build-only", "--mad-tags", "m0", "--mad-batch-manifest", "b.json"],
         "*--mad-batch-manifest with --mad-tags*"),
    ],
)  # fmt: skip
def test_build_only_option_mistakes_are_usage_errors(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    unique_tree(pytester, [entry("m0")])
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
