"""This machine's Docker Engine as the other backends use it: the one seam through which
the slurm and k8s backends build, look up and push images, so that they share Docker's
image pipeline (content hash, build once, masking of a build's secrets) without
reaching into its modules.

A backend makes one `LocalImages` on first use (a session that only pulls a manifest's
registry images needs no engine here) and hands it `ImageRequest`s as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import docker

from pytest_madengine.backends import OutputSink
from pytest_madengine.backends.docker.containers import (
    ENGINE_FAILURES,
    EngineError,
    tar_directories,
)
from pytest_madengine.backends.docker.engines import Engines
from pytest_madengine.backends.docker.images import ImageBuilder
from pytest_madengine.backends.docker.links import HostLinks, connect
from pytest_madengine.backends.docker.publish import ImagePusher
from pytest_madengine.contract import ImageFacts, ImageRequest
from pytest_madengine.resources.once import Once

# tar_directories: a run's copies as the docker backend puts them into its containers.
__all__ = ["ENGINE_FAILURES", "EngineError", "LocalImages", "tar_directories"]


@dataclass(frozen=True)
class LocalImages:
    """Builds, finds and pushes images on the engine of DOCKER_HOST (this machine's by
    default). What fails in the engine raises one of ENGINE_FAILURES or a MadError."""

    client: docker.DockerClient
    builder: ImageBuilder
    engines: Engines
    pusher: ImagePusher

    @classmethod
    def connect(
        cls, log_dir: Path, once: Once, no_cache: bool = False, skip: tuple[Path, ...] = ()
    ) -> LocalImages:
        """The engine's images; EngineError (a MadError) in one line when none answers.
        `log_dir` gets the build logs; `skip`: paths left out of content hashes."""
        client = connect()
        return cls(
            client,
            ImageBuilder(client, log_dir, once, no_cache, skip),
            Engines(client, once, HostLinks()),
            ImagePusher(client, once),
        )

    def build(self, request: ImageRequest, on_output: OutputSink | None = None) -> ImageFacts:
        """The request's image, built unless one of the same content is there."""
        return self.builder.ensure(request, on_output)

    def image_id(self, name: str) -> str:
        """The id of an image on the engine; EngineError when it is not there."""
        return self.engines.local_image_id(name)

    def push(
        self, image: str, reference: str, auth: Mapping[str, str] | None, image_id: str | None
    ) -> str:
        """Pushes the image as `reference`; the pushed digest."""
        return self.pusher.push(image, reference, auth, image_id=image_id)

    def close(self) -> None:
        self.engines.close()
        with contextlib.suppress(Exception):
            self.client.close()
