"""Pushing built images to a registry: tag, push with a login, progress line by line.

The registry's answer arrives inside the push stream (`{"error": ...}`), not as an
exception, so the stream is read to its end and its first error becomes the one-line
reason. A reference is pushed once per session across xdist workers (`Once`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import docker

from pytest_madengine.backends import PushProgressSink
from pytest_madengine.backends.docker.containers import ENGINE_FAILURES
from pytest_madengine.errors import MadError, first_line
from pytest_madengine.resources.once import Once, note_key

# Layer states worth a line; "Pushing" ticks many times a second and is shown once.
_SHOWN_STATES = ("Preparing", "Pushing", "Pushed", "Layer already exists", "Mounted from")


class PushError(MadError):
    """A push the registry or the engine refused; the message is the one-line reason."""


def split_reference(reference: str) -> tuple[str, str]:
    """(repository, tag) of `host:port/name[:tag]`; the tag defaults to `latest`."""
    if "@" in reference:
        raise PushError(f"cannot push to {reference}: a digest reference names no tag")
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon + 1 :]
    return reference, "latest"


def _short(layer: str) -> str:
    return layer[:12]


class PushProgress:
    """Turns the engine's push events into a line per layer state change."""

    def __init__(self, reference: str, sink: PushProgressSink | None) -> None:
        self.reference = reference
        self.sink = sink
        self.states: dict[str, str] = {}
        self.digest: str | None = None
        self.error: str | None = None

    def feed(self, event: Mapping[str, Any]) -> None:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            message = event.get("error") or detail.get("message") or "push failed"
            self.error = self.error or first_line(str(message))
            return
        aux = event.get("aux")
        if isinstance(aux, Mapping) and aux.get("Digest"):
            self.digest = str(aux["Digest"])
            return
        status, layer = str(event.get("status") or ""), event.get("id")
        if not layer:
            return
        state = next((shown for shown in _SHOWN_STATES if status.startswith(shown)), None)
        if state is None or self.states.get(layer) == state:
            return
        self.states[layer] = state
        # "Mounted from <repository>" says where from; a "Pushing" tick says no more.
        self._say(f"{_short(str(layer))} {state if state == 'Pushing' else status}")

    def finished(self) -> None:
        if self.digest:
            self._say(f"pushed, digest {self.digest}")

    def _say(self, text: str) -> None:
        if self.sink is not None:
            self.sink(f"push {self.reference}: {text}")


class ImagePusher:
    """Pushes images of one Docker Engine (the one that built them)."""

    def __init__(self, client: docker.DockerClient, once: Once) -> None:
        self.client = client
        self.once = once

    def push(
        self,
        image: str,
        reference: str,
        auth: Mapping[str, str] | None,
        on_progress: PushProgressSink | None = None,
        image_id: str | None = None,
    ) -> str:
        """The digest the registry gave the pushed image (the one of `image_id`, when
        given: a tag another session moves cannot swap it); PushError with its reason."""
        repository, tag = split_reference(reference)

        def push_once() -> dict[str, Any]:
            started = time.monotonic()
            progress = PushProgress(reference, on_progress)
            try:
                self.client.images.get(pushed_id).tag(repository, tag)
                events: Iterable[Mapping[str, Any]] = self.client.api.push(
                    repository, tag=tag, auth_config=dict(auth) if auth else None,
                    stream=True, decode=True,
                )  # fmt: skip
                for event in events:
                    progress.feed(event)
            except docker.errors.ImageNotFound:
                raise PushError(f"pushing {image}: no such image on the build engine") from None
            except ENGINE_FAILURES as exc:
                why = exc.explanation if isinstance(exc, docker.errors.APIError) else exc
                raise PushError(
                    f"pushing {image} to {reference} failed: {first_line(str(why or exc))}"
                ) from None
            if progress.error is not None or not progress.digest:
                why = progress.error or "the registry gave no digest"
                raise PushError(f"pushing {image} to {reference} failed: {why}")
            progress.finished()
            return {"digest": progress.digest, "seconds": time.monotonic() - started}

        pushed_id = image_id or self._image_id(image)
        result, _ = self.once.run(note_key("push", reference, pushed_id), push_once)
        return str(result["digest"])

    def _image_id(self, image: str) -> str:
        try:
            return str(self.client.images.get(image).id)
        except docker.errors.ImageNotFound:
            raise PushError(f"pushing {image}: no such image on the build engine") from None
        except ENGINE_FAILURES as exc:
            raise PushError(f"pushing {image}: {first_line(exc)}") from None
