"""The entry points our registries (backends, data providers, tools) read: the installed
packages' metadata is scanned once per process, as each scan reads every package's
files (about 10 ms here), and a session asks of three groups."""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from typing import Any


@functools.cache
def _installed() -> Any:
    # Groups by name up to Python 3.11, one list from 3.12 on: both have select().
    return entry_points()


def registered(group: str) -> tuple[EntryPoint, ...]:
    """The entry points of the group, in the order the metadata lists them."""
    return tuple(_installed().select(group=group))
