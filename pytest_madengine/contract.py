"""The contract between the core and the backends: the types and protocols a backend
implements or receives (`RunSpec`, `RunOutcome`, `ImageRequest`, `ImageFacts`,
`DataBind`, `Backend`, `RunHandle`, `BackendSetup`...), on a floor of their own.

It stands below `core/` and above only the floor modules (errors, masking, credentials,
resources), so that backends, data providers and tools import it, never the core (in
the spirit of pytest-xdist's `scheduler/protocol.py`). `pytest_madengine.backends`
re-exports every name here: a third-party backend may import either.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pytest_madengine.masking import mask_text
from pytest_madengine.resources.gpus import GpuInventory
from pytest_madengine.resources.health import Ping
from pytest_madengine.resources.hosts import Host

# Labels on every container we start, so that nothing of ours outlives the session.
LABEL_PREFIX = "org.pytest-madengine"
SESSION_LABEL = f"{LABEL_PREFIX}.session"
TEST_LABEL = f"{LABEL_PREFIX}.test"
MODEL_LABEL = f"{LABEL_PREFIX}.model"
# host:pid:start time of the session's controller: a later session removes the
# containers of a controller that is gone (killed with -9, a crashed CI job).
CONTROLLER_LABEL = f"{LABEL_PREFIX}.controller"

OutputSink = Callable[[bytes], None]
# One line of push progress (a layer's new state, the pushed digest).
PushProgressSink = Callable[[str], None]


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
class DataBind:
    """A dataset for the container, read-only at `container_path`, never created.

    `source` is a directory on this machine (the one running pytest). With a
    `content_key` it is a fetched copy of that content: a backend that runs containers
    on another machine brings the copy there (once per key). Without one it is a path
    every host is expected to have (a shared filesystem, as madengine's `local`)."""

    source: str
    container_path: str
    content_key: str | None = None
    name: str = ""  # the data.json entry, for messages


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to run one benchmark container, independent of the backend."""

    image: str  # the name people read (a tag or a registry reference)
    command: tuple[str, ...]
    workdir: str
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    labels: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    # (host directory, container directory): copied in before the start, never bind-mounted,
    # so a remote engine gets them too and nothing is written into the user's tree.
    copies: tuple[tuple[Path, str], ...] = ()
    binds: tuple[Bind, ...] = ()
    data: tuple[DataBind, ...] = ()
    devices: tuple[Device, ...] = ()
    group_add: tuple[str, ...] = ()
    nvidia_gpu_ids: tuple[int, ...] | None = None  # a GPU device request for these ids
    # GPUs the run holds: a backend whose scheduler picks them (slurm, k8s) asks for this
    # many.
    gpu_count: int = 0
    timeout_s: float | None = None  # None: no limit
    result_files: tuple[str, ...] = ()  # container paths read back after the run
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cpuset_cpus: str | None = None
    memory: str | None = None  # a limit such as "16g"; the container is killed over it
    # The image's id where the backend knows it: containers start from it, so a tag that
    # another session moves meanwhile cannot swap the image under a test.
    image_id: str | None = None
    # Host paths under `copies` that stay out of the container (secrets, our output).
    copy_excludes: tuple[Path, ...] = ()
    # The MAD tree: a link under `copies` that resolves inside it is copied as what it
    # points to; any other link stays a link (see copies.py).
    copy_within: Path | None = None
    # As madengine runs benchmarks: the host's network (collectives, downloads, and no
    # bridge set-up per start) and its IPC namespace (frameworks outgrow a 64 MB /dev/shm).
    network: str = "host"
    ipc: str | None = "host"
    # Lines the log starts with, before the container's output (what became of its data).
    log_notes: tuple[str, ...] = ()
    # Values the backend masks in everything it writes or streams (logs, live output).
    secrets: tuple[str, ...] = field(default=(), compare=False, hash=False, repr=False)
    # After the run, the files of `workdir` that the run left (all but `collect_skip`)
    # are brought to this host directory, as madengine's bind-mounted workspace had them.
    collect_to: Path | None = None
    # Relative paths not brought back; one that ends with "/" stands for all below it.
    collect_skip: frozenset[str] = field(default_factory=frozenset, compare=False, hash=False)
    # Host paths of ours that nothing of the run lands on or below (output, perf.csv),
    # and our ledger of what earlier runs brought back (see backends.collect.Landing).
    collect_keep_out: tuple[Path, ...] = ()
    collect_ledger: Path | None = None
    # Leave the container running after the command ends (for `docker exec`), unremoved.
    keep_alive: bool = False

    def secret_variables(self) -> tuple[str, ...]:
        """Names of the container's variables whose value holds a secret (a `cred`
        entry's): a backend hands them over by reference (a Secret, the job's
        environment), never written into a file or manifest of ours."""
        return tuple(
            name for name, value in self.env.items()
            if value and mask_text(value, self.secrets) != value
        )  # fmt: skip

    def secret_arguments(self) -> dict[int, str]:
        """The command's arguments that hold a secret (`args` written with a password),
        by position: likewise handed over as the variable `secret_argument_variable`."""
        return {
            position: argument
            for position, argument in enumerate(self.command)
            if mask_text(argument, self.secrets) != argument
        }


def secret_argument_variable(position: int) -> str:
    """The variable that carries the command's argument at `position` when it holds a
    secret (see RunSpec.secret_arguments)."""
    return f"MAD_SECRET_ARG_{position}"


def collected(relative: str, skip: frozenset[str]) -> bool:
    """Whether a relative path of the workspace is brought back (see `RunSpec.collect_skip`)."""
    if relative in skip:
        return False
    return not any(prefix.endswith("/") and relative.startswith(prefix) for prefix in skip)


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int | None  # None when the container was killed (timeout) or lost
    timed_out: bool
    log_path: Path
    started_at: float  # epoch seconds
    ended_at: float
    host: str
    results: Mapping[str, str | None] = field(default_factory=dict, compare=False, hash=False)
    # Backend facts worth a JUnit property (a job id, a pod name...).
    properties: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    oom_killed: bool = False  # the kernel killed it for memory
    # Why the backend's scheduler ended the run (a SLURM time limit, a node failure): the
    # test fails with this line whatever the exit code.
    failure: str | None = None
    # The host GPU ids the run had, when a scheduler chose them; None: the placement's.
    gpus: tuple[int, ...] | None = None

    @property
    def duration(self) -> float:
        return self.ended_at - self.started_at


@dataclass(frozen=True)
class ImageFacts:
    """The image a test ran, as the backend made it available on the host."""

    name: str  # what the container runs: a local name or a registry reference
    docker_sha: str
    base_docker: str = ""
    built: bool = False  # False when an image of the same content was reused
    pulled: bool = False  # from a registry
    build_duration: float = 0.0
    log_path: str | None = None  # the build log


@dataclass(frozen=True)
class ImageRequest:
    """The image a test needs. `dockerfile` set: build it (once per session, reused
    when its content is unchanged). Else `reference` names a ready image: pulled from
    its registry when `pull`, else taken from the engine that builds here."""

    name: str  # ci-<model>_<dockerfile>: the local name
    dockerfile: Path | None = None
    context_dir: Path | None = None
    build_args: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    reference: str | None = None
    pull: bool = False
    auth: Mapping[str, str] | None = field(default=None, compare=False, hash=False, repr=False)
    base_docker: str = ""
    build_duration: float = 0.0  # of a ready image, as its manifest says
    # A `reference` that is not on the engine is pulled (madengine's MAD_CONTAINER_IMAGE).
    pull_if_missing: bool = False
    # Values the backend masks in the build's log and live output (cred build args).
    secrets: tuple[str, ...] = field(default=(), compare=False, hash=False, repr=False)


_ARG_BASE = re.compile(r"^\s*ARG\s+BASE_DOCKER\s*=\s*(\S+)", re.MULTILINE)


def base_docker_of(dockerfile: Path, build_args: Mapping[str, str]) -> str:
    """BASE_DOCKER from the build args, else the Dockerfile's own default."""
    if "BASE_DOCKER" in build_args:
        return build_args["BASE_DOCKER"]
    facts = dockerfile.stat()
    return _default_base(dockerfile, facts.st_mtime_ns, facts.st_size)


