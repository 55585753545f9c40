"""scripts/lowest-lane tests the floors pyproject.toml declares: every runtime dependency
and every extra a user installs is pinned to its `>=X` (scripts/lowest_pins.py)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# scripts/lowest_pins.py reads pyproject.toml with it, as these tests do.
tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 has tomllib")
ROOT = Path(__file__).resolve().parents[2]
# The extras of our own tools, which the lane does not install.
TOOL_EXTRAS = {"dev", "docs"}


def pins_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lowest_pins", ROOT / "scripts/lowest_pins.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lane_extras() -> set[str]:
    found = re.search(r"^EXTRAS=(\S+)$", (ROOT / "scripts/lowest-lane").read_text(), re.M)
    assert found, "scripts/lowest-lane names its extras in one EXTRAS= line"
    return set(found[1].split(","))


def test_the_lane_installs_every_extra_but_the_tools() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    assert lane_extras() == extras - TOOL_EXTRAS


def test_each_floor_becomes_a_pin() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/lowest_pins.py"), ",".join(sorted(lane_extras()))],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pins = dict(line.split("==") for line in done.stdout.splitlines())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pins["pytest"] == re.sub(r"^pytest>=", "", pyproject["project"]["dependencies"][0])
    assert {"docker", "pyyaml", "pytest-xdist", "boto3", "kubernetes", "typer"} <= set(pins)


def project(dependencies: list[str], **extras: list[str]) -> dict[str, Any]:
    return {"project": {"dependencies": dependencies, "optional-dependencies": extras}}


@pytest.mark.parametrize(
    ("given", "extras", "message"),
    [
        (project(["rich"]), [], "'rich' declares no floor"),
        (project(["rich<14"]), [], "'rich<14' declares no floor"),
        (project(["jinja2>=3.1"], report=["Jinja2>=3.0"]), ["report"], "jinja2 has two floors"),
        (project([]), ["gpu"], "no extra named 'gpu'"),
    ],
)
def test_a_dependency_without_one_floor_is_named(
    given: dict[str, Any], extras: list[str], message: str
) -> None:
    module = pins_module()
    with pytest.raises(module.FloorError, match=re.escape(message)):
        module.lowest_pins(given, extras)


def test_names_are_compared_as_pip_does() -> None:
    pins = pins_module().lowest_pins(
        project(["PyYAML >= 6.0", "ruamel_yaml>=0.18; python_version<'4'"]), []
    )
    assert pins == {"pyyaml": "6.0", "ruamel-yaml": "0.18"}
