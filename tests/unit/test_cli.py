"""madengine's options as plugin arguments, and pytest's outcomes as madengine's exit
codes (pure; the command itself runs in tests/e2e/test_cli.py)."""

from __future__ import annotations

import pytest

from pytest_madengine.cli.driver import ExitCode, Phase, SessionOutcome, exit_code
from pytest_madengine.cli.translate import (
    BASE_ARGS,
    BUILD_PHASES,
    CliUsageError,
    build_args,
    plugin_option_names,
    run_args,
)
from pytest_madengine.core.option_table import OPTION_TABLE


def test_build_maps_madengine_options_onto_a_build_only_session() -> None:
    args = build_args(tags=["a", "b"], registry="localhost:5000", manifest_output="m.json",
                      context_json='{"gpu_vendor": "AMD"}', clean_cache=True,
                      live_output=True, summary="s.json")  # fmt: skip
    assert args == [
        *BASE_ARGS, "--mad-tags", "a", "--mad-tags", "b", "--mad-context", '{"gpu_vendor": "AMD"}',
        "--mad-clean-cache", "--mad-live-output", "--mad-summary", "s.json", "--mad-registry",
        "localhost:5000", "--mad-build-only", "--mad-manifest-output", "m.json",
    ]  # fmt: skip


def test_run_maps_timeout_output_and_manifest() -> None:
    args = run_args(manifest="b.json", timeout=0, perf_csv="perf_entry.csv", verbose=True,
                    context_json="{}", context_file="ctx.json")  # fmt: skip
    assert args == [*BASE_ARGS, "-v", "--mad-context-file", "ctx.json", "--mad-timeout", "0",
                    "--mad-perf-csv", "perf_entry.csv", "--mad-manifest", "b.json"]  # fmt: skip
    assert "--mad-timeout" not in run_args(timeout=-1)  # the models' own timeouts


def test_a_run_that_builds_first_splits_the_options_between_its_sessions() -> None:
    given = {"tags": ["a,b"], "clean_cache": True, "registry": "r:5000", "keep_alive": True,
             "manifest_output": "m.json", "summary": "s.json", "live_output": True}  # fmt: skip
    build = build_args(**given, phases=BUILD_PHASES)
    assert build == [*BASE_ARGS, "--mad-tags", "a", "--mad-tags", "b", "--mad-clean-cache",
                     "--mad-live-output", "--mad-registry", "r:5000", "--mad-build-only",
                     "--mad-manifest-output", "m.json"]  # fmt: skip
    run = run_args(**{**given, "manifest": "m.json", "registry": None})
    assert run == [*BASE_ARGS, "--mad-tags", "a", "--mad-tags", "b", "--mad-live-output",
                   "--mad-summary", "s.json", "--mad-manifest", "m.json",
                   "--mad-keep-alive"]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: run_args(timeout=-2), "--timeout"),
        (lambda: build_args(tags=["a"], batch_manifest="b.json"), "give one"),
        (lambda: run_args(context_json='{"a": 1}', context_file="c.json"),
         "give one of them"),
        (lambda: build_args(tags=["a"], target_archs=["gfx942"]),
         "build --target-archs is not supported: images are built for the GPU architecture"),
        (lambda: run_args(tags=["a"], sys_env_details=True),
         "run --sys-env-details is not supported: no system environment"),
    ],
)  # fmt: skip
def test_contradictory_or_unknown_options_are_usage_errors(call, message: str) -> None:
    with pytest.raises(CliUsageError, match=message):
        call()


def test_options_that_change_nothing_are_taken_and_pass_nothing_on() -> None:
    plain = run_args(tags=["a"], data_config="d.json")
    assert plain[-2:] == ["--mad-data-config", "d.json"]
    assert run_args(tags=["a"], data_config="d.json", ignore_deprecated=True,
                    cleanup_perf=True, verbose=False) == plain  # fmt: skip


def test_every_madengine_option_of_the_table_becomes_its_plugin_option() -> None:
    assert {"--mad-tags", "--mad-build-only", "--mad-manifest"} <= plugin_option_names()
    for spec in OPTION_TABLE:
        if spec.madengine:
            value = {bool: True, tuple: ["x"]}.get(type(spec.default), "7")
            args = build_args(**{spec.name: value})
            assert spec.flag in args, spec


@pytest.mark.parametrize(
    ("phase", "pytest_exit", "collect_errors", "expected"),
    [
        (Phase.RUN, pytest.ExitCode.OK, (), ExitCode.SUCCESS),
        (Phase.BUILD, pytest.ExitCode.TESTS_FAILED, (), ExitCode.BUILD_FAILURE),
        (Phase.RUN, pytest.ExitCode.TESTS_FAILED, (), ExitCode.RUN_FAILURE),
        (Phase.RUN, pytest.ExitCode.USAGE_ERROR, (), ExitCode.INVALID_ARGS),
        (Phase.RUN, pytest.ExitCode.INTERRUPTED, ("tag selects no model",), ExitCode.INVALID_ARGS),
        (Phase.RUN, pytest.ExitCode.NO_TESTS_COLLECTED, (), ExitCode.INVALID_ARGS),
        (Phase.RUN, pytest.ExitCode.INTERRUPTED, (), ExitCode.FAILURE),
        (Phase.BUILD, pytest.ExitCode.INTERNAL_ERROR, (), ExitCode.FAILURE),
    ],
)  # fmt: skip
def test_pytest_outcomes_become_madengine_exit_codes(phase, pytest_exit, collect_errors,
                                                     expected) -> None:  # fmt: skip
    outcome = SessionOutcome(int(pytest_exit), collect_errors=collect_errors)
    assert exit_code(phase, outcome) == expected


def command_paths(group: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of madengine, subcommands of `report` included, as its words."""
    paths = [path]
    for name, command in sorted(getattr(group, "commands", {}).items()):
        paths += command_paths(command, (*path, name))
    return paths


def test_every_command_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    """--help renders each command's options (a Typer older than its Click fails here)."""
    import typer.main

    from pytest_madengine.cli.app import app, invoke

    paths = command_paths(typer.main.get_command(app))
    assert ("report", "html") in paths
    for path in paths:
        assert invoke([*path, "--help"]) == ExitCode.SUCCESS, path
        assert f"Usage: madengine {' '.join(path)}".rstrip() in capsys.readouterr().out, path
