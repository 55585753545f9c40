"""What one pytest (or madengine) session works from: settings, the tree and the plan."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from pytest_madengine.context import RunContext
from pytest_madengine.discovery import Tree, load_tree
from pytest_madengine.dockerfiles import DockerfileIndex
from pytest_madengine.gpus import GpuInventory
from pytest_madengine.planning import Plan, plan_tests

DEFAULT_GPU_VENDOR = "AMD"


@dataclass(frozen=True)
class Settings:
    root: Path
    tags: tuple[str, ...]
    context: RunContext
    gpus: GpuInventory

    @property
    def gpu_vendor(self) -> str:
        return self.context.gpu_vendor or self.gpus.vendor or DEFAULT_GPU_VENDOR

    @property
    def effective_context(self) -> RunContext:
        """The context with what the host tells us filled in where the user said nothing."""
        return self.context.with_defaults(
            gpu_vendor=self.gpu_vendor, gpu_architecture=self.gpus.architecture
        )


class MadSession:
    """Loads the tree and plans the tests once, on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dockerfiles = DockerfileIndex(settings.root.resolve())

    @functools.cached_property
    def tree(self) -> Tree:
        return load_tree(self.settings.root, self.dockerfiles)

    @functools.cached_property
    def plan(self) -> Plan:
        context = dict(self.settings.effective_context.values)
        return plan_tests(self.tree, self.settings.tags, context, self.dockerfiles)
