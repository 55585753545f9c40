"""A backend is created from narrow, frozen settings of its own, made once by the core
from the options: never from the core's `Options`."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pytest_madengine.backends as backends
from pytest_madengine import registry
from pytest_madengine.backends import BackendSettings
from pytest_madengine.core.manifest import BuildManifest, ManifestImage
from pytest_madengine.core.options import Options, RawOptions, parse_options
from pytest_madengine.core.session import Session, backend_settings
from tests.conftest import entry, write_tree

PASSWORD = "hunter2-registry-password"

# A third-party backend, installed as pip would leave it: it keeps what it was given.
RECORDING_BACKEND = """
received = []

class Recorder:
    name = "recorder"
    def hosts(self):
        return ()
    def hosts_down(self):
        return {}
    def shared_state(self):
        return {}
    def sweep(self, session_id):
        return 0
    def close(self):
        pass

def create(setup):
    received.append(setup)
    return Recorder()
"""


@pytest.fixture
def recorder_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The `recorder` backend on sys.path with its entry point; the module it loads."""
    site = tmp_path / "site"
    info = site / "recorder-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "recordingbackend.py").write_text(RECORDING_BACKEND)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: recorder\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[pytest_madengine.backends]\nrecorder = recordingbackend:create\n"
    )
    monkeypatch.syspath_prepend(str(site))
    forget_installed()
    try:
        yield __import__("recordingbackend")
    finally:
        sys.modules.pop("recordingbackend", None)
        monkeypatch.undo()
        forget_installed()


def forget_installed() -> None:
    """The registries read the installed packages once per process: read them again."""
    registry._installed.cache_clear()
    backends._entry_points.cache_clear()


def session_options(tmp_path: Path, **fields: Any) -> Options:
    root = write_tree(tmp_path / "mad", [entry("alpha")])
    login = {"username": "madengine-user", "password": PASSWORD}
    (root / "credential.json").write_text(json.dumps({"registry.example:5000": login}))
    raw = RawOptions(root=str(root), tags=("alpha",), base_dir=tmp_path, **fields)
    return parse_options(raw)


def test_a_backend_factory_receives_frozen_settings_never_the_options(
    tmp_path: Path, recorder_installed: Any
) -> None:
    options = session_options(tmp_path, deploy="recorder")
    with Session.open(options, session_dir=tmp_path / "session"):
        pass
    (setup,) = recorder_installed.received
    assert not any(isinstance(value, Options) for value in vars(setup).values())
    settings = setup.settings
    assert type(settings) is BackendSettings
    assert not any(isinstance(value, Options) for value in vars(settings).values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.output_dir = tmp_path  # type: ignore[misc]
    # What a backend reads, under names that say what for.
    assert settings.output_dir == options.output_dir
    assert settings.gpu_vendor == options.gpu_vendor
    assert settings.local_gpus == options.gpus
    assert settings.build_context_ignores == (options.output_dir, options.perf_csv)
    assert settings.manifest_pulls is None
    # The former name still reads them, for backends written against it.
    assert setup.options is settings


def test_registry_logins_are_given_as_a_lookup_that_is_never_shown(tmp_path: Path) -> None:
    settings = backend_settings(session_options(tmp_path))
    login = settings.registry_auth("registry.example:5000")
    assert login == {"username": "madengine-user", "password": PASSWORD}
    assert settings.registry_auth("elsewhere.example") is None
    assert PASSWORD not in repr(settings)


def test_a_manifest_is_given_as_the_images_the_session_pulls(tmp_path: Path) -> None:
    options = session_options(tmp_path)

    def image(name: str, registry_image: str | None) -> ManifestImage:
        return ManifestImage(name, "alpha", name, None, registry_image, "ubuntu", "", 0.0)

    images = {
        "built-here": image("built-here", None),
        "pulled": image("pulled", "registry.example:5000/ci-alpha:1"),
    }
    manifest = BuildManifest(tmp_path / "build_manifest.json", images, ("alpha",))
    settings = backend_settings(dataclasses.replace(options, manifest=manifest))
    assert settings.manifest_pulls == ("registry.example:5000/ci-alpha:1",)
