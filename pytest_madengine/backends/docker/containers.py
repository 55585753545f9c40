"""Benchmark containers on one Docker Engine through the Docker SDK: create, copy the
scripts in, start, stream the log (secrets masked), wait with the timeout, read results
back, bring the workspace back, remove.

Under keep-alive the container idles instead and the command runs in it as an exec, so
that it is still running for `docker exec` when the run is over; it is not removed.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import queue
import re
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import docker.types
import docker.utils.socket
import requests.adapters
import requests.exceptions
import urllib3.exceptions

from pytest_madengine.backends import (
    CONTROLLER_LABEL,
    LABEL_PREFIX,
    SESSION_LABEL,
    OutputSink,
    RunOutcome,
    RunSpec,
)
from pytest_madengine.backends.collect import (
    Landing,
    collect_workspace,
    extract_workspace,
    fill_workspace,
)
from pytest_madengine.copies import copy_entries
from pytest_madengine.errors import MadError, first_line
from pytest_madengine.resources.interrupts import deferred_interrupts
from pytest_madengine.resources.processes import identity_gone
from pytest_madengine.runlog import LogStream

ENGINE_FAILURES: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,  # a stream read (pull, build, logs) cut or timed out
    OSError,
)
# Result files (multiple_results CSVs) are small; a bound keeps a runaway one out of memory.
MAX_RESULT_BYTES = 64 * 1024 * 1024
LOG_JOIN_TIMEOUT_S = 10
SPOOL_BYTES = 8 * 1024 * 1024
# Every engine call has a deadline: requests wait at most this long for an answer, and
# a container is waited for in slices, the engine pinged between them, so a host that
# stops answering (a frozen dockerd) is found lost within a slice and a ping.
CLIENT_TIMEOUT_S = 60
# The SDK sends pulls with no timeout at all: they get this long of silence (no byte
# of progress) before they are given up as stalled. Builds keep none, as with `docker
# build`: a build step may compile quietly for hours.
STREAM_SILENCE_S = 900
WAIT_SLICE_S = 10
PING_TIMEOUT_S = 5
# How long the end of a session waits for finished containers to be removed.
REAP_TIMEOUT_S = 60
REAPER_THREADS = 4
# A removal the engine refused is asked again this often, pausing 0.5, 1, 2 s between.
REMOVE_TRIES = 4
REMOVE_BACKOFF_S = 0.5
# A kept container carries this label (with the session id) instead of the session and
# controller labels, so that neither the session's sweep nor a later session's removal
# of orphans takes it: it is the user's.
KEEP_ALIVE_LABEL = f"{LABEL_PREFIX}.keep-alive"
# What a kept container runs while the benchmark runs in it as an exec, and after.
IDLE_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]


# Connections kept per engine: each running container holds two (its wait and its log
# stream), and a session runs up to --mad-concurrency of them from one client.
MAX_POOL_SIZE = 64


class EngineError(MadError):
    """The Docker Engine failed us (unreachable, gone mid-run, refused the container)."""


# A kept container is named as madengine names its containers; a second kept run of the
# same image takes the first free `_2`, `_3`... (madengine refuses it).
KEPT_NAME_TRIES = 100


def kept_container_name(image: str, nth: int = 1) -> str:
    """madengine's `container_<image>` (`/` and `:` as `_`), with `_<nth>` after the
    first; any other character a container name may not hold becomes `_` too."""
    name = "container_" + re.sub(r"[^a-zA-Z0-9_.-]", "_", image)
    return name if nth == 1 else f"{name}_{nth}"


def _create(client: docker.DockerClient, kwargs: dict[str, Any], spec: RunSpec) -> Any:
    """The container; a kept one under the first free name of its image (the engine
    refuses a name in use, so two sessions never take the same one)."""
    if not spec.keep_alive:
        return client.containers.create(**kwargs)
    for nth in range(1, KEPT_NAME_TRIES + 1):
        try:
            return client.containers.create(**kwargs, name=kept_container_name(spec.image, nth))
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: the name is taken
                raise
    first, last = kept_container_name(spec.image), kept_container_name(spec.image, KEPT_NAME_TRIES)
    raise EngineError(
        f"keep-alive: containers {first} to {last} all exist; remove those you are done"
        f" with (docker rm -f {first})"
    )


def create_kwargs(spec: RunSpec, data_volumes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The arguments of `containers.create` for a spec (kept pure so tests can read them).
    `data_volumes`: content key -> the volume holding that data on the engine (a host
    other than this machine); the other data are bound from the host's paths."""
    labels = dict(spec.labels)
    if spec.keep_alive:
        labels.pop(CONTROLLER_LABEL, None)
        labels[KEEP_ALIVE_LABEL] = labels.pop(SESSION_LABEL, "")
    kwargs: dict[str, Any] = {
        "image": spec.image_id or spec.image,
        "command": IDLE_COMMAND if spec.keep_alive else list(spec.command),
        "working_dir": spec.workdir,
        "environment": dict(spec.env),
        "labels": labels,
        "detach": True,
        "privileged": spec.privileged,
        "network_mode": spec.network,
    }
    if spec.ipc:
        kwargs["ipc_mode"] = spec.ipc
    if spec.devices:
        kwargs["devices"] = [f"{d.host_path}:{d.container_path}:rwm" for d in spec.devices]
    if spec.group_add:
        kwargs["group_add"] = list(spec.group_add)
    if spec.binds:
        # Mounts, not volumes: the engine refuses a host path that does not exist instead
        # of creating it (an empty directory would look like data to the model).
        kwargs["mounts"] = [
            docker.types.Mount(b.container_path, b.host_path, type="bind", read_only=b.read_only)
            for b in spec.binds
        ]
    if spec.memory:
        # No swap beyond the limit, so that a model over it is killed rather than slowed.
        kwargs["mem_limit"] = kwargs["memswap_limit"] = spec.memory
    if spec.data:
        # Read-only; a copy on another host is a volume there, anything else a path.
        volumes = data_volumes or {}
        kwargs.setdefault("mounts", []).extend([
            docker.types.Mount(bind.container_path, volumes[bind.content_key], type="volume",
                               read_only=True)
            if bind.content_key is not None and bind.content_key in volumes
            else docker.types.Mount(bind.container_path, bind.source, type="bind", read_only=True)
            for bind in spec.data
        ])  # fmt: skip
    if spec.nvidia_gpu_ids is not None:
        kwargs["device_requests"] = [
            docker.types.DeviceRequest(
                driver="nvidia",
                device_ids=[str(index) for index in spec.nvidia_gpu_ids],
                capabilities=[["gpu"]],
            )
        ]
    if spec.cap_add:
        kwargs["cap_add"] = list(spec.cap_add)
    if spec.cpuset_cpus:
        kwargs["cpuset_cpus"] = spec.cpuset_cpus
    return kwargs


