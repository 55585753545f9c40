"""Every exception of the project, and the JSON reading that most input errors come from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MadError(Exception):
    """A user-facing problem, told in one line that names the file, model or field."""

    # True for failures that may not recur (a host went away): not noted for the session.
    transient = False


class UsageProblem(MadError):
    """A bad option, ini value or input file found before any test runs (exit code 4)."""


class HostLost(MadError):
    """A host stopped answering mid-session; its tests may be placed elsewhere."""

    transient = True

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"host {host} lost: {reason}")
        self.host = host
        self.reason = reason


class NoHost(MadError):
    """No host can ever run the test (too many GPUs, wrong vendor...): it is skipped."""


class NotRun(MadError):
    """The backend did not run the test on purpose (a dry run): it is skipped, saying so."""


def first_line(problem: BaseException | str) -> str:
    """The first line of an error's text (engines and SSH say more below it), or its type."""
    lines = str(problem).strip().splitlines()
    return lines[0] if lines else type(problem).__name__


def read_text(path: Path, option: str = "") -> str:
    """A UTF-8 text file; MadError naming the file (and `option`, the command-line
    option that gave the path) when it cannot be read or is not UTF-8."""
    prefix = f"{option} " if option else ""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MadError(f"{prefix}{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise MadError(f"{prefix}{path}: {exc.strerror or exc}") from None


def parse_json(text: str, where: str) -> Any:
    """JSON data; MadError naming `where` with the line and column of a syntax error
    (the message quotes none of the text: safe for files of secrets)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MadError(f"{where}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise MadError(f"{where}: invalid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits, say
        raise MadError(f"{where}: invalid JSON: {first_line(exc)}") from None


def read_json(path: Path, option: str = "") -> Any:
    """A JSON file's data; one-line MadError naming the file for any problem."""
    return parse_json(read_text(path, option), str(path))


class Stopped(MadError):
    """The session is stopping (Ctrl-C, -x, the end): a test waiting to start gives up."""
