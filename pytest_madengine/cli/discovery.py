"""`madengine discover`: the plan of the tags, straight from the core (no session, no
engine, nothing written)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_madengine.core.context import build_context
from pytest_madengine.core.options import DEFAULT_GPU_VENDOR
from pytest_madengine.core.planning import PlannedTest, plan_tests
from pytest_madengine.core.tree.discovery import load_tree
from pytest_madengine.core.tree.dockerfiles import DockerfileIndex
from pytest_madengine.core.tree.tags import parse_tag
from pytest_madengine.resources.gpus import inventory


@dataclass(frozen=True)
class Listing:
    root: Path
    tests: tuple[PlannedTest, ...]
    problems: tuple[str, ...]  # models.json errors, tags that select nothing


def discover_models(
    tags: Sequence[str], context_json: str | None, context_file: str | None
) -> Listing:
    """The selected models of the tree at $MODEL_DIR (else here); MadError when the
    tree or the context cannot be read at all."""
    root = Path(os.environ.get("MODEL_DIR") or Path.cwd()).resolve()
    for tag in tags:
        parse_tag(tag)
    json_text = None if (context_json or "").strip() in ("", "{}") else context_json
    context = build_context(json_text, Path(context_file) if context_file else None)
    gpus = inventory(None, context.gpu_vendor, context.gpu_architecture)
    vendor = context.gpu_vendor or gpus.vendor or DEFAULT_GPU_VENDOR
    context = context.with_defaults(gpu_vendor=vendor, gpu_architecture=gpus.architecture)
    dockerfiles = DockerfileIndex(root)
    tree = load_tree(root, dockerfiles)
    plan = plan_tests(tree, tags, dict(context.values), dockerfiles)
    problems = [error for source in tree.sources for error in source.errors]
    return Listing(root, plan.tests, (*problems, *plan.tag_problems))
