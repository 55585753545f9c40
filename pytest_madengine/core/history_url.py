"""Where the results history lives (--mad-history), as text: resolved without importing
SQLAlchemy, which a session's start-up does without unless a history is opened."""

from __future__ import annotations

from pathlib import Path

HISTORY_FILE = "history.sqlite"  # the default history, in the output directory
HISTORY_OFF = frozenset({"none", "off"})  # --mad-history none: the session keeps no history


def names_history_file(text: str) -> bool:
    """Whether --mad-history's text is an SQLite file's path (not none, not a URL): in
    the ini file, such a path is relative to it."""
    text = text.strip()
    return bool(text) and "://" not in text and text.lower() not in HISTORY_OFF


def names_compare_file(text: str) -> bool:
    """Whether --mad-compare's text is a perf.csv's path for certain (it ends in .csv or
    has a `/`), not history[:N] or a session id: in the ini file, relative to it."""
    text = text.strip()
    if text == "history" or text.startswith("history:"):
        return False
    return text.lower().endswith(".csv") or "/" in text


def default_history_url(output_dir: Path) -> str:
    """The history when none is named: an SQLite file in the output directory."""
    return f"sqlite:///{(output_dir / HISTORY_FILE).resolve()}"


def resolve_history_url(text: str | None, base_dir: Path, output_dir: Path) -> str | None:
    """--mad-history as given: none (or off) keeps no history, a text with `://` is a
    SQLAlchemy URL, anything else the path of an SQLite file (relative to `base_dir`);
    nothing given: `history.sqlite` in the output directory. Only resolved here: the URL
    is opened (and a bad one refused) by the controller alone."""
    text = (text or "").strip()
    if not text:
        return default_history_url(output_dir)
    if text.lower() in HISTORY_OFF:
        return None
    if "://" in text:
        return text
    path = Path(text)
    return f"sqlite:///{(path if path.is_absolute() else base_dir / path).resolve()}"


SQLITE_FILE_PREFIX = "sqlite:///"
_NOT_PLAIN = frozenset("%?#@")  # quoting, options: SQLAlchemy parses those


def sqlite_file(url: str) -> str | None:
    """The path of a plain SQLite file URL (`sqlite:///<path>`, as SQLAlchemy reads it):
    the standard library's sqlite3 opens it. None for any other URL, an in-memory one
    or one with quoting or options: SQLAlchemy opens those."""
    if not url.startswith(SQLITE_FILE_PREFIX):
        return None
    path = url[len(SQLITE_FILE_PREFIX) :]
    if not path or path == ":memory:" or _NOT_PLAIN.intersection(path):
        return None
    return path
