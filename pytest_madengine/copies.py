"""What of a host directory a run's container gets: one walk that every way of copying
in uses (a bound workspace, an archive for an engine or a SLURM node, a ConfigMap).

madengine mounts the whole MAD tree, so a link in a scripts directory reads its target
there. We copy parts of the tree instead, so a link that stays inside the tree (`within`)
is copied as what it points to: a Dockerfile linked beside the scripts, a linked folder.
A link that leaves the tree stays a link (its text only): no host file outside the tree
ever reaches a container, and the link means in the container what it meant under
madengine's mount. Excluded paths (secrets, our output) stay out however they are
reached; a link back into a folder being walked is left out (it would never end).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class CopyEntry:
    """One thing placed below the copied directory's container path."""

    relative: str  # below the copied directory, posix
    kind: Literal["dir", "file", "link"]
    source: Path  # the real host file or folder ("file", "dir"); the link itself ("link")
    link: str = ""  # a "link" entry's text


def _inside(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def copy_entries(
    host: Path, within: Path | None = None, excludes: Iterable[Path] = ()
) -> Iterator[CopyEntry]:
    """The folders, files and kept links below `host` (a directory), parents before
    their contents, in a stable order; links resolving inside `within` (default: `host`)
    are followed, and nothing at or below an excluded path comes out."""
    excluded = {path.resolve() for path in excludes}
    tree = (within or host).resolve()

    def left_out(real: Path) -> bool:
        return real in excluded or not excluded.isdisjoint(real.parents)

    def walk(real_dir: Path, relative: str, ancestors: frozenset[Path]) -> Iterator[CopyEntry]:
        for name in sorted(os.listdir(real_dir)):
            path = real_dir / name
            below = f"{relative}/{name}" if relative else name
            real = path
            if path.is_symlink():
                real = path.resolve()
                if not (_inside(real, tree) and real.exists()):
                    yield CopyEntry(below, "link", path, os.readlink(path))
                    continue
            if left_out(real):
                continue
            if real.is_dir():
                if real in ancestors:
                    continue  # a link back up: the folder is being copied already
                yield CopyEntry(below, "dir", real)
                yield from walk(real, below, ancestors | {real})
            elif real.is_file():
                yield CopyEntry(below, "file", real)

    root = host.resolve()
    if not left_out(root):
        yield from walk(root, "", frozenset({root}))
