"""madengine's command-line options turned into the plugin's pytest arguments.

Pure functions, so the mapping is tested without running anything. A madengine option
the plugin does not offer is a usage error naming it, never silently dropped: which
plugin options exist is read from the plugin's own option table.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from pytest_madengine.plugin.options import add_options

# Always: no .pytest_cache written into the user's MAD tree; and no warning that our own
# package, imported by this command before pytest starts, cannot be assert-rewritten.
BASE_ARGS = ("-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning")
DEFAULT_TIMEOUT = -1  # madengine's "the models' own timeout"
NO_CONTEXT = ("", "{}")

# madengine run switches and valued options -> the plugin options that mean the same.
RUN_SWITCHES = {
    "--keep-alive": "--mad-keep-alive",
    "--keep-model-dir": "--mad-keep-model-dir",
    "--skip-model-run": "--mad-skip-model-run",
    "--disable-skip-gpu-arch": "--mad-disable-skip-gpu-arch",
}
RUN_VALUES = {
    "--force-mirror-local": "--mad-force-mirror-local",
    "--data-config": "--mad-data-config",
    "--tools-config": "--mad-tools-config",
}


# Plugin options that a madengine option of build or run sets. Given again after `--`
# they would be used beside or over it while the banner shows the command's value.
COMMAND_OPTIONS = {
    "--mad-tags": "--tags",
    "--mad-context": "--additional-context",
    "--mad-context-file": "--additional-context-file",
    "--mad-live-output": "--live-output",
    "--mad-clean-cache": "--clean-docker-cache",
    "--mad-summary": "--summary-output",
    "--mad-manifest": "--manifest-file",
    "--mad-registry": "--registry",
    "--mad-timeout": "--timeout",
    "--mad-perf-csv": "--output",
    "--mad-build-only": "the build command",
    "--mad-manifest-output": "--manifest-output",
    "--mad-batch-manifest": "--batch-manifest",
    **{plugin: command for command, plugin in RUN_SWITCHES.items()},
    **{plugin: command for command, plugin in RUN_VALUES.items()},
}


class CliUsageError(Exception):
    """An option the command cannot honour (exit code 4, invalid arguments)."""


class _OptionRecorder:
    """Stands in for pytest's parser to list the option names the plugin adds."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def getgroup(self, *args: Any, **kwargs: Any) -> _OptionRecorder:
        return self

    def addoption(self, *names: str, **kwargs: Any) -> None:
        self.names.update(names)

    def addini(self, *args: Any, **kwargs: Any) -> None:
        pass


@functools.cache
def plugin_option_names() -> frozenset[str]:
    recorder = _OptionRecorder()
    add_options(recorder)  # type: ignore[arg-type]
    return frozenset(recorder.names)


def _plugin_option(cli_option: str, plugin_option: str) -> str:
    if plugin_option not in plugin_option_names():
        raise CliUsageError(f"{cli_option}: not supported by pytest-madengine yet")
    return plugin_option


def common_args(
    *,
    tags: Sequence[str] = (),
    additional_context: str | None = None,
    additional_context_file: str | None = None,
    live_output: bool = False,
    clean_docker_cache: bool = False,
    summary_output: str | None = None,
    verbose: bool = False,
) -> list[str]:
    """The arguments build and run share."""
    args = [*BASE_ARGS, *(["-v"] if verbose else [])]
    for tag in tags:
        args += ["--mad-tags", tag]
    context = (additional_context or "").strip()
    if context not in NO_CONTEXT and additional_context_file:
        # As madengine: one source of context, so nobody wonders which one won.
        raise CliUsageError(
            "--additional-context and --additional-context-file: give one of them"
        )
    if context not in NO_CONTEXT:
        args += ["--mad-context", context]
    if additional_context_file:
        args += ["--mad-context-file", additional_context_file]
    if live_output:
        args.append("--mad-live-output")
    if clean_docker_cache:
        args.append("--mad-clean-cache")
    if summary_output:
        args += ["--mad-summary", summary_output]
    return args


def build_args(
    *,
    registry: str | None = None,
    batch_manifest: str | None = None,
    manifest_output: str = "build_manifest.json",
    **common: Any,
) -> list[str]:
    """`madengine build`: a build-only session."""
    if batch_manifest and common.get("tags"):
        raise CliUsageError("--batch-manifest and --tags: give one (the batch names the models)")
    args = [*common_args(**common), "--mad-build-only", "--mad-manifest-output", manifest_output]
    if registry:
        args += ["--mad-registry", registry]
    if batch_manifest:
        args += ["--mad-batch-manifest", batch_manifest]
    return args


def run_args(
    *,
    manifest_file: str | None = None,
    registry: str | None = None,
    timeout: int = DEFAULT_TIMEOUT,
    output: str | None = None,
    switches: Sequence[str] = (),
    values: Sequence[tuple[str, str]] = (),
    **common: Any,
) -> list[str]:
    """`madengine run` from a manifest (the run half, or the second phase of a full run).
    `switches` and `values` are the madengine run options given, by their names."""
    if timeout < DEFAULT_TIMEOUT:
        raise CliUsageError(f"--timeout: -1 (the models' own), 0 (none) or seconds; got {timeout}")
    args = common_args(**common)
    if manifest_file:
        args += ["--mad-manifest", manifest_file]
    if registry:
        args += ["--mad-registry", registry]
    if timeout != DEFAULT_TIMEOUT:
        args += ["--mad-timeout", str(timeout)]
    if output:
        args += ["--mad-perf-csv", output]
    for switch in switches:
        args.append(_plugin_option(switch, RUN_SWITCHES[switch]))
    for option, value in values:
        args += [_plugin_option(option, RUN_VALUES[option]), value]
    return args


def check_passthrough(args: Sequence[str]) -> None:
    """Arguments after `--` go to pytest as they are, except a plugin option that the
    command's own options set (pytest takes no abbreviations, so names are exact)."""
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in COMMAND_OPTIONS:
            raise CliUsageError(
                f"{name} after --: the command sets it; give {COMMAND_OPTIONS[name]} instead"
            )
