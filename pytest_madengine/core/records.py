"""What one finished test or build leaves: a typed record that every report is written
from, and the pure functions that make one (the runner, the session and the plugin all
make their records here).

A record crosses from an xdist worker to the controller as a plain dict (`to_dict`,
`from_dict`), so perf.csv, the summary, JUnit properties and user hooks all read the
same typed facts, never strings parsed back. `TestRecord` and `BuildRecord` are the two
kinds of `Record`; they share `RecordBase` for what they do alike.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from pytest_madengine.contract import ImageFacts as ImageFacts  # re-exported
from pytest_madengine.contract import RunOutcome
from pytest_madengine.core.verdicts import Outcome, median_interval, summarize
from pytest_madengine.errors import MadError, NotRun
from pytest_madengine.units import exact_number

Redact = Callable[[str], str]
R = TypeVar("R", bound="RecordBase")


def _flag(value: object) -> str:
    return "true" if value else "false"


def _shared(text: str) -> str:
    """One copy of a JUnit property's value that many tests share (a metric, a host, an
    image, `0.00`): pytest's JUnit XML keeps every test's values to the session's end,
    and a fleet's 10,000 tests held ~8 copies each of the same few texts."""
    # A third party's backend may give a property that is no str: pytest str()s it.
    return sys.intern(text) if type(text) is str else text


# JUnit properties whose values come from a small set (flags, hosts, metrics, images):
# one (name, value) pair each, shared by every test that has it, as pytest keeps every
# test's pairs (item, reports) to the end. At most SHARED_PAIRS of them are kept.
_BOUNDED = frozenset({
    "status", "metric", "image", "docker_sha", "image_built", "image_pulled",
    "build_duration", "gpus", "host", "test_duration", "data_name", "data_provider",
    "data_source", "data_size", "data_download_duration", "data_fetched",
})  # fmt: skip
SHARED_PAIRS = 4096
_pairs: dict[tuple[str, str], tuple[str, str]] = {}


def _shared_pairs(properties: list[tuple[str, str]]) -> list[tuple[str, str]]:
    shared = []
    for pair in properties:
        if pair[0] in _BOUNDED:
            known = _pairs.get(pair)
            if known is None and len(_pairs) < SHARED_PAIRS:
                known = _pairs.setdefault(pair, pair)
            pair = known or pair
        shared.append(pair)
    return shared


class Status(str, enum.Enum):
    """A result's status, spelled as perf.csv spells it."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class Comparison:
    """A result judged against its history (--mad-compare, core/compare.py)."""

    outcome: str  # an Outcome's value (`regression`...), or `not compared`
    line: str  # the verdict in one line: the change, its interval, the history used
    history: tuple[float, ...] = ()  # the history's medians, oldest first
    current: float | None = None  # the current median

    @property
    def fails(self) -> bool:
        return self.outcome == Outcome.REGRESSION.value


@dataclass(frozen=True)
class ResultRow:
    """One measured (or failed) result: a perf.csv row and a line of the summary."""

    name: str  # the test's name, with `_<row model>` for a multiple_results row
    status: Status
    performance: float | None = None
    metric: str = ""
    relative_change: float | None = None
    reason: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # more multiple_results columns
    text: str | None = None  # a value that is no number, as the CSV wrote it
    perf_model: str = ""  # perf.csv's `model`: `<model>` or `<model>_<row model>`
    baseline_note: str | None = None  # why no baseline was compared with, when one was there
    samples: tuple[float, ...] = ()  # each repetition's value (--mad-repeat); performance: median
    comparison: Comparison | None = None  # the verdict against its history (--mad-compare)

    @property
    def shown_performance(self) -> str:
        """The value as perf.csv and JUnit write it: a number compact, a text as written."""
        if self.performance is not None:
            return exact_number(self.performance)
        return self.text or ""

    def spread(self) -> dict[str, str]:
        """The repetitions as text: samples, CV and a 95% interval of the median (empty
        for a single run); the JUnit properties, perf_super.csv columns and summary keys."""
        if len(self.samples) < 2:
            return {}
        _, cv = summarize(self.samples)
        interval = median_interval(self.samples)
        return {
            "samples": " ".join(exact_number(value) for value in self.samples),
            "cv": "" if cv is None else f"{cv * 100:.2f}%",
            "ci95": "" if interval is None else f"{interval[0]:g}..{interval[1]:g}",
        }


@dataclass(frozen=True)
class ModelFacts:
    """What perf.csv says of the model and the test, whatever became of the run."""

    model: str
    n_gpus: int  # as the entry asks; -1: all
    args: str = ""
    tags: tuple[str, ...] = ()
    docker_file: str = ""
    docker_image: str = ""
    training_precision: str = ""
    gpu_architecture: str = ""
    dataname: str = ""
    data_provider: str = ""
    git_commit: str = ""  # a `url` model's cloned commit, over the tree's
    launcher: str = ""


@dataclass(frozen=True)
class DataFacts:
    """What became of a test's dataset (`data` of its models.json entry)."""

    name: str  # the data.json entry
    provider: str = ""  # the provider that served it; "" when none did
    source: str = ""  # where it came from: a path, s3://..., user@host:port:/path
    size_bytes: int | None = None  # of a fetched copy (a local path is not measured)
    download_s: float | None = None  # None: nothing to download; 0.0: a copy was there
    fetched: bool = False  # this test downloaded it
    problem: str = ""  # why the model ran without its data

    def junit_properties(self) -> list[tuple[str, str]]:
        properties = [
            ("data_name", _shared(self.name)),
            ("data_provider", _shared(self.provider)),
            ("data_source", _shared(self.source)),
            ("data_size", "" if self.size_bytes is None else _shared(str(self.size_bytes))),
            ("data_download_duration",
             "" if self.download_s is None else _shared(f"{self.download_s:.3f}")),
            ("data_fetched", _flag(self.fetched)),
        ]  # fmt: skip
        if self.problem:
            properties.append(("data_problem", self.problem))
        return _shared_pairs(properties)


