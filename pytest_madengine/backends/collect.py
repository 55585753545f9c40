"""Bringing a run's workspace back to the host: the files a tar stream of the container's
workspace holds, or a host directory that was its workspace, less those the spec
leaves out (`RunSpec.collect_skip`).

Backend-neutral: any backend that can stream a directory of its run as a tar, or bind
a directory of this machine as its workspace, uses it. Only regular files come back,
each inside the host directory: no absolute or `..` paths, no links, nothing that
would replace a directory.

A model is not trusted with the user's tree (`Landing`): a file comes back only where
nothing stands yet (or where an earlier run's file that we brought back stands
unchanged), never through a link, never under a hidden folder (`.git/hooks`), never as
a file that Python, pytest or the tree's discovery would read (`conftest.py`, `*.py`,
`pytest.ini`, `models.json`, a Dockerfile, `credential.json`...), never onto our own
output, and never executable. What is refused is named in the test's log.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import posixpath
import shutil
import stat
import tarfile
import uuid
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pytest_madengine.backends import collected
from pytest_madengine.copies import copy_entries
from pytest_madengine.errors import MadError
from pytest_madengine.masking import StreamMask
from pytest_madengine.resources.locks import SharedLock

# Files read back into memory (result CSVs, state files) are small; larger ones are not.
MAX_READ_BYTES = 64 * 1024 * 1024


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks (an engine's archive stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = chunk
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def _relative(name: str) -> str | None:
    """The member's path below the archived directory, or None when it is unsafe."""
    parts = posixpath.normpath(name).split("/")[1:]  # the first part is the directory itself
    if not parts or any(part in ("", ".", "..") for part in parts):
        return None
    return "/".join(parts)


# Names a run never writes into the user's tree: what pytest, Python or the tree's
# discovery would read (a planted conftest.py runs on the host at the next `pytest`).
_TREE_INPUTS = frozenset({
    "conftest.py", "pytest.ini", "pyproject.toml", "setup.cfg", "setup.py", "tox.ini",
    "models.json", "credential.json", "data.json", "tools.json", "ctx_test",
    "perf.csv", "perf_super.csv", "__pycache__", "sitecustomize.py", "usercustomize.py",
})  # fmt: skip
_IMPORTED_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".pth", ".so", ".egg-link")


def refusal(relative: str) -> str | None:
    """Why a file of the run may never land at this tree-relative path (None: it may,
    if nothing of the tree stands there)."""
    parts = relative.split("/")
    name = parts[-1].lower()
    if any(part.startswith(".") for part in parts):
        return "a hidden path"
    if any(part.lower() in _TREE_INPUTS for part in parts) or name.endswith(_IMPORTED_SUFFIXES):
        return "a file Python, pytest or the MAD tree reads"
    if "dockerfile" in name:
        return "a Dockerfile"
    return None


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1024 * 1024), b""):
            hasher.update(block)
    return hasher.hexdigest()


_LEDGER_LOCKS: dict[str, SharedLock] = {}


@dataclass(frozen=True)
class Landing:
    """Where a run's files land on the host (`destination`, the user's working tree), and
    what they may never touch: `keep_out`, host paths of our own (output, perf.csv);
    `ledger`, a file of ours listing what earlier runs brought back (path -> digest), so
    that a result file a later run leaves again replaces ours, never one of the user's."""

    destination: Path
    keep_out: tuple[Path, ...] = ()
    ledger: Path | None = None
    # Masked in every file brought back (a model may write its credential to a result).
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def why_not(self, relative: str) -> str | None:
        """Why the file may not land (None: it may), from the path and what stands there."""
        reason = refusal(relative)
        if reason is not None:
            return reason
        base = self.destination.resolve()
        target = base / relative
        for keep in self.keep_out:
            if target == keep or keep in target.parents:
                return "our own output"
        walked = base
        for part in Path(relative).parts[:-1]:
            walked = walked / part
            if walked.is_symlink() or (walked.exists() and not walked.is_dir()):
                return f"{walked.relative_to(base).as_posix()} is in its way"
        if target.is_symlink() or target.is_dir():
            return "a link or folder is in its way"
        if target.exists() and not self._ours(relative, target):
            return "a file of the tree stands there"
        return None

    def _lock(self) -> SharedLock:
        assert self.ledger is not None
        key = str(self.ledger)
        return _LEDGER_LOCKS.setdefault(key, SharedLock(f"{key}.lock"))

    def _entries(self) -> dict[str, str]:
        try:
            entries = json.loads(self.ledger.read_text(encoding="utf-8")) if self.ledger else {}
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def _ours(self, relative: str, target: Path) -> bool:
        if self.ledger is None:
            return False
        with self._lock():
            recorded = self._entries().get(relative)
        return isinstance(recorded, str) and recorded == _digest(target)

    def record(self, written: dict[str, str]) -> None:
        """Notes what was brought back (path -> digest) for later runs."""
        if self.ledger is None or not written:
            return
        with self._lock():
            entries = self._entries()
            entries.update(written)
            partial = self.ledger.with_name(f".{self.ledger.name}.{uuid.uuid4().hex[:8]}")
            self.ledger.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(entries, sort_keys=True), encoding="utf-8")
            os.replace(partial, self.ledger)

    def write(self, relative: str, source: IO[bytes], outcome: Extracted) -> None:
        """Writes one file (without its execute bits) where `why_not` allows, or notes
        why not."""
        reason = self.why_not(relative)
        if reason is not None:
            outcome.refused.append((relative, reason))
            return
        target = self.destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and moved in whole: tests that run at once and leave a file of the
        # same name each replace it, neither tears the other's.
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
        hasher = hashlib.sha256()
        mask = StreamMask(self.secrets)
        try:
            with partial.open("xb") as out:
                blocks = iter(lambda: source.read(1024 * 1024), b"")
                for block in itertools.chain(blocks, [None]):  # None: the end
                    masked = mask.flush() if block is None else mask.feed(block)
                    hasher.update(masked)
                    out.write(masked)
            partial.chmod(0o644)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        outcome.written.append(relative)
        outcome.digests[relative] = hasher.hexdigest()


