"""Build-only planning, madengine's registry names, push progress and the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_madengine.backends.docker.publish import PushError, PushProgress, split_reference
from pytest_madengine.core.build import (
    BatchEntry,
    BuildRecord,
    load_batch_manifest,
    registry_reference,
)
from pytest_madengine.core.options import RawOptions, parse_options
from pytest_madengine.core.records import ImageFacts, Status
from pytest_madengine.core.session import MadSession
from pytest_madengine.errors import MadError
from pytest_madengine.reporting.build_manifest import manifest_document
from tests.conftest import entry, write_tree

IMAGE = "ci-m0_dummy.ubuntu.amd"


@pytest.mark.parametrize(
    ("registry", "repository", "expected"),
    [
        (None, None, None),
        ("localhost:5000", None, f"localhost:5000/{IMAGE}"),
        ("localhost:5000/", "team/mad", f"localhost:5000/team/mad:{IMAGE}"),
        ("docker.io", "team/mad", f"team/mad:{IMAGE}"),
        ("dockerhub", None, IMAGE),
    ],
)
def test_registry_reference_follows_madengine(registry, repository, expected) -> None:
    assert registry_reference(IMAGE, registry, repository) == expected


def test_split_reference_takes_the_tag_after_the_last_slash_only() -> None:
    assert split_reference("localhost:5000/ci-x") == ("localhost:5000/ci-x", "latest")
    assert split_reference("localhost:5000/a/b:ci-x") == ("localhost:5000/a/b", "ci-x")
    with pytest.raises(PushError, match="digest"):
        split_reference("localhost:5000/a@sha256:00")


def test_push_progress_says_each_layer_state_once_and_keeps_the_first_error() -> None:
    lines: list[str] = []
    progress = PushProgress("r/x", lines.append)
    for event in [
        {"status": "The push refers to repository [r/x]"},
        {"status": "Preparing", "id": "aaaaaaaaaaaaaaaa"},
        {"status": "Pushing", "id": "aaaaaaaaaaaaaaaa", "progress": "[=> ] 1/9"},
        {"status": "Pushing", "id": "aaaaaaaaaaaaaaaa", "progress": "[==> ] 2/9"},
        {"status": "Pushed", "id": "aaaaaaaaaaaaaaaa"},
        {"aux": {"Tag": "latest", "Digest": "sha256:d", "Size": 1}},
    ]:
        progress.feed(event)
    progress.finished()
    layer = "push r/x: aaaaaaaaaaaa"
    assert lines == [f"{layer} Preparing", f"{layer} Pushing", f"{layer} Pushed",
                     "push r/x: pushed, digest sha256:d"]  # fmt: skip
    progress.feed({"error": "denied: requested access to the resource is denied\nmore"})
    progress.feed({"error": "second"})
    assert progress.error == "denied: requested access to the resource is denied"


def test_a_batch_manifest_loads_and_its_mistakes_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "batch.json"
    path.write_text(json.dumps([{"model_name": "a", "build_new": True, "registry": "r:1"},
                                {"model_name": "b"}]))  # fmt: skip
    assert load_batch_manifest(path) == (BatchEntry("a", True, "r:1"), BatchEntry("b"))
    for document, message in [
        ({"model_name": "a"}, "is a list"),
        ([{"build_new": True}], "entry 0: 'model_name'"),
        ([{"model_name": "a", "build_new": "yes"}], r"entry 0 \(a\): 'build_new'"),
        ([{"model_name": "a", "registry_image": 3}], "'registry_image' must be a string"),
    ]:
        path.write_text(json.dumps(document))
        with pytest.raises(MadError, match=message):
            load_batch_manifest(path)


def session(tmp_path: Path, models: list, files: dict[str, str] | None = None, **raw) -> MadSession:
    root = write_tree(tmp_path / "mad", models, files)
    options = parse_options(RawOptions(root=str(root), build_only=True, base_dir=tmp_path, **raw))
    return MadSession(options)


def test_one_target_per_image_and_the_batch_decides_what_is_built(tmp_path: Path) -> None:
    models = [entry("m0", parametrize=[{"bs": 1}, {"bs": 2}]), entry("m1"), entry("m2")]
    batch = [{"model_name": "m0", "build_new": True},
             {"model_name": "m1", "build_new": False, "registry": "other:5000"}]  # fmt: skip
    (tmp_path / "batch.json").write_text(json.dumps(batch))
    mad = session(tmp_path, models, batch_manifest="batch.json", registry="localhost:5000")
    builds = mad.builds
    assert [t.name for t in builds.targets] == [IMAGE]  # the variants share one image
    assert builds.targets[0].reference == f"localhost:5000/{IMAGE}"
    assert [(t.name, t.reference) for t in builds.listed] == [
        ("ci-m1_dummy.ubuntu.amd", "other:5000/ci-m1_dummy.ubuntu.amd")
    ]


def test_the_manifest_has_madengine_fields_and_no_secret(tmp_path: Path) -> None:
    secret = "canary-s3cret"
    context = json.dumps({"docker_env_vars": {"TOKEN": secret}})
    credentials = json.dumps({"hub": {"username": "u", "password": secret}})
    mad = session(tmp_path, [entry("m0", cred="hub")], {"credential.json": credentials},
                  tags=("m0",), context_json=context)  # fmt: skip
    target = mad.builds.targets[0]
    record = BuildRecord(IMAGE, "m0", Status.SUCCESS, image=ImageFacts(IMAGE, "sha256:1", "b"))
    document = manifest_document([record], mad.builds.targets, (), mad.options)
    image = document["built_images"][IMAGE]
    assert set(image) == {"model", "docker_image", "dockerfile", "base_docker", "docker_sha",
                          "build_duration", "build_command", "log_file", "gpu_vendor",
                          "registry", "registry_image"}  # fmt: skip
    assert document["built_models"][IMAGE]["name"] == target.test.model.name
    assert document["credentials_required"] == ["hub"]
    assert document["context"]["docker_env_vars"] == {"TOKEN": "***"}
    assert secret not in json.dumps(document)
