"""madengine-compatible perf.csv, and perf_super.csv beside it: appended one row per
result, header written once, under a lock that every session writing the file takes.

perf.csv has madengine's columns, then, as madengine appends them, the extra columns of
multiple_results rows (`temperature`...; one named as a column of ours stays out, so a
result never rewrites the run's facts). perf_super.csv (madengine writes one too) has
madengine's columns and two more: `configs` (madengine's parsed config files; we parse
none, so it stays empty) and `multi_results`, the extra columns of a multiple_results
row as a JSON object (empty for other rows), as madengine writes it; then ours for a
repeated model (--mad-repeat): its `samples`, their `cv` and a 95% interval `ci95`;
last the `verdict` against the result's history (--mad-compare), in one line.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypedDict

from pytest_madengine.core.records import TestRecord
from pytest_madengine.core.results import NOT_A_PERF_CSV, names_perf_columns
from pytest_madengine.resources.locks import SharedLock
from pytest_madengine.units import exact_number, human_size

PERF_COLUMNS = (
    "model", "n_gpus", "nnodes", "gpus_per_node", "training_precision", "pipeline", "args",
    "tags", "docker_file", "base_docker", "docker_sha", "docker_image", "git_commit",
    "machine_name", "deployment_type", "launcher", "gpu_architecture", "performance", "metric",
    "relative_change", "status", "build_duration", "test_duration", "dataname",
    "data_provider_type", "data_size", "data_download_duration", "build_number",
    "additional_docker_run_options",
)  # fmt: skip
# samples, cv, ci95: a repeated model's repetitions (--mad-repeat); perf.csv has the median.
SPREAD_COLUMNS = ("samples", "cv", "ci95")
# verdict: the result judged against its history (--mad-compare), in one line.
PERF_SUPER_COLUMNS = (*PERF_COLUMNS, "configs", "multi_results", *SPREAD_COLUMNS, "verdict")
PERF_SUPER_NAME = "perf_super.csv"


def perf_super_path(perf_csv: Path) -> Path:
    return perf_csv.with_name(PERF_SUPER_NAME)


# Existing files may hold any bytes: they are kept as they are when the file is rewritten.
class _Encoding(TypedDict):
    encoding: str
    errors: str


_ENCODING: _Encoding = {"encoding": "utf-8", "errors": "surrogateescape"}


def _existing_header(path: Path) -> list[str] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open(newline="", **_ENCODING) as handle:
        header = next(csv.reader(handle), None)
    return [name.lstrip("\ufeff").strip() for name in header] if header else None


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"


def _widen(path: Path, header: list[str]) -> None:
    """Rewrites the file under `header` (its own columns first, ours added after), so
    that no column of ours is dropped from a file made by another tool. Atomic: written
    aside under a name of its own, then moved over the file (its mode kept)."""
    target = path.resolve()  # through a symlink: the file it names is rewritten
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with (
            target.open(newline="", **_ENCODING) as source,
            partial.open("x", newline="", **_ENCODING) as out,
        ):
            reader = csv.reader(source)
            next(reader, None)
            writer = csv.writer(out)
            writer.writerow(header)
            # Rows keep their cells; the new columns are empty cells, so every row is whole.
            writer.writerows(row + [""] * (len(header) - len(row)) for row in reader)
        shutil.copymode(target, partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


class NotAPerfCsv(Exception):
    """The file there is no perf.csv: rows are not appended to it (nor is it rewritten)."""


_LOCKS: dict[Path, SharedLock] = {}
_LOCKS_LOCK = threading.Lock()


def _lock(path: Path) -> SharedLock:
    """The lock every writer of this file takes, in any process: `.<name>.lock` beside
    the file a symlink names, so two paths to one file share it."""
    target = path.resolve()
    with _LOCKS_LOCK:
        if target not in _LOCKS:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Kept open between appends (a row per test must not cost an open and a
            # close); PerfCsv.close closes it, a later append opens it again.
            lock_file = str(target.with_name(f".{target.name}.lock"))
            _LOCKS[target] = SharedLock(lock_file, keep_open=True)
        return _LOCKS[target]


class PerfCsv:
    """Appends rows, keeping the column order of a perf.csv that is already there.

    A file lacking some of our columns is rewritten with them added at the end; a last
    row without its newline gets one before ours. With `grow`, a row's keys beyond
    `columns` (a multiple_results row's extra columns) become columns the same way.
    Every append holds the file's lock, so sessions writing one file at once lose no
    row and no header. When the file cannot be written mid-session the rows go to
    `fallback` instead, and `append` says so.
    """

    def __init__(
        self,
        path: Path,
        fallback: Path | None = None,
        columns: tuple[str, ...] = PERF_COLUMNS,
        label: str = "perf.csv",
        grow: bool = False,
    ) -> None:
        self.path = path
        self.fallback = fallback
        self.columns = columns
        self.label = label  # what the file is, in messages
        self.grow = grow
        # The header of each file as this writer last left it, with the file's identity
        # then: while the file is still that, the next append need not read it again.
        self._written: dict[Path, _Written] = {}
        self._locks: dict[Path, SharedLock] = {}
        # Each file's handle, kept open between appends while the path still names the
        # file it opened (a row per test must not cost an open and a close).
        self._handles: dict[Path, TextIO] = {}

    def _lock(self, path: Path) -> SharedLock:
        """The file's lock, found once per path (finding it resolves symlinks)."""
        if path not in self._locks:
            self._locks[path] = _lock(path)
        return self._locks[path]

    def append(self, rows: Iterable[Mapping[str, object]]) -> str | None:
        """Writes the rows; a one-line problem when they went to the fallback instead."""
        rows = list(rows)
        if not rows:
            return None
        try:
            self._append(self.path, rows)
        except (OSError, csv.Error, NotAPerfCsv) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            problem = f"{self.label} {self.path}: cannot write ({why})"
            if self.fallback is None:
                return problem
            self._append(self.fallback, rows)
            self.path, self.fallback = self.fallback, None
            return f"{problem}; rows go to {self.path}"
        return None

    def _wanted(self, rows: list[Mapping[str, object]]) -> list[str]:
        grown = (key for row in rows for key in row if key not in self.columns)
        return [*self.columns, *(dict.fromkeys(grown) if self.grow else ())]

    def _append(self, path: Path, rows: list[Mapping[str, object]]) -> None:
        wanted = self._wanted(rows)
        with self._lock(path):
            header, lead, as_left = self._header(path, wanted)
            handle = self._handles.get(path) if as_left else None
            handle = handle or self._handle(path)
            try:
                handle.write(lead)
                writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
                for row in rows:
                    writer.writerow({k: "" if v is None else v for k, v in row.items()})
                handle.flush()
            except BaseException:
                self._drop_handle(path)  # what it holds unwritten must not come later
                raise
            self._written[path] = _Written(header, _identity(os.fstat(handle.fileno())))

    def _handle(self, path: Path) -> TextIO:
        """The open handle of the file the path names now (called under the lock, after
        `_header`, which may have put a widened file in its place), when the file is not
        as this writer left it."""
        handle = self._handles.get(path)
        if handle is not None:
            try:
                now = path.stat()
            except FileNotFoundError:
                now = None
            held = os.fstat(handle.fileno())
            if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                self._drop_handle(path)
                handle = None
        if handle is None:
            handle = self._handles[path] = path.open("a", newline="", **_ENCODING)
        return handle

    def _drop_handle(self, path: Path) -> None:
        handle = self._handles.pop(path, None)
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()

    def close(self) -> None:
        """Closes the files' handles and their locks' (a later append opens them again)."""
        for path in list(self._handles):
            self._drop_handle(path)
        for lock in self._locks.values():
            lock.close()

    def _header(self, path: Path, wanted: list[str]) -> tuple[list[str], str, bool]:
        """The header to write under, what goes before our rows (a newline the last row
        lacks), and whether the file is as this writer left it. Called under the lock.
        The file is read only when it is not: another session (or tool) may have written
        or widened it."""
        known = self._written.get(path)
        try:
            now: _Identity | None = _identity(path.stat())
        except FileNotFoundError:
            now = None
        as_left = known is not None and now == known.identity
        if known is not None and as_left:
            existing: list[str] | None = known.header
            lead = ""  # our own last row ended with its newline
        else:
            existing = _existing_header(path) if now is not None else None
            lead = "" if existing is None or _ends_with_newline(path) else "\n"
        if existing is None:
            return wanted, _header_line(wanted), False
        if "model" in wanted and not names_perf_columns(existing):
            raise NotAPerfCsv(NOT_A_PERF_CSV)  # rewriting it under our header loses it
        missing = [column for column in wanted if column not in existing]
        if missing:
            _widen(path, existing + missing)
            lead = ""  # the rewritten file's rows all end with their newline
        return existing + missing, lead, as_left and not missing


# (device, inode, size, mtime in ns): a file this writer left is still as it left it.
_Identity = tuple[int, int, int, int]


def _identity(facts: os.stat_result) -> _Identity:
    return (facts.st_dev, facts.st_ino, facts.st_size, facts.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class _Written:
    header: list[str]
    identity: _Identity


def _header_line(header: list[str]) -> str:
    """The header row as csv.writer writes it (a name with a comma quoted)."""
    text = io.StringIO(newline="")
    csv.writer(text).writerow(header)
    return text.getvalue()


def _seconds(value: float | None) -> str:
    return f"{value:.2f}" if value else ""


def _number(value: float | None) -> str:
    return "" if value is None else exact_number(value)


def perf_rows(
    record: TestRecord, *, machine: str, git_commit: str = "", build_number: str = ""
) -> list[dict[str, object]]:
    """The perf.csv rows of one test: one per result (a failed or skipped test has one)."""
    facts, image, data = record.facts, record.image, record.data
    per_node = len(record.gpus) if record.gpus else max(facts.n_gpus, 0)
    # A backend that ran the test over several nodes says so in its properties (slurm).
    nodes_text = str(record.properties.get("nnodes", "1"))
    nnodes = int(nodes_text) if nodes_text.isdigit() and int(nodes_text) > 0 else 1
    common: dict[str, object] = {
        "n_gpus": per_node * nnodes,
        "nnodes": nnodes,
        "gpus_per_node": per_node,
        "training_precision": facts.training_precision,
        "pipeline": "",
        "args": facts.args,
        "tags": ",".join(facts.tags),
        "docker_file": facts.docker_file,
        "base_docker": image.base_docker if image else "",
        "docker_sha": image.docker_sha if image else "",
        "docker_image": facts.docker_image,
        "git_commit": facts.git_commit or git_commit,
        "machine_name": record.host or machine,
        "deployment_type": "local" if record.backend == "docker" else record.backend,
        "launcher": record.properties.get("launcher") or facts.launcher,
        "gpu_architecture": facts.gpu_architecture,
        "build_duration": _seconds(image.build_duration if image else None),
        "test_duration": _seconds(record.duration),
        "dataname": facts.dataname,
        "data_provider_type": facts.data_provider,
        "data_size": human_size(data.size_bytes) if data else "",
        # 0.000: the copy was there already (another test, worker or session fetched it).
        "data_download_duration": (
            f"{data.download_s:.3f}" if data and data.download_s is not None else ""
        ),
        "build_number": build_number,
        "additional_docker_run_options": "",
    }
    return [
        {
            **common,
            "model": row.perf_model or row.name,
            "performance": row.shown_performance,
            "metric": row.metric,
            "relative_change": _number(row.relative_change),
            "status": row.status.value,
            **{key: value for key, value in row.extra.items() if key not in PERF_SUPER_COLUMNS},
        }
        for row in record.rows
    ]


def perf_super_rows(record: TestRecord, perf: list[dict[str, object]]) -> list[dict[str, object]]:
    """perf_super.csv rows: the record's perf.csv rows `perf` with `configs` and
    `multi_results` (see the module's docstring)."""
    return [
        {
            **{column: row.get(column, "") for column in PERF_COLUMNS},
            "configs": "",
            "multi_results": json.dumps(dict(result.extra)) if result.extra else "",
            **dict.fromkeys(SPREAD_COLUMNS, ""),
            **result.spread(),
            "verdict": result.comparison.line if result.comparison else "",
        }
        for row, result in zip(perf, record.rows, strict=True)
    ]