class Record(Protocol):
    """What every record says, whatever it is of: reports and hooks read these."""

    name: str
    status: Status
    reason: str | None  # one line; None on success
    detail: str  # a log's tail, shown under the reason

    @property
    def failure_text(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...

    def junit_properties(self) -> list[tuple[str, str]]: ...


class RecordBase:
    """What the two kinds of record do alike: the failure text, and the plain dict that
    carries them across xdist (each kind names how its nested fields come back)."""

    # A field's plain value -> its typed one, for the fields that are not plain.
    _REVIVE: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    reason: str | None
    detail: str

    @property
    def failure_text(self) -> str:
        reason = self.reason or "failed"
        return f"{reason}\n{self.detail}".rstrip() if self.detail else reason

    def to_dict(self) -> dict[str, Any]:
        # The subclasses are dataclasses; this mixin is not, so mypy cannot tell.
        plain: dict[str, Any] = _plain(self)
        return plain

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """The record of `to_dict`'s dict; keys it does not know are left out."""
        known = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]  # as above
        revive = cls._REVIVE
        return cls(**{
            key: revive[key](value) if key in revive and value is not None else value
            for key, value in data.items() if key in known
        })  # fmt: skip


def _image(value: Mapping[str, Any]) -> ImageFacts | None:
    return ImageFacts(**value) if value else None


def _comparison(value: Mapping[str, Any] | None) -> Comparison | None:
    return None if value is None else Comparison(**{**value, "history": tuple(value["history"])})


def _row(row: Mapping[str, Any]) -> ResultRow:
    return ResultRow(**{
        **row, "status": Status(row["status"]), "samples": tuple(row.get("samples", ())),
        "comparison": _comparison(row.get("comparison")),
    })  # fmt: skip


