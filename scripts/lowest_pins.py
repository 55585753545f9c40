"""The pins of the lowest-versions lane (scripts/lowest-lane): each `>=X` floor that
pyproject.toml declares for the runtime dependencies and the named extras, printed as
`name==X`, one a line, for `pip install -c`. Only our direct dependencies are pinned (as
uv's `--resolution lowest-direct` does): theirs are what pip picks for those pins.

usage: python3 scripts/lowest_pins.py EXTRA[,EXTRA...]   (Python >= 3.11, for tomllib)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# name, optional [extras], then the version specifiers (an environment marker cut off).
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*)")


class FloorError(Exception):
    """pyproject.toml does not give one floor for a dependency the lane pins."""


def normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def floor_of(requirement: str) -> tuple[str, str]:
    """(normalized name, X) of a requirement that says `>=X`."""
    match = REQUIREMENT.match(requirement)
    if not match:
        raise FloorError(f"pyproject.toml: cannot read the requirement {requirement!r}")
    specifiers = match[2].replace(" ", "").split(",")
    floors = [spec[2:] for spec in specifiers if spec.startswith(">=")]
    if len(floors) != 1:
        raise FloorError(f"pyproject.toml: {requirement!r} declares no floor (>=X) to test")
    return normalized(match[1]), floors[0]


def lowest_pins(pyproject: dict[str, object], extras: list[str]) -> dict[str, str]:
    """name -> floor for the runtime dependencies and the given extras."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    requirements = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in optional:
            raise FloorError(f"pyproject.toml: no extra named {extra!r}")
        requirements += optional[extra]
    pins: dict[str, str] = {}
    for requirement in requirements:
        name, floor = floor_of(requirement)
        if pins.setdefault(name, floor) != floor:
            raise FloorError(f"pyproject.toml: {name} has two floors, {pins[name]} and {floor}")
    return pins


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    extras = [extra for extra in argv[0].split(",") if extra]
    try:
        pins = lowest_pins(tomllib.loads(PYPROJECT.read_text()), extras)
    except FloorError as error:
        print(f"lowest_pins: {error}", file=sys.stderr)
        return 1
    for name, floor in sorted(pins.items()):
        print(f"{name}=={floor}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
