"""The `madengine` command (Typer + Rich), a drop-in for madengine's own CLI.

`build` and `run` are sessions of the pytest plugin, run in this process; `discover`
plans from the core directly; `report` writes HTML from perf.csv files and merges
JUnit and perf.csv files. Exit codes are madengine's (cli/driver.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel
from rich.table import Table

from pytest_madengine.cli.driver import ExitCode, Phase, SessionOutcome, exit_code, run_pytest
from pytest_madengine.cli.output import console, errors
from pytest_madengine.cli.output import fail as _fail
from pytest_madengine.cli.report import report_app
from pytest_madengine.cli.translate import (
    DEFAULT_TIMEOUT,
    RUN_SWITCHES,
    CliUsageError,
    build_args,
    check_passthrough,
    run_args,
)
from pytest_madengine.core.build import BuildRecord
from pytest_madengine.core.records import TestRecord
from pytest_madengine.core.tree.tags import split_tags
from pytest_madengine.errors import MadError

app = typer.Typer(
    name="madengine",
    help="Build and run MAD models in Docker, as madengine does (on pytest-madengine).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
app.add_typer(report_app, name="report")
# Anything after `--` goes to pytest as it is: `madengine run -t x -- -n 4 --junitxml r.xml`.
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": False}

Tags = Annotated[
    list[str] | None,
    typer.Option("--tags", "-t", help="models: names, tags, all, X:key=value, dir/X; "
                 "repeatable and comma-separated"),
]  # fmt: skip
Context = Annotated[
    str, typer.Option("--additional-context", "-c", help="run context as JSON")
]
ContextFile = Annotated[
    str | None, typer.Option("--additional-context-file", "-f", help="run context JSON file")
]
Registry = Annotated[str | None, typer.Option("--registry", "-r", help="image registry")]
SummaryOutput = Annotated[
    str | None, typer.Option("--summary-output", "-s", help="write a JSON summary here")
]
LiveOutput = Annotated[
    bool, typer.Option("--live-output", "-l", help="stream build and model output")
]
CleanCache = Annotated[
    bool, typer.Option("--clean-docker-cache", help="build without Docker's layer cache")
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="pytest's verbose output")]
ManifestOutput = Annotated[
    str, typer.Option("--manifest-output", help="the build manifest written")
]


def _version() -> str:
    try:
        return version("pytest-madengine")
    except PackageNotFoundError:
        return "unknown"


def _show_version(wanted: bool) -> None:
    if wanted:
        console.print(f"madengine (pytest-madengine {_version()})")
        raise typer.Exit(ExitCode.SUCCESS)


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option("--version", help="show the version and exit", is_eager=True,
                     callback=_show_version),
    ] = False,
) -> None:
    """Build and run MAD models in Docker, as madengine does (on pytest-madengine)."""


def _tags(tags: Sequence[str] | None) -> list[str]:
    return split_tags(tags or ())


def _panel(title: str, lines: dict[str, Any]) -> None:
    body = "\n".join(f"{key}: {value}" for key, value in lines.items() if value not in (None, ""))
    console.print(Panel(body, title=title, expand=False))


def _build_table(builds: Sequence[BuildRecord]) -> Table:
    table = Table(title="Build results")
    for column in ("image", "status", "built", "registry image", "reason"):
        table.add_column(column)
    for build in builds:
        built = "" if build.image is None else ("built" if build.image.built else "reused")
        table.add_row(build.name, build.status.value, built, build.registry_image or "",
                      build.reason or "")  # fmt: skip
    return table


def _run_table(records: Sequence[TestRecord]) -> Table:
    table = Table(title="Execution results")
    for column in ("model", "status", "performance", "metric", "duration", "reason"):
        table.add_column(column)
    for record in records:
        duration = f"{record.duration:.1f}s" if record.duration is not None else ""
        for row in record.rows:
            value = "" if row.performance is None else f"{row.performance:g}"
            table.add_row(row.name, row.status.value, value, row.metric, duration,
                          row.reason or "")  # fmt: skip
    return table


def _session(args: list[str], phase: Phase) -> tuple[SessionOutcome, ExitCode]:
    outcome = run_pytest(args)
    if outcome.builds:
        console.print(_build_table(outcome.builds))
    if outcome.records:
        console.print(_run_table(outcome.records))
    return outcome, exit_code(phase, outcome)


@app.command()
def discover(
    tags: Tags = None,
    additional_context: Context = "{}",
    additional_context_file: ContextFile = None,
    verbose: Verbose = False,
) -> None:
    """List the models the tags select (all without tags), with the Dockerfile and image
    each would use here."""
    from pytest_madengine.cli.discovery import discover_models

    try:
        listing = discover_models(_tags(tags) or ["all"], additional_context,
                                  additional_context_file)  # fmt: skip
    except MadError as exc:
        raise _fail(str(exc), ExitCode.INVALID_ARGS) from None
    table = Table(title=f"Models in {listing.root}")
    for column in ("model", "tags", "dockerfile", "image", "n_gpus", "note"):
        table.add_column(column)
    for test in listing.tests:
        table.add_row(test.name, ",".join(test.model.tags),
                      test.dockerfile.relpath if test.dockerfile else "", test.image or "",
                      str(test.model.n_gpus), test.skip_reason or "")  # fmt: skip
    console.print(table)
    console.print(f"{len(listing.tests)} model(s) selected")
    for problem in listing.problems:
        errors.print(f"madengine: {problem}", style="red", markup=False)
    if listing.problems:
        raise typer.Exit(ExitCode.INVALID_ARGS)


@app.command(context_settings=PASSTHROUGH)
def build(
    ctx: typer.Context,
    tags: Tags = None,
    registry: Registry = None,
    batch_manifest: Annotated[
        str | None, typer.Option("--batch-manifest", help="madengine's batch.json")
    ] = None,
    additional_context: Context = "{}",
    additional_context_file: ContextFile = None,
    clean_docker_cache: CleanCache = False,
    manifest_output: Annotated[
        str, typer.Option("--manifest-output", "-m", help="the build manifest written")
    ] = "build_manifest.json",
    summary_output: SummaryOutput = None,
    live_output: LiveOutput = False,
    verbose: Verbose = False,
) -> None:
    """Build the images of the selected models (push them with --registry) and write
    a build manifest. Exit 2 when a build or push failed."""
    try:
        args = build_args(
            registry=registry, batch_manifest=batch_manifest, manifest_output=manifest_output,
            tags=_tags(tags), additional_context=additional_context,
            additional_context_file=additional_context_file, live_output=live_output,
            clean_docker_cache=clean_docker_cache, summary_output=summary_output,
            verbose=verbose,
        )  # fmt: skip
        check_passthrough(ctx.args)
    except CliUsageError as exc:
        raise _fail(str(exc), ExitCode.INVALID_ARGS) from None
    _panel("madengine build", {"tags": ", ".join(_tags(tags)), "batch": batch_manifest,
                               "registry": registry or "local only",
                               "manifest": manifest_output})  # fmt: skip
    _, code = _session([*args, *ctx.args], Phase.BUILD)
    raise typer.Exit(code)


@app.command(context_settings=PASSTHROUGH)
def run(
    ctx: typer.Context,
    tags: Tags = None,
    manifest_file: Annotated[
        str | None,
        typer.Option("--manifest-file", "-m", help="run the images of this build manifest"),
    ] = None,
    registry: Registry = None,
    timeout: Annotated[
        int, typer.Option("--timeout", help="seconds per model; -1 the models' own, 0 none")
    ] = DEFAULT_TIMEOUT,
    additional_context: Context = "{}",
    additional_context_file: ContextFile = None,
    keep_alive: Annotated[bool, typer.Option("--keep-alive")] = False,
    keep_model_dir: Annotated[bool, typer.Option("--keep-model-dir")] = False,
    skip_model_run: Annotated[bool, typer.Option("--skip-model-run")] = False,
    disable_skip_gpu_arch: Annotated[bool, typer.Option("--disable-skip-gpu-arch")] = False,
    force_mirror_local: Annotated[str | None, typer.Option("--force-mirror-local")] = None,
    data_config: Annotated[str | None, typer.Option("--data-config")] = None,
    tools_config: Annotated[str | None, typer.Option("--tools-config")] = None,
    clean_docker_cache: CleanCache = False,
    manifest_output: ManifestOutput = "build_manifest.json",
    summary_output: SummaryOutput = None,
    live_output: LiveOutput = False,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="perf.csv to append to")
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Run models: from a build manifest (pulling its images), or, without one, build
    first (writing --manifest-output) and run what was built. Exit 3 when a model
    failed, 2 when a build did."""
    given = {
        "--keep-alive": keep_alive,
        "--keep-model-dir": keep_model_dir,
        "--skip-model-run": skip_model_run,
        "--disable-skip-gpu-arch": disable_skip_gpu_arch,
    }
    switches = [name for name in RUN_SWITCHES if given[name]]
    valued = {
        "--force-mirror-local": force_mirror_local,
        "--data-config": data_config,
        "--tools-config": tools_config,
    }
    values = [(name, value) for name, value in valued.items() if value]
    common = {"additional_context": additional_context,
              "additional_context_file": additional_context_file, "live_output": live_output,
              "verbose": verbose}  # fmt: skip
    try:
        if manifest_file:
            args = run_args(manifest_file=manifest_file, registry=registry, timeout=timeout,
                            output=output, switches=switches, values=values,
                            summary_output=summary_output, tags=_tags(tags), **common)  # fmt: skip
            building = None
        else:
            args = run_args(manifest_file=manifest_output, timeout=timeout, output=output,
                            switches=switches, values=values, summary_output=summary_output,
                            tags=_tags(tags), **common)  # fmt: skip
            building = build_args(registry=registry, manifest_output=manifest_output,
                                  tags=_tags(tags), clean_docker_cache=clean_docker_cache,
                                  **common)  # fmt: skip
        check_passthrough(ctx.args)
        _check_run_paths(
            output=output,
            summary_output=summary_output,
            manifest_output=None if manifest_file else manifest_output,
            force_mirror_local=force_mirror_local,
            tools_config=tools_config,
        )
    except (CliUsageError, MadError) as exc:
        raise _fail(str(exc), ExitCode.INVALID_ARGS) from None
    _panel("madengine run", {"tags": ", ".join(_tags(tags)),
                             "manifest": manifest_file or f"built now: {manifest_output}",
                             "registry": registry, "perf.csv": output or "perf.csv"})  # fmt: skip
    built_code = ExitCode.SUCCESS
    if building is not None:
        outcome, built_code = _session([*building, *ctx.args], Phase.BUILD)
        if built_code not in (ExitCode.SUCCESS, ExitCode.BUILD_FAILURE):
            raise typer.Exit(built_code)
        if outcome.images_built == 0:
            raise _fail("no image was built: nothing to run", ExitCode.BUILD_FAILURE)
    _, run_code = _session([*args, *ctx.args], Phase.RUN)
    # A failed build is what went wrong first, even where the runs of the rest failed too.
    raise typer.Exit(built_code if built_code is not ExitCode.SUCCESS else run_code)


