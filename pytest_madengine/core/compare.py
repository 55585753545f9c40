"""--mad-compare: where a result's history comes from, and the verdict on it.

A source gives, for one result (model, args, docker_file, gpu_architecture, metric),
the comparable earlier points, oldest first; `compare` feeds them with the current
repetitions to `judge_history` (core/verdicts.py) and keeps what the reports show: the
outcome, its one line, and the series it was judged on.

Three sources, one shape (`ComparisonSource`):

- a perf.csv (ours, madengine's, or perf_super.csv, whose `samples` are used): each
  SUCCESS row of the result is one point. The file is read once, before any test runs;
  an xdist worker reads the same bytes the controller read (`upto`), so the rows this
  session appends to it are never its own history.
- `history[:N]`: the results history (core/history.py), the last N earlier sessions
  (all by default), never the current one.
- `SESSION`: one session of the history; its repetitions are the points, so a
  `--mad-repeat 5` session is enough history on its own.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pytest_madengine.core.records import Comparison
from pytest_madengine.core.results import ResultError, success_rows
from pytest_madengine.core.verdicts import HistoryPoint, ResultKey, judge_history
from pytest_madengine.errors import MadError, UsageProblem

OPTION = "--mad-compare"
HISTORY_WORD = "history"
NOT_COMPARED = "not compared"
_LAST = re.compile(r"history:(?P<count>.*)", re.DOTALL)


class ComparisonSource(Protocol):
    """Earlier comparable results, oldest first; never those of `current_session`."""

    @property
    def label(self) -> str: ...  # what the verdict line names as its history

    def points(self, key: ResultKey, current_session: str) -> list[HistoryPoint]: ...


# ---- a perf.csv ----


def _usable(value: float) -> bool:
    """A verdict is about ratios: its values are positive, finite numbers."""
    return value > 0 and value != float("inf")


def usable_point(median: float, samples: Sequence[float]) -> HistoryPoint | None:
    """The point a verdict can use: None when the median is no usable value; its
    samples only when all are (any source: a perf.csv, a history another tool wrote)."""
    if not _usable(median):
        return None
    return HistoryPoint(median, tuple(samples) if all(map(_usable, samples)) else ())


def _samples(text: str) -> tuple[float, ...]:
    """perf_super.csv's `samples` (space-separated values); () when one is no number."""
    try:
        return tuple(float(word) for word in text.split())
    except ValueError:
        return ()


def _point(row: Mapping[str, str]) -> HistoryPoint | None:
    """A row's point: its performance (and samples), None when it is no usable value."""
    try:
        median = float(row["performance"])
    except ValueError:
        return None
    return usable_point(median, _samples(row.get("samples", "")))


def _key_of(row: Mapping[str, str]) -> ResultKey:
    return ResultKey(
        row["model"], row.get("args", ""), row.get("docker_file", ""),
        row.get("gpu_architecture", ""), row.get("metric", ""),
    )  # fmt: skip


@dataclass(frozen=True)
class PerfCsvSource:
    """Each SUCCESS row of a perf.csv is one point of its result's history."""

    path: Path
    upto: int | None  # the bytes read: the file as it was when the session started
    by_key: Mapping[ResultKey, tuple[HistoryPoint, ...]] = field(repr=False)
    name: str = ""  # as the user gave it (the path when empty)

    @property
    def label(self) -> str:
        return self.name or str(self.path)

    def points(self, key: ResultKey, current_session: str) -> list[HistoryPoint]:
        return list(self.by_key.get(key, ()))


def load_perf_csv_source(
    path: Path, upto: int | None = None, written_here: bool = False
) -> PerfCsvSource:
    """The points of a perf.csv; `upto` None: all of a regular file as it is now.
    `written_here`: the session writes the file, so before its first session it is
    missing, an empty history (any other missing file is a mistyped name)."""
    if upto is None and path.is_file():
        upto = path.stat().st_size  # rows appended from now on are this session's
    if upto == 0 or (written_here and upto is None and not path.exists()):
        return PerfCsvSource(path, 0, {})
    found: dict[ResultKey, list[HistoryPoint]] = {}
    for row in success_rows(path, OPTION, upto):
        point = _point(row)
        if point is not None:
            found.setdefault(_key_of(row), []).append(point)
    return PerfCsvSource(path, upto, {key: tuple(points) for key, points in found.items()})


# ---- the results history ----


