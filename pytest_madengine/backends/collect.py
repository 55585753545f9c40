"""Bringing a run's workspace back to the host: the files a tar stream of the container's
workspace holds, less those the spec leaves out (`RunSpec.collect_skip`).

Backend-neutral: any backend that can stream a directory of its run as a tar uses it.
Only regular files come back, each inside the host directory: no absolute or `..`
paths, no links, nothing that would replace a directory.
"""

from __future__ import annotations

import io
import posixpath
import shutil
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from pytest_madengine.backends import collected
from pytest_madengine.errors import MadError


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


def extract_workspace(
    chunks: Iterable[bytes], destination: Path, skip: frozenset[str]
) -> list[str]:
    """Writes the archive's files (all but `skip`) below `destination`; their paths."""
    written = []
    stream = io.BufferedReader(_ChunkReader(chunks), buffer_size=1024 * 1024)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                relative = _relative(member.name)
                if relative is None or not member.isfile() or not collected(relative, skip):
                    continue
                target = destination / relative
                if target.is_dir() or target.is_symlink():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                if source is None:
                    continue
                with target.open("wb") as out:
                    shutil.copyfileobj(source, out)
                target.chmod(member.mode & 0o755 | 0o600)
                written.append(relative)
    except OSError as exc:
        raise MadError(
            f"the run's workspace files could not be written to {destination}: {exc}"
        ) from None
    except tarfile.TarError as exc:
        raise MadError(f"the run's workspace came back unreadable: {exc}") from None
    return written
