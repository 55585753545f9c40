"""Writing to the terminal around pytest's capture (live output, push and download
progress): what is written shows at once, not in the current test's captured output."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

import pytest

# What a terminal acts on rather than shows (escape sequences that retitle, clear or
# recolor it, a carriage return that writes over a line): C0 but tab and newline, DEL, C1.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Model output as the terminal may show it: each control character but newline
    and tab written out as `\\xNN` (a CRLF line end stays a line end). The log file
    keeps the output as it came."""
    if _CONTROL.search(text) is None:
        return text  # the common case, at the cost of one scan
    text = text.replace("\r\n", "\n")
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


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
