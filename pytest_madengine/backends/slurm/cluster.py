"""Batch jobs on a real Slurm cluster, through its own commands (sbatch, squeue, scontrol,
scancel): submit, poll many jobs with one squeue call, wait with backoff, cancel.

Without slurmdbd there is no sacct: a finished job is read from `scontrol show job`, which
keeps it for the cluster's MinJobAge (300 s by default) after its end.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pytest_madengine.errors import MadError

# States after which a job never runs again (Slurm's base job states).
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
        "UNKNOWN",  # ours: slurmctld no longer knows the job
    }
)

# Pending reasons that do not go away by waiting for other jobs, with what they mean.
STUCK_REASONS: Mapping[str, str] = {
    "ReqNodeNotAvail": "a node it needs is down, drained or reserved",
    "NodeDown": "a node it needs is down",
    "InvalidAccount": "the account does not exist or the user may not use it",
    "InvalidQOS": "the QOS does not exist or the user may not use it",
    "AccountNotAllowed": "the partition does not allow the account",
    "QOSNotAllowed": "the partition does not allow the QOS",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "PartitionConfig": "the request does not fit the partition (nodes, GPUs, account)",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionTimeLimit": "a longer time limit than the partition allows",
    "BadConstraints": "no node has the requested features or resources",
    "DependencyNeverSatisfied": "a job it depends on did not end as required",
    "JobHeldAdmin": "held by an administrator",
    "JobHeldUser": "held by its user",
}
# Per-job limits (e.g. QOSMaxGRESPerJob): the job alone asks for more than it may.
STUCK_PATTERN = re.compile(r"(?:Assoc|QOS)\w*PerJob\w*")

# One squeue line per job; `|` appears in none of these fields.
SQUEUE_FORMAT = "%i|%T|%r|%N|%V|%S|%e"
SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z][\w:/]*)=")
NO_TIME = frozenset({"", "N/A", "NONE", "UNKNOWN", "(NULL)"})

POLL_INTERVAL_MIN_S = 0.2
POLL_INTERVAL_MAX_S = 2.0
POLL_BACKOFF = 1.5

# (argv, timeout, variables added to the environment where there are any) -> result
Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class JobState:
    """What Slurm says about one job at one moment."""

    job_id: str
    state: str  # Slurm's base state: PENDING, RUNNING, COMPLETED, TIMEOUT, CANCELLED...
    reason: str | None = None  # why it waits, or why it ended (TimeLimit, NonZeroExitCode)
    exit_code: int | None = None  # the batch script's exit status, once known
    signal: int | None = None  # the signal that ended it, if one did
    node_list: str | None = None  # Slurm hostlist, e.g. n[1-2]
    submit_time: float | None = None  # epoch seconds
    start_time: float | None = None  # None while pending
    end_time: float | None = None  # None until it ended
    restarts: int = 0  # times SLURM requeued it (scontrol's Restarts; squeue does not say)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def pending(self) -> bool:
        return self.state == "PENDING"

    @property
    def succeeded(self) -> bool:
        return self.state == "COMPLETED" and self.exit_code == 0


@dataclass(frozen=True)
class WaitResult:
    """The end of a wait: every job's last state, and those that will not start or finish."""

    states: Mapping[str, JobState]
    stuck: Mapping[str, str] = field(default_factory=dict)  # job id -> why it cannot start
    timed_out: tuple[str, ...] = ()  # neither finished nor stuck when the wait ran out

    @property
    def all_finished(self) -> bool:
        return all(state.finished for state in self.states.values())


def stuck_reason(reason: str | None) -> str | None:
    """What a pending reason means when waiting cannot clear it; None when it can."""
    if not reason:
        return None
    # squeue writes "ReqNodeNotAvail, UnavailableNodes:n3", scontrol "ReqNodeNotAvail,_Unav..."
    name = re.split(r"[,\s_(]", reason, maxsplit=1)[0]
    if name in STUCK_REASONS:
        return STUCK_REASONS[name]
    if STUCK_PATTERN.fullmatch(name):
        return "the job asks for more than a per-job limit allows"
    return None


