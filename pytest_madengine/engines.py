"""The Docker Engines of a session: one client per host, images shipped to each once."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import docker
import docker.errors
from filelock import FileLock

from pytest_madengine.backends import Backend
from pytest_madengine.backends.docker import ENGINE_FAILURES, DockerBackend, EngineError
from pytest_madengine.errors import MadError, first_line
from pytest_madengine.hosts import Host, HostLinks
from pytest_madengine.images import BuiltImage

SHIP_CHUNK = 4 * 1024 * 1024


class HostLost(EngineError):
    """A host's engine stopped answering; its tests may be retried elsewhere."""

    def __init__(self, host: Host, reason: str) -> None:
        super().__init__(f"host {host.name} lost: {reason}")
        self.host = host
        self.reason = reason


class Engines:
    """Clients of this process for the build engine and every host."""

    def __init__(
        self, build_client: docker.DockerClient, lock_dir: Path, links: HostLinks | None = None
    ) -> None:
        self.build_client = build_client
        self.lock_dir = lock_dir
        self.links = links or HostLinks()
        self._clients: dict[str, docker.DockerClient] = {}
        self._ids: dict[str, str] = {}
        self._present: set[tuple[str, str, str]] = set()  # (host, name, id) seen there
        self._pulled: dict[tuple[str, str], str] = {}  # (host, reference) -> image id

    def client(self, host: Host) -> docker.DockerClient:
        if host.docker is None:
            return self.build_client
        if host.name not in self._clients:
            try:
                client = self.links.client(host)
                client.ping()
            except (MadError, *ENGINE_FAILURES) as exc:
                self.links.forget(host)
                raise HostLost(host, first_line(exc)) from None
            self._clients[host.name] = client
        return self._clients[host.name]

    def backend(self, host: Host) -> Backend:
        """How containers run on the host (the Docker Engine, for now every host)."""
        return DockerBackend(self.client(host), host.name)

    def answers(self, host: Host) -> bool:
        try:
            self.client(host).ping()
        except (HostLost, *ENGINE_FAILURES):
            self._clients.pop(host.name, None)
            self.links.forget(host)
            return False
        return True

    def _engine_id(self, name: str, client: docker.DockerClient) -> str:
        if name not in self._ids:
            self._ids[name] = client.info()["ID"]
        return self._ids[name]

    def ship(self, image: BuiltImage, host: Host) -> bool:
        """Puts the image on the host unless it is there; True when it was streamed.

        Streams `docker save` of the build engine into `docker load` on the host, once
        per host and image across the session's workers (a file lock), no registry needed.
        """
        known = (host.name, image.name, image.docker_sha)
        if known in self._present:
            return False  # this process put or found it there already
        target = self.client(host)
        if self._engine_id("", self.build_client) == self._engine_id(host.name, target):
            return False
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        lock = self.lock_dir / f"ship-{host.name}-{image.docker_sha.split(':')[-1][:16]}.lock"
        try:
            with FileLock(str(lock)):
                shipped = False
                try:
                    present = target.images.get(image.docker_sha)
                except docker.errors.ImageNotFound:
                    source = self.build_client.images.get(image.name)
                    target.images.load(source.save(chunk_size=SHIP_CHUNK, named=True))
                    present, shipped = target.images.get(image.docker_sha), True
                # `save` names the image by its first tag only: give it this test's name.
                if f"{image.name}:latest" not in present.tags:
                    present.tag(image.name, "latest")
            self._present.add(known)
            return shipped
        except ENGINE_FAILURES as exc:
            if not self.answers(host):
                raise HostLost(host, first_line(exc)) from None
            reason = first_line(exc)
            raise EngineError(f"shipping {image.name} to {host.name} failed: {reason}") from None

    def local_image_id(self, name: str) -> str:
        """The id of an image on the build engine (a manifest's image with no registry)."""
        try:
            return str(self.build_client.images.get(name).id)
        except docker.errors.ImageNotFound:
            raise EngineError(
                f"image {name} of the build manifest is not on the local engine"
                " and the manifest names no registry_image for it"
            ) from None
        except ENGINE_FAILURES as exc:
            raise EngineError(f"Docker Engine failed: {first_line(exc)}") from None

    def pull(self, reference: str, host: Host, auth: dict[str, str] | None) -> str:
        """Pulls the image onto the host once per session across workers; its id.

        A failed pull is noted, so the session's other tests of the image on that host
        fail at once with the same reason instead of asking the registry again.
        """
        known = (host.name, reference)
        if known in self._pulled:
            return self._pulled[known]
        target = self.client(host)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(f"{host.name}\0{reference}".encode()).hexdigest()[:16]
        pulled_note = self.lock_dir / f"pull-{key}.id"
        failed_note = self.lock_dir / f"pull-{key}.failed"
        with FileLock(str(self.lock_dir / f"pull-{key}.lock")):
            if failed_note.exists():
                raise EngineError(failed_note.read_text(encoding="utf-8"))
            if not pulled_note.exists():
                try:
                    image = target.images.pull(reference, auth_config=auth)
                except ENGINE_FAILURES as exc:
                    if not self.answers(host):
                        raise HostLost(host, first_line(exc)) from None
                    why = exc.explanation if isinstance(exc, docker.errors.APIError) else exc
                    reason = f"pulling {reference} on {host.name} failed: {first_line(why)}"
                    failed_note.write_text(reason, encoding="utf-8")
                    raise EngineError(reason) from None
                pulled_note.write_text(image.id, encoding="utf-8")
            image_id = pulled_note.read_text(encoding="utf-8")
        self._pulled[known] = image_id
        return image_id

    def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(*ENGINE_FAILURES):
                client.close()
        self._clients.clear()
