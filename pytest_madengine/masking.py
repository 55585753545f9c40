"""Secrets taken out of every text we show or write: failure lines, logs, live output.

`mask_text` is for whole texts. `StreamMask` is for output that arrives in chunks (a
container's log, a build's output): a secret split across two chunks is still caught,
because the few bytes at a chunk's end that could start one are held back until more
arrives (never a finished line, unless a secret spans lines).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

MASK = "***"
T = TypeVar("T")


def _ordered(secrets: Iterable[str]) -> tuple[str, ...]:
    # Longest first, so that a secret that contains another is not left half shown.
    return tuple(sorted({secret for secret in secrets if secret}, key=len, reverse=True))


def mask_text(text: str, secrets: Iterable[str]) -> str:
    for secret in _ordered(secrets):
        text = text.replace(secret, MASK)
    return text


class StreamMask:
    """Masks a byte stream chunk by chunk; `flush` gives what was held back at the end."""

    def __init__(self, secrets: Iterable[str]) -> None:
        ordered = [secret.encode() for secret in _ordered(secrets)]
        self._secrets = tuple(ordered)
        # Longest first at each position, so "s3cret-value" wins over "s3cret".
        self._pattern = re.compile(b"|".join(re.escape(s) for s in ordered)) if ordered else None
        self._longest = max((len(secret) for secret in ordered), default=0)
        self._lines_safe = not any(b"\n" in secret for secret in ordered)
        self._held = b""

    @property
    def active(self) -> bool:
        return self._pattern is not None

    def feed(self, chunk: bytes) -> bytes:
        if self._pattern is None:
            return chunk
        data = self._held + chunk
        # A secret starting before `limit` lies whole in `data` if it is there at all:
        # at most the longest secret less one byte can be the start of one, and (when no
        # secret holds a newline) nothing before the last newline can.
        limit = len(data) - (self._longest - 1)
        if self._lines_safe:
            limit = max(limit, data.rfind(b"\n") + 1)
        if not any(secret in data for secret in self._secrets):
            # The common case, at the speed of a byte search per secret: the regex tries
            # each secret at each position (6 MB/s on a line of one repeated letter).
            end = max(0, limit)
            self._held = data[end:]
            return data[:end]
        out, done = [], 0
        for found in self._pattern.finditer(data):
            if found.start() >= limit:
                break
            out += [data[done : found.start()], MASK.encode()]
            done = found.end()
        end = max(done, limit)
        out.append(data[done:end])
        self._held = data[end:]
        return b"".join(out)

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        if self._pattern is None:
            return held
        return self._pattern.sub(MASK.encode(), held)


def mask_all(value: T, redact: Callable[[str], str]) -> T:
    """`value` with every text in it masked: strings, the keys and values of mappings,
    the items of tuples and lists, and the fields of (frozen) dataclasses, however deep.
    For records that any report may write whole (perf.csv, the summary, hooks)."""
    return cast(T, _mask_any(value, redact))


def _mask_any(value: Any, redact: Callable[[str], str]) -> Any:
    """The value masked; the very same object when nothing in it changed (most records:
    no copy made, nothing validated again)."""
    if isinstance(value, enum.Enum) or value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        keys = [_mask_any(key, redact) for key in value]
        items = [_mask_any(item, redact) for item in value.values()]
        same = _same(keys, value) and _same(items, value.values())
        return value if same else dict(zip(keys, items, strict=True))
    if isinstance(value, (tuple, list)):
        items = [_mask_any(item, redact) for item in value]
        return value if _same(items, value) else type(value)(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            field.name: masked
            for field in dataclasses.fields(value)
            if field.init
            and (masked := _mask_any(getattr(value, field.name), redact))
            is not getattr(value, field.name)
        }
        return dataclasses.replace(value, **changes) if changes else value
    return value


def _same(masked: Iterable[Any], original: Iterable[Any]) -> bool:
    """Whether masking left every item the very object it was."""
    return all(new is old for new, old in zip(masked, original, strict=True))
