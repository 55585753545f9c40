"""The MAD tree that overhead.py and scaling.py run: one busybox Dockerfile, one script,
and models that differ only by name (so they share one image)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

# The environment of the benches' child processes: they may write bytecode, as a pip
# install compiles on install. Without it (PYTHONDONTWRITEBYTECODE is set on some
# machines) every start compiles whatever changed since bytecode was last written.
CHILD_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}

DOCKERFILE = (
    "# CONTEXT {'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU'}\n"
    "ARG BASE_DOCKER=mad-base/busybox:latest\nFROM $BASE_DOCKER\n"
)


def write_bench_tree(root: Path, script: str, names: Sequence[str], n_gpus: int) -> None:
    """Models tagged `bench`, run as scripts/bench/run.sh, each holding n_gpus GPUs."""
    (root / "docker").mkdir(parents=True)
    (root / "docker" / "bench.ubuntu.amd.Dockerfile").write_text(DOCKERFILE)
    (root / "scripts" / "bench").mkdir(parents=True)
    (root / "scripts" / "bench" / "run.sh").write_text(script)
    models = [
        {"name": name, "dockerfile": "docker/bench", "scripts": "scripts/bench/run.sh",
         "n_gpus": n_gpus, "tags": ["bench"]}
        for name in names
    ]  # fmt: skip
    (root / "models.json").write_text(json.dumps(models))
    (root / "pytest.ini").write_text("[pytest]\n")