@dataclass(frozen=True)
class TestRecord(RecordBase):
    """A finished test: its status and one-line reason, results, image and placement."""

    __test__ = False  # not a pytest test class, whatever its name

    name: str  # the test name: `dummy`, `dummy3[batch_size=512]`
    status: Status
    facts: ModelFacts
    reason: str | None = None  # one line; None on success
    detail: str = ""  # the log's tail and such, shown under the reason
    rows: tuple[ResultRow, ...] = ()
    image: ImageFacts | None = None
    backend: str = "docker"
    host: str | None = None
    gpus: tuple[int, ...] = ()
    started_at: float | None = None  # epoch seconds
    ended_at: float | None = None
    log_path: str | None = None
    retried_after: tuple[str, ...] = ()  # why earlier placements were given up
    properties: Mapping[str, str] = field(default_factory=dict)  # backend facts for JUnit
    data: DataFacts | None = None  # None: the model names no data

    _REVIVE: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "status": Status,
        "facts": lambda facts: ModelFacts(**{**facts, "tags": tuple(facts.get("tags", ()))}),
        "rows": lambda rows: tuple(_row(row) for row in rows),
        "image": _image,
        "gpus": tuple,
        "retried_after": tuple,
        "properties": dict,
        "data": lambda data: DataFacts(**data) if data else None,
    }

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    def junit_properties(self) -> list[tuple[str, str]]:
        """The test's JUnit properties (they reach the controller's XML under xdist)."""
        main = self.rows[0] if self.rows else None
        image = self.image
        properties = [
            ("status", self.status.value),
            ("performance", "" if main is None else main.shown_performance),
            ("metric", _shared(main.metric) if main else ""),
            ("image", _shared(image.name) if image else ""),
            ("docker_sha", _shared(image.docker_sha) if image else ""),
            ("image_built", _flag(image and image.built)),
            ("image_pulled", _flag(image and image.pulled)),
            ("build_duration", _shared(f"{image.build_duration if image else 0.0:.2f}")),
            ("gpus", _shared(",".join(str(index) for index in self.gpus))),
        ]
        if self.host is not None:
            properties.append(("host", _shared(self.host)))
        if self.duration is not None:
            properties += [
                ("test_duration", _shared(f"{self.duration:.2f}")),
                ("started_at", f"{self.started_at:.3f}"),
                ("ended_at", f"{self.ended_at:.3f}"),
            ]
        if self.log_path:
            properties.append(("log_path", self.log_path))
        properties += sorted((name, _shared(value)) for name, value in self.properties.items())
        if self.data is not None:
            properties += self.data.junit_properties()
        if main is not None:
            properties += main.spread().items()
        several = len(self.rows) > 1  # multiple_results: each verdict names its row
        verdicts = [f"{row.name}: {row.comparison.line}" if several else row.comparison.line
                    for row in self.rows if row.comparison]  # fmt: skip
        if verdicts:
            properties.append(("verdict", "; ".join(verdicts)))
        if self.reason:
            properties.append(("failure_reason", self.reason))
        notes = [row.baseline_note for row in self.rows if row.baseline_note]
        if notes:
            properties.append(("baseline_note", "; ".join(notes)))
        if self.retried_after:
            properties.append(("retried_after", "; ".join(self.retried_after)))
        return _shared_pairs(properties)


@dataclass(frozen=True)
class BuildRecord(RecordBase):
    """A finished build item: the image, and where it was pushed (or why it was not)."""

    __test__ = False  # not a pytest test class

    name: str  # the image name
    model: str
    status: Status
    reason: str | None = None  # one line; None on success
    detail: str = ""  # the build log's tail
    dockerfile: str = ""  # relative to the MAD root
    image: ImageFacts | None = None
    registry: str | None = None
    reference: str | None = None  # where it was to be pushed
    pushed: bool = False
    digest: str = ""
    started_at: float | None = None
    ended_at: float | None = None

    _REVIVE: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"status": Status, "image": _image}

    @property
    def registry_image(self) -> str | None:
        """What a run phase pulls: the reference, once it is pushed."""
        return self.reference if self.pushed else None

    def junit_properties(self) -> list[tuple[str, str]]:
        image = self.image
        properties = [
            ("status", self.status.value),
            ("image", self.name),
            ("docker_sha", image.docker_sha if image else ""),
            ("image_built", str(bool(image and image.built)).lower()),
            ("build_duration", f"{image.build_duration if image else 0.0:.2f}"),
        ]
        if image and image.log_path:
            properties.append(("build_log", image.log_path))
        if self.reference:
            properties.append(("registry_image", self.reference))
            properties.append(("pushed", str(self.pushed).lower()))
        if self.digest:
            properties.append(("digest", self.digest))
        if self.reason:
            properties.append(("failure_reason", self.reason))
        return properties


# ---- making records: pure functions, the one place a record is put together ----


def _keep(text: str) -> str:
    return text


@dataclass(frozen=True)
class Subject:
    """What a test's record says of it whatever became of the run."""

    name: str  # the test name
    facts: ModelFacts
    backend: str


