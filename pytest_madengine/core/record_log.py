"""The session's finished tests, kept to its end for the summary, the results table, the
HTML report and the history, in little memory: records as JSON lines, compressed a
block at a time (a fleet's 10,000 records held as objects took ~25 MB of the session's
peak; as compressed blocks they take ~1 MB). Reading them back gives records equal to
those appended, in their order, one at a time. No pytest here.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

from pytest_madengine.core.records import TestRecord

BLOCK = 256  # records compressed together: similar lines compress well together
_SEPARATORS = (",", ":")


def _line(nodeid: str, data: Mapping[str, Any]) -> str:
    # Non-finite values (a NaN performance) are kept: json writes and reads them back.
    return json.dumps([nodeid, data], separators=_SEPARATORS)


def _entry(line: str) -> tuple[str, TestRecord]:
    nodeid, data = json.loads(line)
    return nodeid, TestRecord.from_dict(data)


class RecordLog:
    """An append-only list of (node id, record); iterate it as often as needed."""

    def __init__(self) -> None:
        self._blocks: list[bytes] = []  # BLOCK lines each, "\n"-joined, compressed
        self._open: list[str] = []  # the lines of the block not compressed yet
        self._count = 0

    def append(self, nodeid: str, record: TestRecord | Mapping[str, Any]) -> None:
        """Keeps the record; given as TestRecord.to_dict made it (as a report carries
        it), it is not made again."""
        data = record.to_dict() if isinstance(record, TestRecord) else record
        self._open.append(_line(nodeid, data))
        self._count += 1
        if len(self._open) >= BLOCK:
            self._blocks.append(zlib.compress("\n".join(self._open).encode(), 1))
            self._open = []

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[tuple[str, TestRecord]]:
        blocks, still_open = len(self._blocks), list(self._open)  # as appended so far
        for block in self._blocks[:blocks]:
            for line in zlib.decompress(block).decode().split("\n"):
                yield _entry(line)
        for line in still_open:
            yield _entry(line)

    def records(self) -> Iterator[TestRecord]:
        """The records alone, in their order."""
        return (record for _, record in self)
