"""Tools files in madengine's format, each entry a tool of the registry.

```
{"tools": {"rocprofv3": {"pre_scripts": [{"path": ..., "args": ...}],
                          "cmd": "rocprofv3 --runtime-trace --",
                          "env_vars": {"NAME": "value"},
                          "post_scripts": [...]}}}
```
Script paths are relative to the MAD tree (`scripts/common/...`, as madengine's own
file writes them); a path the tree lacks is taken from beside the tools file, which is
how our own file brings its samplers. `cmd` is a command prefix, shell text: it wraps
the model's command (`cmd_B cmd_A bash run.sh ...`). A context item may override the
tool's `cmd` and add `env_vars`, as madengine lets it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.errors import MadError, read_json
from pytest_madengine.workspace import ModelRun, parse_scripts

TOOL_KEYS = ("pre_scripts", "cmd", "env_vars", "post_scripts")


def _env(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(item, str | int | float) and not isinstance(item, bool)
        for item in value.values()
    ):
        raise MadError(f"{where}: 'env_vars' must be an object of strings")
    return {str(key): str(item) for key, item in value.items()}


def _cmd(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MadError(f"{where}: 'cmd' must be a string")
    return value.strip()


def _scripts(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MadError(f'{where}: expected a list of {{"path", "args"}}')
    return value


@dataclass(frozen=True)
class FileTool:
    """One entry of a tools file."""

    name: str
    source: Path  # the tools file
    cmd: str = ""
    env_vars: Mapping[str, str] = field(default_factory=dict)
    # As written; checked against the tree when applied (the tree is known then).
    pre_scripts: tuple[Any, ...] = ()
    post_scripts: tuple[Any, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.source}: tool '{self.name}'"

    def apply(self, run: ModelRun, settings: Mapping[str, Any]) -> ModelRun:
        origin = f"context 'tools' item '{self.name}'"
        cmd = _cmd(settings["cmd"], origin) if "cmd" in settings else self.cmd
        env = {**self.env_vars, **_env(settings.get("env_vars"), origin)}
        beside = self.source.parent
        pre = parse_scripts(
            list(self.pre_scripts), f"{self.where}: 'pre_scripts'", run.tree_root, beside
        )
        post = parse_scripts(
            list(self.post_scripts), f"{self.where}: 'post_scripts'", run.tree_root, beside
        )
        # Tools set up before and clean up after everything already there; a prefix
        # another tool put on already is not put on twice (madengine's rule).
        wrappers = run.wrappers
        if cmd and cmd not in wrappers:
            wrappers = (cmd, *wrappers)
        return dataclasses.replace(
            run,
            pre_scripts=(*pre, *run.pre_scripts),
            post_scripts=(*run.post_scripts, *post),
            wrappers=wrappers,
            spec=dataclasses.replace(run.spec, env={**run.spec.env, **env}),
        )


def load_tools_file(path: Path) -> dict[str, FileTool]:
    """Every tool of a tools file; MadError naming the file and the tool when malformed."""
    data = read_json(path, "--mad-tools-config")
    tools = data.get("tools") if isinstance(data, dict) else None
    if not isinstance(tools, dict):
        raise MadError(f'{path}: expected {{"tools": {{name: {{...}}}}}}')
    loaded = {}
    for name, entry in tools.items():
        where = f"{path}: tool '{name}'"
        if not isinstance(entry, dict):
            raise MadError(f"{where}: expected an object")
        loaded[name] = FileTool(
            name=name,
            source=path,
            cmd=_cmd(entry.get("cmd"), where),
            env_vars=_env(entry.get("env_vars"), where),
            pre_scripts=tuple(_scripts(entry.get("pre_scripts"), f"{where}: 'pre_scripts'")),
            post_scripts=tuple(_scripts(entry.get("post_scripts"), f"{where}: 'post_scripts'")),
        )
    return loaded
