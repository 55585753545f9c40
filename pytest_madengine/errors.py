"""Every exception of the project, and the JSON reading that most input errors come from."""

from __future__ import annotations

import io
import json
import os
import select
import shlex
import stat
from pathlib import Path
from typing import Any

# The input files we read (models.json, the context, hosts.yml, credential.json...)
# are small; more than this is a mistake (or /dev/zero), not something to load.
MAX_INPUT_BYTES = 64 * 1024 * 1024
# A CSV of results (perf.csv, a baseline) is streamed, never held whole: it may grow by
# a row per test and run for years. Bounded by these instead; /dev/zero has no line.
MAX_TABLE_BYTES = 4 << 30
MAX_LINE_BYTES = 1 << 20
# A pipe (`--mad-context-file <(make-context)`) may be silent this long between two
# pieces of its data; a FIFO that no process has open to write is read as empty at once.
PIPE_SILENCE_S = 30.0


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

    fails = False  # a test that gets this is skipped; an Unplaceable one fails


class Unplaceable(NoHost):
    """The test could be placed but is not: every host that fits it stayed offline, or
    its `host_affinity` names labels no host carries. The test fails, in one line."""

    fails = True


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
    with open_input(path, option) as handle:
        data = handle.readall()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MadError(f"{prefix}{path}: not UTF-8 text (byte {exc.start})") from None


class UnreadableInput(MadError):
    """An input path that gives no file to read (a directory, a device, too big, a
    pipe that stays silent, a line too long), told naming the option and the path."""


def open_input(
    path: Path, option: str = "", max_bytes: int | None = None, max_line_bytes: int | None = None
) -> BoundedInput:
    """An input file opened to be read in bounded memory and time (see BoundedInput);
    UnreadableInput naming `option` and the path when it cannot be."""
    return BoundedInput(path, f"{option} {path}" if option else str(path),
                        MAX_INPUT_BYTES if max_bytes is None else max_bytes,
                        max_line_bytes)  # fmt: skip


class BoundedInput(io.RawIOBase):
    """A regular file or a pipe, read raw: at most `max_bytes` in all and, when given,
    `max_line_bytes` between two newlines; never waiting on a FIFO without writer or a
    silent device (opened non-blocking, each wait with a deadline). Going past a bound
    raises UnreadableInput from the read, so a streaming reader stops there."""

    def __init__(self, path: Path, label: str, max_bytes: int, max_line_bytes: int | None):
        super().__init__()
        self.label, self.max_bytes, self.max_line_bytes = label, max_bytes, max_line_bytes
        self._size = self._line = 0
        self._waiter: select.poll | None = None
        try:
            self._descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise UnreadableInput(f"{label}: {exc.strerror or exc}") from None
        try:
            self._check_kind(os.fstat(self._descriptor))
        except BaseException:
            os.close(self._descriptor)
            raise

    def _check_kind(self, info: os.stat_result) -> None:
        if stat.S_ISDIR(info.st_mode):
            raise UnreadableInput(f"{self.label}: is a directory")
        if stat.S_ISREG(info.st_mode):
            if info.st_size > self.max_bytes:
                raise UnreadableInput(f"{self.label}: {_too_big(self.max_bytes)}")
            os.set_blocking(self._descriptor, True)  # a file never has to be waited for
        elif stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode):
            self._waiter = select.poll()  # not select(): descriptors past 1024 are fine
            self._waiter.register(self._descriptor, select.POLLIN)
        else:
            raise UnreadableInput(f"{self.label}: not a regular file")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            try:
                count = os.readv(self._descriptor, [view])
                break
            except BlockingIOError:  # a pipe whose writer has not written yet
                if self._waiter is not None and not self._waiter.poll(PIPE_SILENCE_S * 1000):
                    raise UnreadableInput(
                        f"{self.label}: nothing came for {PIPE_SILENCE_S:.0f} s"
                    ) from None
            except OSError as exc:
                raise UnreadableInput(f"{self.label}: {exc.strerror or exc}") from None
        self._count(view[:count])
        return count

    def _count(self, chunk: memoryview) -> None:
        self._size += len(chunk)
        if self._size > self.max_bytes:
            raise UnreadableInput(f"{self.label}: {_too_big(self.max_bytes)}")
        if self.max_line_bytes is None:
            return
        last_newline = bytes(chunk).rfind(b"\n")
        self._line = len(chunk) - last_newline - 1 if last_newline >= 0 else self._line + len(chunk)
        if self._line > self.max_line_bytes:
            raise UnreadableInput(
                f"{self.label}: a line longer than {_size_text(self.max_line_bytes)}"
            )

    def close(self) -> None:
        if not self.closed:
            os.close(self._descriptor)
        super().close()


def _size_text(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size >= 1024 * 1024 else f"{size} bytes"


def _too_big(limit: int) -> str:
    return f"larger than {_size_text(limit)}"


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


def parse_words(text: str, where: str) -> list[str]:
    """Words of a command line as a shell splits them, without expansion (a model's
    args, a parameter); MadError naming `where` for an unbalanced quote or a lone `\\`."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise MadError(f"{where} {text!r}: {exc}") from None


def read_json(path: Path, option: str = "") -> Any:
    """A JSON file's data; one-line MadError naming the file for any problem."""
    return parse_json(read_text(path, option), str(path))


class Stopped(MadError):
    """The session is stopping (Ctrl-C, -x, the end): a test waiting to start gives up."""
