"""The `docker` backend: containers on this machine's Docker Engine, or on the Docker
hosts of `--mad-hosts` (unix://, ssh:// through one tunnel per host, tcp:// with TLS).

Images are built on the local engine (once per session) and streamed to the other
hosts, or pulled from a registry onto each host that runs them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors

from pytest_madengine.backends import (
    CONTROLLER_LABEL,
    SESSION_LABEL,
    BackendSetup,
    DataBind,
    ImageRequest,
    MadeRun,
    OutputSink,
    PushProgressSink,
    RunHandle,
    RunSpec,
)
from pytest_madengine.backends.docker.containers import (
    ENGINE_FAILURES,
    ContainerRun,
    EngineError,
    Reaper,
    WorkspaceNotShared,
    answers,
    remove_orphans,
    remove_session,
)
from pytest_madengine.backends.docker.datavolumes import data_volume
from pytest_madengine.backends.docker.engines import Engines
from pytest_madengine.backends.docker.images import ImageBuilder
from pytest_madengine.backends.docker.links import HostLinks, check_hosts, connect
from pytest_madengine.backends.docker.pings import Pinger
from pytest_madengine.backends.docker.publish import ImagePusher
from pytest_madengine.contract import ImageFacts
from pytest_madengine.errors import HostLost, MadError, UsageProblem, first_line
from pytest_madengine.resources.health import Ping
from pytest_madengine.resources.hosts import Host, load_hosts, local_host
from pytest_madengine.resources.once import Once, note_key

SWEEP_TIMEOUT_S = 20
DOWN_KEY = "hosts_down"
TUNNELS_KEY = "tunnels"


class DockerBackend:
    name = "docker"

    def __init__(self, setup: BackendSetup) -> None:
        settings = setup.settings
        shared = setup.shared or {}
        self.links = HostLinks(shared.get(TUNNELS_KEY))
        self._once = Once(setup.session_dir / "once")
        self.reaper = Reaper()
        self._making = threading.RLock()
        self._workspaces = setup.session_dir / "workspaces"
        self._bind_workspaces = True  # until the engine is found not to see them
        self._log_dir = settings.output_dir / "builds"
        self._no_cache = settings.clean_cache
        self._build_context_ignores = settings.build_context_ignores
        self._pinger = Pinger(self.links, lambda: self._build_client)
        if settings.hosts_file is None:
            device_root = settings.context.get("gpu_device_root")
            self._hosts: tuple[Host, ...] = (local_host(settings.local_gpus, device_root),)
            self._down: dict[str, str] = {}
            if setup.shared is None:
                # The controller checks the engine now: a session that cannot run
                # anything is a usage error before any test, not a failure per test.
                try:
                    self.__dict__["_build_client"] = connect()  # see _made_once
                except EngineError as exc:
                    raise UsageProblem(str(exc)) from None
        else:
            self._hosts = tuple(load_hosts(settings.hosts_file, settings.gpu_vendor))
            self._down = dict(shared.get(DOWN_KEY, {}))
            if setup.shared is None:
                self._down = check_hosts(self._hosts, self.links)
                if len(self._down) == len(self._hosts):
                    self.links.close()
                    reasons = "; ".join(f"{name}: {why}" for name, why in self._down.items())
                    raise UsageProblem(
                        f"--mad-hosts {settings.hosts_file}: no host answers ({reasons})"
                    )
        if setup.shared is None:
            # Containers of earlier sessions whose controller was killed (kill -9, a
            # crashed CI job) would run on forever: the next session removes them.
            self._on_each_host(remove_orphans)

    def _made_once(self, name: str, make: Callable[[], Any]) -> Any:
        """An attribute made on first use, once, whichever thread of the session's tests
        asks first (functools.cached_property locks nothing from Python 3.12 on)."""
        with self._making:
            if name not in self.__dict__:
                self.__dict__[name] = make()
            return self.__dict__[name]

    @property
    def _build_client(self) -> docker.DockerClient:
        """The engine images are built on (DOCKER_HOST, the local one by default)."""
        return self._made_once("_build_client", connect)

    @property
    def engines(self) -> Engines:
        return self._made_once(
            "engines", lambda: Engines(self._build_client, self._once, self.links)
        )

    @property
    def builder(self) -> ImageBuilder:
        skip = self._build_context_ignores
        return self._made_once("builder", lambda: ImageBuilder(
            self._build_client, self._log_dir, self._once, self._no_cache, skip
        ))  # fmt: skip

    @property
    def pusher(self) -> ImagePusher:
        return self._made_once("pusher", lambda: ImagePusher(self._build_client, self._once))

    def hosts(self) -> tuple[Host, ...]:
        return self._hosts

    def hosts_down(self) -> Mapping[str, str]:
        return dict(self._down)

    def ping_host(self, host: Host, deadline_s: float) -> Ping:
        return self._pinger.ping(host, deadline_s)

    def shared_state(self) -> dict[str, Any]:
        return {DOWN_KEY: dict(self._down), TUNNELS_KEY: self.links.urls}

    def prepare(
        self, request: ImageRequest, host: Host, on_output: OutputSink | None = None
    ) -> ImageFacts:
        try:
            if request.dockerfile is not None:
                facts = self.builder.ensure(request, on_output)
                self.engines.ship(facts.name, facts.docker_sha, host)
                return facts
            reference = request.reference or request.name
            if request.pull_if_missing:
                image_id = self.engines.provide(reference, host)
            elif request.pull:
                auth = dict(request.auth) if request.auth else None
                image_id = self.engines.pull(reference, host, auth)
            else:
                image_id = self.engines.local_image_id(reference)
                self.engines.ship(reference, image_id, host)
        except ENGINE_FAILURES as exc:
            raise self.engines.failure(host, exc, f"preparing {request.name}") from None
        return ImageFacts(
            name=reference,
            docker_sha=image_id,
            base_docker=request.base_docker,
            pulled=request.pull,
            build_duration=request.build_duration,
        )

    def build(self, request: ImageRequest) -> ImageFacts:
        """The image built on the build engine (build-only sessions): shipped nowhere."""
        try:
            return self.builder.ensure(request)
        except ENGINE_FAILURES as exc:
            raise EngineError(f"building {request.name} failed: {first_line(exc)}") from None

    def push(
        self,
        image: str,
        reference: str,
        auth: Mapping[str, str] | None,
        on_progress: PushProgressSink | None = None,
    ) -> str:
        return self.pusher.push(image, reference, auth, on_progress)

    def start(self, spec: RunSpec, host: Host, on_output: OutputSink | None) -> RunHandle:
        return self.create(spec, host).start(on_output)

    def create(self, spec: RunSpec, host: Host) -> MadeRun:
        """The run's container, made and filled but not started (see `CreatesAhead`)."""
        try:
            volumes = self._data_volumes(spec, host)
            client = self.engines.client(host)
            try:
                run = ContainerRun(client, spec, host.name, None, volumes, self.reaper,
                                   self._workspace_dir(spec, host), start=False)  # fmt: skip
            except WorkspaceNotShared:
                self._bind_workspaces = False  # for the rest of the session
                run = ContainerRun(client, spec, host.name, None, volumes, self.reaper, start=False)
            return _Made(run, self, host)
        except HostLost:
            raise
        except EngineError as exc:
            raise self._lost_or(host, exc) from None

    def _workspace_dir(self, spec: RunSpec, host: Host) -> Path | None:
        """A directory of this machine to bind as the run's workspace, where the engine
        shares this machine's files: copies and results then move as files, not as
        archives through the engine (two archive calls a test, each mounting the
        container's file system). As root only: the container's files there are
        root's, and only root can remove them afterwards. Not for a kept container,
        which outlives the session's directory."""
        if _elsewhere(host) or spec.keep_alive or os.geteuid() != 0 or not self._bind_workspaces:
            return None
        return self._workspaces / uuid.uuid4().hex[:16]

    def _data_volumes(self, spec: RunSpec, host: Host) -> dict[str, str]:
        """Content key -> volume, for the fetched data of a host that is not this machine
        (its engine cannot see our cache): copied there once per host and dataset."""
        if not spec.data or not _elsewhere(host):
            return {}
        volumes = {}
        # The copying container carries the run's session labels: sweeps find it.
        labels = {key: value for key, value in spec.labels.items()
                  if key in (SESSION_LABEL, CONTROLLER_LABEL)}  # fmt: skip
        for bind in spec.data:
            key = bind.content_key
            if key is None or key in volumes:
                continue

            def copy(bind: DataBind = bind) -> dict[str, Any]:
                try:
                    client = self.engines.client(host)
                    volume, copied = data_volume(client, bind, spec.image, labels)
                except ENGINE_FAILURES as exc:
                    doing = f"copying data '{bind.name}' to a volume"
                    raise self.engines.failure(host, exc, doing) from None
                return {"volume": volume, "copied": copied}

            once_key = note_key("data", host.name, key)
            result, _ = self._once.run(once_key, copy)
            if not self._volume_there(host, str(result["volume"])):
                # Removed since (docker volume rm): a mount of it would make it anew, empty.
                self._once.forget(once_key)
                result, _ = self._once.run(once_key, copy)
            volumes[key] = str(result["volume"])
        return volumes

    def _volume_there(self, host: Host, name: str) -> bool:
        try:
            self.engines.client(host).volumes.get(name)
        except docker.errors.NotFound:
            return False
        except ENGINE_FAILURES as exc:
            raise self.engines.failure(host, exc, f"looking for volume {name}") from None
        return True

    def _lost_or(self, host: Host, exc: MadError) -> MadError:
        return exc if self.engines.answers(host) else HostLost(host.name, str(exc))

    def sweep(self, session_id: str) -> int:
        """Removes, on every host, any container of the session that a killed or
        interrupted worker could not remove."""
        self.reaper.drain()
        return sum(self._on_each_host(lambda client: remove_session(client, session_id)))

    def _on_each_host(self, action: Callable[[docker.DockerClient], int]) -> list[int]:
        """The action on every host that answers now, all at once: a host that is gone
        (or frozen) runs nothing of ours any more and costs one short ping."""

        def one(host: Host) -> int:
            with contextlib.suppress(MadError, *ENGINE_FAILURES):
                # The session's own client when it has one (over an SSH tunnel a new
                # client costs a few round trips); else one made for the sweep.
                cached = self.engines.cached(host) if "engines" in self.__dict__ else None
                if cached is not None:
                    return action(cached) if answers(cached) else 0
                client = (
                    self.links.client(host, timeout=SWEEP_TIMEOUT_S)
                    if host.docker
                    else connect(timeout=SWEEP_TIMEOUT_S)
                )
                try:
                    if answers(client):
                        return action(client)
                finally:
                    client.close()
            return 0

        reachable = [host for host in self._hosts if host.name not in self._down]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(reachable))) as pool:
            return list(pool.map(one, reachable))

    def close(self) -> None:
        self._pinger.close()
        self.reaper.drain()
        if "engines" in self.__dict__:
            self.engines.close()
        self.links.close()