def tar_directories(
    copies: tuple[tuple[Path, str], ...],
    excludes: tuple[Path, ...] = (),
    within: Path | None = None,
) -> IO[bytes]:
    """A tar of host directories (or files) placed at container paths (extracted at `/`),
    spooled to disk past a few megabytes (scripts directories may hold big files), rewound.
    `excludes` are host paths left out, with everything below them; links are handled as
    `copy_entries` says (`within`: the MAD tree)."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - returned open
    with tarfile.open(fileobj=spool, mode="w") as archive:
        for host, container in copies:
            base = container.strip("/")
            if not host.is_dir():
                archive.add(str(host.resolve()), arcname=base)
                continue
            archive.add(str(host.resolve()), arcname=base, recursive=False)
            for entry in copy_entries(host, within, excludes):
                name = f"{base}/{entry.relative}"
                if entry.kind == "link":
                    info = tarfile.TarInfo(name)
                    info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.link, 0o777
                    archive.addfile(info)
                else:
                    archive.add(str(entry.source), arcname=name, recursive=False)
    spool.seek(0)
    return spool


def attached_output(client: docker.DockerClient, container_id: str) -> Iterator[bytes]:
    """The output of a container not started yet, as the engine copies it from the
    container: in the blocks the model wrote (up to 32 KiB), not a piece per line as
    the log endpoint gives it (decoded from the log driver's JSON, a Python call per
    line: 500 MB of lines took minutes). Attached before the start, so that nothing is
    missed; the stream ends when the container does. The request is made now, the
    blocks are read as they are iterated."""
    api: Any = client.api  # its private helpers (_post, _url...) are not in its stubs
    response = api._post(  # the SDK's attach, whose socket would time out in a silence
        api._url("/containers/{0}/attach", container_id),
        headers={"Connection": "Upgrade", "Upgrade": "tcp"},
        params={"logs": 1, "stdout": 1, "stderr": 1, "stream": 1},
        stream=True,
    )
    sock = api._get_raw_response_socket(response)
    api._disable_socket_timeout(sock)  # a model may be silent for long: not an engine failure

    def blocks() -> Iterator[bytes]:
        try:
            for _, block in docker.utils.socket.frames_iter(sock, tty=False):
                yield block
        finally:
            response.close()

    return blocks()


class _LogPump(threading.Thread):
    """Copies the run's output to the log file as it comes (memory stays flat), with
    the spec's secrets masked in the file and the live output alike."""

    def __init__(
        self,
        container: Any,
        log_path: Path,
        on_output: OutputSink | None,
        header: bytes = b"",
        secrets: tuple[str, ...] = (),
        source: Any = None,
        rereadable: bool = True,
    ) -> None:
        super().__init__(daemon=True, name=f"mad-log-{log_path.stem}")
        self.container = container
        self.log_path = log_path
        self.header = header  # our lines before the container's output
        self.on_output = on_output
        self.secrets = secrets
        # The container's log by default; its attached output, or an exec's output
        # under keep-alive (which cannot be read again: not `rereadable`).
        self.source = source
        self.rereadable = rereadable
        self.broken = False

    def _stream(self) -> LogStream:
        return LogStream(self.log_path, self.secrets, self.on_output, self.header)

    def run(self) -> None:
        try:
            with self._stream().open() as log:
                source = self.source
                if source is None:
                    source = self.container.logs(stream=True, follow=True)
                for chunk in source:
                    log.write(chunk)
        except ENGINE_FAILURES:
            self.broken = True  # the run reads the log again once the container ended

    def finish(self) -> None:
        """Waits for the rest of the log after the container ended: as long as it still
        comes (a model that printed gigabytes takes a while), not for a stream that hangs."""
        size = -1
        while self.is_alive():
            self.join(LOG_JOIN_TIMEOUT_S)
            grown = self.log_path.stat().st_size if self.log_path.exists() else 0
            if grown == size:
                self.broken = True  # stuck: read it again below, as after a break
                return
            size = grown

    def reread(self) -> None:
        """The whole log of the ended container, streamed into the file anew."""
        if not self.rereadable:
            return  # an exec's output cannot be read again; the log keeps what came
        self._stream().rewrite(self.container.logs(stream=True, follow=False))


