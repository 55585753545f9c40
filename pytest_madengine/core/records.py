"""What one finished test leaves: a typed record that every report is written from.

A record crosses from an xdist worker to the controller as a plain dict (`to_dict`,
`from_dict`), so perf.csv, the summary, JUnit properties and user hooks all read the
same typed facts, never strings parsed back.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_madengine.contract import ImageFacts  # re-exported: records name it


class Status(str, enum.Enum):
    """A result's status, spelled as perf.csv spells it."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    SKIPPED = "SKIPPED"


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

    @property
    def shown_performance(self) -> str:
        """The value as perf.csv and JUnit write it: a number compact, a text as written."""
        if self.performance is not None:
            return f"{self.performance:g}"
        return self.text or ""


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
            ("data_name", self.name),
            ("data_provider", self.provider),
            ("data_source", self.source),
            ("data_size", "" if self.size_bytes is None else str(self.size_bytes)),
            ("data_download_duration",
             "" if self.download_s is None else f"{self.download_s:.3f}"),
            ("data_fetched", str(self.fetched).lower()),
        ]  # fmt: skip
        if self.problem:
            properties.append(("data_problem", self.problem))
        return properties


@dataclass(frozen=True)
class TestRecord:
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

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    @property
    def failure_text(self) -> str:
        reason = self.reason or "failed"
        return f"{reason}\n{self.detail}".rstrip() if self.detail else reason

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TestRecord:
        image = data.get("image")
        data_facts = data.get("data")
        return cls(
            name=data["name"],
            status=Status(data["status"]),
            facts=ModelFacts(**{**data["facts"], "tags": tuple(data["facts"].get("tags", ()))}),
            reason=data.get("reason"),
            detail=data.get("detail", ""),
            rows=tuple(
                ResultRow(**{**row, "status": Status(row["status"])})
                for row in data.get("rows", ())
            ),
            image=ImageFacts(**image) if image else None,
            backend=data.get("backend", "docker"),
            host=data.get("host"),
            gpus=tuple(data.get("gpus", ())),
            started_at=data.get("started_at"),
            ended_at=data.get("ended_at"),
            log_path=data.get("log_path"),
            retried_after=tuple(data.get("retried_after", ())),
            properties=dict(data.get("properties", {})),
            data=DataFacts(**data_facts) if data_facts else None,
        )

    def junit_properties(self) -> list[tuple[str, str]]:
        """The test's JUnit properties (they reach the controller's XML under xdist)."""
        main = self.rows[0] if self.rows else None
        image = self.image
        properties = [
            ("status", self.status.value),
            ("performance", "" if main is None else main.shown_performance),
            ("metric", main.metric if main else ""),
            ("image", image.name if image else ""),
            ("docker_sha", image.docker_sha if image else ""),
            ("image_built", str(bool(image and image.built)).lower()),
            ("image_pulled", str(bool(image and image.pulled)).lower()),
            ("build_duration", f"{image.build_duration if image else 0.0:.2f}"),
            ("gpus", ",".join(str(index) for index in self.gpus)),
        ]
        if self.host is not None:
            properties.append(("host", self.host))
        if self.duration is not None:
            properties += [
                ("test_duration", f"{self.duration:.2f}"),
                ("started_at", f"{self.started_at:.3f}"),
                ("ended_at", f"{self.ended_at:.3f}"),
            ]
        if self.log_path:
            properties.append(("log_path", self.log_path))
        properties += sorted(self.properties.items())
        if self.data is not None:
            properties += self.data.junit_properties()
        if self.reason:
            properties.append(("failure_reason", self.reason))
        notes = [row.baseline_note for row in self.rows if row.baseline_note]
        if notes:
            properties.append(("baseline_note", "; ".join(notes)))
        if self.retried_after:
            properties.append(("retried_after", "; ".join(self.retried_after)))
        return properties


def _plain(value: Any) -> Any:
    """Enums as their values and tuples as lists: what JSON and execnet carry."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
