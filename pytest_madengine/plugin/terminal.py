"""Writing to the terminal around pytest's capture (live output, push and download
progress): what is written shows at once, not in the current test's captured output."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest


def to_terminal(config: pytest.Config, write: Callable[[Any], None]) -> None:
    """Calls `write(terminal_reporter)` with pytest's capture lifted, then flushes;
    nothing without a terminal reporter. Looked up at each call: the reporter registers
    after our pytest_configure."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        write(reporter)
        reporter.flush()
