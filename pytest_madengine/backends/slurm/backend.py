"""The `slurm` backend: each test a batch job on a SLURM cluster, whose script runs the
test's container on its node(s) through Docker.

Placement: SLURM allocates the GPUs. The session sees one host, `slurm:<partition>`,
whose GPUs are one node's worth and `scheduled`: the session's pool checks that a test
fits a node but holds no lease, so every xdist worker submits at once and SLURM queues.
The job says which GPUs it got (JUnit `gpus`, `host` is its node list).

Images: built once per session on this machine's engine (through the docker backend's
builder) for nodes that share it; a manifest's registry image is pulled by the job,
once per node and session.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import pwd
import re
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_madengine import runlog
from pytest_madengine.backends import (
    SESSION_LABEL,
    TEST_LABEL,
    BackendSetup,
    ImageRequest,
    OutputSink,
    RunOutcome,
    RunSpec,
    secret_argument_variable,
)
from pytest_madengine.backends.docker.local import EngineError, LocalImages
from pytest_madengine.backends.slurm.cluster import JobState, SlurmCluster
from pytest_madengine.backends.slurm.node import (
    JOB_LABEL,
    NODE_LIBRARY,
    PULL_AUTH_VARIABLE,
    NodeFacts,
    NodeScript,
    env_file_text,
    read_facts,
    read_result,
    render_node_script,
    write_copies,
)
from pytest_madengine.backends.slurm.script import SlurmJobSpec, slurm_time, write_script
from pytest_madengine.backends.slurm.settings import SlurmSettings, parse_settings
from pytest_madengine.backends.slurm.watcher import JobWatch, JobWatcher
from pytest_madengine.contract import ImageFacts
from pytest_madengine.credentials import registry_of
from pytest_madengine.errors import MadError, NotRun, UsageProblem, first_line
from pytest_madengine.resources.gpus import Gpu, GpuInventory
from pytest_madengine.resources.hosts import Host
from pytest_madengine.resources.interrupts import deferred_interrupts
from pytest_madengine.resources.once import Once
from pytest_madengine.resources.processes import identity_gone

COMMENT_PREFIX = "pytest-madengine"
COMMENT = re.compile(rf"{COMMENT_PREFIX} session=(?P<session>\S+) controller=(?P<controller>\S*)")
# How long a cancelled job gets to leave the queue (its script removes its container).
STOP_WAIT_S = 20.0
WAIT_SLICE_S = 0.2
DOCKER_TIMEOUT_S = 20
# What SLURM's end states mean when SLURM, not the model, ended the job.
KILLED = {
    "TIMEOUT": "killed by SLURM at its time limit",
    "NODE_FAIL": "a node of the job failed",
    "BOOT_FAIL": "a node of the job failed to boot",
    "PREEMPTED": "preempted by SLURM",
    "DEADLINE": "not run before its deadline",
    "OUT_OF_MEMORY": "killed by SLURM for memory",
    "CANCELLED": "cancelled outside this session (scancel or an administrator)",
    "REVOKED": "revoked by SLURM",
    "UNKNOWN": "lost by SLURM",
}


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _safe(name: str, limit: int = 80) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)[:limit] or "test"


@dataclass(frozen=True)
class JobFiles:
    """The files of one job, in its directory under --mad-output/slurm/<session>."""

    directory: Path
    script: Path  # job.sh, given to sbatch
    node_script: Path  # node.sh, run on each node of the job
    nnodes: int
    time_limit_s: int | None = None  # the job's --time (None: the partition's default)
    launcher: str | None = None  # of a distributed run (torchrun)


class SlurmBackend:
    name = "slurm"

    def __init__(self, setup: BackendSetup) -> None:
        given = setup.settings
        self.session_settings = given
        self.settings: SlurmSettings = parse_settings(given.effective_context.values)
        self.session_id = setup.session_id
        self.controller = setup.controller
        self.cluster = SlurmCluster()
        self.watcher = JobWatcher(self.cluster, self.settings.pending_timeout_s)
        self.directory = given.output_dir / "slurm" / setup.session_id
        self._once = Once(setup.session_dir / "once")
        self._pull_auth: dict[str, Mapping[str, str] | None] = {}
        self._lock = threading.Lock()
        shared = setup.shared
        if shared is None:
            partition, gpus = self._discover()
            if not self.settings.dry_run:
                self._cancel_orphans()
        else:
            partition, gpus = shared["partition"], int(shared["gpus_per_node"])
        self.partition = partition
        self.gpus_per_node = gpus
        vendor = given.gpu_vendor
        architecture = given.effective_context.gpu_architecture
        self._host = Host(
            name=f"slurm:{partition}",
            docker=None,
            gpus=GpuInventory(
                tuple(Gpu(index, vendor, architecture) for index in range(gpus)),
                source=f"SLURM partition {partition}, per node",
                virtual=True,  # the job maps the devices SLURM gives it
            ),
            scheduled=True,
        )

    # ---- the cluster ----

    def _discover(self) -> tuple[str, int]:
        """(partition, GPUs per node), from sinfo unless the settings say both."""
        settings = self.settings
        try:
            partitions = self.cluster.partitions()
        except MadError as exc:
            if settings.dry_run and settings.gpus_per_node is not None:
                return settings.partition or "default", settings.gpus_per_node
            hint = " (or give slurm.gpus_per_node for a dry run)" if settings.dry_run else ""
            raise UsageProblem(f"--mad-deploy slurm: no cluster answers: {exc}{hint}") from None
        if settings.partition:
            chosen = next((p for p in partitions if p.name == settings.partition), None)
            if chosen is None:
                known = ", ".join(p.name for p in partitions) or "none"
                raise UsageProblem(
                    f"context 'slurm': partition {settings.partition!r} does not exist"
                    f" (sinfo lists: {known})"
                )
        else:
            chosen = next((p for p in partitions if p.default), None)
            if chosen is None:
                raise UsageProblem(
                    "--mad-deploy slurm: the cluster has no default partition; name one in"
                    " the context's slurm.partition"
                )
        if settings.gpus_per_node is not None:
            return chosen.name, settings.gpus_per_node
        return chosen.name, chosen.gpus(settings.gpu_type)

    def _cancel_orphans(self) -> None:
        """Cancels the jobs of earlier sessions of this machine whose controller is gone
        (killed with -9, a crashed CI job): nothing would ever wait for them."""
        with contextlib.suppress(MadError):
            orphans = [
                job_id
                for job_id, comment in self.cluster.comments(_user()).items()
                if (match := COMMENT.search(comment)) and identity_gone(match["controller"])
            ]
            self.cluster.cancel(orphans)

    def hosts(self) -> tuple[Host, ...]:
        return (self._host,)

    def hosts_down(self) -> Mapping[str, str]:
        return {}

    def shared_state(self) -> dict[str, Any]:
        return {"partition": self.partition, "gpus_per_node": self.gpus_per_node}

    # ---- images ----

    @functools.cached_property
    def _images(self) -> LocalImages:
        """This machine's engine, where images are built (made on first use)."""
        try:
            return LocalImages.connect(
                self.session_settings.output_dir / "builds",
                self._once,
                self.session_settings.clean_cache,
            )
        except EngineError as exc:
            raise MadError(f"slurm: images are built on this machine's engine: {exc}") from None

    def prepare(
        self, request: ImageRequest, host: Host, on_output: OutputSink | None = None
    ) -> ImageFacts:
        reference = request.reference or request.name
        if request.pull:
            # The job pulls it on its node, once per node: nothing to do here.
            with self._lock:
                self._pull_auth[reference] = request.auth
            return ImageFacts(reference, "", request.base_docker, pulled=True,
                              build_duration=request.build_duration)  # fmt: skip
        if self.settings.dry_run:
            return ImageFacts(reference, "", request.base_docker)
        if request.dockerfile is not None:
            return self._images.build(request, on_output)
        try:
            image_id = str(self._images.client.images.get(reference).id)
        except Exception as exc:  # the SDK's NotFound, or the engine going away
            raise MadError(
                f"image {reference} of the build manifest is not on this machine's engine"
                f" and the manifest names no registry_image for it ({first_line(exc)})"
            ) from None
        return ImageFacts(reference, image_id, request.base_docker,
                          build_duration=request.build_duration)  # fmt: skip

    def _pull_login(self, reference: str) -> tuple[str, str] | None:
        """(registry, base64 login) of a pulled image that needs one: the job gets the
        login in its environment (PULL_AUTH_VARIABLE), its node script in a private
        config only for the pull; None when the pull needs no login."""
        auth = self._pull_auth.get(reference)
        if not auth or not auth.get("username"):
            return None
        # Docker Hub's logins are kept under its index URL.
        registry = registry_of(reference) or "https://index.docker.io/v1/"
        token = base64.b64encode(f"{auth['username']}:{auth.get('password', '')}".encode())
        return registry, token.decode()

    # ---- jobs ----

    def job_spec(self, spec: RunSpec, files: JobFiles, test_name: str) -> SlurmJobSpec:
        """The batch job of a run: GPUs per node, time limit, the context's slurm keys."""
        settings = self.settings
        command: tuple[str, ...] = ("bash", str(files.node_script))
        if files.nnodes > 1:
            # One task on each node; a rank that fails ends the others.
            command = ("srun", f"--nodes={files.nnodes}", f"--ntasks={files.nnodes}",
                       "--ntasks-per-node=1", "--kill-on-bad-exit=1", *command)  # fmt: skip
        return SlurmJobSpec(
            job_name=f"mad-{_safe(test_name)}",
            command=command,
            output=str(spec.log_path),
            partition=self.partition if self.partition != "default" else None,
            account=settings.account,
            qos=settings.qos,
            constraint=settings.constraint,
            nodelist=settings.nodelist,
            exclude=settings.exclude,
            comment=f"{COMMENT_PREFIX} session={self.session_id} controller={self.controller}",
            nodes=files.nnodes,
            gpus_per_node=spec.gpu_count,
            gpu_type=settings.gpu_type,
            time_limit_s=files.time_limit_s,
            workdir=str(files.directory),
            # The log starts with the session's notes (its data); the job adds to them.
            # A job that SLURM requeued (a node failed) would run the model again into
            # the same log and pass as one run: it ends as NODE_FAIL instead.
            extra_sbatch=("--open-mode=append", "--no-requeue", *settings.extra_sbatch),
            modules=settings.modules,
            env=settings.env,
        )

    def write_job(self, spec: RunSpec) -> JobFiles:
        """The job's directory with its scripts, the container's variables and the
        model's files; nothing is submitted."""
        settings = self.settings
        distributed = settings.distributed
        nnodes = distributed.nnodes
        launcher = distributed.launcher or ("torchrun" if nnodes > 1 else None)
        directory = self.directory / spec.log_path.stem
        if directory.exists():  # the same test again (a retry): a clean directory
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        pull_mark = None
        login = None
        if spec.image in self._pull_auth:
            key = hashlib.sha256(spec.image.encode()).hexdigest()[:16]
            pull_mark = self.directory / "pulls" / key
            login = self._pull_login(spec.image)
        node = NodeScript(
            job_dir=directory,
            vendor=self.session_settings.gpu_vendor,
            device_root=settings.device_root,
            gpu_variable="SLURM_STEP_GPUS" if nnodes > 1 else "SLURM_JOB_GPUS",
            nnodes=nnodes,
            launcher=launcher,
            nproc_per_node=distributed.nproc_per_node or max(spec.gpu_count, 1),
            master_port=distributed.master_port,
            pull_mark=pull_mark,
            pull_registry=login[0] if login else None,
        )
        node_script = directory / "node.sh"
        node_script.write_text(render_node_script(spec, node), encoding="utf-8")
        node_script.chmod(0o755)
        env_text = env_file_text(spec.env, spec.secret_variables())
        _write_private(directory / "container.env", env_text)
        runlog.node_copy(directory / NODE_LIBRARY)
        if spec.copies:
            write_copies(spec, directory / "copies.tar")
        time_limit = settings.job_time_limit(spec.timeout_s)
        files = JobFiles(directory, directory / "job.sh", node_script, nnodes, time_limit, launcher)
        # The test's own part of its id (models.json::dummy3[bs=8] -> dummy3[bs=8]).
        test_id = spec.labels.get(TEST_LABEL) or spec.log_path.stem
        test_name = test_id.rpartition("::")[2]
        write_script(self.job_spec(spec, files, test_name), files.script)
        return files

    def start(self, spec: RunSpec, host: Host, on_output: OutputSink | None) -> SlurmRun:
        files = self.write_job(spec)
        if self.settings.dry_run:
            hidden = map(secret_argument_variable, spec.secret_arguments())
            pull_auth = (PULL_AUTH_VARIABLE,) if self._pull_login(spec.image) else ()
            needed = (*spec.secret_variables(), *hidden, *pull_auth)
            export = f" (export {', '.join(needed)} before sbatch)" if needed else ""
            raise NotRun(f"slurm dry run: wrote {files.script}{export}")
        # What became of the test's data first; the job appends (--open-mode=append).
        spec.log_path.write_bytes("".join(f"{line}\n" for line in spec.log_notes).encode())
        submitted = time.time()
        # The secrets travel in the job's environment (SLURM hands it to the job), never
        # in a file of ours: the container's variables by name, the mask's list whole.
        secret_env = {name: spec.env[name] for name in spec.secret_variables()}
        for position, argument in spec.secret_arguments().items():
            secret_env[secret_argument_variable(position)] = argument
        if spec.secrets:
            secret_env[runlog.SECRETS_VARIABLE] = json.dumps(list(spec.secrets))
        login = self._pull_login(spec.image) if spec.image in self._pull_auth else None
        if login is not None:
            secret_env[PULL_AUTH_VARIABLE] = login[1]
        job_id = self.cluster.submit(files.script, secret_env)
        watch = self.watcher.watch(job_id, functools.partial(_says_done, files.directory))
        return SlurmRun(self, spec, files, job_id, watch, on_output, submitted)

    # ---- cleaning ----

    def remove_containers(self, label: str) -> int:
        """Removes this machine's containers carrying the label (key=value); how many.
        The job's script removes its own on its node; this is for nodes that share the
        engine, and for a script that was killed outright."""
        try:
            containers = self._images.client.containers.list(all=True, filters={"label": label})
        except Exception:  # no engine here, or it does not answer: the nodes' scripts clean
            return 0
        for container in containers:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        return len(containers)

    def sweep(self, session_id: str) -> int:
        """Cancels every job of the session still queued or running, waits for them to
        leave the queue (their scripts remove their containers), then removes any
        container of the session left on this machine's engine."""
        removed = 0
        with contextlib.suppress(MadError):
            ours = [
                job_id
                for job_id, comment in self.cluster.comments(_user()).items()
                if (match := COMMENT.search(comment)) and match["session"] == session_id
            ]
            if ours:
                self.cluster.cancel(ours)
                self.cluster.wait(ours, timeout_s=STOP_WAIT_S)
                removed += len(ours)
        if not self.settings.dry_run:
            removed += self.remove_containers(f"{SESSION_LABEL}={session_id}")
        return removed

    def close(self) -> None:
        self.watcher.close()
        if "_images" in self.__dict__:
            self._images.close()


