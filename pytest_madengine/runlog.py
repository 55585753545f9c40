"""A run's log file, as every backend writes it: output appended as it arrives, with
the run's secrets masked before a byte reaches the file or the live sink, so that no
secret is at rest in a log at any moment (not even while the run goes on, or after a
`kill -9` of pytest).

A backend only feeds it what its engine streams (a container's log, a pod's log) and,
when a stream broke, the whole output again (`rewrite`). A batch job whose node writes
the log itself runs this module there (`python3 -m pytest_madengine.runlog LOG`, from a
copy of this file and masking.py, which need only Python's standard library).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from pytest_madengine.masking import StreamMask

OutputSink = Callable[[bytes], None]


class LogStream:
    """Appends masked output to `path` (and hands it to `on_output`); `close` writes
    what the mask held back at the end."""

    def __init__(
        self,
        path: Path,
        secrets: Iterable[str] = (),
        on_output: OutputSink | None = None,
        header: bytes = b"",
    ) -> None:
        self.path = path
        self.secrets = tuple(secrets)
        self.on_output = on_output
        self.header = header  # our lines above the run's output (kept by `rewrite`)
        self._mask = StreamMask(self.secrets)
        self._file: IO[bytes] | None = None

    @contextlib.contextmanager
    def open(self) -> Iterator[LogStream]:
        """The log open for appending while the block runs; closed (the mask's held
        bytes written) however it ends."""
        self._file = self.path.open("ab")
        try:
            yield self
        finally:
            self.close()

    def write(self, chunk: bytes) -> None:
        self._emit(self._mask.feed(chunk))

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._emit(self._mask.flush())
        finally:
            self._file.close()
            self._file = None

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        assert self._file is not None, "LogStream.write outside `open()`"
        self._file.write(data)
        self._file.flush()
        if self.on_output is not None:
            self.on_output(data)

    def rewrite(self, chunks: Iterable[bytes]) -> None:
        """The whole output again, masked, into a fresh file that then replaces the log
        (a stuck stream that wakes up later writes to the old file, not into this one)."""
        fresh = self.path.with_name(self.path.name + ".reread")
        mask = StreamMask(self.secrets)
        with fresh.open("wb") as out:
            out.write(self.header)
            for chunk in chunks:
                out.write(mask.feed(chunk))
            out.write(mask.flush())
        fresh.replace(self.path)


# The variable that hands a node's copy of this module the secrets (a JSON list).
SECRETS_VARIABLE = "MAD_MASK_SECRETS"
# The modules a node needs to run this one (`node_copy`).
NODE_MODULES = ("masking.py", "runlog.py")


def node_copy(directory: Path) -> Path:
    """A copy of this module and what it imports, as the package `pytest_madengine`
    below `directory` (for PYTHONPATH on a node without pytest-madengine)."""
    package = directory / "pytest_madengine"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    for name in NODE_MODULES:
        (package / name).write_bytes((Path(__file__).parent / name).read_bytes())
    return directory


def _filter_standard_input(arguments: list[str]) -> None:
    """Standard input masked into the log named by the argument (appended), or to
    standard output without one, the secrets read from SECRETS_VARIABLE."""
    secrets = json.loads(os.environ.get(SECRETS_VARIABLE) or "[]")
    secrets = [secret for secret in secrets if isinstance(secret, str)]
    if arguments:
        with LogStream(Path(arguments[0]), secrets).open() as log:
            while chunk := os.read(0, 64 * 1024):
                log.write(chunk)
        return
    mask = StreamMask(secrets)
    while chunk := os.read(0, 64 * 1024):
        os.write(1, mask.feed(chunk))
    os.write(1, mask.flush())


if __name__ == "__main__":
    _filter_standard_input(sys.argv[1:])
