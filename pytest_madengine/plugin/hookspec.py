"""Hooks that conftest.py files and plugins can implement (registered through
`pytest_addhooks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_madengine.backends import RunSpec
    from pytest_madengine.core.planning import PlannedTest
    from pytest_madengine.core.records import TestRecord


@pytest.hookspec(firstresult=True)
def pytest_mad_run_spec(spec: RunSpec, test: PlannedTest, config: pytest.Config) -> RunSpec | None:
    """Change a test's container before it starts: return a changed copy of `spec`
    (`dataclasses.replace(spec, env={**spec.env, "X": "1"})`), or None to leave it.
    Runs in the process that runs the test (an xdist worker). The first implementation
    that returns a spec wins."""


@pytest.hookspec
def pytest_mad_record(record: TestRecord, config: pytest.Config) -> None:
    """Called once for each finished MAD test, in the process that writes the reports
    (the xdist controller), after its perf.csv rows are written: push results to a
    database, a dashboard, a chat..."""
