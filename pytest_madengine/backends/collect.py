"""Bringing a run's workspace back to the host: the files a tar stream of the container's
workspace holds, or a host directory that was its workspace, less those the spec
leaves out (`RunSpec.collect_skip`).

Backend-neutral: any backend that can stream a directory of its run as a tar, or bind
a directory of this machine as its workspace, uses it. Only regular files come back,
each inside the host directory: no absolute or `..` paths, no links, nothing that
would replace a directory.
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import stat
import tarfile
import uuid
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pytest_madengine.backends import collected
from pytest_madengine.errors import MadError

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


@dataclass(frozen=True)
class Extracted:
    written: list[str]  # workspace-relative paths of the files written to the host
    read: dict[str, str]  # of the paths asked for: the text of those found (files only)


def extract_workspace(
    chunks: Iterable[bytes],
    destination: Path,
    skip: frozenset[str],
    read: Collection[str] = (),
    max_read_bytes: int = MAX_READ_BYTES,
) -> Extracted:
    """Writes the archive's files (all but `skip`) below `destination`, and keeps the
    text of the files `read` names (workspace-relative; skipped or not, none larger
    than `max_read_bytes`): one pass over the stream serves both."""
    written: list[str] = []
    texts: dict[str, str] = {}
    stream = io.BufferedReader(_ChunkReader(chunks), buffer_size=1024 * 1024)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                relative = _relative(member.name)
                if relative is None or not member.isfile():
                    continue
                if relative in read and member.size <= max_read_bytes:
                    source = archive.extractfile(member)
                    data = source.read() if source is not None else b""
                    texts[relative] = data.decode("utf-8", errors="replace")
                    if collected(relative, skip) and _write(destination, relative, member.mode,
                                                            io.BytesIO(data)):  # fmt: skip
                        written.append(relative)
                    continue
                if not collected(relative, skip):
                    continue
                source = archive.extractfile(member)
                if source is not None and _write(destination, relative, member.mode, source):
                    written.append(relative)
    except OSError as exc:
        raise MadError(
            f"the run's workspace files could not be written to {destination}: {exc}"
        ) from None
    except tarfile.TarError as exc:
        raise MadError(f"the run's workspace came back unreadable: {exc}") from None
    return Extracted(written, texts)


def _write(destination: Path, relative: str, mode: int, source: IO[bytes]) -> bool:
    """Writes one file below `destination`; False when a directory or link is in its way."""
    target = destination / relative
    if target.is_dir() or target.is_symlink():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and moved in whole: tests that run at once and leave a file of the
    # same name each replace it, neither tears the other's.
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with partial.open("wb") as out:
            shutil.copyfileobj(source, out)
        partial.chmod(mode & 0o755 | 0o600)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return True


def fill_workspace(
    copies: Iterable[tuple[Path, str]], excludes: Iterable[Path], root: Path, workdir: str
) -> tuple[tuple[Path, str], ...]:
    """Copies what a run copies into its container (host path, container path) into
    `root`, the host directory that will be the container's `workdir`; later copies win,
    as in a tar extracted in order. Returns the copies that lie outside `workdir`."""
    excluded = {path.resolve() for path in excludes}
    outside = []
    base = posixpath.normpath(workdir)

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {name for name in names if (Path(directory) / name).resolve() in excluded}

    for host, container in copies:
        relative = posixpath.relpath(posixpath.normpath(container), base)
        if relative == ".." or relative.startswith("../"):
            outside.append((host, container))
            continue
        target = root / relative
        if host.resolve() in excluded:
            continue
        if host.is_dir() and not host.is_symlink():
            shutil.copytree(host, target, symlinks=True, ignore=ignore, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(host, target, follow_symlinks=False)
    return tuple(outside)


def collect_workspace(
    root: Path,
    destination: Path | None,
    skip: frozenset[str],
    read: Collection[str] = (),
    max_read_bytes: int = MAX_READ_BYTES,
) -> Extracted:
    """As `extract_workspace`, from a host directory that was a (stopped) container's
    workspace: regular files only, no link followed, nothing read past its size bound.
    With no `destination`, the files asked for are read and nothing is written."""
    written: list[str] = []
    texts: dict[str, str] = {}
    try:
        for directory, _, names in os.walk(root):  # links to directories are not entered
            for name in names:
                path = Path(directory) / name
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode):
                    continue
                relative = path.relative_to(root).as_posix()
                wanted = relative in read and info.st_size <= max_read_bytes
                kept = destination is not None and collected(relative, skip)
                if not (wanted or kept):
                    continue
                with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as source:
                    if wanted:
                        data = source.read()
                        texts[relative] = data.decode("utf-8", errors="replace")
                        source = io.BytesIO(data)  # type: ignore[assignment]
                    if kept and _write(destination, relative, info.st_mode, source):  # type: ignore[arg-type]
                        written.append(relative)
    except OSError as exc:
        raise MadError(
            f"the run's workspace files could not be written to {destination}: {exc}"
        ) from None
    return Extracted(written, texts)
