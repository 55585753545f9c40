"""madengine's options as plugin arguments, and pytest's outcomes as madengine's exit
codes (pure; the command itself runs in tests/e2e/test_cli.py)."""

from __future__ import annotations

import pytest

from pytest_madengine.cli.driver import ExitCode, Phase, SessionOutcome, exit_code
from pytest_madengine.cli.translate import (
    BASE_ARGS,
    RUN_SWITCHES,
    RUN_VALUES,
    CliUsageError,
    build_args,
    plugin_option_names,
    run_args,
)


def test_build_maps_madengine_options_onto_a_build_only_session() -> None:
    args = build_args(tags=["a", "b"], registry="localhost:5000", manifest_output="m.json",
                      additional_context='{"gpu_vendor": "AMD"}', clean_docker_cache=True,
                      live_output=True, summary_output="s.json")  # fmt: skip
    assert args == [
        *BASE_ARGS, "--mad-tags", "a", "--mad-tags", "b", "--mad-context", '{"gpu_vendor": "AMD"}',
        "--mad-live-output", "--mad-clean-cache", "--mad-summary", "s.json", "--mad-build-only",
        "--mad-manifest-output", "m.json", "--mad-registry", "localhost:5000",
    ]  # fmt: skip


def test_run_maps_timeout_output_and_manifest() -> None:
    args = run_args(manifest_file="b.json", timeout=0, output="perf_entry.csv", verbose=True,
                    additional_context="{}", additional_context_file="ctx.json")  # fmt: skip
    assert args == [*BASE_ARGS, "-v", "--mad-context-file", "ctx.json", "--mad-manifest",
                    "b.json", "--mad-timeout", "0", "--mad-perf-csv", "perf_entry.csv"]  # fmt: skip
    assert "--mad-timeout" not in run_args(timeout=-1)  # the models' own timeouts


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: run_args(timeout=-2), "--timeout"),
        (lambda: build_args(tags=["a"], batch_manifest="b.json"), "give one"),
        (lambda: run_args(additional_context='{"a": 1}', additional_context_file="c.json"),
         "give one of them"),
    ],
)  # fmt: skip
def test_contradictory_options_are_usage_errors(call, message: str) -> None:
    with pytest.raises(CliUsageError, match=message):
        call()


def test_run_options_map_to_plugin_options_or_say_they_are_not_supported() -> None:
    known = plugin_option_names()
    assert {"--mad-tags", "--mad-build-only", "--mad-manifest"} <= known
    for option, plugin_option in {**RUN_SWITCHES, **RUN_VALUES}.items():
        if plugin_option in known:
            assert plugin_option in run_args(switches=[option] if option in RUN_SWITCHES else [],
                                             values=[(option, "x")] if option in RUN_VALUES
                                             else [])  # fmt: skip
        else:
            with pytest.raises(CliUsageError, match=f"{option}: not supported"):
                run_args(switches=[option] if option in RUN_SWITCHES else [],
                         values=[(option, "x")] if option in RUN_VALUES else [])  # fmt: skip


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
