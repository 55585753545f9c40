"""The run context: defaults, then a context file, then `--mad-context` JSON.

Known keys are type-checked with a one-line error naming the key and where it came
from; unknown keys are kept, since MAD tools add their own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pytest_madengine.errors import MadError, parse_json, parse_words, read_text

GPU_VENDORS = ("AMD", "NVIDIA")
DEFAULTS: dict[str, Any] = {
    "guest_os": "UBUNTU",
    "docker_build_arg": {},
    "docker_env_vars": {},
    "docker_mounts": {},
    "timeout_multiplier": 1.0,
    "tools": [],
    "pre_scripts": [],
    "post_scripts": [],
}
# key -> (accepted types, description for the error)
SCHEMA: dict[str, tuple[tuple[type, ...], str]] = {
    "gpu_vendor": ((str,), "one of AMD, NVIDIA"),
    "guest_os": ((str,), "a string"),
    "gpu_architecture": ((str,), "a string such as gfx90a or sm_90"),
    "docker_build_arg": ((dict,), "an object of strings"),
    "docker_env_vars": ((dict,), "an object of strings"),
    "docker_mounts": ((dict,), "an object {container_path: host_path}"),
    "docker_gpus": ((str, int), 'a GPU list such as "0,2-3"'),
    "docker_cpus": ((str, int), 'a CPU list such as "0-7"'),
    "docker_memory": ((str, int), 'a memory limit such as "16g" (bytes when a number)'),
    "docker_network": ((str,), 'a Docker network such as "host" (default) or "bridge"'),
    "docker_ipc": ((str,), 'an IPC mode such as "host" (default) or "private"'),
    "timeout_multiplier": ((int, float), "a positive number"),
    "model_args": ((str,), "a string"),
    "tools": ((list,), "a list of {name}"),
    "pre_scripts": ((list,), "a list of {path, args}"),
    "post_scripts": ((list,), "a list of {path, args}"),
    "deploy": ((str,), "a string"),
    "slurm": ((dict,), "an object"),
    "k8s": ((dict,), "an object"),
    "distributed": ((dict,), "an object"),
    "docker_privileged": ((bool,), "true or false"),
    "docker_cap_add": ((list,), 'a list of capabilities such as ["SYS_PTRACE"]'),
    "MAD_CONTAINER_IMAGE": ((str,), "an image name such as rocm/pytorch:latest"),
    "ctx_test": ((str,), "a string"),
    "encapsulate_script": ((str,), "a command prefix such as 'numactl --interleave=all'"),
}
# Values checked beyond their type, so that a typo fails the session at its start, not
# every test at the engine: key -> (pattern, description).
_ID_LIST = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")
PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "docker_memory": (re.compile(r"[1-9][0-9]*[bkmgBKMG]?"), 'a size such as "16g"'),
    "docker_cpus": (_ID_LIST, 'a CPU list such as "0-7"'),
    "docker_gpus": (_ID_LIST, 'a GPU list such as "0,2-3"'),
}
MIN_MEMORY_BYTES = 6 * 1024 * 1024  # the engine refuses less
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
STRING_MAPS = ("docker_build_arg", "docker_env_vars", "docker_mounts")


@dataclass(frozen=True)
class RunContext:
    values: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType(dict(DEFAULTS)))

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    @property
    def gpu_vendor(self) -> str | None:
        return self.values.get("gpu_vendor")

    @property
    def gpu_architecture(self) -> str | None:
        return self.values.get("gpu_architecture")

    def with_defaults(self, **values: Any) -> RunContext:
        """A copy where the given keys are filled in unless already set."""
        merged = {key: value for key, value in values.items() if value is not None}
        merged.update(self.values)
        return RunContext(MappingProxyType(merged))


def _has_type(value: object, types: tuple[type, ...]) -> bool:
    # bool is an int: `true` is no number, and only a real bool is a switch.
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _validate(values: Mapping[str, Any], origin: str) -> None:
    for key, value in values.items():
        if key not in SCHEMA:
            continue
        types, description = SCHEMA[key]
        if not _has_type(value, types):
            raise MadError(f"{origin}: '{key}' must be {description}, got {value!r}")
        if key == "docker_cap_add" and not all(isinstance(item, str) for item in value):
            raise MadError(f"{origin}: '{key}' must be {description}, got {value!r}")
        if key in PATTERNS:
            pattern, shown = PATTERNS[key]
            if not pattern.fullmatch(str(value).strip()):
                raise MadError(f"{origin}: '{key}' must be {shown}, got {value!r}")
        if key == "model_args":  # split when a test runs: a bad quote fails the start
            parse_words(value, f"{origin}: 'model_args'")
        if key == "docker_memory" and _bytes(str(value)) < MIN_MEMORY_BYTES:
            raise MadError(f"{origin}: 'docker_memory' must be at least 6m, got {value!r}")
        if key == "docker_mounts":
            for container, host in value.items():
                if not (str(container).startswith("/") and str(host).startswith("/")):
                    raise MadError(
                        f"{origin}: 'docker_mounts' needs absolute paths on both sides,"
                        f" got {container!r}: {host!r}"
                    )
        if key in STRING_MAPS and not all(
            isinstance(item, str | int | float) and not isinstance(item, bool)
            for item in value.values()
        ):
            raise MadError(f"{origin}: '{key}' must be {description}, got {value!r}")
    vendor = values.get("gpu_vendor")
    if vendor is not None and vendor.upper() not in GPU_VENDORS:
        raise MadError(f"{origin}: 'gpu_vendor' must be one of AMD, NVIDIA, got {vendor!r}")
    multiplier = values.get("timeout_multiplier")
    if multiplier is not None and not (math.isfinite(multiplier) and multiplier > 0):
        raise MadError(
            f"{origin}: 'timeout_multiplier' must be a positive number, got {multiplier}"
        )


def _bytes(size: str) -> int:
    size = size.strip().lower()
    unit = size[-1] if size[-1] in _UNITS else ""
    return int(size.removesuffix(unit)) * _UNITS[unit]


def _parse(text: str, origin: str) -> dict[str, Any]:
    values = parse_json(text, origin)
    if not isinstance(values, dict):
        raise MadError(f"{origin}: expected a JSON object, got {type(values).__name__}")
    _validate(values, origin)
    if "gpu_vendor" in values:
        values["gpu_vendor"] = values["gpu_vendor"].upper()
    return values


def _overlay(values: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """Later layers win; objects (env vars, mounts, build args) merge key by key."""
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value


def build_context(context_json: str | None = None, context_file: Path | None = None) -> RunContext:
    """Defaults, overlaid by the file, overlaid by the JSON string."""
    values = dict(DEFAULTS)
    if context_file is not None:
        text = read_text(context_file, "--mad-context-file")
        _overlay(values, _parse(text, str(context_file)))
    if context_json:
        _overlay(values, _parse(context_json, "--mad-context"))
    return RunContext(MappingProxyType(values))
