"""GPU inventory: detected with the vendor tools, or declared by the user.

Declared GPUs on a host without real ones are virtual: tests lease them and see their
ids in the visibility variables, but no device node is mapped unless configured.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pytest_madengine.errors import MadError

# A probe runs a vendor tool (argv) and returns its stdout, or None when it cannot.
Probe = Callable[[Sequence[str]], str | None]
PROBE_TIMEOUT_S = 20


@dataclass(frozen=True)
class Gpu:
    index: int
    vendor: str  # AMD | NVIDIA
    architecture: str | None = None  # gfx90a, "NVIDIA H100 80GB HBM3", ...


@dataclass(frozen=True)
class GpuInventory:
    gpus: tuple[Gpu, ...]
    source: str  # the tool that found them, "declared", or "none"
    virtual: bool = False

    @property
    def count(self) -> int:
        return len(self.gpus)

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(gpu.index for gpu in self.gpus)

    @property
    def vendor(self) -> str | None:
        return self.gpus[0].vendor if self.gpus else None

    @property
    def architecture(self) -> str | None:
        return self.gpus[0].architecture if self.gpus else None

    def describe(self) -> str:
        if not self.gpus:
            return "no GPU"
        kind = "virtual " if self.virtual else ""
        arch = f" {self.architecture}" if self.architecture else ""
        ids = ",".join(str(index) for index in self.ids)
        return f"{self.count} {kind}{self.vendor}{arch} GPU(s) [{ids}] ({self.source})"


MAX_GPUS = 1024  # per host: more is a typo, and would take memory and time to lease


def parse_gpu_ids(spec: str, origin: str = "--mad-gpus", ids_only: bool = False) -> tuple[int, ...]:
    """`4` is a count (ids 0-3), unless `ids_only` (madengine's docker_gpus: `1` is GPU 1);
    `0,2-3` is a list of ids. `origin` names where the text came from in errors."""
    text = spec.strip()
    if not text:
        return ()
    if text.isascii() and text.isdigit() and not ids_only:  # int() takes no "²"
        if int(text) > MAX_GPUS:
            raise MadError(f"{origin} {spec!r}: at most {MAX_GPUS} GPUs per host")
        return tuple(range(int(text)))
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            first, last = (int(low), int(high)) if dash else (int(part), int(part))
        except ValueError:
            raise MadError(
                f"{origin} {spec!r}: expected a count or ids like 0,2-3, got {part!r}"
            ) from None
        if first > last:
            raise MadError(f"{origin} {spec!r}: range {part!r} runs backwards")
        if last >= MAX_GPUS:
            raise MadError(f"{origin} {spec!r}: GPU ids go up to {MAX_GPUS - 1}")
        ids.extend(range(first, last + 1))
    if len(set(ids)) != len(ids) or any(index < 0 for index in ids):
        raise MadError(f"{origin} {spec!r}: ids must be distinct and not negative")
    return tuple(ids)


def run_probe(argv: Sequence[str]) -> str | None:
    """Stdout of a vendor tool, or None when it is absent or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def parse_nvidia_smi(output: str) -> tuple[Gpu, ...]:
    """`nvidia-smi --query-gpu=index,name --format=csv,noheader` lines."""
    gpus = []
    for line in output.splitlines():
        index, sep, name = line.partition(",")
        if sep and index.strip().isdigit():
            gpus.append(Gpu(int(index), "NVIDIA", name.strip() or None))
    return tuple(gpus)


def parse_amd_smi(output: str) -> tuple[Gpu, ...]:
    """`amd-smi static --asic --json`: a list (or {"gpu_data": [...]}) of per-GPU objects."""
    data = json.loads(output)
    if isinstance(data, dict):
        data = data.get("gpu_data", [])
    gpus = []
    for position, entry in enumerate(data):
        asic = entry.get("asic", {}) if isinstance(entry, dict) else {}
        arch = asic.get("target_graphics_version") or None
        gpus.append(Gpu(int(entry.get("gpu", position)), "AMD", arch))
    return tuple(gpus)


def parse_rocm_smi(output: str) -> tuple[Gpu, ...]:
    """`rocm-smi --showproductname --json`: {"card0": {"GFX Version": "gfx90a", ...}, ...}."""
    data = json.loads(output)
    gpus = []
    for card, fields in data.items():
        if not card.startswith("card") or not card[4:].isdigit():
            continue
        arch = next(
            (value for key, value in fields.items() if key.lower().startswith("gfx version")),
            None,
        )
        gpus.append(Gpu(int(card[4:]), "AMD", arch))
    return tuple(sorted(gpus, key=lambda gpu: gpu.index))


DETECTORS: tuple[tuple[str, tuple[str, ...], Callable[[str], tuple[Gpu, ...]]], ...] = (
    (
        "nvidia-smi",
        ("nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"),
        parse_nvidia_smi,
    ),
    ("amd-smi", ("amd-smi", "static", "--asic", "--json"), parse_amd_smi),
    ("rocm-smi", ("rocm-smi", "--showproductname", "--json"), parse_rocm_smi),
)


def detect(probe: Probe = run_probe) -> GpuInventory:
    """The GPUs the first vendor tool that answers reports."""
    for tool, argv, parse in DETECTORS:
        output = probe(argv)
        if not output:
            continue
        try:
            gpus = parse(output)
        except (ValueError, AttributeError, TypeError):
            continue  # a tool version whose output we do not know: try the next tool
        if gpus:
            return GpuInventory(gpus, tool)
    return GpuInventory((), "none")


def inventory(
    declared: str | None,
    vendor: str | None,
    architecture: str | None,
    probe: Probe = run_probe,
    origin: str = "--mad-gpus",
    ids_only: bool = False,
) -> GpuInventory:
    """Detected GPUs, narrowed to the declared ids; or virtual ones when none are detected."""
    found = detect(probe)
    if declared is None:
        return found
    ids = parse_gpu_ids(declared, origin, ids_only)
    if found.gpus:
        by_id = {gpu.index: gpu for gpu in found.gpus}
        missing = [index for index in ids if index not in by_id]
        if missing:
            raise MadError(
                f"{origin} {declared!r}: no GPU {missing[0]} on this host ({found.describe()})"
            )
        return GpuInventory(tuple(by_id[index] for index in ids), found.source)
    virtual = tuple(Gpu(index, vendor or "AMD", architecture) for index in ids)
    return GpuInventory(virtual, "declared", virtual=True)
