"""madengine's command-line options turned into the plugin's pytest arguments.

Pure functions, so the mapping is tested without running anything. Both sides of the
mapping come from the core's option table (core/option_table.py): the `build` and `run`
commands name their parameters after its rows, so an option given is translated by its
row into the plugin option of the same meaning. A madengine option without a row is a
usage error naming it and its reason (MADENGINE_UNSUPPORTED), or, where a run already
does what it asks, taken and ignored (MADENGINE_IGNORED); never silently dropped.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pytest_madengine.core.option_table import (
    MADENGINE_IGNORED,
    MADENGINE_PYTEST_OWN,
    MADENGINE_UNSUPPORTED,
    OPTION_TABLE,
    OPTIONS_BY_NAME,
    Kind,
    OptionSpec,
)
from pytest_madengine.core.option_table import Phase as OptionPhase
from pytest_madengine.core.tree.tags import split_tags

# Always: no .pytest_cache written into the user's MAD tree; and no warning that our own
# package, imported by this command before pytest starts, cannot be assert-rewritten.
BASE_ARGS = ("-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning")
DEFAULT_TIMEOUT = -1  # madengine's "the models' own timeout"
NO_CONTEXT = ("", "{}")
EVERY_PHASE = frozenset(OptionPhase)
# A run session gets no option that only a build uses (--clean-docker-cache, ...).
RUN_PHASES = frozenset({OptionPhase.BOTH, OptionPhase.RUN})
BUILD_PHASES = frozenset({OptionPhase.BOTH, OptionPhase.BUILD})
# madengine's options without a row that are not refused: taken, and nothing to pass on.
IGNORED = frozenset({*MADENGINE_IGNORED, *MADENGINE_PYTEST_OWN})

# Plugin options that a madengine option of build or run sets. Given again after `--`
# they would be used beside or over it while the banner shows the command's value.
COMMAND_OPTIONS = {
    **{spec.flag: spec.madengine[0] for spec in OPTION_TABLE if spec.madengine},
    OPTIONS_BY_NAME["build_only"].flag: "the build command",
}


class CliUsageError(Exception):
    """An option the command cannot honour (exit code 4, invalid arguments)."""


def plugin_option_names() -> frozenset[str]:
    return frozenset(spec.flag for spec in OPTION_TABLE)


def _checked(given: Mapping[str, Any], command: str) -> dict[str, Any]:
    """The options given, as the plugin takes them: tags split, the default context
    and timeout left out; a contradiction or an option without a row refused (with
    its reason, naming the command: `build --target-archs is not supported: ...`)."""
    options = dict(given)
    options["tags"] = split_tags(given.get("tags") or ())
    context = (given.get("context_json") or "").strip()
    if context not in NO_CONTEXT and given.get("context_file"):
        # As madengine: one source of context, so nobody wonders which one won.
        raise CliUsageError("--additional-context and --additional-context-file: give one of them")
    options["context_json"] = context if context not in NO_CONTEXT else None
    if given.get("timeout") == DEFAULT_TIMEOUT:
        options["timeout"] = None
    for name, value in given.items():
        flag = "--" + name.replace("_", "-")
        if name in OPTIONS_BY_NAME or flag in IGNORED or not value:
            continue
        reason = MADENGINE_UNSUPPORTED.get(flag, "not offered by pytest-madengine")
        raise CliUsageError(f"{command} {flag} is not supported: {reason}")
    return options


def _plugin_words(spec: OptionSpec, value: Any) -> list[str]:
    if spec.kind is Kind.SWITCH:
        return [spec.flag] if value else []
    if spec.kind is Kind.LIST:
        return [word for item in value or () for word in (spec.flag, str(item))]
    return [] if value is None or value == "" else [spec.flag, str(value)]


def plugin_args(
    given: Mapping[str, Any], phases: Collection[OptionPhase], command: str
) -> list[str]:
    """The options given (named as the table's rows) of those phases, as pytest arguments
    (`command`, build or run, names the command in a refusal)."""
    options = _checked(given, command)
    args = [*BASE_ARGS, *(["-v"] if options.get("verbose") else [])]
    for spec in OPTION_TABLE:
        if spec.name in options and spec.phase in phases:
            args += _plugin_words(spec, options[spec.name])
    return args


def build_args(*, phases: Collection[OptionPhase] = EVERY_PHASE, **given: Any) -> list[str]:
    """`madengine build` (or the build half of a run): a build-only session."""
    if given.get("batch_manifest") and split_tags(given.get("tags") or ()):
        raise CliUsageError("--batch-manifest and --tags: give one (the batch names the models)")
    return plugin_args({**given, "build_only": True}, phases, "build")


def run_args(**given: Any) -> list[str]:
    """`madengine run` from a manifest (the run half, or the second phase of a full run)."""
    timeout = given.get("timeout")
    if timeout is not None and timeout < DEFAULT_TIMEOUT:
        raise CliUsageError(f"--timeout: -1 (the models' own), 0 (none) or seconds; got {timeout}")
    return plugin_args(given, RUN_PHASES, "run")


def check_passthrough(args: Collection[str]) -> None:
    """Arguments after `--` go to pytest as they are, except a plugin option that the
    command's own options set (pytest takes no abbreviations, so names are exact)."""
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in COMMAND_OPTIONS:
            raise CliUsageError(
                f"{name} after --: the command sets it; give {COMMAND_OPTIONS[name]} instead"
            )