def _check_run_paths(
    *, output: str | None, summary_output: str | None, manifest_output: str | None,
    force_mirror_local: str | None, tools_config: str | None,
) -> None:  # fmt: skip
    """What the run session would refuse at its start, checked before the build session
    (minutes, or hours) so that a bad path is exit 4 at once, by the session's own checks."""
    from pytest_madengine.core.options import DEFAULT_PERF_CSV, writable_dir, writable_file
    from pytest_madengine.tools import load_toolbox

    writable_file(Path(output or DEFAULT_PERF_CSV), "--output")
    if summary_output:
        writable_file(Path(summary_output), "--summary-output")
    if manifest_output:
        writable_file(Path(manifest_output), "--manifest-output")
    if force_mirror_local:
        writable_dir(Path(force_mirror_local), "--force-mirror-local")
    if tools_config:
        load_toolbox(Path(tools_config))


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: madengine's exit codes, usage errors included (4)."""
    sys.exit(invoke(argv))


def invoke(argv: Sequence[str] | None = None) -> int:
    try:
        code = app(args=list(argv) if argv is not None else None, prog_name="madengine",
                   standalone_mode=False)  # fmt: skip
    except Exception as exc:
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "NoArgsIsHelpError" in names:
            console.print(str(getattr(exc, "message", exc)), markup=False)
            return ExitCode.SUCCESS
        if "UsageError" in names:  # click's, vendored by Typer or not
            exc.show()  # type: ignore[attr-defined]
            return ExitCode.INVALID_ARGS
        if "ClickException" in names:
            exc.show()  # type: ignore[attr-defined]
            return ExitCode.FAILURE
        if "Abort" in names:
            return ExitCode.FAILURE
        raise
    if code is None or isinstance(code, bool):  # a command that returned, not exited
        return ExitCode.SUCCESS
    if code == 130:  # Ctrl-C: a failure, as madengine says it
        return ExitCode.FAILURE
    return int(code)
