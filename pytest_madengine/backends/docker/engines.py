"""The Docker Engines of a session: one client per host; images shipped or pulled onto
each host once per session (across xdist workers, through `Once`)."""

from __future__ import annotations

import contextlib
import threading

import docker
import docker.errors

from pytest_madengine.backends.docker.containers import (
    ENGINE_FAILURES,
    PING_TIMEOUT_S,
    EngineError,
    answers,
)
from pytest_madengine.backends.docker.links import HostLinks
from pytest_madengine.errors import HostLost, MadError, first_line
from pytest_madengine.resources.hosts import Host
from pytest_madengine.resources.once import Once, note_key

SHIP_CHUNK = 4 * 1024 * 1024
# A host whose link cannot be made (MadError) or whose engine does not answer.
_UNREACHABLE: tuple[type[BaseException], ...] = (MadError, *ENGINE_FAILURES)


class Engines:
    """Clients of this process for the build engine and every host."""

    def __init__(self, build_client: docker.DockerClient, once: Once, links: HostLinks) -> None:
        self.build_client = build_client
        self.once = once
        self.links = links
        self._clients: dict[str, docker.DockerClient] = {}
        self._ids: dict[str, str] = {}
        self._connecting = threading.RLock()

    def client(self, host: Host) -> docker.DockerClient:
        """The host's client; HostLost when its engine cannot be reached."""
        if host.docker is None:
            return self.build_client
        with self._connecting:  # tests running at once on threads open one client a host
            return self._client(host)

    def _client(self, host: Host) -> docker.DockerClient:
        if host.name not in self._clients:
            try:
                client = self.links.client(host)
                client.ping()
            except _UNREACHABLE as exc:
                self.links.forget(host)
                raise HostLost(host.name, first_line(exc)) from None
            self._clients[host.name] = client
        return self._clients[host.name]

    def cached(self, host: Host) -> docker.DockerClient | None:
        """The host's client if this process has one already (no connection made)."""
        if host.docker is None:
            return self.build_client
        with self._connecting:
            return self._clients.get(host.name)

    def answers(self, host: Host) -> bool:
        """Whether the host's engine answers a ping within a few seconds (a client made
        for the question, too, waits no longer: the SDK asks the engine's version)."""
        if host.docker is None:
            return answers(self.build_client)
        with self._connecting:
            client = self._clients.get(host.name)
        if client is not None and answers(client):
            return True
        if client is None:
            try:
                client = self.links.client(host, timeout=PING_TIMEOUT_S)
            except _UNREACHABLE:
                client = None
            if client is not None:
                try:
                    if answers(client):
                        return True
                finally:
                    client.close()
        with self._connecting:
            self._clients.pop(host.name, None)
        self.links.forget(host)
        return False

    def failure(self, host: Host, exc: BaseException, doing: str) -> MadError:
        """HostLost when the host stopped answering, else the engine's one-line reason."""
        if not self.answers(host):
            return HostLost(host.name, first_line(exc))
        why = exc.explanation if isinstance(exc, docker.errors.APIError) else exc
        return EngineError(f"{doing} on {host.name} failed: {first_line(why or exc)}")

    def _engine_id(self, name: str, client: docker.DockerClient) -> str:
        if name not in self._ids:
            self._ids[name] = client.info()["ID"]
        return self._ids[name]

    def ship(self, name: str, image_id: str, host: Host) -> bool:
        """Puts the built image on the host unless it is there; True when it was streamed.

        Streams `docker save` of the build engine into `docker load` on the host, once
        per host and image across the session's workers, no registry needed.
        """
        target = self.client(host)
        if target is self.build_client:  # this machine's engine: nothing to ask (info() is slow)
            return False
        try:
            if self._engine_id("", self.build_client) == self._engine_id(host.name, target):
                return False
        except ENGINE_FAILURES as exc:
            raise self.failure(host, exc, f"shipping {name}") from None

        def stream() -> dict[str, bool]:
            try:
                try:
                    present = target.images.get(image_id)
                    shipped = False
                except docker.errors.ImageNotFound:
                    source = self.build_client.images.get(name)
                    # The SDK streams any iterable of bytes; its stubs ask for bytes or a file.
                    chunks = source.save(chunk_size=SHIP_CHUNK, named=True)
                    target.images.load(chunks)  # type: ignore[arg-type]
                    present, shipped = target.images.get(image_id), True
                # `save` names the image by its first tag only: give it this test's name.
                if f"{name}:latest" not in present.tags:
                    present.tag(name, "latest")
            except ENGINE_FAILURES as exc:
                raise self.failure(host, exc, f"shipping {name}") from None
            return {"shipped": shipped}

        result, ran = self.once.run(note_key("ship", host.name, name, image_id), stream)
        return ran and bool(result["shipped"])

    def provide(self, name: str, host: Host) -> str:
        """A ready image on the host (madengine's MAD_CONTAINER_IMAGE): shipped from the
        build engine when it has it, else the host's own, else pulled; its id."""
        try:
            image_id = str(self.build_client.images.get(name).id)
        except docker.errors.ImageNotFound:
            try:
                return str(self.client(host).images.get(name).id)
            except docker.errors.ImageNotFound:
                return self.pull(name, host, None)
        self.ship(name, image_id, host)
        return image_id

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
        target = self.client(host)

        def pull() -> dict[str, str]:
            try:
                image = target.images.pull(reference, auth_config=auth)
            except ENGINE_FAILURES as exc:
                raise self.failure(host, exc, f"pulling {reference}") from None
            return {"id": str(image.id)}

        result, _ = self.once.run(note_key("pull", host.name, reference), pull)
        return result["id"]

    def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(*ENGINE_FAILURES):
                client.close()
        self._clients.clear()
