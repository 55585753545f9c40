"""The option table against madengine's own CLI: every option of `madengine build` and
`madengine run` has a row here (and our command offers it under the same flags) or is
listed as unsupported with a reason; and the plugin's options are the table's.

madengine's options are written down here as data, from its documented CLI (README,
"The `madengine` command", and FORMATS.md), not read from madengine's code."""

from __future__ import annotations

import dataclasses

import pytest
import typer

from pytest_madengine.cli.app import app
from pytest_madengine.core.option_table import (
    MADENGINE_IGNORED,
    MADENGINE_PYTEST_OWN,
    MADENGINE_UNSUPPORTED,
    OPTION_TABLE,
    RawOptions,
)

# madengine's options: long name -> its short name ("" when it has none).
MADENGINE_BUILD = {
    "--tags": "-t", "--registry": "-r", "--batch-manifest": "",
    "--additional-context": "-c", "--additional-context-file": "-f",
    "--clean-docker-cache": "", "--manifest-output": "-m", "--summary-output": "-s",
    "--live-output": "-l", "--verbose": "-v",
    "--target-archs": "-a", "--use-image": "", "--build-on-compute": "",
}  # fmt: skip
MADENGINE_RUN = {
    "--tags": "-t", "--manifest-file": "-m", "--registry": "-r", "--timeout": "",
    "--additional-context": "-c", "--additional-context-file": "-f",
    "--clean-docker-cache": "", "--manifest-output": "", "--summary-output": "-s",
    "--live-output": "-l", "--output": "-o", "--verbose": "-v",
    "--keep-alive": "", "--keep-model-dir": "", "--skip-model-run": "",
    "--disable-skip-gpu-arch": "", "--force-mirror-local": "", "--data-config": "",
    "--tools-config": "",
    "--ignore-deprecated": "", "--sys-env-details": "", "--cleanup-perf": "",
}  # fmt: skip


def command_flags(name: str) -> dict[str, set[str]]:
    """Our command's options: the long name of each -> all its flags."""
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    return {
        next(flag for flag in param.opts if flag.startswith("--")): set(param.opts)
        for param in command.params
        if param.opts and param.opts[0].startswith("-")
    }


@pytest.mark.parametrize(
    ("name", "madengine"), [("build", MADENGINE_BUILD), ("run", MADENGINE_RUN)]
)
def test_every_madengine_option_has_a_row_or_a_reason(name: str, madengine: dict) -> None:
    rows = {spec.madengine[0]: spec for spec in OPTION_TABLE if spec.madengine}
    ours = command_flags(name)
    without_row = {**MADENGINE_UNSUPPORTED, **MADENGINE_IGNORED}
    for option, short in madengine.items():
        if option in without_row:
            assert without_row[option].strip(), option
            assert option not in rows, f"{option}: both a row and a reason to have none"
        else:
            assert option in rows or option in MADENGINE_PYTEST_OWN, f"{option}: no row, no reason"
        # Offered even when refused: the command answers it, not the parser.
        assert option in ours, f"madengine {name} {option}: our command does not offer it"
        assert {option, short} - {""} <= ours[option], f"madengine {name} {option} {short}"
    # Nothing of ours that madengine lacks, beside what we refuse with a reason.
    assert set(ours) <= set(madengine) | {"--help"}


def test_the_unsupported_and_ignored_lists_name_only_options_of_madengine() -> None:
    assert set(MADENGINE_UNSUPPORTED) <= set(MADENGINE_BUILD) | set(MADENGINE_RUN)
    assert set(MADENGINE_IGNORED) <= set(MADENGINE_RUN)
    assert not set(MADENGINE_UNSUPPORTED) & set(MADENGINE_IGNORED)


# madengine's `report` commands and their options: to-html and to-email of madengine 2;
# update-perf of madengine 1's command (`--single_result` spelled so there).
MADENGINE_REPORT = {
    "to-html": {"--csv-file-path": "", "--verbose": "-v"},
    "to-email": {"--directory": "--dir", "--output": "-o", "--verbose": "-v"},
    "update-perf": {
        "--single_result": "", "--exception-result": "", "--failed-result": "",
        "--multiple-results": "", "--perf-csv": "", "--model-name": "", "--common-info": "",
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(MADENGINE_REPORT))
def test_every_madengine_report_command_and_option_is_offered(name: str) -> None:
    report = typer.main.get_command(app).commands["report"]  # type: ignore[attr-defined]
    assert name in report.commands, f"madengine report {name}: we have no such command"
    ours = {flag for param in report.commands[name].params for flag in param.opts}
    for option, other in MADENGINE_REPORT[name].items():
        assert {option, other} - {""} <= ours, f"madengine report {name} {option} {other}"


def test_every_row_is_a_field_of_raw_options_with_one_pytest_flag_and_ini_key() -> None:
    fields = {field.name for field in dataclasses.fields(RawOptions)}
    assert {spec.name for spec in OPTION_TABLE} == fields - {"base_dir", "environ", "compare_upto"}
    flags = [spec.flag for spec in OPTION_TABLE]
    inis = [spec.ini for spec in OPTION_TABLE if spec.ini]
    assert len(flags) == len(set(flags)) and len(inis) == len(set(inis))
    assert all(spec.help for spec in OPTION_TABLE)
    assert all(spec.ini_help for spec in OPTION_TABLE if spec.ini)


def test_the_plugin_offers_each_row_as_an_option_and_ini_key(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    for spec in OPTION_TABLE:
        result.stdout.fnmatch_lines([f"*{spec.flag}*"])
        if spec.ini:
            result.stdout.fnmatch_lines([f"*{spec.ini} *"])
