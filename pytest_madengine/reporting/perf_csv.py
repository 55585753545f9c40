"""madengine-compatible perf.csv: appended one row per result, header written once."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path

from pytest_madengine.core.records import TestRecord

PERF_COLUMNS = (
    "model", "n_gpus", "nnodes", "gpus_per_node", "training_precision", "pipeline", "args",
    "tags", "docker_file", "base_docker", "docker_sha", "docker_image", "git_commit",
    "machine_name", "deployment_type", "launcher", "gpu_architecture", "performance", "metric",
    "relative_change", "status", "build_duration", "test_duration", "dataname",
    "data_provider_type", "data_size", "data_download_duration", "build_number",
    "additional_docker_run_options",
)  # fmt: skip


def _existing_header(path: Path) -> list[str] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open(newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), None)


class PerfCsv:
    """Appends rows, keeping the column order of a perf.csv that is already there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._header: list[str] | None = None

    def append(self, rows: Iterable[Mapping[str, object]]) -> None:
        rows = list(rows)
        if not rows:
            return
        if self._header is None:
            self._header = _existing_header(self.path) or list(PERF_COLUMNS)
            if not self.path.exists() or self.path.stat().st_size == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("w", newline="", encoding="utf-8") as handle:
                    csv.writer(handle).writerow(self._header)
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._header, extrasaction="ignore")
            for row in rows:
                writer.writerow({key: "" if value is None else value for key, value in row.items()})


def _seconds(value: float | None) -> str:
    return f"{value:.2f}" if value else ""


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def perf_rows(
    record: TestRecord, *, machine: str, git_commit: str = "", build_number: str = ""
) -> list[dict[str, object]]:
    """The perf.csv rows of one test: one per result (a failed or skipped test has one)."""
    facts, image = record.facts, record.image
    n_gpus = len(record.gpus) if record.gpus else max(facts.n_gpus, 0)
    common: dict[str, object] = {
        "n_gpus": n_gpus,
        "nnodes": 1,
        "gpus_per_node": n_gpus,
        "training_precision": facts.training_precision,
        "pipeline": "",
        "args": facts.args,
        "tags": ",".join(facts.tags),
        "docker_file": facts.docker_file,
        "base_docker": image.base_docker if image else "",
        "docker_sha": image.docker_sha if image else "",
        "docker_image": facts.docker_image,
        "git_commit": git_commit,
        "machine_name": record.host or machine,
        "deployment_type": "local" if record.backend == "docker" else record.backend,
        "launcher": "",
        "gpu_architecture": facts.gpu_architecture,
        "build_duration": _seconds(image.build_duration if image else None),
        "test_duration": _seconds(record.duration),
        "dataname": facts.dataname,
        "data_provider_type": facts.data_provider,
        "data_size": "",
        "data_download_duration": "",
        "build_number": build_number,
        "additional_docker_run_options": "",
    }
    return [
        {
            **common,
            "model": row.name,
            "performance": _number(row.performance),
            "metric": row.metric,
            "relative_change": _number(row.relative_change),
            "status": row.status.value,
        }
        for row in record.rows
    ]
