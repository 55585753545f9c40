"""No function of the core, the backends or the contract is longer than 60 lines: a
longer one does more than one job, and is split into steps that each do one."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest_madengine

PACKAGE_DIR = Path(pytest_madengine.__file__).parent
MOST_LINES = 60
CHECKED = ("core", "backends", "contract.py")


def checked_files() -> Iterator[Path]:
    for name in CHECKED:
        path = PACKAGE_DIR / name
        yield from sorted(path.rglob("*.py")) if path.is_dir() else (path,)


def long_functions() -> dict[tuple[str, str], int]:
    """(file relative to the package, function name) -> its lines, for those too long."""
    found = {}
    for path in checked_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > MOST_LINES:
                    found[(path.relative_to(PACKAGE_DIR).as_posix(), node.name)] = lines
    return found


def test_no_function_of_core_backends_or_contract_is_longer_than_60_lines() -> None:
    assert long_functions() == {}
