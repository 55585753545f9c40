"""Dockerfile candidates of a model and the choice among them by `# CONTEXT` header."""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pytest_madengine.errors import MadError

HEADER_PREFIX = "# CONTEXT"
# The header sits in the first lines; reading a few is enough and keeps big files cheap.
HEADER_SCAN_LINES = 10


@dataclass(frozen=True)
class Dockerfile:
    path: Path  # absolute
    relpath: str  # relative to the MAD root, "/"-separated
    header: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def stem(self) -> str:
        """File name without `.Dockerfile`, as used in image names."""
        name = self.path.name
        return name[: -len(".Dockerfile")] if name.endswith(".Dockerfile") else name

    def matches(self, context: Mapping[str, Any]) -> bool:
        """True when every header key that the context also has carries the same value."""
        return all(context[key] == value for key, value in self.header.items() if key in context)


def parse_header(path: Path) -> dict[str, Any]:
    """The `# CONTEXT {...}` dict of a Dockerfile, or {} when it has none."""
    if not path.is_file():  # a FIFO would be waited on for good, a directory fail later
        raise MadError(f"{path}: not a regular file")
    with path.open(encoding="utf-8", errors="replace") as handle:
        for _, line in zip(range(HEADER_SCAN_LINES), handle, strict=False):
            stripped = line.strip()
            if not stripped.startswith(HEADER_PREFIX):
                continue
            literal = stripped[len(HEADER_PREFIX) :].strip()
            try:
                header = ast.literal_eval(literal)
            except (ValueError, SyntaxError) as exc:
                raise MadError(f"{path}: bad CONTEXT header {literal!r}: {exc}") from None
            if not isinstance(header, dict):
                raise MadError(f"{path}: CONTEXT header must be a dict, got {literal!r}")
            return header
    return {}


class DockerfileIndex:
    """Finds `<prefix>.*Dockerfile` files under a MAD root, listing each directory once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._listings: dict[Path, list[str]] = {}
        self._candidates: dict[str, list[Path]] = {}
        self._parsed: dict[Path, Dockerfile] = {}

    def _listing(self, directory: Path) -> list[str]:
        if directory not in self._listings:
            try:
                self._listings[directory] = sorted(os.listdir(directory))
            except OSError:
                self._listings[directory] = []
        return self._listings[directory]

    def candidates(self, prefix: str) -> list[Path]:
        """Every file matching `<prefix>.*Dockerfile` (prefix relative to the root), sorted."""
        if prefix not in self._candidates:
            target = self.root / prefix
            start = target.name + "."
            self._candidates[prefix] = [
                target.parent / name
                for name in self._listing(target.parent)
                if name.startswith(start) and name.endswith("Dockerfile")
            ]
        return self._candidates[prefix]

    def load(self, path: Path) -> Dockerfile:
        if path not in self._parsed:
            self._parsed[path] = Dockerfile(
                path=path,
                relpath=path.relative_to(self.root).as_posix(),
                header=MappingProxyType(parse_header(path)),
            )
        return self._parsed[path]

    def choose(self, prefix: str, context: Mapping[str, Any]) -> tuple[Dockerfile, ...]:
        """The candidates whose header fits the context, in name order (first is used)."""
        loaded = (self.load(path) for path in self.candidates(prefix))
        return tuple(dockerfile for dockerfile in loaded if dockerfile.matches(context))
