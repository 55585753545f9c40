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
    BUILD_PHASES,
    DEFAULT_TIMEOUT,
    CliUsageError,
    build_args,
    check_passthrough,
    run_args,
)
from pytest_madengine.core.option_table import (
    DEFAULT_MANIFEST_OUTPUT,
    MADENGINE_IGNORED,
    MADENGINE_UNSUPPORTED,
    OPTIONS_BY_NAME,
)
from pytest_madengine.core.records import BuildRecord, TestRecord
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


def _option(name: str, *more_flags: str) -> Any:
    """The madengine option of a row of the core's option table: its flags and help
    (`more_flags`: a short name that only one command gives it)."""
    spec = OPTIONS_BY_NAME[name]
    return typer.Option(*spec.madengine, *more_flags, help=spec.madengine_help)


# The command's parameters are named after the table's rows (ctx.params -> translate).
Tags = Annotated[list[str] | None, _option("tags")]
Context = Annotated[str, _option("context_json")]
ContextFile = Annotated[str | None, _option("context_file")]
Registry = Annotated[str | None, _option("registry")]
SummaryOutput = Annotated[str | None, _option("summary")]
LiveOutput = Annotated[bool, _option("live_output")]
CleanCache = Annotated[bool, _option("clean_cache")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="pytest's verbose output")]
ManifestOutput = Annotated[str, _option("manifest_output")]
ManifestFile = Annotated[str | None, _option("manifest")]
Timeout = Annotated[int, _option("timeout")]
PerfCsv = Annotated[str | None, _option("perf_csv")]
KeepAlive = Annotated[bool, _option("keep_alive")]
KeepModelDir = Annotated[bool, _option("keep_model_dir")]
SkipModelRun = Annotated[bool, _option("skip_model_run")]
DisableSkipGpuArch = Annotated[bool, _option("disable_skip_gpu_arch")]
ForceMirrorLocal = Annotated[str | None, _option("force_mirror_local")]
ToolsConfig = Annotated[str | None, _option("tools_file")]
DataConfig = Annotated[str | None, _option("data_config")]


def _without_row(flag: str, *more_flags: str) -> Any:
    """A madengine option without a row, taken with madengine's syntax so that the
    command, not the parser, answers it: refused with its reason when given, or ignored
    (translate.py); its help says which and why."""
    reason = MADENGINE_UNSUPPORTED.get(flag)
    shown = f"not supported: {reason}" if reason else MADENGINE_IGNORED[flag]
    return typer.Option(flag, *more_flags, help=shown)


TargetArchs = Annotated[list[str] | None, _without_row("--target-archs", "-a")]
UseImage = Annotated[str | None, _without_row("--use-image")]
BuildOnCompute = Annotated[bool, _without_row("--build-on-compute")]
SysEnvDetails = Annotated[bool, _without_row("--sys-env-details")]
IgnoreDeprecated = Annotated[bool, _without_row("--ignore-deprecated")]
CleanupPerf = Annotated[bool, _without_row("--cleanup-perf")]


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
        typer.Option(
            "--version", help="show the version and exit", is_eager=True, callback=_show_version
        ),
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
    batch_manifest: Annotated[str | None, _option("batch_manifest")] = None,
    context_json: Context = "{}",
    context_file: ContextFile = None,
    clean_cache: CleanCache = False,
    manifest_output: Annotated[str, _option("manifest_output", "-m")] = DEFAULT_MANIFEST_OUTPUT,
    summary: SummaryOutput = None,
    live_output: LiveOutput = False,
    verbose: Verbose = False,
    target_archs: TargetArchs = None,
    use_image: UseImage = None,
    build_on_compute: BuildOnCompute = False,
) -> None:
    """Build the images of the selected models (push them with --registry) and write
    a build manifest. Exit 2 when a build or push failed."""
    try:
        args = build_args(**ctx.params)
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
    manifest: ManifestFile = None,
    registry: Registry = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
    context_json: Context = "{}",
    context_file: ContextFile = None,
    keep_alive: KeepAlive = False,
    keep_model_dir: KeepModelDir = False,
    skip_model_run: SkipModelRun = False,
    disable_skip_gpu_arch: DisableSkipGpuArch = False,
    force_mirror_local: ForceMirrorLocal = None,
    data_config: DataConfig = None,
    tools_file: ToolsConfig = None,
    clean_cache: CleanCache = False,
    manifest_output: ManifestOutput = DEFAULT_MANIFEST_OUTPUT,
    summary: SummaryOutput = None,
    live_output: LiveOutput = False,
    perf_csv: PerfCsv = None,
    verbose: Verbose = False,
    sys_env_details: SysEnvDetails = False,
    ignore_deprecated: IgnoreDeprecated = False,
    cleanup_perf: CleanupPerf = False,
) -> None:
    """Run models: from a build manifest (pulling its images), or, without one, build
    first (writing --manifest-output) and run what was built. Exit 3 when a model
    failed, 2 when a build did."""
    try:
        if manifest:
            args, building = run_args(**ctx.params), None
        else:
            # The run pulls what the manifest just written names (its registry too).
            args = run_args(**{**ctx.params, "manifest": manifest_output, "registry": None})
            building = build_args(**ctx.params, phases=BUILD_PHASES)
        check_passthrough(ctx.args)
        _check_run_paths(
            output=perf_csv,
            summary_output=summary,
            manifest_output=None if manifest else manifest_output,
            force_mirror_local=force_mirror_local,
            tools_config=tools_file,
            data_config=data_config,
        )
    except (CliUsageError, MadError) as exc:
        raise _fail(str(exc), ExitCode.INVALID_ARGS) from None
    _panel("madengine run", {"tags": ", ".join(_tags(tags)),
                             "manifest": manifest or f"built now: {manifest_output}",
                             "registry": registry, "perf.csv": perf_csv or "perf.csv"})  # fmt: skip
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
    force_mirror_local: str | None, tools_config: str | None, data_config: str | None,
) -> None:  # fmt: skip
    """What the run session would refuse at its start, checked before the build session
    (minutes, or hours) so that a bad path is exit 4 at once, by the session's own checks."""
    from pytest_madengine.core.options import (
        DEFAULT_PERF_CSV,
        load_data_sources,
        writable_dir,
        writable_file,
    )
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
    if data_config:
        load_data_sources(Path.cwd(), Path(data_config), "--data-config")


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
