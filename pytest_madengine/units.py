"""Quantities as people read them, shared by the runner's log lines and the reports."""

from __future__ import annotations

import math


def human_size(size: int | None) -> str:
    """A size as madengine's `du -sh` wrote it (1024-based, rounded up: 512K, 1.1M, 20G)."""
    if size is None:
        return ""
    if size < 1024:
        return str(size)
    value, unit = float(size), ""
    for unit in "KMGTP":  # noqa: B007 - the unit the loop stops at is the one to show
        value /= 1024
        if value < 1024:
            break
    if value < 10:
        return f"{math.ceil(value * 10) / 10:.1f}{unit}"
    return f"{math.ceil(value)}{unit}"


def exact_number(value: float) -> str:
    """A number as perf.csv keeps it: every digit it was measured with (the shortest text
    that reads back as the same float), and a whole number without '.0', as the run's
    `performance:` line printed it (1234567.891 stays so, where `:g` wrote 1.23457e+06)."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e16:
        return str(int(value))
    return repr(value)
