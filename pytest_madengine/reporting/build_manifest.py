"""build_manifest.json written by a build-only session, in madengine's format, so that
`madengine run --manifest-file` and `pytest --mad-manifest` both run it.

Written once, by the process that writes the reports (the xdist controller), from the
records of the build items and the targets a batch manifest only lists. Every string
goes through the credentials' redaction first: no secret reaches the file.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_madengine.core.build import BuildTarget
from pytest_madengine.core.options import Options
from pytest_madengine.core.records import BuildRecord, Status
from pytest_madengine.credentials import Credentials

# The context keys madengine carries from the build to the run phase, with their
# values when the context has none.
CONTEXT_KEYS: dict[str, Any] = {"docker_env_vars": {}, "docker_mounts": {},
                                "docker_build_arg": {}, "gpu_vendor": "", "guest_os": "",
                                "docker_gpus": ""}  # fmt: skip
CONTEXT_KEYS_IF_SET = ("tools", "pre_scripts", "post_scripts")


def model_entry(target: BuildTarget) -> dict[str, Any]:
    """The model's models.json entry as madengine records it: its full name, and paths
    from the MAD root (entries of scripts/<dir>/ name them from their directory)."""
    model = target.test.model
    entry = {**model.entry, "name": model.name, "dockerfile": model.dockerfile,
             "scripts": model.scripts}  # fmt: skip
    if "dockercontext" in model.entry:
        entry["dockercontext"] = model.dockercontext
    return entry


def build_command(target: BuildTarget, build_args: Mapping[str, Any]) -> str:
    """The `docker build` command equivalent to what the backend asked the engine for."""
    test = target.test
    argv = ["docker", "build", "-t", target.name]
    if test.dockerfile is not None:
        argv += ["-f", test.dockerfile.relpath]
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    return shlex.join([*argv, test.model.dockercontext])


def _gpu_vendor(target: BuildTarget, options: Options) -> str:
    header = target.test.dockerfile.header if target.test.dockerfile else {}
    return str(header.get("gpu_vendor") or options.gpu_vendor)


def _image_entry(target: BuildTarget, options: Options, record: BuildRecord | None) -> dict:
    image = record.image if record else None
    build_args = options.effective_context.get("docker_build_arg") or {}
    return {
        "model": target.test.model.name,
        "docker_image": target.name,
        "dockerfile": target.test.dockerfile.relpath if target.test.dockerfile else "",
        "base_docker": image.base_docker if image else "",
        "docker_sha": image.docker_sha if image else "",
        "build_duration": round(image.build_duration, 3) if image else 0,
        "build_command": build_command(target, build_args) if record else "",
        "log_file": (image.log_path or "") if image else "",
        "gpu_vendor": _gpu_vendor(target, options),
        "registry": target.registry,
        # A listed image is where the batch says; a built one only once it is pushed.
        "registry_image": record.registry_image if record else target.reference,
    }


def _redacted(value: Any, credentials: Credentials) -> Any:
    if isinstance(value, str):
        return credentials.redact(value)
    if isinstance(value, Mapping):
        return {key: _redacted(item, credentials) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item, credentials) for item in value]
    return value


def manifest_document(
    records: Sequence[BuildRecord],
    targets: Sequence[BuildTarget],
    listed: Sequence[BuildTarget],
    options: Options,
) -> dict[str, Any]:
    """The manifest: the images built (pushed or not), the images a batch lists, the
    build context, and madengine's summary of the builds."""
    by_name = {target.name: target for target in (*targets, *listed)}
    built_images: dict[str, Any] = {}
    built_models: dict[str, Any] = {}
    successful, failed, push_failures = [], [], []
    for record in records:
        target = by_name.get(record.name)
        if target is None or record.image is None:
            if record.status is Status.FAILURE:
                failed.append({"model": record.model, "docker_image": record.name,
                               "error": record.reason or "failed"})  # fmt: skip
            continue
        entry = _image_entry(target, options, record)
        built_images[record.name] = entry
        built_models[record.name] = model_entry(target)
        successful.append(entry)
        if record.reference and not record.pushed:
            push_failures.append({
                "image": record.name,
                "intended_registry_image": record.reference,
                "error": record.reason or "push failed",
            })  # fmt: skip
    for target in listed:
        built_images[target.name] = _image_entry(target, options, None)
        built_models[target.name] = model_entry(target)
    context_values = options.effective_context
    context = {key: context_values.get(key) or empty for key, empty in CONTEXT_KEYS.items()}
    context.update({key: context_values.get(key) for key in CONTEXT_KEYS_IF_SET
                    if context_values.get(key)})  # fmt: skip
    document: dict[str, Any] = {
        "built_images": built_images,
        "built_models": built_models,
        "context": context,
        "credentials_required": sorted(
            {str(model["cred"]) for model in built_models.values() if model.get("cred")}
        ),
        "summary": {
            "successful_builds": successful,
            "failed_builds": failed,
            "total_build_time": round(sum(e["build_duration"] for e in successful), 3),
        },
    }
    if push_failures:
        document["push_failures"] = push_failures
    return _redacted(document, options.credentials)


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Written whole or not at all: a reader never sees half a manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


def build_summary(records: Sequence[BuildRecord], session_id: str) -> dict[str, Any]:
    """The --mad-summary JSON of a build-only session."""
    statuses = [record.status for record in records]
    return {
        "session_id": session_id,
        "counts": {status.value: statuses.count(status) for status in Status},
        "builds": [
            {"image": record.name, "model": record.model, "status": record.status.value,
             "built": bool(record.image and record.image.built),
             "registry_image": record.registry_image, "digest": record.digest or None,
             "reason": record.reason}
            for record in records
        ],
    }  # fmt: skip
