"""The one exception type the core raises for bad input."""

from __future__ import annotations


class MadError(Exception):
    """A user-facing problem, told in one line that names the file, model or field."""
