"""Model entries, Dockerfile headers and the tree loader (pure logic and small files)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_madengine.core.planning import arch_skip_reason, image_name
from pytest_madengine.core.tree.discovery import Source, load_tree, model_from_entry
from pytest_madengine.core.tree.dockerfiles import Dockerfile, DockerfileIndex, parse_header
from pytest_madengine.errors import MadError
from tests.conftest import entry, write_tree

ROOT_SOURCE = Source(Path("/t/models.json"), None)
DIR_SOURCE = Source(Path("/t/scripts/grp/models.json"), "grp")


def test_entry_fields_are_normalised_and_unknown_fields_kept() -> None:
    model = model_from_entry(
        {
            "name": "m",
            "dockerfile": "docker/m",
            "scripts": "scripts/m/run.sh",
            "n_gpus": "-1",
            "tags": "a, b",
            "skip_gpu_arch": "gfx90a, A100",
            "timeout": "60",
            "extra": {"x": 1},
        },
        ROOT_SOURCE,
    )
    assert (model.n_gpus, model.tags, model.skip_gpu_arch, model.timeout) == (
        -1,
        ("a", "b"),
        ("gfx90a", "A100"),
        60,
    )
    assert model.entry["extra"] == {"x": 1}


def test_directory_entries_are_named_and_rebased() -> None:
    model = model_from_entry(
        {"name": "m", "dockerfile": "../../docker/m", "scripts": "run.sh"}, DIR_SOURCE
    )
    assert (model.name, model.short_name) == ("grp/m", "m")
    assert (model.dockerfile, model.scripts) == ("docker/m", "scripts/grp/run.sh")
    assert model.n_gpus == 1 and model.timeout == 7200


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tags": [1]}, "field 'tags' must be a list of strings, got [1]"),
        ({"timeout": "soon"}, "field 'timeout' must be an integer, got 'soon'"),
        ({"parametrize": [{}]}, "field 'parametrize' must be a list of non-empty objects"),
        ({"scripts": 3}, "field 'scripts' must be a string"),
    ],
)
def test_bad_fields(fields: dict, message: str) -> None:
    base = {"name": "m", "dockerfile": "d", "scripts": "s"}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        model_from_entry({**base, **fields}, ROOT_SOURCE)


def test_dockerfile_header_and_choice(tmp_path: Path) -> None:
    write_tree(tmp_path, [entry("a")])
    index = DockerfileIndex(tmp_path)
    chosen = index.choose("docker/dummy", {"gpu_vendor": "NVIDIA", "guest_os": "UBUNTU"})
    assert [d.relpath for d in chosen] == ["docker/dummy.ubuntu.nvidia.Dockerfile"]
    assert chosen[0].stem == "dummy.ubuntu.nvidia"
    # A key the context lacks does not count against a candidate.
    assert len(index.choose("docker/dummy", {"other": 1})) == 2


def test_bad_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "x.Dockerfile"
    path.write_text("# CONTEXT {'gpu_vendor': \nFROM x\n")
    with pytest.raises(MadError, match=r"x.Dockerfile: bad CONTEXT header"):
        parse_header(path)


def test_image_name_and_arch_skip() -> None:
    model = model_from_entry(
        {"name": "M", "dockerfile": "d", "scripts": "s", "skip_gpu_arch": "A100"}, DIR_SOURCE
    )
    dockerfile = Dockerfile(Path("/t/docker/dummy.ubuntu.amd.Dockerfile"), "docker/x")
    assert image_name(model, dockerfile) == "ci-grp_m_dummy.ubuntu.amd"
    assert arch_skip_reason(model, "NVIDIA A100-SXM4-80GB") == (
        "skip_gpu_arch lists A100 (this host: NVIDIA A100-SXM4-80GB)"
    )
    assert arch_skip_reason(model, "gfx942") is None and arch_skip_reason(model, None) is None


def test_dynamic_models_load_without_madengine_and_leave_no_module(tmp_path: Path) -> None:
    code = (
        "from madengine.utils.discover_models import CustomModel\n"
        "paths = {'dockerfile': '../../docker/dummy', 'scripts': '../dummy/run.sh'}\n"
        "def list_models():\n"
        "    return [CustomModel(name='d', **paths), {'name': 'e', **paths}]\n"
    )
    write_tree(tmp_path, [entry("a")], {"scripts/dyn/get_models_json.py": code})
    tree = load_tree(tmp_path)
    assert [m.name for m in tree.models] == ["a", "dyn/d", "dyn/e"]
    assert tree.models[1].n_gpus == -1  # CustomModel's own default: every GPU
    assert "madengine" not in sys.modules


def test_missing_models_json(tmp_path: Path) -> None:
    with pytest.raises(MadError, match=r"no models.json in it"):
        load_tree(tmp_path)
