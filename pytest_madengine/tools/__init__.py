"""Tools that wrap a model's run (profilers, tracers): one interface and a registry.

The context's `tools: [{"name": ...}]` names them; each changes the steps of every
test's run (`ModelRun`: pre and post scripts, a command prefix, variables, the
container), in the order given. A tool comes from one of two places:

- a tools file in madengine's format (`{"tools": {name: {pre_scripts, cmd, env_vars,
  post_scripts}}}`): ours (`tools.json` beside this module) with the tree's
  `scripts/common/tools.json` over it, unless the run option `--mad-tools-config`
  names another; see `files.py`;
- a Python class in the entry-point group `pytest_madengine.tools`, which wins over a
  tools file entry of the same name:

    [project.entry-points."pytest_madengine.tools"]
    mytracer = "mypackage.tools:MyTracer"     # a class: MyTracer() -> Tool
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pytest_madengine.errors import MadError
from pytest_madengine.registry import registered
from pytest_madengine.tools.files import load_tools_file
from pytest_madengine.workspace import ModelRun

ENTRY_POINT_GROUP = "pytest_madengine.tools"
DEFAULT_TOOLS_FILE = Path(__file__).with_name("tools.json")
TREE_TOOLS_FILE = "scripts/common/tools.json"  # a MAD tree's own, read by default


class Tool(Protocol):
    @property
    def name(self) -> str:  # read-only: a frozen dataclass's field is a tool's name
        ...

    def apply(self, run: ModelRun, settings: Mapping[str, Any]) -> ModelRun:
        """The run as the tool makes it; `settings` is the tool's item in the context."""
        ...


@functools.cache
def entry_point_tools() -> dict[str, Tool]:
    return {point.name: point.load()() for point in registered(ENTRY_POINT_GROUP)}


@dataclass(frozen=True)
class ToolBox:
    """The tools a session can name: its tools file's, then the installed classes."""

    tools: Mapping[str, Tool] = field(default_factory=dict)
    source: str = ""  # the tools file, for messages

    def names(self, requested: Sequence[Any], origin: str = "context 'tools'") -> tuple[str, ...]:
        """The names the context asks for; MadError for a malformed or unknown one."""
        names = []
        for position, item in enumerate(requested, start=1):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not name:
                raise MadError(f'{origin}: item {position}: expected {{"name": ...}}, got {item!r}')
            if name not in self.tools:
                known = ", ".join(sorted(self.tools)) or "none"
                raise MadError(f"{origin}: unknown tool '{name}' in {self.source} (known: {known})")
            names.append(name)
        return tuple(names)

    def apply(self, run: ModelRun, requested: Sequence[Any]) -> ModelRun:
        """The run with each requested tool applied in order: with [A, B] that gives
        madengine's stacking (pre B, pre A, `cmd_B cmd_A model`, post A, post B)."""
        for name, item in zip(self.names(requested), requested, strict=True):
            run = self.tools[name].apply(run, item)
        return run


def load_toolbox(tools_file: Path | None = None, tree_root: Path | None = None) -> ToolBox:
    """The tools of the installed classes over those of the tools files: the one
    `tools_file` names, else ours with the tree's `scripts/common/tools.json` over it
    (as madengine reads it by default; an entry of the same name is the tree's)."""
    files = [tools_file] if tools_file else [DEFAULT_TOOLS_FILE]
    tree_file = tree_root / TREE_TOOLS_FILE if tree_root is not None else None
    if tools_file is None and tree_file is not None and tree_file.is_file():
        files.append(tree_file)
    tools: dict[str, Tool] = {}
    for path in files:
        tools.update(load_tools_file(path))
    tools.update(entry_point_tools())
    return ToolBox(tools, " over ".join(str(path) for path in reversed(files)))
