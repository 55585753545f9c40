"""Tools that wrap a model's run (profilers, tracers): one interface and a registry.

The context's `tools: [{"name": ...}]` names them; each changes the run spec of every
test (a command prefix, variables, scripts around the model), in the order given.
Tools are found by name in the entry-point group `pytest_madengine.tools`:

    [project.entry-points."pytest_madengine.tools"]
    mytracer = "mypackage.tools:MyTracer"     # a class: MyTracer() -> Tool
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol

from pytest_madengine.backends import RunSpec
from pytest_madengine.errors import MadError

ENTRY_POINT_GROUP = "pytest_madengine.tools"


class Tool(Protocol):
    name: str

    def apply(self, spec: RunSpec, settings: Mapping[str, Any]) -> RunSpec:
        """The spec as the tool runs it; `settings` is the tool's entry in the context."""
        ...


@functools.cache
def installed_tools() -> dict[str, Tool]:
    return {point.name: point.load()() for point in entry_points(group=ENTRY_POINT_GROUP)}


def tool_names(requested: Sequence[Any], origin: str = "context 'tools'") -> tuple[str, ...]:
    """The names the context asks for; MadError for a malformed or unknown one."""
    names = []
    for position, item in enumerate(requested, start=1):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise MadError(f"{origin}: item {position}: expected {{\"name\": ...}}, got {item!r}")
        if name not in installed_tools():
            known = ", ".join(sorted(installed_tools())) or "none installed"
            raise MadError(f"{origin}: unknown tool '{name}' (known: {known})")
        names.append(name)
    return tuple(names)


def apply_tools(spec: RunSpec, requested: Sequence[Any]) -> RunSpec:
    """The spec with each requested tool applied in order."""
    tools = installed_tools()
    for name, item in zip(tool_names(requested), requested, strict=True):
        spec = tools[name].apply(spec, item)
    return spec
