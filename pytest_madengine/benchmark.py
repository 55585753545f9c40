"""One benchmark from image to verdict: build or reuse, run, parse, judge, report rows.

Every way a benchmark can fail ends here as a `BenchmarkResult` with a one-line reason
(and the log's tail as detail), never as an exception, so the caller reports it as a
test failure and the perf.csv row is still written.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_madengine.backends import OutputSink, RunOutcome
from pytest_madengine.backends.docker import EngineError
from pytest_madengine.context import RunContext
from pytest_madengine.credentials import Credentials, registry_of
from pytest_madengine.engines import Engines, HostLost
from pytest_madengine.errors import MadError
from pytest_madengine.gpus import Gpu
from pytest_madengine.hosts import Host
from pytest_madengine.images import BuildError, BuiltImage, ImageBuilder, ImageSpec
from pytest_madengine.manifest import BuildManifest
from pytest_madengine.placement import Placement
from pytest_madengine.planning import PlannedTest
from pytest_madengine.results import (
    Measurement,
    ResultError,
    Verdict,
    find_performance,
    judge,
    parse_multiple_results,
)
from pytest_madengine.runspec import build_run_spec
from pytest_madengine.session import Settings

LOG_TAIL_LINES = 25
SUCCESS, FAILURE, SKIPPED = "SUCCESS", "FAILURE", "SKIPPED"


@dataclass(frozen=True)
class ResultRow:
    """One measured (or failed) result: a perf.csv row and a line of the summary."""

    name: str
    status: str
    performance: float | None = None
    metric: str = ""
    relative_change: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class BenchmarkResult:
    test_name: str
    status: str
    reason: str | None  # one line, None on success
    detail: str = ""  # log tail and such, shown under the reason
    rows: tuple[ResultRow, ...] = ()
    image: BuiltImage | None = None
    outcome: RunOutcome | None = None
    gpus: tuple[int, ...] = ()
    build_duration: float = 0.0

    @property
    def failure_text(self) -> str:
        return f"{self.reason}\n{self.detail}".rstrip() if self.detail else str(self.reason)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log under a heading naming it, read without holding the file."""
    if not path.exists():
        return ""
    with path.open(encoding="utf-8", errors="replace") as handle:
        tail = "".join(deque(handle, maxlen=lines)).rstrip()
    return f"--- last lines of {path} ---\n{tail}" if tail else f"--- {path} is empty ---"


def image_spec(test: PlannedTest, settings: Settings) -> ImageSpec:
    assert test.dockerfile is not None and test.image is not None
    root = settings.root.resolve()
    build_args = {
        str(key): str(value)
        for key, value in settings.effective_context.get("docker_build_arg", {}).items()
    }
    return ImageSpec(test.image, test.dockerfile.path, root / test.model.dockercontext, build_args)


def measure(test: PlannedTest, outcome: RunOutcome) -> list[Measurement]:
    """The results of a finished run: its multiple_results CSV, else its performance line."""
    model = test.model
    if model.multiple_results:
        text = next(iter(outcome.results.values()), None)
        if text is None:
            raise ResultError(f"{model.multiple_results}: multiple_results CSV was not written")
        return parse_multiple_results(text, test.name, model.multiple_results)
    with outcome.log_path.open(encoding="utf-8", errors="replace") as log:
        value, metric = find_performance(log)
    return [Measurement(test.name, value, metric)]


def run_failure(outcome: RunOutcome, timeout_s: float | None) -> str | None:
    if outcome.timed_out:
        return f"timeout after {timeout_s:g} s"
    if outcome.exit_code != 0:
        return f"exit code {outcome.exit_code}"
    return None


def settings_on(settings: Settings, host: Host) -> Settings:
    """The settings as a run on the host sees them: its GPUs, its device root."""
    if host.docker is None and host.gpus == settings.gpus:
        return settings
    context = dict(settings.context.values)
    if host.device_root:
        context["gpu_device_root"] = host.device_root
    if host.architecture:
        context["gpu_architecture"] = host.architecture
    return dataclasses.replace(settings, gpus=host.gpus, context=RunContext(context))


