"""Fixtures of pytest-madengine. Each can be overridden in a conftest.py.

The MAD items use `mad_benchmark`; user-written tests can use the same pieces
(`mad_options`, `mad_session`, `mad_docker`, `mad_host`, `mad_gpus`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_madengine.backends import PushProgressSink
from pytest_madengine.core.options import Options
from pytest_madengine.core.records import BuildRecord, Status, TestRecord
from pytest_madengine.core.session import MadSession, Session
from pytest_madengine.plugin.state import BUILD_RECORD, RECORD, PluginState, plugin_state
from pytest_madengine.plugin.terminal import printable, to_terminal
from pytest_madengine.resources.gpus import Gpu
from pytest_madengine.resources.placement import HostPool, Placement

if TYPE_CHECKING:
    import docker


def _state(config: pytest.Config) -> PluginState:
    state = plugin_state(config)
    if state is None:
        pytest.fail("pytest-madengine is not active: give --mad-tags (or mad_tags)", pytrace=False)
    return state


@pytest.fixture(scope="session")
def mad_options(pytestconfig: pytest.Config) -> Options:
    """The parsed options of this session."""
    return _state(pytestconfig).options


@pytest.fixture(scope="session")
def mad_session(pytestconfig: pytest.Config) -> MadSession:
    """The loaded tree and plan of this session."""
    return _state(pytestconfig).mad


@pytest.fixture(scope="session")
def mad_runtime(pytestconfig: pytest.Config) -> Session:
    """This process's backend, host pool and test runner."""
    runtime = _state(pytestconfig).runtime
    if runtime is None:
        pytest.fail("pytest-madengine runs nothing under --collect-only", pytrace=False)
    return runtime


@pytest.fixture(scope="session")
def mad_docker() -> Iterator[docker.DockerClient]:
    """A client of the Docker Engine at DOCKER_HOST (the local one by default)."""
    # Imported here: the docker SDK is a good part of start-up, and listing tests
    # (--collect-only) needs no engine.
    from pytest_madengine.backends.docker.containers import EngineError
    from pytest_madengine.backends.docker.links import connect

    try:
        client = connect()
    except EngineError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def mad_session_dir(pytestconfig: pytest.Config) -> Path:
    """A directory shared by all xdist workers of this session (and only this session)."""
    return _state(pytestconfig).session_dir


@pytest.fixture(scope="session")
def mad_host_pool(mad_runtime: Session) -> HostPool:
    """The hosts (from --mad-hosts, else this machine) and their GPUs, shared by every
    xdist worker of the session."""
    return mad_runtime.pool


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


def _conclude(item: pytest.Item, key: Any, record: Any) -> None:
    """Keeps an item's record (for its report) and its JUnit properties, then ends the
    test as the record says: skipped or failed in one line (the log's tail under it,
    its control characters written out: it reaches the terminal)."""
    item.stash[key] = record
    item.user_properties.extend(record.junit_properties())
    if record.status is Status.SKIPPED:
        pytest.skip(printable(record.reason or "skipped"))
    if record.status is Status.FAILURE:
        pytest.fail(printable(record.failure_text), pytrace=False)


@pytest.fixture
def mad_benchmark(request: pytest.FixtureRequest, mad_runtime: Session) -> Callable[[], TestRecord]:
    """Runs this item's benchmark on a placed host; a miss fails the test in one line.

    A host lost during the run is left out for the rest of the session and the test is
    placed again, up to --mad-retries times.
    """
    item = request.node
    on_wait = _state(request.config).on_wait

    def run() -> TestRecord:
        record = mad_runtime.run(item.planned, item.nodeid, on_wait)
        _conclude(item, RECORD, record)
        return record

    return run


def terminal_lines(config: pytest.Config) -> PushProgressSink | None:
    """Writes lines straight to the terminal, around pytest's capture; None on an xdist
    worker, which has no terminal (the controller reports its results)."""
    if hasattr(config, "workerinput"):
        return None

    def write(line: str) -> None:
        to_terminal(config, lambda reporter: reporter.write_line(line))

    return write


@pytest.fixture
def mad_build(request: pytest.FixtureRequest, mad_runtime: Session) -> Callable[[], BuildRecord]:
    """Builds this build item's image and pushes it (push progress in the terminal);
    a failed build or push fails the test in one line."""
    item = request.node

    def build() -> BuildRecord:
        record = mad_runtime.build(item.target, terminal_lines(request.config))
        _conclude(item, BUILD_RECORD, record)
        return record

    return build