@functools.lru_cache(maxsize=1024)
def _default_base(dockerfile: Path, mtime_ns: int, size: int) -> str:
    """The Dockerfile's ARG BASE_DOCKER default, read once per version of the file (a
    fleet's thousands of tests share a few Dockerfiles)."""
    found = _ARG_BASE.search(dockerfile.read_text(encoding="utf-8", errors="replace"))
    return found.group(1) if found else ""


class RunHandle(Protocol):
    """A started container."""

    def wait(self) -> RunOutcome:
        """Until it ends or its timeout passes (then it is killed); it is removed after."""
        ...

    def cancel(self) -> None:
        """Stops it now, from any thread; `wait` then returns."""
        ...


@runtime_checkable
class ExitWaiter(Protocol):
    """A handle that can also tell when its command ended, before `wait` reads the
    results back: the runner gives the GPUs back at that moment (optional)."""

    def wait_exit(self) -> bool:
        """Until the command ended: True when it surely has (a kill at the timeout that
        the engine refused: False). What it raises, `wait` raises again."""
        ...


@runtime_checkable
class MadeRun(Protocol):
    """A run's container made ahead of its turn, not started (see `CreatesAhead`)."""

    def start(self, on_output: OutputSink | None) -> RunHandle:
        """Starts it now; HostLost when the host does not answer."""
        ...

    def discard(self) -> None:
        """Removes it unstarted: its test runs on other GPUs, or not at all."""
        ...


@runtime_checkable
class CreatesAhead(Protocol):
    """A backend that can make a test's container while the test waits for GPUs, so
    that it only has to start when they are free (optional)."""

    def create(self, spec: RunSpec, host: Host) -> MadeRun:
        """The run's container, made but not started; as `start` when it cannot."""
        ...


