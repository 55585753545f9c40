"""Docker images of the benchmarks: content hash, build once, reuse when unchanged.

An image carries a label with the hash of what it was built from (Dockerfile, build
context, build args). A build is skipped when an image already carries the same hash, so
a second session builds nothing. Under xdist one worker builds while the others wait
(`Once`); a failed build is noted, so the others fail at once instead of building again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.utils.build

from pytest_madengine.backends import LABEL_PREFIX, OutputSink
from pytest_madengine.backends.docker.containers import ENGINE_FAILURES
from pytest_madengine.contract import ImageFacts, ImageRequest, base_docker_of
from pytest_madengine.errors import MadError, display_path, error_text
from pytest_madengine.masking import mask_text
from pytest_madengine.resources.once import Once

CONTENT_HASH_LABEL = f"{LABEL_PREFIX}.content-hash"
LOG_TAIL_LINES = 30
HASH_BLOCK = 1024 * 1024


class BuildError(MadError):
    """A failed build; the message holds the reason and the tail of the build log."""


def build_inputs(request: ImageRequest) -> tuple[Path, Path]:
    """(Dockerfile, build context) of a request to build; MadError when it names none."""
    if request.dockerfile is None or request.context_dir is None:
        raise MadError(f"{request.name}: nothing to build (no Dockerfile)")
    return request.dockerfile, request.context_dir


def _context_files(context_dir: Path, dockerfile: Path) -> list[str]:
    """The files the engine gets as build context: what .dockerignore leaves, as the
    SDK itself decides it when it sends the context."""
    ignore = context_dir / ".dockerignore"
    patterns = []
    if ignore.is_file():
        lines = ignore.read_text(encoding="utf-8", errors="replace").splitlines()
        patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return sorted(docker.utils.build.exclude_paths(str(context_dir), patterns, str(dockerfile)))


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.digest()


def content_hash(request: ImageRequest, skip: tuple[Path, ...] = ()) -> str:
    """Hash of the Dockerfile, the build context's regular files (as .dockerignore
    leaves them, without `skip`: our own output when the context is the tree), and
    the build args. Files are read in blocks; links and FIFOs are named, not read."""
    dockerfile, context = build_inputs(request)
    digest = hashlib.sha256()
    digest.update(dockerfile.read_bytes())
    skipped = {path.resolve() for path in skip}
    if context.is_dir():
        for relative in _context_files(context, dockerfile):
            path = context / relative
            if path.resolve() in skipped or any(p in skipped for p in path.resolve().parents):
                continue
            digest.update(relative.encode(errors="surrogateescape") + b"\0")
            if path.is_file() and not path.is_symlink():
                digest.update(_file_digest(path))
            elif path.is_symlink():
                digest.update(os.readlink(path).encode(errors="surrogateescape"))
    digest.update(json.dumps(dict(request.build_args), sort_keys=True).encode())
    return digest.hexdigest()


def _tail(lines: deque[str]) -> str:
    return "".join(lines).rstrip()


class ImageBuilder:
    """Builds (or reuses) images on one Docker Engine, at most once per session."""

    def __init__(
        self,
        client: docker.DockerClient,
        log_dir: Path,
        once: Once,
        no_cache: bool = False,
        skip: tuple[Path, ...] = (),
    ) -> None:
        self.client = client
        self.log_dir = log_dir
        self.once = once
        self.no_cache = no_cache
        self.skip = skip  # paths left out of content hashes: our own output
        self._tagged: set[tuple[str, str]] = set()  # (name, image id) this process tagged
        self._hashes: dict[tuple[object, ...], str] = {}

    def ensure(self, request: ImageRequest, on_output: OutputSink | None = None) -> ImageFacts:
        """The image the request builds, built now unless this session or an earlier one
        has; MadError when the request names no Dockerfile. Its `secrets` are masked in
        the build log and the live output.

        Images are keyed by content: models sharing a Dockerfile and context share one
        build, and each gets its own name as a tag of it. `built` is True for the one
        test that built it, and only its build streams to `on_output`.
        """
        # Hashed once per process: a context that holds files changing as the session
        # runs (logs, when the context is the tree) must not give each test a build.
        dockerfile, context = build_inputs(request)
        key = (dockerfile, context, tuple(sorted(request.build_args.items())))
        if key not in self._hashes:
            self._hashes[key] = content_hash(request, self.skip)
        wanted = self._hashes[key]

        def build_or_reuse() -> dict[str, Any]:
            # --mad-clean-cache rebuilds once per session, not once per test or worker.
            existing = None if self.no_cache else self._existing(wanted)
            if existing is not None:
                return {"id": existing.id, "built": False, "duration": 0.0, "log": None}
            return self._build(request, wanted, on_output)

        result, ran = self.once.run(f"build-{wanted[:24]}", build_or_reuse)
        self._tag(request.name, result["id"])
        built = ran and bool(result["built"])
        return ImageFacts(
            name=request.name,
            docker_sha=result["id"],
            base_docker=request.base_docker or base_docker_of(dockerfile, request.build_args),
            built=built,
            build_duration=float(result["duration"]) if built else 0.0,
            log_path=result["log"] if built else None,
        )

    def _tag(self, name: str, image_id: str) -> None:
        """Gives the image this test's name, unless it carries it already."""
        if (name, image_id) in self._tagged:
            return
        image = self.client.images.get(image_id)
        if name not in image.tags and f"{name}:latest" not in image.tags:
            image.tag(name, "latest")
        self._tagged.add((name, image_id))

    def _existing(self, wanted: str) -> Any:
        """An image built from the same content, under whatever name."""
        found = self.client.images.list(filters={"label": f"{CONTENT_HASH_LABEL}={wanted}"})
        return found[0] if found else None

    def _build(
        self, request: ImageRequest, wanted: str, on_output: OutputSink | None = None
    ) -> dict[str, Any]:
        dockerfile, context = build_inputs(request)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{request.name}.build.log"
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        start = time.monotonic()
        error: str | None = None
        with log_path.open("w", encoding="utf-8") as log:
            try:
                stream = self.client.api.build(
                    path=str(context),
                    dockerfile=str(dockerfile),
                    tag=request.name,
                    buildargs=dict(request.build_args),
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
                        # The engine sends whole lines, so masking each chunk is enough.
                        text = mask_text(text, request.secrets)
                        log.write(text)
                        tail.append(text if text.endswith("\n") else text + "\n")
                        if on_output is not None:
                            on_output(text.encode())
            except ENGINE_FAILURES as exc:  # a refusal, or the stream cut mid-build
                error = mask_text(error_text(exc) or type(exc).__name__, request.secrets)
                log.write(f"ERROR: {error}\n")
        duration = time.monotonic() - start
        if error is not None:
            error = mask_text(error, request.secrets)
            first = error.splitlines()[0] if error else "unknown error"
            raise BuildError(
                f"image {request.name} failed to build: {first}"
                f" ({display_path(dockerfile)}; log: {log_path})\n{_tail(tail)}"
            )
        image = self.client.images.get(request.name)
        return {"id": image.id, "built": True, "duration": duration, "log": str(log_path)}
