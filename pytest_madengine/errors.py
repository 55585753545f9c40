"""Every exception of the project, and the JSON reading that most input errors come from."""

from __future__ import annotations

import io
import json
import os
import select
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The input files we read (models.json, the context, hosts.yml, credential.json...)
# are small; more than this is a mistake (or /dev/zero), not something to load.
MAX_INPUT_BYTES = 64 * 1024 * 1024
# A pipe (`--mad-context-file <(make-context)`) may be silent this long between two
# pieces of its data; a FIFO that no process has open to write is read as empty at once.
PIPE_SILENCE_S = 30.0
_BLOCK = 1 << 16


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


def error_text(problem: BaseException | str) -> str:
    """An error's own words: for an engine's API error its explanation, without the
    status and the request's URL in front (docker's APIError puts the whole URL there,
    build arguments and all, hundreds of characters before what went wrong)."""
    explanation = getattr(problem, "explanation", None)
    if isinstance(explanation, str) and explanation.strip():
        return explanation.strip()
    return str(problem).strip()


def first_line(problem: BaseException | str) -> str:
    """The first line of an error's text (engines and SSH say more below it), or its type."""
    lines = error_text(problem).splitlines()
    return lines[0] if lines else type(problem).__name__


def display_path(path: Path) -> str:
    """The path as a user would type it: relative to the working directory when inside it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def read_text(path: Path, option: str = "") -> str:
    """A UTF-8 text file; MadError naming the file (and `option`, the command-line
    option that gave the path) when it cannot be read or is not UTF-8."""
    prefix = f"{option} " if option else ""
    try:
        return _read_bounded(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MadError(f"{prefix}{path}: not UTF-8 text (byte {exc.start})") from None
    except _Unreadable as exc:
        raise MadError(f"{prefix}{path}: {exc}") from None
    except OSError as exc:
        raise MadError(f"{prefix}{path}: {exc.strerror or exc}") from None


class _Unreadable(Exception):
    """Why a path gives no file to read (a device, too big, a pipe that stays silent)."""


def _read_bounded(path: Path) -> bytes:
    """The bytes of a regular file or a pipe, at most MAX_INPUT_BYTES, never waiting on
    a FIFO without writer or a silent device (opened non-blocking, read with a deadline)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(descriptor)
        if stat.S_ISDIR(info.st_mode):
            raise _Unreadable("is a directory")
        if stat.S_ISREG(info.st_mode) and info.st_size > MAX_INPUT_BYTES:
            raise _Unreadable(_too_big())
    except BaseException:
        os.close(descriptor)
        raise
    with os.fdopen(descriptor, "rb", buffering=0) as handle:
        if stat.S_ISREG(info.st_mode):
            os.set_blocking(descriptor, True)
            return _read_all(handle, lambda: None)  # a file never has to be waited for
        if not (stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode)):
            raise _Unreadable("not a regular file")
        readable = select.poll()  # not select(): descriptors past 1024 are fine
        readable.register(descriptor, select.POLLIN)

        def wait_for_data() -> None:
            if not readable.poll(PIPE_SILENCE_S * 1000):
                raise _Unreadable(f"nothing came for {PIPE_SILENCE_S:.0f} s")

        return _read_all(handle, wait_for_data)


def _too_big() -> str:
    return f"larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB"


def _read_all(handle: io.FileIO, wait_for_data: Callable[[], None]) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = handle.read(_BLOCK)
        if chunk is None:  # a pipe whose writer has not written yet
            wait_for_data()
            continue
        if not chunk:  # the end (a FIFO nobody has opened to write ends at once)
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_INPUT_BYTES:
            raise _Unreadable(_too_big())
        chunks.append(chunk)


def parse_json(text: str, where: str) -> Any:
    """JSON data; MadError naming `where` with the line and column of a syntax error
    (the message quotes none of the text: safe for files of secrets)."""
    if not text.strip():
        raise MadError(f"{where}: empty, where JSON was expected")
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
