"""Reading madengine's build_manifest.json and credential.json for a run phase."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_madengine.core.manifest import load_manifest, with_registry
from pytest_madengine.credentials import MASK, load_credentials, registry_key, registry_of
from pytest_madengine.errors import MadError

IMAGE = "ci-dummy_dummy.ubuntu.amd"


def manifest_file(tmp_path: Path, **image_fields) -> Path:
    entry = {"model": "dummy", "docker_image": IMAGE, "dockerfile": "docker/dummy.ubuntu.amd",
             "base_docker": "rocm/pytorch", "docker_sha": "sha256:abc", "build_duration": 12.5,
             "build_command": "docker build ...", "log_file": "x.log", "gpu_vendor": "AMD",
             **image_fields}  # fmt: skip
    document = {
        "built_images": {IMAGE: entry},
        "built_models": {IMAGE: {"name": "dummy", "tags": ["dummies"]}},
        "context": {"gpu_vendor": "AMD"},
        "credentials_required": [],
        "summary": {"successful_builds": [IMAGE], "failed_builds": [], "total_build_time": 12.5},
    }
    path = tmp_path / "build_manifest.json"
    path.write_text(json.dumps(document))
    return path


def test_a_manifest_names_each_model_s_image_and_registry(tmp_path: Path) -> None:
    manifest = load_manifest(
        manifest_file(tmp_path, registry="localhost:5000", registry_image=f"localhost:5000/{IMAGE}")
    )
    assert manifest.model_names == ("dummy",)
    image = manifest.image_for(IMAGE, "dummy")
    assert image is not None and image.pulled
    assert image.reference == f"localhost:5000/{IMAGE}"
    assert (image.base_docker, image.build_duration) == ("rocm/pytorch", 12.5)


def test_an_image_is_found_by_model_when_its_name_differs(tmp_path: Path) -> None:
    manifest = load_manifest(manifest_file(tmp_path))
    image = manifest.image_for("ci-dummy_dummy.ubuntu.nvidia", "dummy")
    assert image is not None and image.name == IMAGE
    assert manifest.image_for("ci-other_x", "other") is None


def test_without_registry_image_the_build_name_runs_and_nothing_is_pulled(tmp_path) -> None:
    image = load_manifest(manifest_file(tmp_path)).images[IMAGE]
    assert not image.pulled and image.reference == IMAGE


def test_a_registry_override_moves_every_image(tmp_path: Path) -> None:
    path = manifest_file(tmp_path, registry="old:5000", registry_image=f"old:5000/team/{IMAGE}:v1")
    image = load_manifest(path, registry="127.0.0.1:5000").images[IMAGE]
    assert image.reference == f"127.0.0.1:5000/team/{IMAGE}:v1"
    assert image.registry == "127.0.0.1:5000"


@pytest.mark.parametrize(
    ("reference", "moved"),
    [
        ("ci-x", "r:1/ci-x"),
        ("team/ci-x:v1", "r:1/team/ci-x:v1"),
        ("localhost/ci-x", "r:1/ci-x"),
        ("reg.example.com/a/b:t", "r:1/a/b:t"),
    ],
)
def test_with_registry(reference: str, moved: str) -> None:
    assert with_registry(reference, "r:1") == moved


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"built_images": }', "build_manifest.json:1:18: invalid JSON: Expecting value"),
        ("[]", "build_manifest.json: expected an object with 'built_images' (a build manifest)"),
        ('{"built_images": {"a": 1}}',
         "build_manifest.json: built_images['a']: expected an object, got int"),
        ('{"built_images": {"a": {"registry_image": 5}}}',
         "build_manifest.json: built_images['a']: 'registry_image' must be a string, got 5"),
        ('{"built_images": {"a": {"build_duration": "slow"}}}',
         "build_manifest.json: built_images['a']: 'build_duration' must be a number, got 'slow'"),
        ('{"built_images": {}, "built_models": []}',
         "build_manifest.json: 'built_models' must be an object"),
    ],
)  # fmt: skip
def test_bad_manifests(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "build_manifest.json"
    path.write_text(text)
    with pytest.raises(MadError) as caught:
        load_manifest(path)
    assert str(caught.value).replace(f"{tmp_path}/", "") == message


def test_a_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(MadError, match=r"^--mad-manifest .*/none.json: No such file or directory$"):
        load_manifest(tmp_path / "none.json")


def test_registry_keys_as_madengine_writes_them() -> None:
    assert [registry_key(r) for r in (None, "docker.io", "localhost:5000")] == [
        "dockerhub", "dockerhub", "localhost:5000"
    ]  # fmt: skip
    assert registry_of("127.0.0.1:5000/team/img:v1") == "127.0.0.1:5000"
    assert registry_of("rocm/pytorch:latest") is None


def test_credentials_give_registry_logins_and_hide_secrets(tmp_path: Path) -> None:
    (tmp_path / "credential.json").write_text(json.dumps({
        "localhost:5000": {"username": "ci", "password": "s3cret-Pa55"},
        "hf": {"token": "hf_abcdef"},
    }))  # fmt: skip
    credentials = load_credentials(tmp_path, environ={})
    assert credentials.registry_auth("localhost:5000") == {
        "username": "ci",
        "password": "s3cret-Pa55",
    }
    assert credentials.registry_auth("elsewhere:5000") is None
    shown = credentials.redact("pull failed: s3cret-Pa55 and hf_abcdef rejected for ci")
    assert shown == f"pull failed: {MASK} and {MASK} rejected for ci"


def test_dockerhub_login_from_the_environment_over_the_file(tmp_path: Path) -> None:
    (tmp_path / "credential.json").write_text('{"dockerhub": {"username": "a", "password": "b"}}')
    environ = {"MAD_DOCKERHUB_USER": "env-user", "MAD_DOCKERHUB_PASSWORD": "env-pass"}
    credentials = load_credentials(tmp_path, environ=environ)
    assert credentials.registry_auth(None) == {"username": "env-user", "password": "env-pass"}
    assert load_credentials(tmp_path / "nowhere", environ={}).registry_auth(None) is None


def test_a_bad_credential_entry_is_named_when_used_never_shown(tmp_path: Path) -> None:
    (tmp_path / "credential.json").write_text('{"reg": {"password": ["s3cret"]}, "ok": {}}')
    credentials = load_credentials(tmp_path, environ={})  # loads: checked only when used
    assert credentials.registry_auth("ok") is None
    with pytest.raises(MadError) as caught:
        credentials.registry_auth("reg")
    assert "s3cret" not in str(caught.value)
    assert str(caught.value).endswith(
        "credential.json: credential 'reg' must be an object of strings"
    )
    assert credentials.redact("it said s3cret") == f"it said {MASK}"