def _says_done(directory: Path) -> bool:
    """Whether rank 0's node script wrote its last fact (the job is about to end)."""
    path = directory / "facts.0"
    return path.exists() and "\ndone=" in path.read_text(encoding="utf-8", errors="replace")


def _write_private(path: Path, text: str) -> None:
    """A file only its owner reads (it may hold secrets)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


class SlurmRun:
    """A submitted job (see `RunHandle`)."""

    def __init__(
        self,
        backend: SlurmBackend,
        spec: RunSpec,
        files: JobFiles,
        job_id: str,
        watch: JobWatch,
        on_output: OutputSink | None,
        submitted: float,
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.files = files
        self.job_id = job_id
        self.watch = watch
        self.on_output = on_output
        self.submitted = submitted
        self.cancelled = False
        self._stopped = False
        self._log_offset = 0

    def wait(self) -> RunOutcome:
        try:
            while not self.watch.done.wait(WAIT_SLICE_S):
                self._forward_output()
            if self.watch.stuck or self.watch.error:
                self._stop()
        except BaseException:  # Ctrl-C, SIGTERM: the job and its container go
            with deferred_interrupts():
                self._stop()
            raise
        finally:
            self.backend.watcher.forget(self.job_id)
        self._forward_output()
        return self.outcome()

    def cancel(self) -> None:
        self.cancelled = True
        self._stop()

    def _stop(self) -> None:
        """scancel, remove the job's containers here, and give the job a little time to
        leave the queue (its script removes its container on its node)."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(MadError):
            self.backend.cluster.cancel([self.job_id])
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(MadError):
                state = self.backend.cluster.poll([self.job_id])[self.job_id]
                self.watch.state = state
                if state.finished:
                    break
            time.sleep(WAIT_SLICE_S)
        self.backend.remove_containers(f"{JOB_LABEL}={self.job_id}")

    def _forward_output(self) -> None:
        if self.on_output is None:
            return
        with contextlib.suppress(OSError), self.spec.log_path.open("rb") as log:
            log.seek(self._log_offset)
            chunk = log.read()
            if chunk:
                self._log_offset += len(chunk)
                self.on_output(chunk)

    def outcome(self) -> RunOutcome:
        # Every rank's log was masked as the node wrote it (runlog on the node).
        return job_outcome(
            self.spec, self.files, self.job_id, self.watch, self.backend.partition,
            self.submitted, cancelled=self.cancelled,
        )  # fmt: skip


