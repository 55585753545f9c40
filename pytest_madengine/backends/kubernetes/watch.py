"""One watch of the session's Jobs and one of its pods per namespace, for all the
tests a process runs there: no request per Job and poll.

Each watch lists first (the state so far and a resourceVersion), then watches from
there, and lists again when the server says the version is too old (410) or the
connection breaks. Objects are kept as the API sends them (plain dicts): each run
reads its Job and pods from here and waits on `changed` for news.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from pytest_madengine.backends.kubernetes.api import (
    CONNECTION_FAILURES,
    REQUEST_TIMEOUT,
    api_message,
)
from pytest_madengine.backends.kubernetes.manifests import JOB_NAME_LABEL

# The server ends a watch after this long (a new one starts at once); the client gives
# up on a silent connection a little later, so a dead server is noticed.
WATCH_SECONDS = 60
WATCH_READ_TIMEOUT = WATCH_SECONDS + 15
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0


@dataclass
class Snapshot:
    """What a watch knows of one Job: the Job (None before it is seen, or once gone),
    whether it was deleted, and its pods by name (deleted ones kept, marked)."""

    job: dict[str, Any] | None = None
    job_deleted: bool = False
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted_pods: frozenset[str] = frozenset()


class NamespaceWatch:
    """The Jobs and pods of one session in one namespace, kept current by two threads."""

    def __init__(self, api: Any, namespace: str, selector: str) -> None:
        self.namespace = namespace
        self.selector = selector
        self.changed = threading.Condition()
        self.generation = 0
        self._jobs: dict[str, dict[str, Any]] = {}
        self._gone_jobs: set[str] = set()
        self._pods: dict[str, dict[str, Any]] = {}  # by pod name
        self._gone_pods: set[str] = set()
        self._forgotten: set[str] = set()  # Jobs no run waits for: their news is dropped
        self._stopped = threading.Event()
        self._watches: list[watch.Watch] = []
        self._failing_since: dict[str, float] = {}
        self.last_problem = ""
        self._listed = {"jobs": threading.Event(), "pods": threading.Event()}
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        self._threads = [
            threading.Thread(
                target=self._run,
                args=("jobs", batch.list_namespaced_job, self._jobs, self._gone_jobs),
                name=f"mad-k8s-jobs-{namespace}",
                daemon=True,
            ),
            threading.Thread(
                target=self._run,
                args=("pods", core.list_namespaced_pod, self._pods, self._gone_pods),
                name=f"mad-k8s-pods-{namespace}",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()

    # ---- what runs read ----

    def snapshot(self, job: str) -> tuple[Snapshot, int]:
        """(what is known of the Job, the generation it was read at)."""
        with self.changed:
            pods = {name: pod for name, pod in self._pods.items() if _job_of(pod) == job}
            gone = frozenset(name for name in pods if name in self._gone_pods)
            return (
                Snapshot(self._jobs.get(job), job in self._gone_jobs, pods, gone),
                self.generation,
            )

    def wait(self, generation: int, timeout: float) -> int:
        """Until something changed after `generation` or the time passed; the new one."""
        with self.changed:
            self.changed.wait_for(lambda: self.generation != generation, timeout)
            return self.generation

    def ready(self, timeout: float) -> bool:
        """Whether both watches have listed once (so no event of a new Job is missed)."""
        deadline = time.monotonic() + timeout
        return all(
            event.wait(max(0.0, deadline - time.monotonic())) for event in self._listed.values()
        )

    def failing_for(self) -> float:
        """Seconds since a watch last could not reach the server (0: both fine)."""
        now = time.monotonic()
        return max((now - since for since in self._failing_since.values()), default=0.0)

    def forget(self, job: str) -> None:
        """Drops what is kept of a Job that no run waits for any more."""
        with self.changed:
            self._forgotten.add(job)
            self._jobs.pop(job, None)
            self._gone_jobs.discard(job)
            for name in [n for n, pod in self._pods.items() if _job_of(pod) == job]:
                self._pods.pop(name, None)
                self._gone_pods.discard(name)

    def stop(self) -> None:
        self._stopped.set()
        for stream in list(self._watches):
            stream.stop()
            response = getattr(stream, "_resp", None)
            if response is not None:  # a blocked read ends now, not at the server's timeout
                with contextlib.suppress(Exception):
                    response.shutdown()

    # ---- the watch threads ----

    def _notify(self) -> None:
        self.generation += 1
        self.changed.notify_all()

    def _run(
        self, kind: str, lister: Callable[..., Any], store: dict[str, Any], gone: set[str]
    ) -> None:
        version: str | None = None
        delay = RETRY_MIN_S
        while not self._stopped.is_set():
            try:
                if version is None:
                    version = self._list(kind, lister, store, gone)
                version = self._watch(lister, store, gone, version)
                self._failing_since.pop(kind, None)
                delay = RETRY_MIN_S
            except ApiException as exc:
                if exc.status == 410:  # too old: list again
                    version = None
                    continue
                self._trouble(kind, api_message(exc))
            except CONNECTION_FAILURES as exc:
                self._trouble(kind, api_message(exc))
            except Exception as exc:  # a thread must not die silently: say why, list again
                version = None
                self._trouble(kind, f"{type(exc).__name__}: {exc}")
            if self._stopped.wait(delay):
                return
            delay = min(delay * 2, RETRY_MAX_S)

    def _trouble(self, kind: str, why: str) -> None:
        self._failing_since.setdefault(kind, time.monotonic())
        self.last_problem = f"watch of {kind} in {self.namespace}: {why}"
        with self.changed:
            self._notify()

    def _list(
        self, kind: str, lister: Callable[..., Any], store: dict[str, Any], gone: set[str]
    ) -> str:
        response = lister(
            self.namespace,
            label_selector=self.selector,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
        listing = json.loads(response.data)
        items = {
            item["metadata"]["name"]: item
            for item in listing.get("items") or []
            if (_job_of(item) or item["metadata"]["name"]) not in self._forgotten
        }
        with self.changed:
            # Whatever we knew and the list lacks went while nobody watched.
            gone.update(name for name in store if name not in items)
            store.update(items)
            self._notify()
        self._failing_since.pop(kind, None)
        self._listed[kind].set()
        return str(listing["metadata"]["resourceVersion"])

    def _watch(
        self, lister: Callable[..., Any], store: dict[str, Any], gone: set[str], version: str
    ) -> str:
        stream = watch.Watch()
        self._watches.append(stream)
        try:
            for event in stream.stream(
                lister,
                self.namespace,
                label_selector=self.selector,
                resource_version=version,
                timeout_seconds=WATCH_SECONDS,
                allow_watch_bookmarks=True,
                deserialize=False,
                _request_timeout=(REQUEST_TIMEOUT[0], WATCH_READ_TIMEOUT),
            ):
                kind, item = event["type"], event["object"]
                metadata = item.get("metadata") or {}
                version = str(metadata.get("resourceVersion") or version)
                if kind == "ERROR":
                    raise ApiException(status=item.get("code"), reason=item.get("message"))
                if kind == "BOOKMARK":
                    continue
                name = metadata["name"]
                if (_job_of(item) or name) in self._forgotten:
                    continue
                with self.changed:
                    store[name] = item
                    if kind == "DELETED":
                        gone.add(name)
                    self._notify()
                if self._stopped.is_set():
                    break
        finally:
            self._watches.remove(stream)
        return version


def _job_of(pod: dict[str, Any]) -> str | None:
    """The Job a pod belongs to (its job-name label)."""
    return ((pod.get("metadata") or {}).get("labels") or {}).get(JOB_NAME_LABEL)
