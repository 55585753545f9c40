"""From what the API says of a Job and its pods to what the test run is doing: still
queued, running, ended (exit code, OOMKilled, deadline), or failed for a reason that
waiting will not cure (ImagePullBackOff, a request no node can ever meet, a pod that
did not start in time). Pure: the unit tests feed it the API's own JSON shapes."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pytest_madengine.backends.kubernetes.manifests import COMPLETION_INDEX, CONTAINER
from pytest_madengine.backends.kubernetes.watch import Snapshot

# Waiting reasons of a container that waiting does not cure.
FATAL_WAITING = {
    "ImagePullBackOff": "the image could not be pulled",
    "InvalidImageName": "the image name is invalid",
    "ErrImageNeverPull": "the image is not on the node and imagePullPolicy is Never",
    "CreateContainerConfigError": "the container's configuration is wrong",
    "CreateContainerError": "the container could not be created",
    "RunContainerError": "the container could not be started",
}
# Pull errors that a retry does not cure: fail at the first, not at the back-off after.
PERMANENT_PULL = re.compile(
    r"NotFound|not found|manifest unknown|unauthorized|denied|\b40[13]\b", re.I
)
# After the pod deadline (activeDeadlineSeconds), the kubelet needs a moment to kill:
# only past this much more do we delete the Job ourselves.
TIMEOUT_SLACK_S = 15.0


def parse_time(text: str | None) -> float | None:
    """Epoch seconds of an API timestamp (RFC 3339, second resolution)."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class PodState:
    """What matters of one pod of a test's Job."""

    name: str
    phase: str = "Pending"
    node: str | None = None
    ip: str | None = None
    index: int | None = None  # the completion index of an Indexed Job
    reason: str | None = None  # the pod's (DeadlineExceeded, Evicted)
    message: str | None = None
    unschedulable: str | None = None  # the scheduler's message
    waiting: str | None = None  # the container's waiting reason
    waiting_message: str | None = None
    running: bool = False
    exit_code: int | None = None  # once terminated
    ended_reason: str | None = None  # Completed, Error, OOMKilled...
    started_at: float | None = None  # the container's start and end (server clock)
    finished_at: float | None = None
    deleted: bool = False  # gone from the API
    # metadata.deletionTimestamp: when the API server will remove it (the request plus
    # its grace period), set once someone deleted it.
    deleting_at: float | None = None
    grace_s: int | None = None  # metadata.deletionGracePeriodSeconds
    disruption: str | None = None  # the DisruptionTarget condition: who ended it, if said

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def has_log(self) -> bool:
        """Whether the container has started (its log can be read)."""
        return self.running or self.exit_code is not None

    @property
    def timed_out(self) -> bool:
        return self.reason == "DeadlineExceeded"

    @property
    def deletion_requested_at(self) -> float | None:
        """When the deletion was asked for: deletionTimestamp is that moment plus the
        grace period, which a container that ends on SIGTERM does not wait out."""
        if self.deleting_at is None:
            return None
        return self.deleting_at - (self.grace_s or 0)

    @property
    def killed_by_deletion(self) -> bool:
        """Whether a deletion ended its container (or kept it from ever running): it was
        deleted before the container finished. One that ended first ended on its own."""
        if self.deleting_at is None and not self.deleted:
            return False
        if self.phase == "Succeeded" or self.exit_code == 0:
            return False
        requested = self.deletion_requested_at
        if self.finished_at is None or requested is None:
            return True
        return requested <= self.finished_at  # one clock: the API server's, whole seconds


