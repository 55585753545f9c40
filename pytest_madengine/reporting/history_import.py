"""perf.csv files (ours or madengine's, and perf_super.csv) into the results history:
`madengine report import`.

perf.csv has no session column, and one file is often appended to by many runs. Its
rows are cut into sessions in file order: a new session starts where `pipeline`,
`build_number` or `git_commit` changes, or where a result (model, args, docker_file,
gpu_architecture, metric, machine) comes again, as the next run of the same models
does. A session's id is a hash of the file's rows up to its end, so importing a file
again, or after more runs were appended to it, adds only the sessions not there yet.
perf.csv keeps no time: every session of a file takes the file's modification time,
and they keep the file's order (the history orders sessions by time, then by arrival).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pytest_madengine.core.history import History, HistoryResult, SessionStamp
from pytest_madengine.core.verdicts import ResultKey
from pytest_madengine.errors import (
    MAX_LINE_BYTES,
    MAX_TABLE_BYTES,
    MadError,
    UnreadableInput,
    open_input,
)

REQUIRED_COLUMNS = ("model", "performance", "metric", "status")
SESSION_COLUMNS = ("pipeline", "build_number", "git_commit")


@dataclass(frozen=True)
class ImportCount:
    """What one file brought: sessions new to the history, sessions it had, results."""

    added: int
    known: int
    results: int


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _samples(text: str) -> tuple[float, ...]:
    values = (_number(part) for part in text.split())
    return tuple(value for value in values if value is not None)


def _result(row: Mapping[str, str]) -> HistoryResult:
    key = ResultKey(row["model"], row.get("args", ""), row.get("docker_file", ""),
                    row.get("gpu_architecture", ""), row["metric"])  # fmt: skip
    status = row["status"] or "FAILURE"
    value = _number(row["performance"]) if status == "SUCCESS" else None
    return HistoryResult(key, row.get("machine_name", ""), value,
                         _samples(row.get("samples", "")), status)  # fmt: skip


def _rows(path: Path, option: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Each row as read (stripped cells) with its line as text, for the session ids."""
    raw = open_input(path, option, max_bytes=MAX_TABLE_BYTES, max_line_bytes=MAX_LINE_BYTES)
    with io.TextIOWrapper(
        io.BufferedReader(raw), encoding="utf-8-sig", errors="replace", newline=""
    ) as handle:
        # Strict: an unclosed quote is an error, not the rest of the file in one cell.
        reader = csv.reader(handle, strict=True)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in REQUIRED_COLUMNS if name not in header]
        if missing:
            raise MadError(f"{option} {path}: missing column(s) {', '.join(missing)}")
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            row = dict(zip(header, (cell.strip() for cell in cells), strict=False))
            yield "\x1f".join(cells), {name: row.get(name, "") for name in header}


Imported = list[tuple[SessionStamp, list[HistoryResult]]]


def perf_csv_sessions(path: Path, option: str = "PERF_CSV") -> Imported:
    """The sessions of one perf.csv, in file order (see the module's docstring)."""
    try:
        moment = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except OSError as exc:
        raise MadError(f"{option} {path}: {exc.strerror or exc}") from None
    sessions: Imported = []
    digest = hashlib.sha256()
    group: list[HistoryResult] = []
    first: dict[str, str] = {}
    seen: set[tuple[ResultKey, str]] = set()

    def close() -> None:
        if group:
            session = f"perf.csv:{digest.hexdigest()[:20]}"
            host, commit = first.get("machine_name", ""), first.get("git_commit", "")
            stamp = SessionStamp(session, moment, host, commit)
            sessions.append((stamp, list(group)))
            group.clear()
            seen.clear()

    try:
        for line, row in _rows(path, option):
            result = _result(row)
            same_run = all(row.get(c, "") == first.get(c, "") for c in SESSION_COLUMNS)
            if group and (not same_run or (result.key, result.host) in seen):
                close()
            if not group:
                first = row
            group.append(result)
            seen.add((result.key, result.host))
            digest.update(line.encode() + b"\n")
        close()
    except csv.Error as exc:
        raise MadError(f"{option} {path}: unreadable CSV: {exc}") from None
    except UnreadableInput as exc:
        raise MadError(str(exc)) from None
    return sessions


def import_perf_csv(history: History, path: Path, option: str = "PERF_CSV") -> ImportCount:
    """The file's sessions that the history lacks, appended; each in one transaction."""
    added = known = results = 0
    for stamp, session_results in perf_csv_sessions(path, option):
        if history.has_session(stamp.session):
            known += 1
            continue
        history.append(stamp, session_results)
        added += 1
        results += len(session_results)
    return ImportCount(added, known, results)
