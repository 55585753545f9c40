"""pytest hooks of pytest-madengine: options, collection of the MAD tree, report header."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_madengine.context import build_context
from pytest_madengine.errors import MadError
from pytest_madengine.gpus import inventory
from pytest_madengine.items import MadTree
from pytest_madengine.session import MadSession, Settings
from pytest_madengine.tags import split_tags

MAD_SESSION = pytest.StashKey[MadSession]()
NO_GPU_HINT = (
    "no GPU detected and none declared; declare them with --mad-gpus"
    " (a count like 4, or ids like 0,2-3) and set gpu_vendor in --mad-context"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("madengine", "MAD model benchmarks (pytest-madengine)")
    group.addoption(
        "--mad-root",
        metavar="DIR",
        help="MAD tree to collect (ini: mad_root; default: $MODEL_DIR, else the current dir)",
    )
    group.addoption(
        "--mad-tags",
        action="append",
        default=[],
        metavar="TAGS",
        help="models to run: names, tags, 'all', 'X:key=value', 'dir/X'; repeatable and"
        " comma-separated (ini: mad_tags). Without tags the plugin collects nothing.",
    )
    group.addoption(
        "--mad-context",
        metavar="JSON",
        help="run context as JSON, over --mad-context-file (gpu_vendor, guest_os,"
        " docker_build_arg, docker_env_vars, ...)",
    )
    group.addoption(
        "--mad-context-file",
        metavar="FILE",
        help="run context from a JSON file (ini: mad_context_file)",
    )
    group.addoption(
        "--mad-gpus",
        metavar="SPEC",
        help="GPUs to use: a count (4) or ids (0,2-3); virtual when none is detected"
        " (ini: mad_gpus)",
    )
    parser.addini("mad_root", "MAD tree to collect", default=None)
    parser.addini("mad_tags", "models to run, as for --mad-tags", type="args", default=[])
    parser.addini("mad_context_file", "run context JSON file", default=None)
    parser.addini("mad_gpus", "GPUs to use, as for --mad-gpus", default=None)


def _option(config: pytest.Config, name: str) -> str | None:
    """A command-line value, else the ini value of the same name."""
    value = config.getoption(f"mad_{name}")
    return value if value is not None else (config.getini(f"mad_{name}") or None)


def _settings(config: pytest.Config, tags: list[str]) -> Settings:
    root_text = _option(config, "root") or os.environ.get("MODEL_DIR")
    root = Path(root_text) if root_text else config.invocation_params.dir
    if not root.is_absolute():
        root = config.invocation_params.dir / root
    context_file = _option(config, "context_file")
    context = build_context(
        config.getoption("mad_context"), Path(context_file) if context_file else None
    )
    gpus = inventory(_option(config, "gpus"), context.gpu_vendor, context.gpu_architecture)
    return Settings(root=root, tags=tuple(tags), context=context, gpus=gpus)


def pytest_configure(config: pytest.Config) -> None:
    tags = split_tags(config.getoption("mad_tags") or config.getini("mad_tags"))
    if not tags:
        return  # dormant: a plain pytest run is left alone
    try:
        settings = _settings(config, tags)
        mad = MadSession(settings)
        mad.tree  # noqa: B018 - a missing root or models.json is a usage error, found now
    except MadError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[MAD_SESSION] = mad
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        # No paths given: collect the MAD tree, not testpaths or the current directory.
        config.args = [str(settings.root.resolve())]


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    mad = parent.config.stash.get(MAD_SESSION, None)
    if mad is None or path != mad.settings.root.resolve():
        return None
    tree = MadTree.from_parent(parent, path=path)
    tree.mad = mad
    return tree


def pytest_sessionstart(session: pytest.Session) -> None:
    mad = session.config.stash.get(MAD_SESSION, None)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    # Said once, by the controller (xdist workers have `workerinput`), even under -q.
    if (
        mad
        and not mad.settings.gpus.gpus
        and reporter
        and not hasattr(session.config, "workerinput")
    ):
        reporter.write_line(f"madengine: {NO_GPU_HINT}", yellow=True)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    mad = config.stash.get(MAD_SESSION, None)
    if mad is None:
        return None
    settings = mad.settings
    context = settings.effective_context
    lines = [
        f"madengine: root {settings.root}, tags {','.join(settings.tags)},"
        f" gpu_vendor {context.gpu_vendor}, guest_os {context.get('guest_os')}",
        f"madengine: GPUs: {settings.gpus.describe()}",
    ]
    return lines
