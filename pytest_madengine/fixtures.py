"""Fixtures of pytest-madengine. Each can be overridden in a conftest.py.

The MAD items use `mad_benchmark`; user-written tests can use the same pieces
(`mad_settings`, `mad_docker`, `mad_builder`, `mad_gpus`, `mad_runner`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from pytest_madengine.backends import Backend
from pytest_madengine.backends.docker import DockerBackend, EngineError, connect
from pytest_madengine.benchmark import BenchmarkResult, BenchmarkRunner
from pytest_madengine.errors import MadError
from pytest_madengine.gpus import Gpu, GpuPool
from pytest_madengine.images import ImageBuilder
from pytest_madengine.results import load_baseline, parse_tolerance
from pytest_madengine.runspec import load_data_sources
from pytest_madengine.session import MadSession, Settings
from pytest_madengine.state import MAD_STATE, MadState


def _state(config: pytest.Config) -> MadState:
    state = config.stash.get(MAD_STATE, None)
    if state is None:
        pytest.fail("pytest-madengine is not active: give --mad-tags (or mad_tags)", pytrace=False)
    return state


@pytest.fixture(scope="session")
def mad_session(pytestconfig: pytest.Config) -> MadSession:
    """The loaded tree and plan of this session."""
    return _state(pytestconfig).mad


@pytest.fixture(scope="session")
def mad_settings(mad_session: MadSession) -> Settings:
    return mad_session.settings


@pytest.fixture(scope="session")
def mad_docker() -> Iterator[docker.DockerClient]:
    """A client of the Docker Engine at DOCKER_HOST (the local one by default)."""
    try:
        client = connect()
    except EngineError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def mad_session_dir(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory shared by all xdist workers of this session (and only this session)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if hasattr(pytestconfig, "workerinput") else base
    path = shared / "madengine"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def mad_builder(
    pytestconfig: pytest.Config, mad_docker: docker.DockerClient, mad_session_dir: Path
) -> ImageBuilder:
    state = _state(pytestconfig)
    return ImageBuilder(
        mad_docker,
        log_dir=state.output_dir / "builds",
        lock_dir=mad_session_dir / "images",
        no_cache=bool(pytestconfig.getoption("mad_clean_cache")),
    )


@pytest.fixture(scope="session")
def mad_backend(mad_docker: docker.DockerClient) -> Backend:
    """Where containers run: the local Docker Engine."""
    return DockerBackend(mad_docker, host=os.uname().nodename)


@pytest.fixture(scope="session")
def mad_gpu_pool(mad_settings: Settings, mad_session_dir: Path) -> GpuPool:
    """The GPUs of this host, shared by every xdist worker of the session."""
    return GpuPool(mad_settings.gpus, mad_session_dir / "gpus")


@pytest.fixture
def mad_gpus(request: pytest.FixtureRequest, mad_gpu_pool: GpuPool) -> Iterator[tuple[Gpu, ...]]:
    """GPUs held by this test alone, given back on every outcome.

    A MAD item holds its model's n_gpus; other tests hold one, or as many as their
    `mad_gpus(n)` marker says.
    """
    planned = getattr(request.node, "planned", None)
    marker = request.node.get_closest_marker("mad_gpus")
    wanted = planned.model.n_gpus if planned else (marker.args[0] if marker else 1)
    reason = mad_gpu_pool.unfit_reason(wanted)
    if reason:
        pytest.skip(reason)
    lease = mad_gpu_pool.acquire(wanted, request.node.nodeid)
    yield lease
    mad_gpu_pool.release(lease)


@pytest.fixture(scope="session")
def mad_runner(
    pytestconfig: pytest.Config,
    mad_settings: Settings,
    mad_builder: ImageBuilder,
    mad_backend: Backend,
) -> BenchmarkRunner:
    state = _state(pytestconfig)
    baseline_path = pytestconfig.getoption("mad_baseline")
    try:
        baseline = load_baseline(Path(baseline_path)) if baseline_path else {}
        tolerance = parse_tolerance(pytestconfig.getoption("mad_tolerance"))
        data_sources = load_data_sources(mad_settings.root)
    except (MadError, ValueError) as exc:
        pytest.fail(str(exc), pytrace=False)
    return BenchmarkRunner(
        mad_settings,
        mad_builder,
        mad_backend,
        session_id=state.session_id,
        log_dir=state.output_dir / "logs",
        baseline=baseline,
        tolerance=tolerance,
        timeout_override=pytestconfig.getoption("mad_timeout"),
        data_sources=data_sources,
    )


def _performance_text(row: Any) -> str:
    return "" if row is None or row.performance is None else f"{row.performance:g}"


def _record(item: pytest.Item, result: BenchmarkResult) -> None:
    """JUnit properties of the test (they reach the controller's XML under xdist)."""
    outcome, image = result.outcome, result.image
    main = result.rows[0] if result.rows else None
    properties: list[tuple[str, Any]] = [
        ("status", result.status),
        (
            "performance",
            "" if main is None or main.performance is None else f"{main.performance:g}",
        ),
        ("metric", main.metric if main else ""),
        ("image", image.name if image else ""),
        ("docker_sha", image.docker_sha if image else ""),
        ("image_built", str(bool(image and image.built)).lower()),
        ("build_duration", f"{result.build_duration:.2f}"),
        ("gpus", ",".join(str(index) for index in result.gpus)),
    ]
    if outcome is not None:
        properties += [
            ("host", outcome.host),
            ("test_duration", f"{outcome.duration:.2f}"),
            ("started_at", f"{outcome.started_at:.3f}"),
            ("ended_at", f"{outcome.ended_at:.3f}"),
            ("log_path", str(outcome.log_path)),
        ]
    if result.reason:
        properties.append(("failure_reason", result.reason))
    item.user_properties.extend(properties)


@pytest.fixture
def mad_benchmark(
    request: pytest.FixtureRequest,
    pytestconfig: pytest.Config,
    mad_runner: BenchmarkRunner,
    mad_gpus: tuple[Gpu, ...],
) -> Callable[[], BenchmarkResult]:
    """Runs this item's benchmark; a miss fails the test with its one-line reason."""
    item = request.node
    state = _state(pytestconfig)

    def run() -> BenchmarkResult:
        result = mad_runner.run(item.planned, item.nodeid, mad_gpus, state.live_output)
        item.mad_result = result
        _record(item, result)
        if result.reason:
            pytest.fail(result.failure_text, pytrace=False)
        return result

    return run
