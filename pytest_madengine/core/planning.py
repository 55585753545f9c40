"""From a loaded tree, the tags and the run context to the list of tests to run."""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_madengine.core.tree.discovery import Model, Tree
from pytest_madengine.core.tree.dockerfiles import Dockerfile, DockerfileIndex
from pytest_madengine.core.tree.tags import Selected, select
from pytest_madengine.errors import Unplaceable

MATCH_KEYS_SHOWN = ("gpu_vendor", "guest_os")


def image_name(model: Model, dockerfile: Dockerfile) -> str:
    """`ci-<model name, '/'->'_', lower case>_<Dockerfile name without .Dockerfile>`."""
    return f"ci-{model.name.replace('/', '_').lower()}_{dockerfile.stem}"


def dockerfile_variant(model: Model, dockerfile: Dockerfile) -> str:
    """What tells a model's Dockerfiles apart: `ubuntu.amd` of docker/dummy.ubuntu.amd."""
    prefix = posixpath.basename(model.dockerfile) + "."
    stem = dockerfile.stem
    return stem[len(prefix) :] if stem.startswith(prefix) and stem != prefix else stem


def arch_skip_reason(model: Model, architecture: str | None) -> str | None:
    """Why the model does not run on this GPU architecture, if it does not.

    A listed name counts when it occurs in the host's architecture string, so `A100`
    matches `NVIDIA A100-SXM4-80GB` as madengine does.
    """
    if not architecture:
        return None
    for listed in model.skip_gpu_arch:
        if listed.lower() in architecture.lower():
            return f"skip_gpu_arch lists {listed} (this host: {architecture})"
    return None


def host_unfit_reason(
    model: Model, vendor: str, host_vendor: str | None, host_arch: str | None,
    host_labels: Sequence[str], ignore_skip_gpu_arch: bool = False,
) -> str | None:  # fmt: skip
    """Why a host cannot run the model (vendor, skip_gpu_arch, our `host_labels`), or None."""
    if host_vendor and host_vendor != vendor:
        return f"{host_vendor} GPUs, the run needs {vendor}"
    reason = None if ignore_skip_gpu_arch else arch_skip_reason(model, host_arch)
    if reason:
        return reason
    wanted = model.entry.get("host_labels") or []
    missing = sorted(set(wanted) - set(host_labels))
    return f"lacks label(s) {', '.join(missing)}" if missing else None


def affinity_labels(model: Model) -> tuple[str, ...]:
    """Our `host_affinity` field: host labels the model prefers (--mad-placement
    affinity ranks hosts by how many they carry); Unplaceable when it is not a list of
    strings (the test fails in one line)."""
    wanted = model.entry.get("host_affinity") or []
    if not isinstance(wanted, list) or not all(isinstance(label, str) for label in wanted):
        raise Unplaceable(
            f"models.json: model '{model.name}': 'host_affinity' must be a list of strings,"
            f" got {wanted!r}"
        )
    return tuple(wanted)


@dataclass(frozen=True, slots=True)
class PlannedTest:
    selected: Selected
    dockerfile: Dockerfile | None
    skip_reason: str | None = None
    # Set when several Dockerfiles of the model fit: each is a test, its id says which.
    variant: str | None = None
    # The context's MAD_CONTAINER_IMAGE: run this image, build nothing.
    image_override: str | None = None

    @property
    def model(self) -> Model:
        return self.selected.model

    @property
    def name(self) -> str:
        """`dummy`, `dummy[ubuntu.amd]`, `dummy3[batch_size=512]`,
        `dummy3[batch_size=512,ubuntu.amd]`: stable across sessions."""
        if self.variant is None:
            return self.selected.test_name
        params = [f"{key}={value}" for key, value in self.selected.params]
        return f"{self.model.name}[{','.join([*params, self.variant])}]"

    @property
    def image(self) -> str | None:
        if self.image_override:
            return self.image_override
        return image_name(self.model, self.dockerfile) if self.dockerfile else None

    @property
    def runnable(self) -> bool:
        return self.image is not None

    def describe(self) -> str:
        if not self.runnable:
            return f"skipped: {self.skip_reason}"
        source = (
            f"dockerfile {self.dockerfile.relpath}, image {self.image}"
            if self.dockerfile
            else f"image {self.image} (MAD_CONTAINER_IMAGE)"
        )
        return f"{source}, n_gpus {self.model.n_gpus}"


@dataclass(frozen=True)
class Plan:
    tests: tuple[PlannedTest, ...]
    tag_problems: tuple[str, ...]

    @functools.cached_property
    def _by_source(self) -> dict[Path, list[PlannedTest]]:
        grouped: dict[Path, list[PlannedTest]] = {}
        for test in self.tests:
            grouped.setdefault(test.model.source, []).append(test)
        return grouped

    def for_source(self, source: Path) -> list[PlannedTest]:
        return self._by_source.get(source, [])


def _no_dockerfile_reason(model: Model, context: Mapping[str, Any], candidates: int) -> str:
    shown = ", ".join(f"{key}={context[key]}" for key in MATCH_KEYS_SHOWN if key in context)
    return f"none of the {candidates} Dockerfile(s) {model.dockerfile}.* fits {shown}"


def plan_tests(
    tree: Tree,
    tags: Sequence[str],
    context: Mapping[str, Any],
    dockerfiles: DockerfileIndex,
    *,
    ignore_skip_gpu_arch: bool = False,
) -> Plan:
    """A test per selected model and fitting Dockerfile (madengine builds and runs every
    one that fits), or one per model running the context's MAD_CONTAINER_IMAGE."""
    selected, tag_problems = select(tree.models, tags)
    architecture = None if ignore_skip_gpu_arch else context.get("gpu_architecture")
    override = context.get("MAD_CONTAINER_IMAGE") or None
    tests = []
    for item in selected:
        model = item.model
        skip = arch_skip_reason(model, architecture)
        if override:
            tests.append(PlannedTest(item, None, skip, image_override=override))
            continue
        fitting = dockerfiles.choose(model.dockerfile, context)
        if not fitting:
            candidates = len(dockerfiles.candidates(model.dockerfile))
            reason = _no_dockerfile_reason(model, context, candidates)
            tests.append(PlannedTest(item, None, reason))
            continue
        for dockerfile in fitting:
            variant = dockerfile_variant(model, dockerfile) if len(fitting) > 1 else None
            tests.append(PlannedTest(item, dockerfile, skip, variant))
    return Plan(tuple(tests), tuple(tag_problems))