def _gpu_text(facts: list[NodeFacts]) -> str:
    return " ".join(f"{fact.node or fact.rank}:{','.join(map(str, fact.gpus))}" for fact in facts)


def job_failure(
    job_id: str,
    state: JobState | None,
    facts: list[NodeFacts],
    watch: JobWatch,
    log_path: Path,
    cancelled: bool,
    time_limit_s: int | None = None,
) -> str | None:
    """Why the job failed when it was not the model's exit code that said so: SLURM ended
    it, it could not start, or its script failed before the container ran."""
    if watch.stuck:
        return f"slurm job {job_id} could not start: {watch.stuck}"
    if watch.error:
        return f"slurm job {job_id}: {watch.error}"
    if cancelled:
        return f"slurm job {job_id} cancelled"
    name = state.state if state else "UNKNOWN"
    if state and state.restarts:
        return (
            f"slurm job {job_id} was requeued by SLURM ({state.restarts} restart(s)): its log"
            f" holds more than one run of the model"
        )
    if name in KILLED:
        reason = f" ({state.reason})" if state and state.reason else ""
        limit = ""
        if name == "TIMEOUT" and time_limit_s is not None:
            limit = f" of {slurm_time(time_limit_s)}"
        return f"slurm job {job_id} {name}{reason}: {KILLED[name]}{limit}"
    first = facts[0] if facts and facts[0].rank == 0 else None
    if first is None or not first.container_ended:
        told = _last_said(log_path)
        code = f" (exit {state.exit_code})" if state and state.exit_code is not None else ""
        where = f" on {state.node_list}" if state and state.node_list else ""
        why = f": {told}" if told else ""
        return f"slurm job {job_id} {name}{code}{where} before its container ended{why}"
    for other in facts[1:]:
        if other.exit_code not in (0, None) or other.timed_out:
            code = "timed out" if other.timed_out else f"exit code {other.exit_code}"
            return f"node rank {other.rank} ({other.node}) of slurm job {job_id}: {code}"
    return None


