"""Where benchmark containers run, behind one small interface and a registry.

A backend makes a test's image available on a host, starts the container from a
backend-neutral `RunSpec`, waits for it with its timeout while its output streams to
the log, cancels it, and sweeps what a session left behind. Backends are found by
name in the entry-point group `pytest_madengine.backends` (ours, `docker`, too), so
a new one is a module and a line in its package's metadata:

    [project.entry-points."pytest_madengine.backends"]
    mybackend = "mypackage.backend:create"   # create(setup: BackendSetup) -> Backend

The types and protocols a backend implements or receives live in
`pytest_madengine.contract`, below the core; this module re-exports them.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint

from pytest_madengine.contract import (
    CONTROLLER_LABEL,
    LABEL_PREFIX,
    MODEL_LABEL,
    SESSION_LABEL,
    TEST_LABEL,
    Backend,
    BackendFactory,
    BackendSettings,
    BackendSetup,
    Bind,
    ContextView,
    CreatesAhead,
    DataBind,
    Device,
    ExitWaiter,
    HostProber,
    ImageFacts,
    ImagePublisher,
    ImageRequest,
    MadeRun,
    OutputSink,
    PushProgressSink,
    RegistryAuth,
    RunHandle,
    RunOutcome,
    RunSpec,
    base_docker_of,
    collected,
    no_registry_auth,
    secret_argument_variable,
)
from pytest_madengine.errors import MadError, UsageProblem
from pytest_madengine.registry import registered

# The contract's names, as backends (ours and third-party ones) import them from here.
__all__ = [
    "CONTROLLER_LABEL",
    "DEFAULT_BACKEND",
    "ENTRY_POINT_GROUP",
    "LABEL_PREFIX",
    "MODEL_LABEL",
    "SESSION_LABEL",
    "TEST_LABEL",
    "Backend",
    "BackendFactory",
    "BackendSettings",
    "BackendSetup",
    "Bind",
    "ContextView",
    "CreatesAhead",
    "DataBind",
    "Device",
    "ExitWaiter",
    "HostProber",
    "ImageFacts",
    "ImagePublisher",
    "ImageRequest",
    "MadeRun",
    "OutputSink",
    "PushProgressSink",
    "RegistryAuth",
    "RunHandle",
    "RunOutcome",
    "RunSpec",
    "backend_names",
    "base_docker_of",
    "check_backend_name",
    "collected",
    "create_backend",
    "no_registry_auth",
    "secret_argument_variable",
]

ENTRY_POINT_GROUP = "pytest_madengine.backends"
DEFAULT_BACKEND = "docker"


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    return {point.name: point for point in registered(ENTRY_POINT_GROUP)}


def backend_names() -> tuple[str, ...]:
    return tuple(sorted(_entry_points()))


def check_backend_name(name: str, origin: str = "--mad-deploy") -> str:
    """The name when a backend of that name is installed; else a UsageProblem."""
    if name not in _entry_points():
        known = ", ".join(backend_names()) or "none"
        raise UsageProblem(f"{origin}: no backend named '{name}' (installed: {known})")
    return name


def create_backend(name: str, setup: BackendSetup) -> Backend:
    """The backend registered under the name, created for the session."""
    check_backend_name(name)
    try:
        factory: BackendFactory = _entry_points()[name].load()
    except Exception as exc:  # a third-party package: any import failure is one line
        why = f"{type(exc).__name__}: {exc}"
        raise UsageProblem(f"backend '{name}' failed to load: {why}") from None
    backend = factory(setup)
    if not isinstance(getattr(backend, "name", None), str):
        raise MadError(f"backend '{name}': its factory returned {backend!r}, not a Backend")
    return backend
