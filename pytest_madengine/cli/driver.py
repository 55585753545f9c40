"""Runs a plugin session in this process (pytest.main) and turns what it saw into
madengine's exit codes: 0 success, 1 failure, 2 build failure, 3 run failure,
4 invalid arguments."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_madengine.core.records import BuildRecord, Status, TestRecord
from pytest_madengine.plugin.reporter import BUILD_ATTRIBUTE, RECORD_ATTRIBUTE


class ExitCode(enum.IntEnum):
    SUCCESS = 0
    FAILURE = 1
    BUILD_FAILURE = 2
    RUN_FAILURE = 3
    INVALID_ARGS = 4


class Phase(enum.Enum):
    BUILD = "build"
    RUN = "run"


class SessionObserver:
    """A pytest plugin object that keeps the records the session's reports carry (the
    controller's view, so it sees xdist workers' results too)."""

    def __init__(self) -> None:
        self.records: list[TestRecord] = []
        self.builds: list[BuildRecord] = []
        self.collect_errors: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        build = getattr(report, BUILD_ATTRIBUTE, None)
        if build:
            self.builds.append(BuildRecord.from_dict(build))
        record = getattr(report, RECORD_ATTRIBUTE, None)
        if record:
            self.records.append(TestRecord.from_dict(record))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors.append(str(report.longrepr).strip().splitlines()[-1])


@dataclass(frozen=True)
class SessionOutcome:
    pytest_exit: int
    records: tuple[TestRecord, ...] = ()
    builds: tuple[BuildRecord, ...] = ()
    collect_errors: tuple[str, ...] = field(default=())

    @property
    def failed_builds(self) -> tuple[BuildRecord, ...]:
        return tuple(build for build in self.builds if build.status is Status.FAILURE)

    @property
    def images_built(self) -> int:
        return sum(1 for build in self.builds if build.status is Status.SUCCESS)


def run_pytest(args: Sequence[str], plugins: Sequence[Any] = ()) -> SessionOutcome:
    observer = SessionObserver()
    code = pytest.main(list(args), plugins=[observer, *plugins])
    return SessionOutcome(int(code), tuple(observer.records), tuple(observer.builds),
                          tuple(observer.collect_errors))  # fmt: skip


def exit_code(phase: Phase, outcome: SessionOutcome) -> ExitCode:
    """madengine's exit code for one session of the plugin."""
    code = outcome.pytest_exit
    if code == pytest.ExitCode.USAGE_ERROR or outcome.collect_errors:
        return ExitCode.INVALID_ARGS  # a bad option, models.json, or a tag selecting nothing
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        return ExitCode.INVALID_ARGS
    if code == pytest.ExitCode.TESTS_FAILED:
        return ExitCode.BUILD_FAILURE if phase is Phase.BUILD else ExitCode.RUN_FAILURE
    if code == pytest.ExitCode.OK:
        return ExitCode.SUCCESS
    return ExitCode.FAILURE  # interrupted, or pytest's own internal error