def pod_state(raw: Mapping[str, Any], deleted: bool = False) -> PodState:
    metadata = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    unschedulable = disruption = None
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            unschedulable = condition.get("message") or "Unschedulable"
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            # Kubernetes 1.26+: EvictionByEvictionAPI, PreemptionByScheduler, ...
            parts = (condition.get("reason"), condition.get("message"))
            disruption = ": ".join(part for part in parts if part) or "DisruptionTarget"
    container: Mapping[str, Any] = next(
        (c for c in status.get("containerStatuses") or [] if c.get("name") == CONTAINER), {}
    )
    state = container.get("state") or {}
    waiting = state.get("waiting") or {}
    running = state.get("running")
    terminated = state.get("terminated")
    index_text = (metadata.get("annotations") or {}).get(COMPLETION_INDEX)
    return PodState(
        name=metadata.get("name", "?"),
        phase=status.get("phase") or "Pending",
        node=spec.get("nodeName"),
        ip=status.get("podIP"),
        index=int(index_text) if index_text and index_text.isdigit() else None,
        reason=status.get("reason"),
        message=status.get("message"),
        unschedulable=unschedulable,
        waiting=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        running=running is not None,
        exit_code=terminated.get("exitCode") if terminated else None,
        ended_reason=terminated.get("reason") if terminated else None,
        started_at=parse_time((running or terminated or {}).get("startedAt")),
        finished_at=parse_time(terminated.get("finishedAt")) if terminated else None,
        deleted=deleted,
        deleting_at=parse_time(metadata.get("deletionTimestamp")),
        grace_s=metadata.get("deletionGracePeriodSeconds"),
        disruption=disruption,
    )


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def deleted_from_outside(pod: PodState, job: Mapping[str, Any] | None) -> str:
    """Why a run failed whose pod someone deleted (the session only deletes a Job once it
    stopped following it): what, when, by whom as far as the API says, and the exit code."""
    job_deleting = parse_time(((job or {}).get("metadata") or {}).get("deletionTimestamp"))
    when: float | None
    if job_deleting is not None and pod.disruption is None:
        what, when = f"its Job (pod {pod.name})", job_deleting
    else:
        what, when = f"pod {pod.name}", pod.deletion_requested_at
    detail = [] if when is None else [f"at {_utc(when)}"]
    if pod.grace_s is not None:
        detail.append(f"{pod.grace_s} s grace")
    if pod.disruption:
        detail.append(f"by {pod.disruption}")
    else:
        detail.append("Kubernetes does not record by whom: see the cluster's audit log")
    ended = "before its container started"
    if pod.exit_code is not None:
        ended = f"while its container ran (it ended with exit code {pod.exit_code})"
    elif pod.has_log:
        ended = "while its container ran"
    return f"{what} was deleted from outside this session ({', '.join(detail)}) {ended}"


