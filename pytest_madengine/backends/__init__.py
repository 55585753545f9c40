"""Ways to run a benchmark container, one module each, behind one small interface."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# Labels on every container we start, so that nothing of ours outlives the session.
LABEL_PREFIX = "org.pytest-madengine"
SESSION_LABEL = f"{LABEL_PREFIX}.session"
TEST_LABEL = f"{LABEL_PREFIX}.test"
MODEL_LABEL = f"{LABEL_PREFIX}.model"

OutputSink = Callable[[bytes], None]


@dataclass(frozen=True)
class Device:
    host_path: str
    container_path: str


@dataclass(frozen=True)
class Bind:
    host_path: str
    container_path: str
    read_only: bool = False


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to run one benchmark container, independent of the backend."""

    image: str
    command: tuple[str, ...]
    workdir: str
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    labels: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    # (host directory, container directory): copied in before the start, never bind-mounted,
    # so a remote engine gets them too and nothing is written into the user's tree.
    copies: tuple[tuple[Path, str], ...] = ()
    binds: tuple[Bind, ...] = ()
    devices: tuple[Device, ...] = ()
    group_add: tuple[str, ...] = ()
    nvidia_gpu_ids: tuple[int, ...] | None = None  # a GPU device request for these ids
    timeout_s: float | None = None  # None: no limit
    result_files: tuple[str, ...] = ()  # container paths read back after the run
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cpuset_cpus: str | None = None
    # As madengine runs benchmarks: the host's network (collectives, downloads, and no
    # bridge set-up per start) and its IPC namespace (frameworks outgrow a 64 MB /dev/shm).
    network: str = "host"
    ipc: str | None = "host"


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int | None  # None when the container was killed (timeout) or lost
    timed_out: bool
    log_path: Path
    started_at: float  # epoch seconds
    ended_at: float
    host: str
    results: Mapping[str, str | None] = field(default_factory=dict, compare=False, hash=False)

    @property
    def duration(self) -> float:
        return self.ended_at - self.started_at


class Backend(Protocol):
    """Runs containers for tests and removes what a session left behind."""

    name: str

    def run(self, spec: RunSpec, on_output: OutputSink | None = None) -> RunOutcome:
        """Runs the container to its end or its timeout; the container is gone afterwards."""
        ...

    def remove_session(self, session_id: str) -> int:
        """Removes every container of the session; returns how many there were."""
        ...
