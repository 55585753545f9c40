"""madengine-compatible perf.csv: appended one row per result, header written once."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path

from pytest_madengine.benchmark import BenchmarkResult
from pytest_madengine.planning import PlannedTest
from pytest_madengine.session import Settings

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
    test: PlannedTest,
    settings: Settings,
    result: BenchmarkResult | None,
    *,
    machine: str,
    git_commit: str = "",
    build_number: str = "",
) -> list[dict[str, object]]:
    """The perf.csv rows of one test: one per result, or one SKIPPED row without a result."""
    model = test.model
    context = settings.effective_context
    n_gpus = len(result.gpus) if result and result.gpus else max(model.n_gpus, 0)
    args = " ".join(
        part for part in (context.get("model_args") or model.args, test.selected.extra_args) if part
    )
    image = result.image if result else None
    outcome = result.outcome if result else None
    common: dict[str, object] = {
        "n_gpus": n_gpus,
        "nnodes": 1,
        "gpus_per_node": n_gpus,
        "training_precision": model.training_precision or "",
        "pipeline": "",
        "args": args,
        "tags": ",".join(model.tags),
        "docker_file": test.dockerfile.relpath if test.dockerfile else "",
        "base_docker": image.base_docker if image else "",
        "docker_sha": image.docker_sha if image else "",
        "docker_image": test.image or "",
        "git_commit": git_commit,
        "machine_name": outcome.host if outcome else machine,
        "deployment_type": "local",
        "launcher": "",
        "gpu_architecture": context.gpu_architecture or "",
        "build_duration": _seconds(result.build_duration if result else None),
        "test_duration": _seconds(outcome.duration if outcome else None),
        "dataname": model.data or "",
        "data_provider_type": "local" if model.data else "",
        "data_size": "",
        "data_download_duration": "",
        "build_number": build_number,
        "additional_docker_run_options": "",
    }
    if result is None:
        return [{**common, "model": test.name, "status": "SKIPPED"}]
    return [
        {
            **common,
            "model": row.name,
            "performance": _number(row.performance),
            "metric": row.metric,
            "relative_change": _number(row.relative_change),
            "status": row.status,
        }
        for row in result.rows
    ]
