"""Build-only sessions (the build half of a split CI): which images to build and where
to push them, and the build of one image into a `BuildRecord`.

One target per image name (`ci-<model>_<dockerfile>`): models sharing a Dockerfile get
a target each, since the run phase looks images up by name, but the backend builds
their common content once and tags it for each. A batch manifest (madengine's
`batch.json`) names the models; only its `build_new` entries are built, the others are
listed in the output manifest as they are.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_madengine.backends import (
    Backend,
    ImagePublisher,
    ImageRequest,
    PushProgressSink,
)
from pytest_madengine.core.planning import Plan, PlannedTest
from pytest_madengine.core.records import BuildRecord, Status, build_failed, build_skipped
from pytest_madengine.core.tree.tags import parse_tag
from pytest_madengine.credentials import DOCKERHUB, Credentials, registry_key, registry_of
from pytest_madengine.errors import MadError, UsageProblem, read_json


@dataclass(frozen=True)
class BatchEntry:
    """One entry of a batch manifest."""

    model_name: str  # a model name or tag, as for --mad-tags
    build_new: bool = False
    registry: str | None = None  # over --mad-registry for this model
    registry_image: str | None = None  # the pushed name, over the derived one


def load_batch_manifest(path: Path) -> tuple[BatchEntry, ...]:
    """The entries of a batch.json; MadError naming the file and entry when one is wrong."""
    data = read_json(path, "--mad-batch-manifest")
    if not isinstance(data, list):
        raise MadError(f"{path}: a batch manifest is a list of {{'model_name', 'build_new'}}")
    entries = []
    for index, item in enumerate(data):
        where = f"{path}: entry {index}"
        if not isinstance(item, dict):
            raise MadError(f"{where}: expected an object, got {type(item).__name__}")
        name = item.get("model_name")
        if not isinstance(name, str) or not name.strip():
            raise MadError(f"{where}: 'model_name' must be a non-empty string")
        build_new = item.get("build_new", False)
        if not isinstance(build_new, bool):
            raise MadError(f"{where} ({name}): 'build_new' must be true or false")
        texts = {}
        for key in ("registry", "registry_image"):
            value = item.get(key)
            if value is not None and not isinstance(value, str):
                raise MadError(f"{where} ({name}): '{key}' must be a string")
            texts[key] = value or None
        entries.append(BatchEntry(name.strip(), build_new, **texts))
    return tuple(entries)


def registry_reference(image: str, registry: str | None, repository: str | None) -> str | None:
    """Where madengine pushes an image: `<registry>/<repository>:<image>` with a
    credential `repository`, else `<registry>/<image>`; on Docker Hub
    `<repository>:<image>`. None without a registry: the image stays local."""
    if not registry:
        return None
    if registry_key(registry) == DOCKERHUB:
        return f"{repository}:{image}" if repository else image
    registry = registry.rstrip("/")
    return f"{registry}/{repository}:{image}" if repository else f"{registry}/{image}"


@dataclass(frozen=True)
class BuildTarget:
    """One image of a build-only session."""

    test: PlannedTest  # the first planned test that runs this image
    registry: str | None = None
    reference: str | None = None  # where it is pushed; None: it stays local
    build_new: bool = True

    @property
    def name(self) -> str:
        return self.test.image or self.test.name

    @property
    def skip_reason(self) -> str | None:
        return None if self.test.dockerfile else self.test.skip_reason


@dataclass(frozen=True)
class BuildPlan:
    targets: tuple[BuildTarget, ...]  # built, one item each
    listed: tuple[BuildTarget, ...]  # batch entries with build_new false: manifest only

    def for_source(self, source: Path) -> list[BuildTarget]:
        return [target for target in self.targets if target.test.model.source == source]


def _batch_entry(test: PlannedTest, batch: Sequence[BatchEntry]) -> BatchEntry | None:
    matching = [entry for entry in batch if parse_tag(entry.model_name).matches(test.model)]
    # A model named by several entries is built when any of them asks for it.
    return next((entry for entry in matching if entry.build_new), None) or next(
        iter(matching), None
    )


def plan_builds(
    plan: Plan,
    registry: str | None,
    batch: Sequence[BatchEntry] | None,
    credentials: Credentials,
) -> BuildPlan:
    """The images of the planned tests, once each, with where each is pushed."""
    targets: dict[str, BuildTarget] = {}
    for test in plan.tests:
        name = test.image or test.name
        if name in targets:
            continue  # a parametrized variant runs the same image
        entry = _batch_entry(test, batch) if batch is not None else None
        target_registry = (entry.registry if entry else None) or registry
        explicit = entry.registry_image if entry else None
        reference = explicit or registry_reference(
            name, target_registry, credentials.repository(target_registry)
        )
        if test.dockerfile is None:
            reference = None  # nothing to build, nothing to push
        targets[name] = BuildTarget(
            test=test,
            registry=target_registry or (registry_of(explicit) if explicit else None),
            reference=reference,
            build_new=entry.build_new if entry else True,
        )
    built = tuple(target for target in targets.values() if target.build_new)
    # A listed image needs a name, so a model with no fitting Dockerfile is left out.
    listed = tuple(t for t in targets.values() if not t.build_new and t.test.dockerfile)
    return BuildPlan(built, listed)


def check_publisher(backend: Backend) -> ImagePublisher:
    """The backend, when it can build for a registry; else a usage error."""
    if not isinstance(backend, ImagePublisher):
        raise UsageProblem(
            f"--mad-build-only: backend '{backend.name}' cannot build images for a registry"
            " (it has no build and push methods)"
        )
    return backend


def pending_record(target: BuildTarget) -> BuildRecord:
    """The target's record before its build: what every record of it says."""
    test = target.test
    return BuildRecord(
        name=target.name,
        model=test.model.name,
        status=Status.SUCCESS,
        dockerfile=test.dockerfile.relpath if test.dockerfile else "",
        registry=target.registry,
        reference=target.reference,
    )


def build_target(
    target: BuildTarget,
    publisher: ImagePublisher,
    request_of: Callable[[PlannedTest], ImageRequest],  # the runner's: builds match runs
    credentials: Credentials,
    on_progress: PushProgressSink | None = None,
) -> BuildRecord:
    """Builds the target's image and pushes it when it has a reference. Every failure
    ends as a FAILURE record with a one-line reason free of known secrets."""
    record = dataclasses.replace(pending_record(target), started_at=time.time())
    if target.skip_reason:
        return build_skipped(record, target.skip_reason, ended_at=time.time())
    redact = credentials.redact  # an engine's message may quote a secret
    try:
        image = publisher.build(request_of(target.test))
    except MadError as exc:
        reason, _, detail = str(exc).partition("\n")
        return build_failed(record, reason, detail, redact, ended_at=time.time())
    record = dataclasses.replace(record, image=image)
    if target.reference is None:
        return dataclasses.replace(record, ended_at=time.time())
    try:
        auth = credentials.registry_auth(registry_of(target.reference))
        digest = publisher.push(target.name, target.reference, auth, on_progress)
    except MadError as exc:
        reason = str(exc).partition("\n")[0]
        return build_failed(record, reason, "", redact, ended_at=time.time())
    return dataclasses.replace(record, pushed=True, digest=digest, ended_at=time.time())
