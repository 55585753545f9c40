"""The plugin's command-line options and ini keys, made from the core's option table
and read back into its RawOptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

from pytest_madengine.core.option_table import OPTION_TABLE, Kind, OptionSpec, RawOptions

_INI_TYPES: dict[Kind, Literal["string", "bool", "args"]] = {
    Kind.VALUE: "string",
    Kind.SWITCH: "bool",
    Kind.LIST: "args",
}


def _cli_default(spec: OptionSpec) -> Any:
    """What pytest holds when the option is not given: None where an ini key may
    answer instead (a switch too: so that the command line can say neither)."""
    if spec.kind is Kind.LIST:
        return []
    if spec.ini is not None:
        return None
    return spec.default


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("madengine", "MAD model benchmarks (pytest-madengine)")
    for spec in OPTION_TABLE:
        action = {Kind.SWITCH: "store_true", Kind.LIST: "append"}.get(spec.kind, "store")
        extra = {} if spec.metavar is None else {"metavar": spec.metavar}
        group.addoption(
            spec.flag, action=action, default=_cli_default(spec), help=spec.help, **extra
        )
    for spec in OPTION_TABLE:
        if spec.ini is not None:
            ini_default = {Kind.SWITCH: False, Kind.LIST: []}.get(spec.kind)
            parser.addini(spec.ini, spec.ini_help, type=_INI_TYPES[spec.kind], default=ini_default)


def _ini_value(config: pytest.Config, spec: OptionSpec) -> Any:
    """The ini key's value; a path is relative to the ini file, wherever pytest runs."""
    assert spec.ini is not None
    value = config.getini(spec.ini)
    if spec.kind is not Kind.VALUE:
        return value
    if not value:
        return None
    if spec.ini_is_path or (spec.ini_path_if is not None and spec.ini_path_if(value)):
        base = config.inipath.parent if config.inipath else config.rootpath
        return str(base / value)
    return value


def _value(config: pytest.Config, spec: OptionSpec) -> Any:
    """The command line's value, else the ini key's, in the field's type."""
    value = config.getoption(spec.dest)
    if spec.ini is not None and (value is None or value == []):
        value = _ini_value(config, spec)
    if spec.kind is Kind.SWITCH:
        return bool(value)
    if spec.kind is Kind.LIST:
        return tuple(value or ())
    return str(value) if spec.ini_is_path and value is not None else value


def raw_options(config: pytest.Config, root: Path | None = None) -> RawOptions:
    """What the user wrote; `root` overrides it (an xdist worker gets the controller's)."""
    given = {spec.name: _value(config, spec) for spec in OPTION_TABLE}
    if root:
        given["root"] = str(root)
    return RawOptions(**given, base_dir=config.invocation_params.dir)
