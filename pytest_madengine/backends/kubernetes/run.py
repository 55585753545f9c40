"""One test as a Job: made, followed through the namespace's watch, its pod's log
streamed to the test's log file, and deleted (Foreground) on every way out."""

from __future__ import annotations

import base64
import binascii
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pytest_madengine.backends import OutputSink, RunOutcome
from pytest_madengine.backends.kubernetes import manifests
from pytest_madengine.backends.kubernetes.api import (
    API_FAILURES,
    CONNECTION_FAILURES,
    REQUEST_TIMEOUT,
    ApiError,
    api_error,
)
from pytest_madengine.backends.kubernetes.manifests import CONTAINER, JobPlan
from pytest_madengine.backends.kubernetes.status import JobTracker, Phase, PodState, Step
from pytest_madengine.backends.kubernetes.watch import NamespaceWatch
from pytest_madengine.errors import HostLost, MadError
from pytest_madengine.resources.interrupts import deferred_interrupts
from pytest_madengine.runlog import LogStream

LOG_JOIN_TIMEOUT_S = 10
# The watch may fail this long (the API server gone) before the cluster counts as lost.
API_LOST_S = 60.0
# How long a deleted Job's pods may take to go (their grace period, plus this).
DELETE_WAIT_S = 30.0
WAKE_S = 1.0  # a run looks at its clocks at least this often
# A followed log may be silent for as long as the model computes; a stream that
# breaks anyway is read again, whole, once the container has ended.
FOLLOW_READ_TIMEOUT_S = 7 * 24 * 3600
EVENTS_EVERY_S = 5.0  # a pod that does not start: its events are read this often


class LogFilter:
    """Takes the result files out of a log: lines between `<token> begin <path>` and
    `<token> end` are base64 of the file; everything else is the log."""

    def __init__(self, token: str) -> None:
        self.begin = f"{token} begin ".encode()
        self.end = f"{token} end".encode()
        self.results: dict[str, str] = {}
        self._partial = b""
        self._capture: tuple[str, list[bytes]] | None = None
        self._blank = False  # a held empty line: the wrapper writes one before a marker

    def feed(self, chunk: bytes) -> bytes:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        return b"".join(self._line(line) for line in lines)

    def close(self) -> bytes:
        """The rest: a last line without its newline stays without one."""
        rest, self._partial = self._partial, b""
        if self._capture is not None:
            return b""  # a result file cut short: not read back
        if rest:
            return self._line(rest)[:-1]  # with a held blank line before it
        held, self._blank = (b"\n" if self._blank else b""), False
        return held

    def _line(self, line: bytes) -> bytes:
        if self._capture is not None:
            path, parts = self._capture
            if line.rstrip(b"\r") == self.end:
                self._capture = None
                try:
                    data = base64.b64decode(b"".join(parts), validate=False)
                    self.results[path] = data.decode("utf-8", errors="replace")
                except (binascii.Error, ValueError):
                    pass
            else:
                parts.append(line.strip())
            return b""
        if line.startswith(self.begin):
            self._blank = False
            path = line[len(self.begin) :].rstrip(b"\r").decode("utf-8", errors="replace")
            self._capture = (path, [])
            return b""
        held = b"\n" if self._blank else b""
        if not line:
            self._blank = True
            return held
        self._blank = False
        return held + line + b"\n"


class LogFollower(threading.Thread):
    """Streams one pod's log into a file as it comes (one request, followed)."""

    def __init__(
        self,
        core: client.CoreV1Api,
        namespace: str,
        pod: str,
        path: Path,
        token: str,
        on_output: OutputSink | None,
        header: bytes = b"",
        secrets: tuple[str, ...] = (),
    ) -> None:
        super().__init__(daemon=True, name=f"mad-k8s-log-{pod}")
        self.core = core
        self.namespace = namespace
        self.pod = pod
        self.path = path
        self.token = token
        self.on_output = on_output
        self.filter = LogFilter(token)
        self.header = header  # our lines above the container's output (on a reread too)
        self.secrets = secrets
        self.broken = False
        self._response: Any = None

    def run(self) -> None:
        try:
            self._response = self.core.read_namespaced_pod_log(
                self.pod,
                self.namespace,
                container=CONTAINER,
                follow=True,
                _preload_content=False,
                _request_timeout=(REQUEST_TIMEOUT[0], FOLLOW_READ_TIMEOUT_S),
            )
            with LogStream(self.path, self.secrets, self.on_output).open() as log:
                for chunk in self._response.stream(64 * 1024, decode_content=True):
                    log.write(self.filter.feed(chunk))
                log.write(self.filter.close())
        except Exception:
            self.broken = True  # whole, once the container has ended

    def finish(self) -> None:
        """Waits for the rest of the log of the ended container, as long as it grows."""
        size = -1
        while self.is_alive():
            self.join(LOG_JOIN_TIMEOUT_S)
            grown = self.path.stat().st_size if self.path.exists() else 0
            if grown == size:
                self.broken = True
                self.stop()
                return
            size = grown

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self._response is not None:
                self._response.shutdown()

    def reread(self) -> None:
        """The whole log of the ended container, into a fresh file."""
        log_filter = LogFilter(self.token)
        # Not preloaded: the raw urllib3 response, though the client's types say str.
        response = cast(
            "urllib3.BaseHTTPResponse",
            self.core.read_namespaced_pod_log(
                self.pod,
                self.namespace,
                container=CONTAINER,
                _preload_content=False,
                _request_timeout=(REQUEST_TIMEOUT[0], 120),
            ),
        )

        def filtered() -> Iterator[bytes]:
            for chunk in response.stream(64 * 1024, decode_content=True):
                yield log_filter.feed(chunk)
            yield log_filter.close()

        LogStream(self.path, self.secrets, header=self.header).rewrite(filtered())
        self.filter = log_filter


