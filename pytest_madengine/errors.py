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


def first_line(problem: BaseException | str) -> str:
    """The first line of an error's text (engines and SSH say more below it), or its type."""
    lines = str(problem).strip().splitlines()
    return lines[0] if lines else type(problem).__name__


def read_json(path: Path, option: str = "") -> Any:
    """A JSON file's data; MadError naming the file (and the line and column of a syntax
    error, whose message quotes none of the file: safe for files of secrets). `option`
    names the command-line option that gave the path."""
    prefix = f"{option} " if option else ""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MadError(f"{prefix}{path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise MadError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
