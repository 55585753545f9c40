"""madengine's build_manifest.json, read for a run phase: which image each model runs
and where to pull it from.

Only what a run needs is read; every other field is left alone. `registry_image`
names the image in a registry; without it the image is expected under its build
name (`docker_image`) on the engine that builds here, and is shipped from there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_madengine.credentials import registry_of
from pytest_madengine.errors import MadError, read_json


@dataclass(frozen=True)
class ManifestImage:
    name: str  # the key in built_images: the image name at build time
    model: str
    docker_image: str
    registry: str | None
    registry_image: str | None
    base_docker: str
    docker_sha: str
    build_duration: float

    @property
    def pulled(self) -> bool:
        return bool(self.registry_image)

    @property
    def reference(self) -> str:
        """What a host runs: the registry image, else the local build name."""
        return self.registry_image or self.docker_image


@dataclass(frozen=True)
class BuildManifest:
    path: Path
    images: Mapping[str, ManifestImage]
    model_names: tuple[str, ...]  # of built_models, in the file's order

    def image_for(self, image_name: str, model_name: str) -> ManifestImage | None:
        """The entry built under this image name, else the only one built for the model."""
        if image_name in self.images:
            return self.images[image_name]
        for_model = [image for image in self.images.values() if image.model == model_name]
        return for_model[0] if len(for_model) == 1 else None


def with_registry(reference: str, registry: str) -> str:
    """The reference moved to another registry (its own registry part replaced)."""
    current = registry_of(reference)
    path = reference[len(current) + 1 :] if current else reference
    return f"{registry.rstrip('/')}/{path}"


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MadError(f"{where}: '{key}' must be a string, got {value!r}")
    return value


def _image(name: str, entry: Any, models: Mapping[str, Any], where: str) -> ManifestImage:
    where = f"{where}: built_images['{name}']"
    if not isinstance(entry, dict):
        raise MadError(f"{where}: expected an object, got {type(entry).__name__}")
    model_entry = models.get(name)
    model = _text(entry, "model", where) or (
        str(model_entry.get("name", "")) if isinstance(model_entry, dict) else ""
    )
    duration = entry.get("build_duration") or 0.0
    if isinstance(duration, bool) or not isinstance(duration, int | float | str):
        raise MadError(f"{where}: 'build_duration' must be a number, got {duration!r}")
    try:
        seconds = float(duration)
    except ValueError:
        raise MadError(f"{where}: 'build_duration' must be a number, got {duration!r}") from None
    return ManifestImage(
        name=name,
        model=model,
        docker_image=_text(entry, "docker_image", where) or name,
        registry=_text(entry, "registry", where) or None,
        registry_image=_text(entry, "registry_image", where) or None,
        base_docker=_text(entry, "base_docker", where),
        docker_sha=_text(entry, "docker_sha", where),
        build_duration=seconds,
    )


def load_manifest(path: Path, registry: str | None = None) -> BuildManifest:
    """The manifest's images; `registry` moves every registry image to that registry
    (and gives one to images built without). One-line errors name the file and entry."""
    where = str(path)
    data = read_json(path, "--mad-manifest")
    if not isinstance(data, dict) or not isinstance(data.get("built_images"), dict):
        raise MadError(f"{where}: expected an object with 'built_images' (a build manifest)")
    models = data.get("built_models", {})
    if not isinstance(models, dict):
        raise MadError(f"{where}: 'built_models' must be an object")
    images = {
        name: _image(name, entry, models, where) for name, entry in data["built_images"].items()
    }
    if registry:
        images = {name: _moved(image, registry) for name, image in images.items()}
    names = [
        str(entry["name"])
        for entry in models.values()
        if isinstance(entry, dict) and entry.get("name")
    ]
    names += [image.model for image in images.values() if image.model and image.model not in names]
    return BuildManifest(path, images, tuple(dict.fromkeys(names)))


def _moved(image: ManifestImage, registry: str) -> ManifestImage:
    reference = with_registry(image.registry_image or image.docker_image, registry)
    return dataclasses.replace(image, registry=registry, registry_image=reference)