class Backend(Protocol):
    """Runs the containers of one session, in one process (an xdist worker has its own)."""

    name: str

    def hosts(self) -> tuple[Host, ...]:
        """Where tests can be placed (each host's GPUs are leased to one test at a time)."""
        ...

    def hosts_down(self) -> Mapping[str, str]:
        """Host name -> why it was left out when the session started."""
        ...

    def shared_state(self) -> dict[str, Any]:
        """What the controller's backend hands its xdist workers' (JSON-able)."""
        ...

    def prepare(
        self, request: ImageRequest, host: Host, on_output: OutputSink | None = None
    ) -> ImageFacts:
        """Makes the image available on the host, streaming a build's output to
        `on_output`; MadError (HostLost when the host does not answer) with a one-line
        reason when it cannot."""
        ...

    def start(self, spec: RunSpec, host: Host, on_output: OutputSink | None) -> RunHandle:
        """Starts the container; HostLost when the host does not answer."""
        ...

    def sweep(self, session_id: str) -> int:
        """Removes whatever the session left on every host; how many things it removed."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ImagePublisher(Protocol):
    """What a backend adds to serve build-only sessions (`--mad-build-only`): images
    built where the backend builds them, and pushed to a registry. Optional: a backend
    without these methods runs tests but cannot build for a registry."""

    def build(self, request: ImageRequest) -> ImageFacts:
        """Builds the image (or reuses one of the same content), on no run host;
        MadError with a one-line reason and the build log's tail when it fails."""
        ...

    def push(
        self,
        image: str,
        reference: str,
        auth: Mapping[str, str] | None,
        on_progress: PushProgressSink | None = None,
    ) -> str:
        """Tags the built image as `reference` and pushes it; the pushed digest.
        MadError with the registry's one-line reason when the push fails."""
        ...


@runtime_checkable
class HostProber(Protocol):
    """What a backend adds for the heartbeat (`--mad-heartbeat`) and the `latency`
    placement: a ping of one host. Optional: without it a session has no heartbeat and
    `latency` ranks every host alike (the least loaded first)."""

    def ping_host(self, host: Host, deadline_s: float) -> Ping:
        """The host's engine asked once, within `deadline_s` (a call that could wait
        longer is cut off): the round trip, or offline (no answer in time, no link) or
        error (it answered with a failure), with the one-line reason."""
        ...


class ContextView(Protocol):
    """What a backend reads of the run context: its keys as the user gave them."""

    @property
    def values(self) -> Mapping[str, Any]: ...

    @property
    def gpu_architecture(self) -> str | None: ...

    def get(self, key: str, default: Any = None) -> Any: ...


# credential.json's username/password for a registry; None: pull and push anonymously.
# A MadError names an entry that is no login (never its values).
RegistryAuth = Callable[[str | None], dict[str, str] | None]


def no_registry_auth(registry: str | None) -> dict[str, str] | None:
    """Anonymous everywhere: the settings of a session without credential.json."""
    return None


@dataclass(frozen=True)
class BackendSettings:
    """What a backend reads of the session's options: made once by the core from them,
    frozen, and no more than backends need (a backend never sees the core's `Options`)."""

    output_dir: Path  # build logs (every backend), job scripts and logs (slurm)
    gpu_vendor: str  # the context's, else this machine's GPUs'
    # This machine's GPUs: the one host of a backend without --mad-hosts (docker).
    local_gpus: GpuInventory
    context: ContextView  # the run context as the user gave it (docker, k8s)
    effective_context: ContextView  # with this machine's defaults filled in (slurm)
    clean_cache: bool = False  # build images without the engine's cache
    hosts_file: Path | None = None  # --mad-hosts (docker)
    # Our own outputs that may lie in a build context (the output directory, perf.csv):
    # left out of its hash, so that writing them never makes an image stale.
    build_context_ignores: tuple[Path, ...] = ()
    registry: str | None = None  # --mad-registry: where built images are pushed (k8s)
    k8s_dry_run: Path | None = None  # --mad-k8s-dry-run: manifests written here instead
    # --mad-manifest: the references of its images the session pulls (k8s logs in to
    # their registries); None: no manifest, images are built.
    manifest_pulls: tuple[str, ...] | None = None
    # Never shown: the function is bound to every secret of credential.json.
    registry_auth: RegistryAuth = field(default=no_registry_auth, repr=False, compare=False)


@dataclass(frozen=True)
class BackendSetup:
    """What a backend is created from."""

    settings: BackendSettings
    session_id: str
    session_dir: Path  # shared by every process of the session: locks and notes
    # The controller's `shared_state()` on an xdist worker; None on the controller,
    # which checks the hosts and fails with a UsageProblem when it cannot run anything.
    shared: Mapping[str, Any] | None = None
    # host:pid:start time of the controller process (CONTROLLER_LABEL's value).
    controller: str = ""

    @property
    def options(self) -> BackendSettings:
        """The settings under their former name: backends written against it (they read
        `setup.options.output_dir`) keep working."""
        return self.settings


BackendFactory = Callable[[BackendSetup], Backend]