class Reaper:
    """Removes finished containers on threads of its own (a few at once), so that a
    test's result does not wait for its container's removal (tens of ms each). `drain`
    waits until all are gone; the session drains before it sweeps and closes."""

    def __init__(self, threads: int = REAPER_THREADS) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._most = threads
        self._lock = threading.Lock()

    def remove(self, container: Any) -> None:
        self._queue.put(container)
        with self._lock:
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            if len(self._threads) < min(self._most, self._queue.unfinished_tasks):
                thread = threading.Thread(target=self._work, name="mad-reaper", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _work(self) -> None:
        while True:
            container = self._queue.get()
            try:
                _remove(container)
            finally:
                self._queue.task_done()

    def drain(self, timeout_s: float = REAP_TIMEOUT_S) -> bool:
        """Waits until every container handed over is removed; False after `timeout_s`
        (a frozen engine): the sweep, or the next session, removes the rest."""
        deadline = time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True


class ContainerRun:
    """A container (see `RunHandle`): created and filled in __init__, then started there,
    or by `begin` when it was made ahead (`start=False`) and its turn comes."""

    def __init__(
        self,
        client: docker.DockerClient,
        spec: RunSpec,
        host: str,
        on_output: OutputSink | None = None,
        data_volumes: Mapping[str, str] | None = None,
        reaper: Reaper | None = None,
        workspace_dir: Path | None = None,
        start: bool = True,
    ) -> None:
        self.spec = spec
        # A new directory of this machine bound as the workspace, the run's copies put
        # there instead of sent as an archive (a local engine; see DockerBackend.start).
        self.workspace_dir = workspace_dir
        self.reaper = reaper  # removes the container once it is done; else `wait` does
        self.host = host
        self.client = client
        self.container: Any = None
        self.cancelled = False
        self.lost = False  # the engine stopped answering: nothing more is asked of it
        self.exec_id: str | None = None
        # (exit code, timed out, when it ended) once it ended, or what waiting raised.
        self._exit: tuple[int | None, bool, float] | BaseException | None = None
        self._kill_refused = False
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.header = "".join(f"{line}\n" for line in spec.log_notes).encode()
        spec.log_path.write_bytes(self.header)
        with self._undone_on_failure():
            kwargs = create_kwargs(spec, data_volumes)
            copies = spec.copies
            if workspace_dir is not None:
                workspace_dir.mkdir(mode=0o755, parents=True)
                copies = fill_workspace(
                    copies, spec.copy_excludes, workspace_dir, spec.workdir, spec.copy_within
                )
                kwargs.setdefault("mounts", []).append(
                    docker.types.Mount(spec.workdir, str(workspace_dir), type="bind")
                )
            try:
                self.container = _create(client, kwargs, spec)
            except docker.errors.APIError as exc:
                if workspace_dir is not None and str(workspace_dir) in str(exc):
                    raise WorkspaceNotShared(first_line(exc)) from None
                raise
            if copies:
                with tar_directories(copies, spec.copy_excludes, spec.copy_within) as archive:
                    self.container.put_archive("/", archive)
        if start:
            self.begin(on_output)

    def begin(self, on_output: OutputSink | None = None) -> None:
        """Starts the container made in __init__ and follows its log."""
        spec = self.spec
        if on_output is not None and self.header:
            on_output(self.header)
        with self._undone_on_failure():
            self.started = time.time()
            source = None
            if not spec.keep_alive:
                source = attached_output(self.client, self.container.id)
            self.container.start()
            if spec.keep_alive:
                created = self.client.api.exec_create(
                    self.container.id, list(spec.command), workdir=spec.workdir
                )
                self.exec_id = created["Id"]
                source = self.client.api.exec_start(self.exec_id, stream=True)
            self.pump = _LogPump(
                self.container, spec.log_path, on_output, self.header, spec.secrets, source,
                rereadable=not spec.keep_alive,
            )  # fmt: skip
            self.pump.start()

    @contextlib.contextmanager
    def _undone_on_failure(self) -> Iterator[None]:
        """Whatever fails while the container is made or started removes it and its
        workspace; an engine's failure becomes one line."""
        try:
            yield
        except BaseException as exc:
            self._undo()
            if isinstance(exc, ENGINE_FAILURES):
                raise _engine_error(exc, self.spec, self.host) from None
            raise

    def discard(self) -> None:
        """Removes the container made ahead that will not run (its test ran elsewhere,
        or the session stops)."""
        if self.reaper is not None and self.container is not None:
            self.reaper.remove(self.container)
            self.container = None
        self._undo()

    def _undo(self) -> None:
        if self.container is not None:
            _remove(self.container)
            self.container = None
        self._drop_workspace()

    def _drop_workspace(self) -> None:
        if self.workspace_dir is not None:
            shutil.rmtree(self.workspace_dir, ignore_errors=True)

    def wait_exit(self) -> bool:
        """Until the command has ended (or was killed at its timeout): its GPUs are free
        from then on, while `wait` still reads the results back; False when a kill at
        the timeout was refused (it may run on until its removal). What it raises,
        `wait` raises again (and removes the container)."""
        if self._exit is None:
            try:
                if self.exec_id is not None:
                    waited = self._wait_exec(self.exec_id, self.spec.timeout_s)
                else:
                    waited = self._wait(self.spec.timeout_s)
                self._exit = (*waited, time.time())
            except BaseException as exc:
                self._exit = exc
        if isinstance(self._exit, BaseException):
            raise self._exit
        return not self._kill_refused

    def wait(self) -> RunOutcome:
        spec = self.spec
        properties: dict[str, str] = {}
        try:
            self.wait_exit()
            assert isinstance(self._exit, tuple)
            exit_code, timed_out, ended = self._exit
            self.pump.finish()
            if self.pump.broken:
                self.pump.reread()
            results = self._collect(spec)
            if spec.keep_alive and not self.cancelled:
                self.container.reload()
                properties["container"] = self.container.name
                with spec.log_path.open("a", encoding="utf-8") as log:
                    log.write(
                        f"keep-alive: container {self.container.name} left running"
                        f" (docker exec -it {self.container.name} bash)\n"
                    )
            return RunOutcome(
                exit_code,
                timed_out,
                spec.log_path,
                self.started,
                ended,
                self.host,
                results,
                properties,
                oom_killed=getattr(self, "_oom_killed", False),
            )
        except ENGINE_FAILURES as exc:
            raise _engine_error(exc, spec, self.host) from None
        finally:
            self._drop_workspace()  # the container has stopped: nothing writes there now
            if not self.lost and (not spec.keep_alive or self.cancelled):
                if self.reaper is not None:
                    self.reaper.remove(self.container)
                else:
                    with deferred_interrupts():  # a second Ctrl-C must not leave it running
                        _remove(self.container)

    def _collect(self, spec: RunSpec) -> dict[str, str | None]:
        """The result files' texts (None: not there), read with the workspace as it
        comes back to the host: from the bound directory, or from one archive of the
        container's (each archive call mounts its file system: one is cheaper than
        three); result files elsewhere are read one by one."""
        prefix = spec.workdir.rstrip("/") + "/"
        inside = {
            path: posixpath.relpath(path, spec.workdir)
            for path in spec.result_files
            if posixpath.normpath(path).startswith(prefix)
        }
        back = None
        landing = None
        if spec.collect_to is not None:
            landing = Landing(spec.collect_to, spec.collect_keep_out, spec.collect_ledger,
                              spec.secrets)  # fmt: skip
        if self.workspace_dir is not None:
            back = collect_workspace(self.workspace_dir, landing, spec.collect_skip,
                                     set(inside.values()), MAX_RESULT_BYTES)  # fmt: skip
        elif landing is not None:
            stream, _ = self.container.get_archive(spec.workdir)
            back = extract_workspace(stream, landing, spec.collect_skip,
                                     set(inside.values()), MAX_RESULT_BYTES)  # fmt: skip
        results: dict[str, str | None] = {}
        if back is not None:
            results = {path: back.read.get(relative) for path, relative in inside.items()}
            if back.refused:
                with spec.log_path.open("a", encoding="utf-8") as log:
                    log.writelines(f"{line}\n" for line in back.notes())
        for path in spec.result_files:
            if path not in results:
                results[path] = self._read_file(path)
        return results

    def cancel(self) -> None:
        self.cancelled = True
        with contextlib.suppress(*ENGINE_FAILURES):
            self.container.kill()

    def _wait(self, timeout_s: float | None) -> tuple[int | None, bool]:
        """(exit code, timed out), waiting in slices with a ping of the engine between
        them; EngineError when the engine stops answering."""
        deadline = None if timeout_s is None else self.started + timeout_s
        while True:
            left = None if deadline is None else deadline - time.time()
            if left is not None and left <= 0:
                try:
                    self.container.kill()
                except docker.errors.APIError as exc:
                    # 409: it ended meanwhile; anything else: it may still run.
                    self._kill_refused = exc.status_code != 409
                except ENGINE_FAILURES:
                    self._kill_refused = True
                return None, True
            try:
                status = self.container.wait(timeout=WAIT_SLICE_S if left is None else
                                             max(0.1, min(WAIT_SLICE_S, left)))  # fmt: skip
            except ENGINE_FAILURES as exc:
                if not answers(self.client):
                    self.lost = True
                    raise EngineError(
                        f"Docker Engine on {self.host} stopped answering: {first_line(exc)}"
                    ) from None
                continue  # only the slice ended
            code = int(status.get("StatusCode", -1))
            # An OOM kill never leaves exit code 0: no inspect for the runs that pass.
            self._oom_killed = code != 0 and self._was_oom_killed()
            return code, False

    def _was_oom_killed(self) -> bool:
        with contextlib.suppress(*ENGINE_FAILURES):
            self.container.reload()
            return bool(self.container.attrs.get("State", {}).get("OOMKilled"))
        return False

    def _wait_exec(self, exec_id: str, timeout_s: float | None) -> tuple[int | None, bool]:
        """The exec ends when its output does; on a timeout every process but the idle
        one is killed (the container stays, as keep-alive asks)."""
        self.pump.join(timeout_s)
        if self.pump.is_alive():
            with contextlib.suppress(*ENGINE_FAILURES):
                self.container.exec_run(["sh", "-c", "kill -KILL -1"])
            self.pump.join(LOG_JOIN_TIMEOUT_S)
            return None, True
        code = self.client.api.exec_inspect(exec_id).get("ExitCode")
        return (int(code) if code is not None else None), False

    def _read_file(self, path: str) -> str | None:
        """Text of a file in the (stopped) container, or None when it is not there."""
        try:
            stream, stat = self.container.get_archive(path)
        except docker.errors.NotFound:
            return None
        if stat.get("size", 0) > MAX_RESULT_BYTES:
            return None
        data = b"".join(stream)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = archive.next()
            # A link (to anything) is not the result file: never follow it.
            extracted = archive.extractfile(member) if member and member.isfile() else None
            return extracted.read().decode("utf-8", errors="replace") if extracted else None


def answers(client: docker.DockerClient, timeout_s: float = PING_TIMEOUT_S) -> bool:
    """Whether the engine answers a ping within the time (the client's own timeout is
    for long calls). The API client is a requests session: its get takes a timeout."""
    try:
        return bool(client.api.get(f"{client.api.base_url}/_ping", timeout=timeout_s).ok)
    except ENGINE_FAILURES:
        return False


class WorkspaceNotShared(EngineError):
    """The engine cannot bind a directory of this machine (its daemon sees another file
    system: a snap's, a VM's): the workspace goes as an archive instead."""


def _engine_error(exc: BaseException, spec: RunSpec, host: str) -> EngineError:
    if isinstance(exc, docker.errors.ImageNotFound):
        return EngineError(f"image {spec.image} not found on {host}: {first_line(exc)}")
    return EngineError(f"Docker Engine on {host} failed: {first_line(exc)}")


def _remove(container: Any) -> None:
    """Removes it, killed first if it runs. An engine that answers with an error (its
    file system still busy, a removal already under way) is asked again a few times;
    one that cannot be reached or does not answer in time is left to the session's
    sweep at the end (asking again would hold a frozen engine's caller for minutes)."""
    for attempt in range(REMOVE_TRIES):
        try:
            container.remove(force=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            if attempt + 1 < REMOVE_TRIES:
                time.sleep(REMOVE_BACKOFF_S * 2**attempt)
        except ENGINE_FAILURES:
            return


def remove_orphans(client: docker.DockerClient) -> int:
    """Removes the containers of sessions whose controller (a process of this machine)
    is gone; how many. Sessions of other machines are left to them."""
    containers = client.containers.list(all=True, filters={"label": CONTROLLER_LABEL})
    orphans = [c for c in containers if identity_gone(c.labels.get(CONTROLLER_LABEL, ""))]
    for container in orphans:
        _remove(container)
    return len(orphans)


def remove_session(client: docker.DockerClient, session_id: str) -> int:
    """Removes every container of the session on this engine; how many there were."""
    filters: dict[str, str | list[str] | bool] = {"label": f"{SESSION_LABEL}={session_id}"}
    containers = client.containers.list(all=True, filters=filters)
    for container in containers:
        _remove(container)
    return len(containers)


class _Deadlines(requests.adapters.BaseAdapter):
    """The client's own transport, for which a request sent without any timeout (the
    SDK's pulls) waits STREAM_SILENCE_S for each answer, not for ever; a build waits for
    a connection only as long as any request."""

    def __init__(self, transport: requests.adapters.BaseAdapter, connect_s: float) -> None:
        super().__init__()
        self.transport = transport
        self.connect_s = connect_s

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, timeout: Any = None, **kwargs: Any
    ) -> requests.Response:
        if timeout is None:
            building = (request.path_url or "").partition("?")[0].endswith("/build")
            timeout = (self.connect_s, None if building else STREAM_SILENCE_S)
        return self.transport.send(request, timeout=timeout, **kwargs)

    def close(self) -> None:
        self.transport.close()


def bounded(
    client: docker.DockerClient, connect_s: float = CLIENT_TIMEOUT_S
) -> docker.DockerClient:
    """The client, every request of which has a deadline (see _Deadlines), and none of
    which reads the process's environment: requests looks for proxy variables in
    os.environ at each request, and iterating it on a run's thread while pytest sets
    PYTEST_CURRENT_TEST on the main thread raised KeyError (seen in CI). The engine is
    reached directly, as our own-CA clients always did."""
    for prefix, transport in list(client.api.adapters.items()):
        if not isinstance(transport, _Deadlines):
            client.api.mount(prefix, _Deadlines(transport, connect_s))
    client.api.trust_env = False
    return client