class JobRun:
    """A started test (see RunHandle): the Job exists when the constructor returns."""

    def __init__(
        self,
        api: Any,
        watch: NamespaceWatch,
        plan: JobPlan,
        tracker: JobTracker,
        host: str,
        on_output: OutputSink | None,
        before_create: Callable[[], None] | None = None,
    ) -> None:
        self.api = api
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.watch = watch
        self.plan = plan
        self.tracker = tracker
        self.host = host
        self.on_output = on_output
        self.cancelled = threading.Event()
        self.followers: dict[str, LogFollower] = {}
        self._events_read_at = 0.0
        self._event_reason = ""
        self._rendezvous_made = False
        self._deleted = False
        spec = plan.spec
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.header = "".join(f"{line}\n" for line in spec.log_notes).encode()
        spec.log_path.write_bytes(self.header)  # our lines first (what became of the data)
        if on_output is not None and self.header:
            on_output(self.header)
        try:
            if before_create is not None:
                before_create()
            self.batch.create_namespaced_job(
                plan.namespace, manifests.job(plan), _request_timeout=REQUEST_TIMEOUT
            )
        except API_FAILURES as exc:
            self._remove_secret()
            raise self._api_failure(exc, f"creating Job {plan.name}") from None
        self.tracker.created = time.monotonic()

    # ---- RunHandle ----

    def wait(self) -> RunOutcome:
        clean = False
        try:
            step = self._follow()
            outcome = self._outcome(step)
            clean = step.phase is Phase.DONE
            return outcome
        finally:
            with deferred_interrupts():  # a second Ctrl-C must not leave the Job running
                self._delete(wait=not clean)

    def cancel(self) -> None:
        """Stops the run from any thread: the Job is deleted, `wait` then returns."""
        self.cancelled.set()
        with self.watch.changed:
            self.watch.changed.notify_all()
        self._delete(wait=False)

    # ---- following the Job ----

    def _follow(self) -> Step:
        generation = -1
        while True:
            snapshot, generation = self.watch.snapshot(self.plan.name)
            now = time.monotonic()
            step = self.tracker.step(snapshot, now)
            self._start_logs(step.pods)
            if step.ranks and not self._rendezvous_made:
                self._make_rendezvous(step)
            if self.cancelled.is_set():
                return Step(Phase.FAIL, step.pods, "cancelled")
            if (
                step.phase is Phase.WAIT
                and now - self._events_read_at > EVENTS_EVERY_S
                and (now - self.tracker.created > EVENTS_EVERY_S)
            ):
                failure = self._stuck_reason(step)
                if failure:
                    return Step(Phase.FAIL, step.pods, failure)
            if step.phase in (Phase.DONE, Phase.FAIL, Phase.TIMEOUT):
                if step.phase is Phase.FAIL and self._event_reason and "not started" in step.reason:
                    return Step(Phase.FAIL, step.pods, f"{step.reason}; {self._event_reason}")
                return step
            if self.watch.failing_for() > API_LOST_S:
                raise HostLost(self.host, self.watch.last_problem)
            self.watch.wait(generation, WAKE_S)

    def _start_logs(self, pods: tuple[PodState, ...]) -> None:
        for pod in pods:
            if pod.has_log and pod.name not in self.followers:
                first = self._is_first(pod, pods)
                follower = LogFollower(
                    self.core,
                    self.plan.namespace,
                    pod.name,
                    self._log_path(pod, pods),
                    self.plan.token,
                    self.on_output if first else None,
                    self.header if first else b"",
                    self.plan.spec.secrets,
                )
                self.followers[pod.name] = follower
                follower.start()

    def _is_first(self, pod: PodState, pods: tuple[PodState, ...]) -> bool:
        """Rank 0 (the only pod of a single-node test) writes the test's log."""
        if self.plan.nnodes < 2:
            return True
        ranks = self.tracker.ranks([p for p in pods if not p.deleted])
        return ranks.get(pod.name, pod.index if pod.index is not None else -1) == 0

    def _log_path(self, pod: PodState, pods: tuple[PodState, ...]) -> Path:
        log = self.plan.spec.log_path
        if self._is_first(pod, pods):
            return log
        return log.with_name(f"{log.stem}.{pod.name}{log.suffix}")

    def _make_rendezvous(self, step: Step) -> None:
        master = next(pod.ip for pod in step.pods if step.ranks.get(pod.name) == 0)
        body = manifests.rendezvous_map(self.plan, step.ranks, str(master))
        try:
            self.core.create_namespaced_config_map(
                self.plan.namespace, body, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status != 409:  # made already (a run placed again)
                raise self._api_failure(exc, "creating the rendezvous ConfigMap") from None
        except CONNECTION_FAILURES as exc:
            raise self._api_failure(exc, "creating the rendezvous ConfigMap") from None
        self._rendezvous_made = True

    def _stuck_reason(self, step: Step) -> str | None:
        """Reads the events of a pod that has not started: a hostPath that is not there
        (the mount is refused) will never start; else the last warning is kept."""
        self._events_read_at = time.monotonic()
        names = [pod.name for pod in step.pods if not pod.has_log] or [self.plan.name]
        try:
            for name in names:
                events = self.core.list_namespaced_event(
                    self.plan.namespace,
                    field_selector=f"involvedObject.name={name}",
                    _request_timeout=REQUEST_TIMEOUT,
                ).items
                warnings = [e for e in events if e.type == "Warning"]
                warnings.sort(  # the API server stamps every object's creation
                    key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp  # type: ignore[arg-type, return-value]
                )
                for event in warnings:
                    text = f"{event.reason}: {event.message}"
                    refused = "type check failed" in (event.message or "")
                    if event.reason == "FailedMount" and refused:
                        return f"pod {name}: {text}"
                if warnings:
                    last = warnings[-1]
                    self._event_reason = f"{name}: {last.reason}: {last.message}"
                    if last.reason == "FailedCreate":  # the Job controller cannot make pods
                        return f"Job {self.plan.name}: {last.reason}: {last.message}"
        except API_FAILURES:
            pass  # the events only say more; the watch says whether the cluster is there
        return None

    # ---- the end ----

    def _outcome(self, step: Step) -> RunOutcome:
        spec = self.plan.spec
        pods = [pod for pod in step.pods if not pod.deleted] or list(step.pods)
        # A failure of the cluster's (unschedulable, an image that does not come) still
        # returns an outcome: its pod, node and waits reach JUnit.
        failure = step.reason if step.phase is Phase.FAIL else None
        if step.phase in (Phase.TIMEOUT, Phase.FAIL):  # the kubelet did not stop it: we do
            self._delete(wait=True, failed=step.phase is Phase.FAIL)
        timed_out = step.phase is Phase.TIMEOUT or any(pod.timed_out for pod in pods)
        self._finish_logs()
        ranks = self.tracker.ranks(pods) if self.plan.nnodes > 1 else {}
        ordered = sorted(pods, key=lambda p: ranks.get(p.name, p.index or 0))
        exit_code: int | None = None
        if not timed_out and step.phase is Phase.DONE:
            codes = [pod.exit_code for pod in ordered]
            failing = [code for code in codes if code not in (0, None)]
            exit_code = failing[0] if failing else (0 if all(c == 0 for c in codes) else None)
            if exit_code is None:
                failed = next((p for p in ordered if p.exit_code is None), ordered[0])
                why = failed.message or failed.reason or failed.phase
                failure = f"pod {failed.name} ended without running its container: {why}"
        first = ordered[0] if ordered else None
        now = time.time()
        started = min((p.started_at for p in ordered if p.started_at), default=None)
        ended = max((p.finished_at for p in ordered if p.finished_at), default=None)
        results: dict[str, str | None] = {}
        primary = self.followers.get(first.name) if first else None
        for path in spec.result_files:
            results[path] = primary.filter.results.get(path) if primary else None
        return RunOutcome(
            exit_code=exit_code,
            timed_out=timed_out,
            log_path=spec.log_path,
            started_at=started or now,
            ended_at=max(ended or now, started or now),
            host=first.node if first and first.node else self.host,
            results=results,
            properties=self._properties(ordered, started, ended),
            oom_killed=any(pod.ended_reason == "OOMKilled" for pod in ordered),
            failure=failure,
        )

    def _properties(
        self, pods: list[PodState], started: float | None, ended: float | None
    ) -> dict[str, str]:
        tracker = self.tracker
        properties = {
            "k8s_namespace": self.plan.namespace,
            "k8s_job": self.plan.name,
            "k8s_pod": ",".join(pod.name for pod in pods),
            "k8s_node": ",".join(dict.fromkeys(pod.node for pod in pods if pod.node)),
            "k8s_gpus": f"{self.plan.gpus_per_pod} {self.plan.gpu_resource}",
        }
        if tracker.scheduled_at is not None:
            properties["k8s_queue_wait"] = f"{tracker.scheduled_at - tracker.created:.2f}"
        if tracker.running_at is not None and tracker.scheduled_at is not None:
            properties["k8s_start_wait"] = f"{tracker.running_at - tracker.scheduled_at:.2f}"
        if started is not None and ended is not None:
            properties["k8s_run_time"] = f"{max(0.0, ended - started):.0f}"
        if self.plan.nnodes > 1:  # perf.csv's nnodes and launcher columns read these
            properties["nnodes"] = str(self.plan.nnodes)
            properties["launcher"] = "torchrun"
        return properties

    def _finish_logs(self) -> None:
        for follower in self.followers.values():
            follower.finish()
            if follower.broken:
                with contextlib.suppress(ApiException, *CONNECTION_FAILURES, OSError):
                    follower.reread()

    def _delete(self, wait: bool, failed: bool = False) -> None:
        """Deletes the Job with Foreground propagation (it goes once its pods have, and a
        pod once its container has stopped); `wait`: until it is gone. `failed`: the run
        failed before its container started, so its pods go at once."""
        if not self._deleted:
            self._deleted = True
            for follower in self.followers.values():
                if wait:
                    follower.stop()
            try:
                self.batch.delete_namespaced_job(
                    self.plan.name,
                    self.plan.namespace,
                    propagation_policy="Foreground",
                    _request_timeout=REQUEST_TIMEOUT,
                )
            except ApiException as exc:
                if exc.status != 404:
                    return  # the session's sweep tries again
            except CONNECTION_FAILURES:
                return
            self._remove_secret()
            if self.plan.nnodes > 1:
                self._remove(self.core.delete_namespaced_config_map, self.plan.rendezvous_name)
            if failed:
                self._force_unstarted()
        if wait:
            deadline = time.monotonic() + self.plan.settings.termination_grace_s + DELETE_WAIT_S
            generation = -1
            while time.monotonic() < deadline:
                snapshot, generation = self.watch.snapshot(self.plan.name)
                if snapshot.job_deleted or (snapshot.job is None and not snapshot.pods):
                    break
                self.watch.wait(generation, WAKE_S)
        self.watch.forget(self.plan.name)

    def _force_unstarted(self) -> None:
        """Pods whose container never started (a pull that failed, a mount refused) are
        removed at once: nothing of the model runs there, and a kubelet may keep such a
        pod terminating for most of a minute. (Not on an interrupt: a container may be
        starting just then, and the pod must stay until it has stopped.)"""
        snapshot, _ = self.watch.snapshot(self.plan.name)
        pods = self.tracker.pods(snapshot)
        if not pods or any(pod.has_log for pod in pods):
            return
        for pod in pods:
            if not pod.deleted:
                with contextlib.suppress(*API_FAILURES):
                    self.core.delete_namespaced_pod(
                        pod.name,
                        self.plan.namespace,
                        grace_period_seconds=0,
                        _request_timeout=REQUEST_TIMEOUT,
                    )

    def _remove_secret(self) -> None:
        if self.plan.secret_env:
            self._remove(self.core.delete_namespaced_secret, self.plan.secret_name)

    def _remove(self, delete: Callable[..., Any], name: str) -> None:
        with contextlib.suppress(*API_FAILURES):
            delete(name, self.plan.namespace, _request_timeout=REQUEST_TIMEOUT)

    def _api_failure(self, exc: BaseException, doing: str) -> MadError:
        if isinstance(exc, ApiException):
            return api_error(exc, doing)
        return HostLost(self.host, f"{doing}: {api_error(exc, 'no answer')}")


class DryRun:
    """The handle of a test whose manifests were written instead of applied."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def wait(self) -> RunOutcome:
        from pytest_madengine.errors import NotRun

        raise NotRun(f"k8s dry run: manifests written to {self.path}")

    def cancel(self) -> None:
        pass


__all__ = ["ApiError", "DryRun", "JobRun", "LogFilter"]
