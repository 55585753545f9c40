"""Fixtures of pytest-madengine. Each can be overridden in a conftest.py.

The MAD items use `mad_benchmark`; user-written tests can use the same pieces
(`mad_settings`, `mad_docker`, `mad_builder`, `mad_host`, `mad_gpus`, `mad_runner`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from pytest_madengine.backends.docker import EngineError, connect
from pytest_madengine.benchmark import BenchmarkResult, BenchmarkRunner
from pytest_madengine.engines import Engines, HostLost
from pytest_madengine.errors import MadError
from pytest_madengine.gpus import Gpu
from pytest_madengine.hosts import Host
from pytest_madengine.images import ImageBuilder
from pytest_madengine.placement import HostPool, NoHost, Placement
from pytest_madengine.planning import host_unfit_reason
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
def mad_engines(
    pytestconfig: pytest.Config, mad_docker: docker.DockerClient, mad_session_dir: Path
) -> Iterator[Engines]:
    """Clients of every host; images are shipped to each host once per session."""
    engines = Engines(mad_docker, mad_session_dir / "images", _state(pytestconfig).links)
    yield engines
    engines.close()


@pytest.fixture(scope="session")
def mad_host_pool(pytestconfig: pytest.Config, mad_session_dir: Path) -> HostPool:
    """The hosts (from --mad-hosts, else this machine) and their GPUs, shared by every
    xdist worker of the session."""
    state = _state(pytestconfig)
    return HostPool(state.hosts, mad_session_dir / "placement", down=state.hosts_down)


def _wanted_gpus(request: pytest.FixtureRequest) -> int:
    planned = getattr(request.node, "planned", None)
    marker = request.node.get_closest_marker("mad_gpus")
    return planned.model.n_gpus if planned else (marker.args[0] if marker else 1)


@pytest.fixture
def mad_host(request: pytest.FixtureRequest, mad_host_pool: HostPool) -> Iterator[Placement]:
    """A host and GPUs held by this test alone (the least loaded host that fits),
    given back on every outcome. A test holds one GPU unless `mad_gpus(n)` says more."""
    wanted = _wanted_gpus(request)
    reason = mad_host_pool.unfit_reason(wanted)
    if reason:
        pytest.skip(reason)
    placement = mad_host_pool.acquire(wanted, request.node.nodeid)
    yield placement
    mad_host_pool.release(placement)


@pytest.fixture
def mad_gpus(mad_host: Placement) -> tuple[Gpu, ...]:
    """The GPUs this test holds (see mad_host)."""
    return mad_host.gpus


@pytest.fixture(scope="session")
def mad_runner(
    pytestconfig: pytest.Config,
    mad_settings: Settings,
    mad_builder: ImageBuilder,
    mad_engines: Engines,
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
        mad_engines,
        session_id=state.session_id,
        log_dir=state.output_dir / "logs",
        baseline=baseline,
        tolerance=tolerance,
        timeout_override=pytestconfig.getoption("mad_timeout"),
        data_sources=data_sources,
        manifest=state.manifest,
        credentials=state.credentials,
    )


def _performance_text(row: Any) -> str:
    return "" if row is None or row.performance is None else f"{row.performance:g}"


def _record(item: pytest.Item, result: BenchmarkResult, lost: list[str]) -> None:
    """JUnit properties of the test (they reach the controller's XML under xdist)."""
    outcome, image = result.outcome, result.image
    main = result.rows[0] if result.rows else None
    properties: list[tuple[str, Any]] = [
        ("status", result.status),
        ("performance", _performance_text(main)),
        ("metric", main.metric if main else ""),
        ("image", image.name if image else ""),
        ("docker_sha", image.docker_sha if image else ""),
        ("image_built", str(bool(image and image.built)).lower()),
        ("image_pulled", str(bool(image and image.pulled)).lower()),
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
    if lost:
        properties.append(("retried_after", "; ".join(lost)))
    item.user_properties.extend(properties)


@pytest.fixture
def mad_benchmark(
    request: pytest.FixtureRequest,
    pytestconfig: pytest.Config,
    mad_runner: BenchmarkRunner,
    mad_host_pool: HostPool,
) -> Callable[[], BenchmarkResult]:
    """Runs this item's benchmark on a placed host; a miss fails the test in one line.

    A host lost during the run is left out for the rest of the session and the test is
    placed again, up to --mad-retries times.
    """
    item = request.node
    state = _state(pytestconfig)
    planned = item.planned
    settings = mad_runner.settings

    def fits(host: Host) -> str | None:
        return host_unfit_reason(
            planned.model, settings.gpu_vendor, host.vendor, host.architecture, host.labels
        )

    def run() -> BenchmarkResult:
        lost: list[str] = []
        for _ in range(1 + state.retries):
            try:
                placement = mad_host_pool.acquire(planned.model.n_gpus, item.nodeid, fits)
            except NoHost as exc:
                if lost:
                    pytest.fail("; ".join([*lost, str(exc)]), pytrace=False)
                pytest.skip(str(exc))
            try:
                result = mad_runner.run(planned, item.nodeid, placement, state.live_output)
            except HostLost as exc:
                mad_host_pool.mark_down(exc.host, exc.reason)
                lost.append(str(exc))
                continue
            finally:
                mad_host_pool.release(placement)
            break
        else:
            pytest.fail(f"{'; '.join(lost)}; no retry left (--mad-retries {state.retries})",
                        pytrace=False)  # fmt: skip
        item.mad_result = result
        _record(item, result, lost)
        if result.reason:
            pytest.fail(result.failure_text, pytrace=False)
        return result

    return run