def slurm_timestamp(text: str) -> float | None:
    """Slurm's local time (2024-05-01T12:00:00) as epoch seconds; None for N/A, Unknown."""
    text = text.strip()
    if text.upper() in NO_TIME:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """scontrol's ExitCode=status:signal as (status, signal); signal 0 means none."""
    status, _, signal = text.strip().partition(":")
    try:
        code = int(status)
    except ValueError:
        return None, None
    try:
        sig = int(signal) if signal else 0
    except ValueError:
        sig = 0
    return code, sig or None


def _base_state(text: str) -> str:
    # scontrol may add words ("CANCELLED by 0"); squeue flags end in "+" on some versions.
    words = text.strip().split()
    return words[0].rstrip("+").upper() if words else "UNKNOWN"


def _reason(text: str) -> str | None:
    text = text.strip()
    return None if text in ("", "None", "(null)") else text


def parse_squeue(text: str) -> list[JobState]:
    """Jobs from `squeue --noheader --format=SQUEUE_FORMAT` output."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 7:
            raise MadError(f"squeue: unexpected line {line!r}")
        job_id, state, reason, nodes, submit, start, end = fields
        base = _base_state(state)
        active = base not in ("PENDING",)
        jobs.append(
            JobState(
                job_id=job_id.strip(),
                state=base,
                reason=_reason(reason),
                node_list=nodes.strip() or None,
                submit_time=slurm_timestamp(submit),
                # For a pending job Slurm shows the expected start, for a running one the
                # expected end: neither has happened.
                start_time=slurm_timestamp(start) if active else None,
                end_time=slurm_timestamp(end) if base in FINAL_STATES else None,
            )
        )
    return jobs


@dataclass(frozen=True)
class Partition:
    """A partition as sinfo lists it: one line per group of alike nodes."""

    name: str
    default: bool
    up: bool
    gpus_per_node: dict[str | None, int]  # GRES type (None: untyped) -> most GPUs on a node

    def gpus(self, gpu_type: str | None = None) -> int:
        """The most GPUs (of the type, when given) any one node of the partition has."""
        if gpu_type is not None:
            return self.gpus_per_node.get(gpu_type, 0)
        return max(self.gpus_per_node.values(), default=0)


GRES_GPU = re.compile(r"gpu(?::(?P<type>[^:(,]+))?:(?P<count>\d+)")


def parse_sinfo(text: str) -> list[Partition]:
    """Partitions from `sinfo --noheader --format=%P|%a|%G|%D`: lines of one partition
    (nodes with different GRES) are merged."""
    found: dict[str, Partition] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) != 4:
            continue
        name, state, gres, _ = (field.strip() for field in fields)
        default = name.endswith("*")
        name = name.rstrip("*")
        gpus: dict[str | None, int] = {}
        # e.g. gpu:4, gpu:mi300x:8(S:0-1), gpu:a100:2,gpu:v100:4
        for match in GRES_GPU.finditer(gres):
            kind = match["type"]
            gpus[kind] = max(gpus.get(kind, 0), int(match["count"]))
            if kind is not None:  # a typed GRES counts as an untyped one too
                gpus[None] = max(gpus.get(None, 0), int(match["count"]))
        known = found.get(name)
        if known is not None:
            for kind, count in known.gpus_per_node.items():
                gpus[kind] = max(gpus.get(kind, 0), count)
        found[name] = Partition(name, default or bool(known and known.default),
                                state == "up" or bool(known and known.up), gpus)  # fmt: skip
    return list(found.values())


def scontrol_fields(line: str) -> dict[str, str]:
    """Key=Value pairs of one `scontrol --oneliner show job` line (values may hold blanks;
    the first occurrence of a key wins)."""
    fields: dict[str, str] = {}
    matches = list(SCONTROL_KEY.finditer(line))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(line)
        fields.setdefault(match.group(1), line[match.end() : end].strip())
    return fields


def parse_scontrol_jobs(text: str) -> list[JobState]:
    """Jobs from `scontrol --oneliner show job [ID]` output."""
    jobs = []
    for line in text.splitlines():
        if not line.startswith("JobId="):
            continue
        fields = scontrol_fields(line)
        base = _base_state(fields.get("JobState", ""))
        exit_code, signal = parse_exit_code(fields.get("ExitCode", ""))
        final = base in FINAL_STATES
        jobs.append(
            JobState(
                job_id=fields["JobId"],
                state=base,
                reason=_reason(fields.get("Reason", "")),
                exit_code=exit_code if final else None,
                signal=signal if final else None,
                node_list=_reason(fields.get("NodeList", "")),
                submit_time=slurm_timestamp(fields.get("SubmitTime", "")),
                start_time=slurm_timestamp(fields.get("StartTime", ""))
                if base != "PENDING"
                else None,
                end_time=slurm_timestamp(fields.get("EndTime", "")) if final else None,
                restarts=int(restarts) if (restarts := fields.get("Restarts", "")).isdigit() else 0,
            )
        )
    return jobs


def _summary(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr or result.stdout or "").splitlines()]
    lines = [line for line in lines if line]
    return " / ".join(lines[-3:]) if lines else f"exit status {result.returncode}"


def run_command(
    argv: Sequence[str], timeout_s: float, extra_env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        check=False,
        env={**os.environ, **extra_env} if extra_env else None,
    )


class SlurmCluster:
    """The Slurm cluster this machine's Slurm commands talk to (slurm.conf, SLURM_CONF)."""

    def __init__(
        self,
        *,
        command_timeout_s: float = 30.0,
        runner: Runner = run_command,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.command_timeout_s = command_timeout_s
        self._runner = runner
        self._clock = clock
        self._sleep = sleep
        # Commands run, by name: a benchmark reports squeue calls per job.
        self.calls: Counter[str] = Counter()
        self._final: dict[str, JobState] = {}  # jobs seen finished are not asked about again

    @property
    def squeue_calls(self) -> int:
        return self.calls["squeue"]

    def _run(
        self, argv: Sequence[str], extra_env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        self.calls[argv[0]] += 1
        try:
            if extra_env:
                return self._runner(argv, self.command_timeout_s, extra_env)
            return self._runner(argv, self.command_timeout_s)
        except FileNotFoundError:
            raise MadError(
                f"slurm: {argv[0]} not found (are Slurm's client commands installed?)"
            ) from None
        except subprocess.TimeoutExpired:
            raise MadError(
                f"slurm: `{' '.join(argv[:3])}...` gave no answer in {self.command_timeout_s:g} s"
            ) from None

    def submit(self, script: Path, env: Mapping[str, str] | None = None) -> str:
        """Submits a batch script, with `env` added to the job's environment (values that
        must be in no file); returns the job id. MadError with sbatch's words when Slurm
        refuses it (e.g. more GPUs than any node has)."""
        result = self._run(["sbatch", "--parsable", str(script)], env)
        job_id = result.stdout.strip().split(";")[0]
        if result.returncode != 0 or not job_id:
            raise MadError(f"sbatch {script}: {_summary(result)}")
        return job_id

    def poll(self, job_ids: Iterable[str]) -> dict[str, JobState]:
        """The state of each job: one squeue call for those still queued or running, and one
        scontrol call for any that left the queue since the last poll."""
        ids = list(dict.fromkeys(job_ids))
        found = {job_id: self._final[job_id] for job_id in ids if job_id in self._final}
        outstanding = [job_id for job_id in ids if job_id not in found]
        if outstanding:
            found.update(self._squeue(outstanding))
            # A finished job is read from scontrol, which has its exit code; squeue lists
            # finished jobs too when SQUEUE_STATES says so.
            gone = [
                job_id for job_id in outstanding if job_id not in found or found[job_id].finished
            ]
            if gone:
                found.update(self._scontrol(gone))
        for job_id in outstanding:
            if found[job_id].finished:
                self._final[job_id] = found[job_id]
        return {job_id: found[job_id] for job_id in ids}

    def _squeue(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        # Default states only (pending, running, completing...): a finished job leaves the
        # listing and is read once, with its exit code, from scontrol.
        argv = ["squeue", "--noheader", f"--format={SQUEUE_FORMAT}", f"--jobs={','.join(job_ids)}"]
        result = self._run(argv)
        if result.returncode != 0:
            # Asked about one job only, squeue calls a purged job an error.
            if "Invalid job id" in (result.stderr or ""):
                return {}
            raise MadError(f"squeue: {_summary(result)}")
        wanted = set(job_ids)
        return {job.job_id: job for job in parse_squeue(result.stdout) if job.job_id in wanted}

    def _scontrol(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        # scontrol shows one job or all of them: all, in one call, when several are asked for.
        argv = ["scontrol", "--oneliner", "show", "job"]
        if len(job_ids) == 1:
            argv.append(job_ids[0])
        result = self._run(argv)
        if result.returncode != 0 and "Invalid job id" not in (result.stderr or ""):
            raise MadError(f"scontrol: {_summary(result)}")
        known = {job.job_id: job for job in parse_scontrol_jobs(result.stdout)}
        return {
            job_id: known.get(job_id)
            or JobState(job_id, "UNKNOWN", reason="no longer known to slurmctld (MinJobAge)")
            for job_id in job_ids
        }

    def comments(self, user: str | None = None) -> dict[str, str]:
        """Job id -> comment of every job in the queue (of the user, when given): one
        squeue call. Sessions mark their jobs in the comment, so that they can be found."""
        argv = ["squeue", "--noheader", "--format=%i|%k"]
        if user:
            argv.append(f"--user={user}")
        result = self._run(argv)
        if result.returncode != 0:
            raise MadError(f"squeue: {_summary(result)}")
        jobs = {}
        for line in result.stdout.splitlines():
            job_id, sep, comment = line.partition("|")
            if sep and job_id.strip():
                jobs[job_id.strip()] = "" if comment.strip() == "(null)" else comment.strip()
        return jobs

    def partitions(self) -> list[Partition]:
        """Every partition with its state and the GRES of its nodes: one sinfo call."""
        result = self._run(["sinfo", "--noheader", "--format=%P|%a|%G|%D"])
        if result.returncode != 0:
            raise MadError(f"sinfo: {_summary(result)}")
        return parse_sinfo(result.stdout)

    def cancel(self, job_ids: Iterable[str]) -> None:
        """Cancels the jobs (one scancel call); a job that already ended is no error."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return
        result = self._run(["scancel", *ids])
        if result.returncode != 0:
            lines = [line for line in (result.stderr or "").splitlines() if line.strip()]
            ignorable = ("already completing or completed", "Invalid job id")
            if not lines or any(not any(i in line for i in ignorable) for line in lines):
                raise MadError(f"scancel: {_summary(result)}")

    def wait(
        self,
        job_ids: Iterable[str],
        *,
        stuck_grace_s: float = 60.0,
        timeout_s: float | None = None,
        on_change: Callable[[JobState], None] | None = None,
    ) -> WaitResult:
        """Polls until every job finished, polling every 0.2 s at first and less often
        (up to 2 s) as the wait goes on. A job pending for a reason that waiting does not
        clear (ReqNodeNotAvail, PartitionDown...) for stuck_grace_s is given up on and
        reported in `stuck`; it is not cancelled. on_change sees every new state."""
        ids = list(dict.fromkeys(job_ids))
        latest: dict[str, JobState] = {}
        waiting = set(ids)
        stuck: dict[str, str] = {}
        stuck_since: dict[str, tuple[str, float]] = {}  # job id -> (reason, first seen)
        started = self._clock()
        interval = POLL_INTERVAL_MIN_S
        while waiting:
            # Nothing just submitted has finished: sleep before asking, not after.
            if timeout_s is not None:
                left = timeout_s - (self._clock() - started)
                if left <= 0:
                    break
                self._sleep(min(interval, left))
            else:
                self._sleep(interval)
            interval = min(interval * POLL_BACKOFF, POLL_INTERVAL_MAX_S)
            now = self._clock()
            for job_id, state in self.poll(waiting).items():
                if on_change is not None and latest.get(job_id) != state:
                    on_change(state)
                latest[job_id] = state
                meaning = stuck_reason(state.reason) if state.pending else None
                if state.finished or meaning is None:
                    stuck_since.pop(job_id, None)
                    if state.finished:
                        waiting.discard(job_id)
                    continue
                reason, since = stuck_since.setdefault(job_id, (state.reason or "", now))
                if reason != state.reason:
                    stuck_since[job_id] = (state.reason or "", now)
                elif now - since >= stuck_grace_s:
                    stuck[job_id] = (
                        f"job {job_id} pending for {now - since:.0f} s: {state.reason} ({meaning})"
                    )
                    waiting.discard(job_id)
        return WaitResult(
            states={job_id: latest[job_id] for job_id in ids if job_id in latest},
            stuck=stuck,
            timed_out=tuple(job_id for job_id in ids if job_id in waiting),
        )