@dataclass(frozen=True)
class HistorySource:
    """The last `last` earlier sessions of the results history (all: None), or the
    repetitions of one session of it."""

    history: Any = field(repr=False)  # core.history.History, imported only when used
    last: int | None = None
    session: str | None = None

    @property
    def label(self) -> str:
        if self.session is not None:
            return f"session {self.session}"
        return HISTORY_WORD if self.last is None else f"{HISTORY_WORD}:{self.last}"

    def points(self, key: ResultKey, current_session: str) -> list[HistoryPoint]:
        try:
            if self.session is None:
                found = self.history.points(key, limit=self.last, exclude_session=current_session)
            else:
                found = self.history.session_points(key, self.session)
        except Exception as exc:  # a database that went away: the verdict says so
            raise MadError(f"the results history failed: {type(exc).__name__}: {exc}") from None
        # A value no verdict can use (0 from a broken run, another writer's NaN) is no
        # point, as in a perf.csv.
        usable = [p for p in (usable_point(p.median, p.samples) for p in found) if p]
        if self.session is None:  # a history's sessions are its points, with their samples
            return usable
        # One session's repetitions are its points.
        return [HistoryPoint(value) for point in usable
                for value in (point.samples or (point.median,))]  # fmt: skip


def _open_history(url: str) -> Any:
    # Imported only when a history is compared with: SQLAlchemy's import costs start-up.
    from pytest_madengine.core.history import History

    try:
        return History(url)
    except Exception as exc:  # SQLAlchemy's errors, a bad URL: a usage error now
        first = str(exc).partition("\n")[0]
        raise UsageProblem(
            f"{OPTION}: cannot open the results history: {type(exc).__name__}: {first}"
        ) from None


def _history_source(text: str, history_url: str | None) -> HistorySource:
    last = None
    matched = _LAST.fullmatch(text)
    if matched is not None:
        count = matched["count"].strip()
        if not (count.isascii() and count.isdigit()) or int(count) < 1:  # int() takes no "²"
            raise UsageProblem(
                f"{OPTION} {text}: N in history:N must be a whole number from 1, got {count!r}"
            )
        last = int(count)
    return HistorySource(_open_history(_needs(history_url, text)), last=last)


def _session_source(text: str, history_url: str) -> HistorySource:
    history = _open_history(history_url)
    if text not in history.sessions():
        raise UsageProblem(
            f"{OPTION} {text}: neither a file nor a session of the results history"
            " (give history, history:N, a session id or a perf.csv)"
        )
    return HistorySource(history, session=text)


def _names_file(text: str, path: Path) -> bool:
    return path.exists() or text.lower().endswith(".csv") or "/" in text


def parse_compare(
    text: str,
    base_dir: Path,
    history_url: str | None,
    upto: int | None = None,
    written_here: Sequence[Path] = (),
) -> ComparisonSource:
    """The source `--mad-compare` names: history[:N], a perf.csv, or a session id;
    UsageProblem in one line for anything else. `history_url` None: no history;
    `written_here`: the CSV files the session appends to (see load_perf_csv_source)."""
    text = text.strip()
    if not text:
        raise UsageProblem(f"{OPTION}: empty (give history, history:N, a session id or a perf.csv)")
    path = Path(text) if Path(text).is_absolute() else base_dir / text
    if text == HISTORY_WORD or _LAST.fullmatch(text):
        return _history_source(text, history_url)
    if _names_file(text, path):
        try:
            ours = path.resolve() in {written.resolve() for written in written_here}
            source = load_perf_csv_source(path, upto, written_here=ours)
        except ResultError as exc:
            raise UsageProblem(str(exc)) from None
        return dataclasses.replace(source, name=text)
    return _session_source(text, _needs(history_url, text))


def _needs(history_url: str | None, text: str) -> str:
    if history_url is None:
        raise UsageProblem(f"{OPTION} {text}: no results history to compare with")
    return history_url


# ---- the verdict ----


def compare(
    source: ComparisonSource,
    key: ResultKey,
    samples: Sequence[float],
    *,
    tolerance: float,
    higher_is_better: bool,
    current_session: str,
) -> Comparison:
    """The verdict on one result's repetitions against its history in `source`."""
    try:
        history = source.points(key, current_session)
    except MadError as exc:
        return Comparison(NOT_COMPARED, f"{NOT_COMPARED}: {exc}")
    medians = tuple(point.median for point in history)
    if not samples or any(not value > 0 for value in samples):
        shown = " ".join(f"{value:g}" for value in samples)
        return Comparison(NOT_COMPARED, f"{NOT_COMPARED}: verdicts need positive values,"
                          f" got {shown or 'none'}", medians)  # fmt: skip
    verdict = judge_history(samples, history, tolerance=tolerance,
                            higher_is_better=higher_is_better)  # fmt: skip
    return Comparison(
        verdict.outcome.value, f"{verdict.line}; history: {source.label}", medians,
        statistics.median(samples),
    )  # fmt: skip