@dataclass(frozen=True)
class RunFacts:
    """How far a test got: its image, placement, times, log and data (each empty until
    the test got there), and the placements given up before."""

    image: ImageFacts | None = None
    host: str | None = None
    gpus: tuple[int, ...] = ()
    started_at: float | None = None
    ended_at: float | None = None
    log_path: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    data: DataFacts | None = None
    retried_after: tuple[str, ...] = ()


NOT_STARTED = RunFacts()


def ran_from(outcome: RunOutcome, before: RunFacts) -> RunFacts:
    """The facts of a finished run: the backend's outcome over what was known before
    (the GPUs too, when its scheduler chose them)."""
    return dataclasses.replace(
        before,
        host=outcome.host,
        gpus=outcome.gpus if outcome.gpus is not None else before.gpus,
        started_at=outcome.started_at,
        ended_at=outcome.ended_at,
        log_path=str(outcome.log_path),
        properties=dict(outcome.properties),
    )


def _record(
    subject: Subject, status: Status, reason: str | None, rows: tuple[ResultRow, ...],
    ran: RunFacts, detail: str = "",
) -> TestRecord:  # fmt: skip
    placed = {field.name: getattr(ran, field.name) for field in dataclasses.fields(ran)}
    return TestRecord(subject.name, status, subject.facts, reason, detail, rows,
                      backend=subject.backend, **placed)  # fmt: skip


def _one_row(subject: Subject, status: Status, reason: str) -> tuple[ResultRow, ...]:
    return (ResultRow(subject.name, status, reason=reason, perf_model=subject.facts.model),)


def skipped(subject: Subject, reason: str, ran: RunFacts = NOT_STARTED) -> TestRecord:
    """A test that did not run (or ran without its model): one SKIPPED row."""
    rows = _one_row(subject, Status.SKIPPED, reason)
    return _record(subject, Status.SKIPPED, reason, rows, ran)


def failed(
    subject: Subject, reason: str, ran: RunFacts = NOT_STARTED, detail: str = "",
    redact: Redact = _keep,
) -> TestRecord:  # fmt: skip
    """A failed test: one FAILURE row with the one-line reason (redacted: an engine's
    message may quote a secret) and `detail` under it."""
    reason, detail = redact(reason), redact(detail)
    rows = _one_row(subject, Status.FAILURE, reason)
    return _record(subject, Status.FAILURE, reason, rows, ran, detail)


def record_from_error(
    subject: Subject, error: MadError, ran: RunFacts, redact: Redact = _keep
) -> TestRecord:
    """The record of a test that a step or its backend ended early: NotRun skips it (it
    held no GPUs and used no data), any other MadError fails it with its first line as
    the reason and the rest as detail."""
    if isinstance(error, NotRun):
        return skipped(subject, str(error), RunFacts(image=ran.image, host=ran.host))
    reason, _, detail = str(error).partition("\n")
    return failed(subject, reason, ran, detail, redact)


def record_from_results(
    subject: Subject, rows: tuple[ResultRow, ...], misses: tuple[str, ...], ran: RunFacts
) -> TestRecord:
    """A measured test: SUCCESS, or FAILURE naming the expectations it missed."""
    status = Status.FAILURE if misses else Status.SUCCESS
    return _record(subject, status, "; ".join(misses) or None, rows, ran)


def build_failed(
    record: BuildRecord, reason: str, detail: str = "", redact: Redact = _keep,
    ended_at: float | None = None,
) -> BuildRecord:  # fmt: skip
    """The build record ended as FAILURE, its reason and detail redacted."""
    return dataclasses.replace(
        record, status=Status.FAILURE, reason=redact(reason), detail=redact(detail),
        ended_at=ended_at,
    )  # fmt: skip


def build_skipped(record: BuildRecord, reason: str, ended_at: float | None = None) -> BuildRecord:
    """The build record ended as SKIPPED: nothing was built."""
    return dataclasses.replace(record, status=Status.SKIPPED, reason=reason, ended_at=ended_at)


def _plain(value: Any) -> Any:
    """Enums as their values, dataclasses as dicts of their fields and tuples as lists:
    what JSON and execnet carry. One walk (asdict and then this walked twice, and
    deep-copied every leaf: a fleet's session makes a dict per test)."""
    if isinstance(value, enum.Enum):  # first: Status is a str too
        return value.value
    if isinstance(value, str | int | float | None):
        return value
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    return value


@functools.cache
def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(each.name for each in dataclasses.fields(kind))
