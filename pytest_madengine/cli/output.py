"""The terminal of the `madengine` command: Rich consoles, and one-line failures."""

from __future__ import annotations

import typer
from rich.console import Console

from pytest_madengine.cli.driver import ExitCode

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Says what went wrong in one line (never markup: paths may hold brackets; never
    wrapped at the terminal's width, so that a log or a grep sees the line whole)."""
    errors.print(f"madengine: {message}", style="red", markup=False, soft_wrap=True)
    return typer.Exit(code)