@dataclass(frozen=True)
class Extracted:
    written: list[str] = field(default_factory=list)  # workspace-relative paths written
    read: dict[str, str] = field(default_factory=dict)  # text of the files asked for
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why) not written
    digests: dict[str, str] = field(default_factory=dict, repr=False)

    def notes(self) -> list[str]:
        """Lines for the test's log: what did not come back to the tree, and why."""
        return [f"not brought back from the workspace: {path} ({why})"
                for path, why in self.refused]  # fmt: skip


def extract_workspace(
    chunks: Iterable[bytes],
    landing: Landing | None,
    skip: frozenset[str],
    read: Collection[str] = (),
    max_read_bytes: int = MAX_READ_BYTES,
) -> Extracted:
    """Writes the archive's files (all but `skip`) where `landing` allows, and keeps the
    text of the files `read` names (workspace-relative; skipped or not, none larger
    than `max_read_bytes`): one pass over the stream serves both."""
    outcome = Extracted()
    stream = io.BufferedReader(_ChunkReader(chunks), buffer_size=1024 * 1024)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                relative = _relative(member.name)
                if relative is None or not member.isfile():
                    continue
                kept = landing is not None and collected(relative, skip)
                wanted = relative in read and member.size <= max_read_bytes
                if not (kept or wanted):
                    continue
                source = archive.extractfile(member)
                if source is None:
                    continue
                if wanted:
                    data = source.read()
                    outcome.read[relative] = data.decode("utf-8", errors="replace")
                    source = io.BytesIO(data)
                if kept:
                    assert landing is not None
                    landing.write(relative, source, outcome)
    except OSError as exc:
        raise MadError(
            f"the run's workspace files could not be written to {_where(landing)}: {exc}"
        ) from None
    except tarfile.TarError as exc:
        raise MadError(f"the run's workspace came back unreadable: {exc}") from None
    if landing is not None:
        landing.record(outcome.digests)
    return outcome


def _where(landing: Landing | None) -> str:
    return str(landing.destination) if landing is not None else "the host"


def fill_workspace(
    copies: Iterable[tuple[Path, str]],
    excludes: Iterable[Path],
    root: Path,
    workdir: str,
    within: Path | None = None,
) -> tuple[tuple[Path, str], ...]:
    """Copies what a run copies into its container (host path, container path) into
    `root`, the host directory that will be the container's `workdir`; later copies win,
    as in a tar extracted in order. Links are handled as `copy_entries` says (`within`:
    the MAD tree). Returns the copies that lie outside `workdir`."""
    excludes = tuple(excludes)
    excluded = {path.resolve() for path in excludes}
    outside = []
    base = posixpath.normpath(workdir)
    for host, container in copies:
        relative = posixpath.relpath(posixpath.normpath(container), base)
        if relative == ".." or relative.startswith("../"):
            outside.append((host, container))
            continue
        if host.resolve() in excluded:
            continue
        target = root / relative
        if not host.is_dir():
            _place_file(host, target)
            continue
        target.mkdir(parents=True, exist_ok=True)
        for entry in copy_entries(host, within, excludes):
            placed = target / entry.relative
            if entry.kind == "dir":
                if placed.is_symlink() or (placed.exists() and not placed.is_dir()):
                    placed.unlink()
                placed.mkdir(exist_ok=True)
            elif entry.kind == "file":
                _place_file(entry.source, placed)
            else:
                _clear(placed)
                placed.symlink_to(entry.link)
    return tuple(outside)


def _clear(target: Path) -> None:
    """Makes way for a later copy: a file or link there goes (never written through)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)


def _place_file(source: Path, target: Path) -> None:
    _clear(target)
    shutil.copy2(source, target)


def collect_workspace(
    root: Path,
    landing: Landing | None,
    skip: frozenset[str],
    read: Collection[str] = (),
    max_read_bytes: int = MAX_READ_BYTES,
) -> Extracted:
    """As `extract_workspace`, from a host directory that was a (stopped) container's
    workspace: regular files only, no link followed, nothing read past its size bound.
    With no `landing`, the files asked for are read and nothing is written."""
    outcome = Extracted()
    try:
        for directory, _, names in os.walk(root):  # links to directories are not entered
            for name in names:
                path = Path(directory) / name
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode):
                    continue
                relative = path.relative_to(root).as_posix()
                wanted = relative in read and info.st_size <= max_read_bytes
                kept = landing is not None and collected(relative, skip)
                if not (wanted or kept):
                    continue
                with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as source:
                    if wanted:
                        data = source.read()
                        outcome.read[relative] = data.decode("utf-8", errors="replace")
                    if kept:
                        assert landing is not None
                        landing.write(relative, io.BytesIO(data) if wanted else source, outcome)
    except OSError as exc:
        raise MadError(
            f"the run's workspace files could not be written to {_where(landing)}: {exc}"
        ) from None
    if landing is not None:
        landing.record(outcome.digests)
    return outcome