class _Made:
    """A container made for its run, waiting for its turn to start."""

    def __init__(self, run: ContainerRun, backend: DockerBackend, host: Host) -> None:
        self.run = run
        self.backend = backend
        self.host = host

    def start(self, on_output: OutputSink | None) -> RunHandle:
        try:
            self.run.begin(on_output)
        except EngineError as exc:
            raise self.backend._lost_or(self.host, exc) from None
        return _CheckedRun(self.run, self.backend.engines, self.host)

    def discard(self) -> None:
        with contextlib.suppress(*ENGINE_FAILURES):
            self.run.discard()


class _CheckedRun:
    """A container run whose engine failures say whether the host was lost."""

    def __init__(self, run: ContainerRun, engines: Engines, host: Host) -> None:
        self.run = run
        self.engines = engines
        self.host = host
        # (an engine failure, what it was found to mean) once the host was asked.
        self._judged: tuple[EngineError, MadError] | None = None

    def wait_exit(self) -> bool:
        return bool(self._checked(self.run.wait_exit))

    def wait(self) -> Any:
        return self._checked(self.run.wait)

    def _checked(self, waiting: Callable[[], Any]) -> Any:
        try:
            return waiting()
        except EngineError as exc:
            # wait() raises again what wait_exit() raised: the host is asked once.
            if self._judged is None or self._judged[0] is not exc:
                lost = not self.engines.answers(self.host)
                self._judged = (exc, HostLost(self.host.name, str(exc)) if lost else exc)
            if self._judged[1] is exc:
                raise
            raise self._judged[1] from None

    def cancel(self) -> None:
        self.run.cancel()


def _elsewhere(host: Host) -> bool:
    """Whether the host's engine runs on another machine (ssh://, tcp://): it cannot
    bind-mount a path of this one."""
    return host.docker is not None and not host.docker.startswith("unix://")


def create(setup: BackendSetup) -> DockerBackend:
    """The entry point of the `docker` backend."""
    return DockerBackend(setup)
