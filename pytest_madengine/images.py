"""Docker images of the benchmarks: content hash, build once, reuse when unchanged.

An image carries a label with the hash of what it was built from (Dockerfile, build
context, build args). A build is skipped when an image of that name already carries the
same hash, so a second session builds nothing. Under xdist a file lock per image makes
one worker build while the others wait and then find it built; a failed build is noted
beside the lock so the others fail at once instead of building again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from filelock import FileLock

from pytest_madengine.backends import LABEL_PREFIX
from pytest_madengine.errors import MadError

CONTENT_HASH_LABEL = f"{LABEL_PREFIX}.content-hash"
LOG_TAIL_LINES = 30
_ARG_BASE = re.compile(r"^\s*ARG\s+BASE_DOCKER\s*=\s*(\S+)", re.MULTILINE)


@dataclass(frozen=True)
class ImageSpec:
    name: str  # ci-<model>_<dockerfile stem>
    dockerfile: Path
    context_dir: Path
    build_args: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def base_docker(self) -> str:
        """BASE_DOCKER from the build args, else the Dockerfile's own default."""
        if "BASE_DOCKER" in self.build_args:
            return self.build_args["BASE_DOCKER"]
        found = _ARG_BASE.search(self.dockerfile.read_text(encoding="utf-8", errors="replace"))
        return found.group(1) if found else ""


@dataclass(frozen=True)
class BuiltImage:
    name: str
    docker_sha: str
    base_docker: str
    built: bool  # False when an image of the same content was reused
    build_duration: float
    log_path: Path | None
    content_hash: str
    pulled: bool = False  # from a registry named by a build manifest


class BuildError(MadError):
    """A failed build; the message holds the reason and the tail of the build log."""


def content_hash(spec: ImageSpec) -> str:
    """Hash of the Dockerfile, every file of the build context, and the build args."""
    digest = hashlib.sha256()
    digest.update(spec.dockerfile.read_bytes())
    if spec.context_dir.is_dir():
        for directory, dirnames, filenames in os.walk(spec.context_dir):
            dirnames.sort()  # a stable walk order gives a stable hash
            for filename in sorted(filenames):
                path = Path(directory, filename)
                digest.update(path.relative_to(spec.context_dir).as_posix().encode())
                digest.update(b"\0")
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(json.dumps(dict(spec.build_args), sort_keys=True).encode())
    return digest.hexdigest()


def _tail(lines: deque[str]) -> str:
    return "".join(lines).rstrip()


class ImageBuilder:
    """Builds (or reuses) images on one Docker Engine, at most once per session."""

    def __init__(
        self,
        client: docker.DockerClient,
        log_dir: Path,
        lock_dir: Path,
        no_cache: bool = False,
    ) -> None:
        self.client = client
        self.log_dir = log_dir
        self.lock_dir = lock_dir
        self.no_cache = no_cache
        self._done: dict[str, BuiltImage] = {}

    def ensure(self, spec: ImageSpec) -> BuiltImage:
        """The image of the spec, built now unless this session or an earlier one has.

        Images are keyed by content: models sharing a Dockerfile and context share one
        build, and each gets its own name as a tag of it.
        """
        if spec.name in self._done:
            return self._done[spec.name]
        wanted = content_hash(spec)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        key = wanted[:24]
        failed_note = self.lock_dir / f"{key}.failed"
        built_note = self.lock_dir / f"{key}.built"
        with FileLock(str(self.lock_dir / f"{key}.lock")):
            if failed_note.exists():
                raise BuildError(failed_note.read_text(encoding="utf-8"))
            # --mad-clean-cache rebuilds once per session, not once per test or worker.
            reusable = not self.no_cache or built_note.exists()
            existing = self._existing(wanted) if reusable else None
            if existing is not None:
                if spec.name not in existing.tags and f"{spec.name}:latest" not in existing.tags:
                    existing.tag(spec.name, "latest")
                result = BuiltImage(
                    spec.name, existing.id, spec.base_docker, False, 0.0, None, wanted
                )
            else:
                try:
                    result = self._build(spec, wanted)
                except BuildError as exc:
                    failed_note.write_text(str(exc), encoding="utf-8")
                    raise
                built_note.write_text(result.docker_sha, encoding="utf-8")
        self._done[spec.name] = result
        return result

    def _existing(self, wanted: str) -> Any:
        """An image built from the same content, under whatever name."""
        found = self.client.images.list(filters={"label": f"{CONTENT_HASH_LABEL}={wanted}"})
        return found[0] if found else None

    def _build(self, spec: ImageSpec, wanted: str) -> BuiltImage:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.build.log"
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        start = time.monotonic()
        error: str | None = None
        with log_path.open("w", encoding="utf-8") as log:
            try:
                stream = self.client.api.build(
                    path=str(spec.context_dir),
                    dockerfile=str(spec.dockerfile),
                    tag=spec.name,
                    buildargs=dict(spec.build_args),
                    labels={CONTENT_HASH_LABEL: wanted},
                    nocache=self.no_cache,
                    rm=True,
                    forcerm=True,
                    decode=True,
                )
                for chunk in stream:
                    text = chunk.get("stream") or chunk.get("status") or ""
                    if "error" in chunk:
                        error = str(chunk["error"]).strip()
                        text = f"ERROR: {error}\n"
                    if text:
                        log.write(text)
                        tail.append(text if text.endswith("\n") else text + "\n")
            except (docker.errors.APIError, docker.errors.BuildError, OSError) as exc:
                error = str(exc).strip()
                log.write(f"ERROR: {error}\n")
        duration = time.monotonic() - start
        if error is not None:
            first = error.splitlines()[0] if error else "unknown error"
            raise BuildError(
                f"image {spec.name} failed to build: {first} (log: {log_path})\n{_tail(tail)}"
            )
        image = self.client.images.get(spec.name)
        return BuiltImage(spec.name, image.id, spec.base_docker, True, duration, log_path, wanted)