class BenchmarkRunner:
    """Runs planned tests: images from one builder, containers on the placed host."""

    def __init__(
        self,
        settings: Settings,
        builder: ImageBuilder,
        engines: Engines,
        *,
        session_id: str,
        log_dir: Path,
        baseline: Mapping[str, float] | None = None,
        tolerance: float = 0.05,
        timeout_override: int | None = None,
        data_sources: Mapping[str, object] | None = None,
        manifest: BuildManifest | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.settings = settings
        self.builder = builder
        self.engines = engines
        self.session_id = session_id
        self.log_dir = log_dir
        self.baseline = baseline or {}
        self.tolerance = tolerance
        self.timeout_override = timeout_override
        self.data_sources = data_sources or {}
        self.manifest = manifest
        self.credentials = credentials or Credentials()

    def log_path(self, test: PlannedTest) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in test.name)
        return self.log_dir / f"{safe}.log"

    def run(
        self,
        test: PlannedTest,
        test_id: str,
        placement: Placement,
        on_output: OutputSink | None = None,
    ) -> BenchmarkResult:
        """Builds, ships, runs and judges; HostLost when the placed host went away."""
        name = test.name
        gpus, host = placement.gpus, placement.host
        try:
            image = self._image(test, host)
        except BuildError as exc:
            reason, _, detail = str(exc).partition("\n")
            return self._failed(test, reason, detail, gpus)
        except HostLost:
            raise
        except EngineError as exc:
            if not self.engines.answers(host):
                raise HostLost(host, str(exc)) from None
            return self._failed(test, str(exc), "", gpus)
        except MadError as exc:
            return self._failed(test, str(exc), "", gpus)
        try:
            if not image.pulled:
                self.engines.ship(image, host)
            spec = build_run_spec(
                test,
                settings_on(self.settings, host),
                image=image.name,
                gpus=gpus,
                session_id=self.session_id,
                test_id=test_id,
                log_path=self.log_path(test),
                timeout_override=self.timeout_override,
                data_sources=self.data_sources,
            )
            outcome = self.engines.backend(host).run(spec, on_output)
        except HostLost:
            raise
        except EngineError as exc:
            if not self.engines.answers(host):
                raise HostLost(host, str(exc)) from None
            return self._failed(test, str(exc), "", gpus, image)
        except MadError as exc:
            return self._failed(test, str(exc), "", gpus, image)
        tail = log_tail(outcome.log_path)
        failure = run_failure(outcome, spec.timeout_s)
        if failure is not None:
            return self._failed(test, failure, tail, gpus, image, outcome)
        try:
            measurements = measure(test, outcome)
        except ResultError as exc:
            return self._failed(test, str(exc), tail, gpus, image, outcome)
        rows = []
        misses = []
        for measurement in measurements:
            verdict: Verdict = judge(
                measurement.performance,
                measurement.metric,
                test.model.expectation,
                self.baseline.get(measurement.name),
                self.tolerance,
            )
            status = SUCCESS if verdict.passed else FAILURE
            rows.append(
                ResultRow(
                    measurement.name,
                    status,
                    measurement.performance,
                    measurement.metric,
                    verdict.relative_change,
                    verdict.reason,
                )
            )
            if not verdict.passed:
                prefix = f"{measurement.name}: " if test.model.multiple_results else ""
                misses.append(f"{prefix}{verdict.reason}")
        status = FAILURE if misses else SUCCESS
        return BenchmarkResult(
            name,
            status,
            "; ".join(misses) or None,
            "",
            tuple(rows),
            image,
            outcome,
            tuple(gpu.index for gpu in gpus),
            image.build_duration,
        )

    def _image(self, test: PlannedTest, host: Host) -> BuiltImage:
        """The test's image: built here, or, with a build manifest, pulled onto the host
        from the registry the manifest names (else the manifest's local image)."""
        if self.manifest is None:
            return self.builder.ensure(image_spec(test, self.settings))
        assert test.image is not None
        entry = self.manifest.image_for(test.image, test.model.name)
        if entry is None:
            built = ", ".join(sorted(self.manifest.images)) or "nothing"
            raise MadError(
                f"{test.image} is not in the build manifest {self.manifest.path} (built: {built})"
            )
        if entry.pulled:
            auth = self.credentials.registry_auth(registry_of(entry.reference))
            image_id = self.engines.pull(entry.reference, host, auth)
        else:
            image_id = self.engines.local_image_id(entry.reference)
        return BuiltImage(
            entry.reference, image_id, entry.base_docker, False, entry.build_duration, None, "",
            pulled=entry.pulled,
        )  # fmt: skip

    def _failed(
        self,
        test: PlannedTest,
        reason: str,
        detail: str,
        gpus: Sequence[Gpu],
        image: BuiltImage | None = None,
        outcome: RunOutcome | None = None,
    ) -> BenchmarkResult:
        reason = self.credentials.redact(reason)  # an engine's message may quote a secret
        detail = self.credentials.redact(detail)
        row = ResultRow(test.name, FAILURE, reason=reason)
        return BenchmarkResult(
            test.name,
            FAILURE,
            reason,
            detail,
            (row,),
            image,
            outcome,
            tuple(gpu.index for gpu in gpus),
            image.build_duration if image else 0.0,
        )