def _last_said(log_path: Path) -> str:
    """The node script's last `madengine-slurm:` line in the job's output."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.startswith("madengine-slurm: ")]
    return lines[-1].removeprefix("madengine-slurm: ").strip() if lines else ""


def job_properties(
    files: JobFiles,
    job_id: str,
    partition: str,
    state: JobState | None,
    facts: list[NodeFacts],
    submitted: float,
    now: float,
) -> dict[str, str]:
    """What the record tells of the job: its id, state, nodes, queue wait and GPUs."""
    properties = {
        "slurm_job_id": job_id,
        "slurm_partition": partition,
        "slurm_state": state.state if state else "UNKNOWN",
        "slurm_script": str(files.script),
    }
    if state and state.node_list:
        properties["slurm_nodes"] = state.node_list
    if state and state.reason and state.state != "COMPLETED":
        properties["slurm_reason"] = state.reason
    job_start = state.start_time if state and state.start_time else None
    job_end = state.end_time if state and state.end_time else None
    queued_from = (state.submit_time if state and state.submit_time else None) or submitted
    if job_start:
        properties["slurm_queue_wait"] = f"{max(job_start - queued_from, 0.0):.2f}"
        properties["slurm_run_time"] = f"{max((job_end or now) - job_start, 0.0):.2f}"
    if any(fact.gpus for fact in facts):
        properties["slurm_gpus"] = _gpu_text(facts)
    if any(fact.allocated for fact in facts):  # the job holds more (--exclusive)
        held = [NodeFacts(fact.rank, fact.node, fact.allocated or fact.gpus) for fact in facts]
        properties["slurm_gpus_allocated"] = _gpu_text(held)
    if files.launcher:
        # perf.csv's nnodes and launcher columns read these.
        properties["nnodes"] = str(files.nnodes)
        properties["launcher"] = files.launcher
    if files.nnodes > 1:
        properties["slurm_node_ranks"] = " ".join(f"{f.rank}:{f.node}" for f in facts)
        masters = sorted({f.master for f in facts if f.master})
        properties["slurm_master"] = ",".join(masters)
    first = facts[0] if facts and facts[0].rank == 0 else None
    if first is not None and first.image_id:
        properties["slurm_image_id"] = first.image_id
    return properties


def job_outcome(
    spec: RunSpec,
    files: JobFiles,
    job_id: str,
    watch: JobWatch,
    partition: str,
    submitted: float,
    *,
    cancelled: bool = False,
) -> RunOutcome:
    """The outcome of a job that left the queue (or was given up on), from SLURM's last
    word on it and the facts its node scripts wrote."""
    state = watch.state
    facts = read_facts(files.directory, files.nnodes)
    first = facts[0] if facts and facts[0].rank == 0 else NodeFacts(rank=0)
    now = time.time()
    job_start = state.start_time if state and state.start_time else None
    job_end = state.end_time if state and state.end_time else None
    started = first.started or job_start or submitted
    ended = first.ended or job_end or now
    results = {
        path: read_result(files.directory / f"result.{index}")
        for index, path in enumerate(spec.result_files)
    }
    properties = job_properties(files, job_id, partition, state, facts, submitted, now)
    failure = job_failure(job_id, state, facts, watch, spec.log_path, cancelled, files.time_limit_s)
    return RunOutcome(
        exit_code=first.exit_code,
        timed_out=first.timed_out and failure is None,
        log_path=spec.log_path,
        started_at=started,
        ended_at=ended,
        host=(state.node_list if state and state.node_list else None) or first.node or "",
        results=results,
        properties=properties,
        oom_killed=first.oom_killed,
        failure=failure,
        gpus=first.gpus,
    )


def create(setup: BackendSetup) -> SlurmBackend:
    """The entry point of the `slurm` backend."""
    return SlurmBackend(setup)