def job_condition(job: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(Complete or Failed, its reason and message) once the Job has ended."""
    for condition in ((job or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            why = ": ".join(p for p in (condition.get("reason"), condition.get("message")) if p)
            return condition["type"], why
    return None


class Phase(enum.Enum):
    WAIT = "wait"  # not everything has started
    RUN = "run"
    DONE = "done"  # every pod has ended: read the outcome
    FAIL = "fail"  # it cannot succeed: `reason` says why
    TIMEOUT = "timeout"  # it ran past its timeout and the kubelet has not stopped it


@dataclass(frozen=True)
class Step:
    phase: Phase
    pods: tuple[PodState, ...] = ()
    reason: str = ""
    ranks: Mapping[str, int] = field(default_factory=dict)  # once every pod has an IP


@dataclass
class JobTracker:
    """Reads each snapshot of a test's Job against its clocks (monotonic seconds)."""

    name: str
    nnodes: int
    gpus: int  # per pod
    gpu_resource: str
    created: float  # when we made the Job
    start_timeout_s: float  # 0: no limit
    timeout_s: float | None
    largest_node_gpus: int | None = None  # None: not known (nodes may not be listed)
    rendezvous: str = ""  # the multi-node ConfigMap the pods wait for
    scheduled_at: float | None = None
    running_at: float | None = None
    pull_errors: dict[str, str] = field(default_factory=dict)  # by pod: ErrImagePull's message

    def pods(self, snapshot: Snapshot) -> tuple[PodState, ...]:
        states = [
            pod_state(raw, name in snapshot.deleted_pods) for name, raw in snapshot.pods.items()
        ]
        return tuple(sorted(states, key=lambda p: (p.index if p.index is not None else 0, p.name)))

    def step(self, snapshot: Snapshot, now: float) -> Step:
        pods = self.pods(snapshot)
        live = [pod for pod in pods if not pod.deleted]
        for pod in live:
            if pod.waiting == "ErrImagePull" and pod.waiting_message:
                self.pull_errors[pod.name] = pod.waiting_message
        if self.scheduled_at is None and len([p for p in live if p.node]) >= self.nnodes:
            self.scheduled_at = now
        if self.running_at is None and len([p for p in live if p.has_log]) >= self.nnodes:
            self.running_at = now

        ended = job_condition(snapshot.job)
        finished = [pod for pod in pods if pod.terminal]
        all_ended = len(finished) >= self.nnodes or (
            ended is not None and all(p.terminal or p.deleted for p in pods)
        )
        killed = self._killed_by_deletion(pods)
        if killed is not None:
            return Step(Phase.FAIL, pods, deleted_from_outside(killed, snapshot.job))
        if all_ended and finished:
            return Step(Phase.DONE, pods)
        if snapshot.job_deleted:
            return Step(Phase.FAIL, pods, f"Job {self.name} was deleted before it ended")
        if ended and ended[0] == "Failed" and not finished:
            return Step(Phase.FAIL, pods, f"Job {self.name} failed: {ended[1]}")

        problem = self._fatal(live)
        if problem:
            return Step(Phase.FAIL, pods, problem)
        if self.running_at is not None:
            limit = None if self.timeout_s is None else self.timeout_s + TIMEOUT_SLACK_S
            if limit is not None and now - self.running_at > limit:
                return Step(Phase.TIMEOUT, pods)
            return Step(Phase.RUN, pods)
        if self.start_timeout_s and now - self.created > self.start_timeout_s:
            return Step(Phase.FAIL, pods, self._not_started(live))
        return Step(Phase.WAIT, pods, ranks=self.ranks(live))

    def _killed_by_deletion(self, pods: tuple[PodState, ...]) -> PodState | None:
        """A pod whose deletion ended the run, once that pod has ended or gone (so that
        its log is whole); None while it stops, and when a pod of the test failed on its
        own (the Job's controller then deletes the other ranks: the failure says why)."""
        if any(p.terminal and p.exit_code not in (0, None) and not p.killed_by_deletion
               for p in pods):  # fmt: skip
            return None
        return next((p for p in pods if p.killed_by_deletion and (p.deleted or p.terminal)), None)

    def _fatal(self, live: list[PodState]) -> str | None:
        for pod in live:
            if (
                pod.unschedulable
                and self.largest_node_gpus is not None
                and (self.gpus > self.largest_node_gpus)
            ):
                return (
                    f"unschedulable: {pod.unschedulable} (asks {self.gpus} {self.gpu_resource};"
                    f" the largest node has {self.largest_node_gpus})"
                )
            reason = pod.waiting
            if reason == "ErrImagePull" and PERMANENT_PULL.search(pod.waiting_message or ""):
                return f"{reason}: the image could not be pulled: {pod.waiting_message}"
            if reason not in FATAL_WAITING:
                continue
            message = pod.waiting_message or ""
            if (
                reason == "CreateContainerConfigError"
                and self.rendezvous
                and (f'"{self.rendezvous}" not found' in message)
            ):
                continue  # the pods wait for the rendezvous, which comes once all have IPs
            if reason == "ImagePullBackOff":
                message = self.pull_errors.get(pod.name) or message
            return f"{reason}: {FATAL_WAITING[reason]}: {message}".rstrip(": ")
        return None

    def _not_started(self, live: list[PodState]) -> str:
        """Why nothing ran within start_timeout, in the scheduler's or kubelet's words."""
        limit = f"not started within {self.start_timeout_s:g} s"
        if not live:
            return f"{limit}: no pod was created for Job {self.name}"
        for pod in live:
            if pod.unschedulable:
                return f"unschedulable, {limit}: {pod.unschedulable}"
        for pod in live:
            if pod.waiting and pod.waiting != "ContainerCreating":
                detail = f"{pod.waiting}: {pod.waiting_message or ''}".rstrip(": ")
                return f"{limit}: pod {pod.name}: {detail}"
        waiting = ", ".join(f"{p.name} {p.waiting or p.phase}" for p in live)
        return f"{limit}: {waiting}"

    def ranks(self, live: list[PodState]) -> dict[str, int]:
        """Each pod's node rank once all pods of a multi-node test have an IP: the
        completion index where the server has Indexed Jobs, else the order of names."""
        if self.nnodes < 2 or len(live) < self.nnodes or not all(p.ip for p in live):
            return {}
        ordered = sorted(live, key=lambda p: (p.index if p.index is not None else -1, p.name))
        return {pod.name: rank for rank, pod in enumerate(ordered[: self.nnodes])}
