"""What the API says of a test's Job and pods, read as the run's progress: the shapes
are the API's own JSON (as `kubectl get -o json` shows them)."""

from __future__ import annotations

from typing import Any

from pytest_madengine.backends.kubernetes.run import LogFilter
from pytest_madengine.backends.kubernetes.status import (
    JobTracker,
    Phase,
    parse_time,
    pod_state,
)
from pytest_madengine.backends.kubernetes.watch import Snapshot

JOB = "mad-dummy-0a1b2c3d"
UNSCHEDULABLE = "0/1 nodes are available: 1 Insufficient amd.com/gpu."


def pod(
    name: str = f"{JOB}-x1",
    phase: str = "Pending",
    node: str | None = None,
    state: dict[str, Any] | None = None,
    **status: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "labels": {"job-name": JOB}},
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, **status},
    }
    if state is not None:
        body["status"]["containerStatuses"] = [{"name": "main", "state": state}]
    return body


def tracker(**fields: Any) -> JobTracker:
    values: dict[str, Any] = dict(
        name=JOB,
        nnodes=1,
        gpus=1,
        gpu_resource="amd.com/gpu",
        created=100.0,
        start_timeout_s=300.0,
        timeout_s=60.0,
        largest_node_gpus=4,
    )
    values.update(fields)
    return JobTracker(**values)


def snap(*pods: dict[str, Any], job: dict[str, Any] | None = None, **fields: Any) -> Snapshot:
    return Snapshot(
        job or {"metadata": {"name": JOB}}, pods={p["metadata"]["name"]: p for p in pods}, **fields
    )


TERMINATED = {
    "terminated": {
        "exitCode": 0,
        "reason": "Completed",
        "startedAt": "2026-01-01T00:00:01Z",
        "finishedAt": "2026-01-01T00:00:04Z",
    }
}


def test_a_pod_that_ran_to_its_end() -> None:
    state = pod_state(pod(phase="Succeeded", node="n1", state=TERMINATED, podIP="10.0.0.3"))
    assert state.terminal and state.exit_code == 0 and state.node == "n1" and state.ip == "10.0.0.3"
    assert state.finished_at - state.started_at == 3.0
    assert parse_time("2026-01-01T00:00:00Z") == 1767225600.0
    step = tracker().step(snap(pod(phase="Succeeded", node="n1", state=TERMINATED)), 101.0)
    assert step.phase is Phase.DONE


def test_queued_then_running_then_done_with_the_clocks() -> None:
    watch = tracker()
    queued = pod(
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": UNSCHEDULABLE,
            }
        ]
    )
    # Busy GPUs (the request fits a node): wait in the queue, not a failure.
    assert watch.step(snap(queued), 110.0).phase is Phase.WAIT
    creating = pod(node="n1", state={"waiting": {"reason": "ContainerCreating"}})
    assert watch.step(snap(creating), 111.0).phase is Phase.WAIT and watch.scheduled_at == 111.0
    running = pod(
        phase="Running", node="n1", state={"running": {"startedAt": "2026-01-01T00:00:01Z"}}
    )
    assert watch.step(snap(running), 112.5).phase is Phase.RUN and watch.running_at == 112.5


def test_more_gpus_than_any_node_fails_with_the_schedulers_reason() -> None:
    queued = pod(
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": UNSCHEDULABLE,
            }
        ]
    )
    step = tracker(gpus=9).step(snap(queued), 101.0)
    assert step.phase is Phase.FAIL
    assert step.reason == (
        f"unschedulable: {UNSCHEDULABLE} (asks 9 amd.com/gpu; the largest node has 4)"
    )


def test_unschedulable_past_the_start_timeout_fails_with_the_schedulers_reason() -> None:
    queued = pod(
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "node(s) had taint",
            }
        ]
    )
    watch = tracker(largest_node_gpus=None, start_timeout_s=30.0)
    assert watch.step(snap(queued), 129.0).phase is Phase.WAIT
    step = watch.step(snap(queued), 131.0)
    assert step.phase is Phase.FAIL
    assert step.reason == "unschedulable, not started within 30 s: node(s) had taint"


def test_no_pod_at_all_within_the_start_timeout() -> None:
    step = tracker(start_timeout_s=5.0).step(snap(), 106.0)
    assert step.phase is Phase.FAIL and "no pod was created for Job" in step.reason
    assert tracker(start_timeout_s=0.0).step(snap(), 10_000.0).phase is Phase.WAIT


def test_image_pull_backoff_fails_with_the_registrys_message() -> None:
    watch = tracker()
    error = "failed to pull: i/o timeout"
    pulling = pod(node="n1", state={"waiting": {"reason": "ErrImagePull", "message": error}})
    assert watch.step(snap(pulling), 101.0).phase is Phase.WAIT  # may still come
    backoff = pod(
        node="n1",
        state={"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "x"'}},
    )
    step = watch.step(snap(backoff), 102.0)
    assert step.phase is Phase.FAIL
    assert step.reason == f"ImagePullBackOff: the image could not be pulled: {error}"


def test_oom_killed_and_deadline_exceeded_are_told_apart() -> None:
    oom = {
        "terminated": {
            "exitCode": 137,
            "reason": "OOMKilled",
            "startedAt": "2026-01-01T00:00:01Z",
            "finishedAt": "2026-01-01T00:00:02Z",
        }
    }
    state = pod_state(pod(phase="Failed", node="n1", state=oom))
    assert state.ended_reason == "OOMKilled" and state.exit_code == 137 and not state.timed_out
    late = pod(
        phase="Failed",
        node="n1",
        reason="DeadlineExceeded",
        message="Pod was active on the node longer than the specified deadline",
    )
    assert pod_state(late).timed_out
    assert tracker().step(snap(late), 101.0).phase is Phase.DONE


def test_a_job_deleted_by_someone_else_fails_the_run() -> None:
    step = tracker().step(snap(job_deleted=True), 101.0)
    assert step.phase is Phase.FAIL and step.reason == f"Job {JOB} was deleted before it ended"
    gone = pod(phase="Running", node="n1", state={"running": {}})
    step = tracker().step(snap(gone, deleted_pods=frozenset({gone["metadata"]["name"]})), 101.0)
    assert step.phase is Phase.FAIL and step.reason == (
        f"pod {JOB}-x1 was deleted from outside this session (Kubernetes does not record by"
        " whom: see the cluster's audit log) while its container ran"
    )


def deleting(body: dict[str, Any], requested_s: int = 2) -> dict[str, Any]:
    """As the API server marks a pod deleted `requested_s` past midnight with the default
    grace: deletionTimestamp is when the grace runs out, not when it was asked for."""
    body["metadata"].update(
        deletionTimestamp=f"2026-01-01T00:00:{requested_s + 30:02d}Z",
        deletionGracePeriodSeconds=30,
    )
    return body


SIGTERMED = {
    "terminated": {
        "exitCode": 143,
        "reason": "Error",
        "startedAt": "2026-01-01T00:00:01Z",
        "finishedAt": "2026-01-01T00:00:03Z",
    }
}


def test_a_pod_deleted_from_outside_says_so_not_only_its_exit_code() -> None:
    """`kubectl delete pod`: the container gets SIGTERM and ends with 143; the run fails
    saying the pod was deleted, when, and that the API does not say by whom."""
    watch = tracker()
    stopping = deleting(pod(phase="Running", node="n1", state={"running": {}}))
    assert watch.step(snap(stopping), 101.0).phase is Phase.RUN  # its log still comes
    ended = deleting(pod(phase="Failed", node="n1", state=SIGTERMED))
    step = watch.step(snap(ended), 102.0)
    assert step.phase is Phase.FAIL and step.reason == (
        f"pod {JOB}-x1 was deleted from outside this session (at 2026-01-01T00:00:02Z, 30 s"
        " grace, Kubernetes does not record by whom: see the cluster's audit log) while its"
        " container ran (it ended with exit code 143)"
    )
    # Where the API says who (Kubernetes 1.26+), the line says it.
    evicted = deleting(pod(phase="Failed", node="n1", state=SIGTERMED, conditions=[{
        "type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
        "message": "Eviction API: evicting"}]))  # fmt: skip
    assert "(at 2026-01-01T00:00:02Z, 30 s grace, by EvictionByEvictionAPI: Eviction API:" in (
        tracker().step(snap(evicted), 102.0).reason
    )


def test_a_pod_deleted_after_it_ended_keeps_its_own_outcome() -> None:
    done = deleting(pod(phase="Succeeded", node="n1", state=TERMINATED), requested_s=9)
    assert tracker().step(snap(done), 101.0).phase is Phase.DONE
    failed_first = {"terminated": {**SIGTERMED["terminated"], "exitCode": 1}}
    late = deleting(pod(phase="Failed", node="n1", state=failed_first), requested_s=9)
    assert tracker().step(snap(late), 101.0).phase is Phase.DONE
    # Of a multi-node Job, a rank that failed on its own is why: the Job's controller
    # deleted the other one.
    own = pod(f"{JOB}-a", phase="Failed", node="n1", state=failed_first)
    other = deleting(pod(f"{JOB}-b", phase="Failed", node="n2", state=SIGTERMED))
    assert tracker(nnodes=2).step(snap(own, other), 101.0).phase is Phase.DONE


def test_a_run_past_its_timeout_that_the_kubelet_did_not_stop() -> None:
    watch = tracker(timeout_s=10.0)
    running = pod(phase="Running", node="n1", state={"running": {}})
    assert watch.step(snap(running), 101.0).phase is Phase.RUN
    assert watch.step(snap(running), 120.0).phase is Phase.RUN  # the kubelet's slack
    assert watch.step(snap(running), 127.0).phase is Phase.TIMEOUT


def test_several_nodes_rank_by_index_or_name_once_every_pod_has_an_ip() -> None:
    watch = tracker(nnodes=2, rendezvous=f"{JOB}-rdzv")
    waiting = {
        "waiting": {
            "reason": "CreateContainerConfigError",
            "message": f'configmap "{JOB}-rdzv" not found',
        }
    }
    b = pod(f"{JOB}-b", node="n2", state=waiting)
    a = pod(f"{JOB}-a", node="n1", state=waiting)
    assert watch.step(snap(a, b), 101.0).ranks == {}  # no IPs yet
    b["status"]["podIP"], a["status"]["podIP"] = "10.0.0.2", "10.0.0.1"
    step = watch.step(snap(a, b), 102.0)
    assert step.phase is Phase.WAIT and step.ranks == {f"{JOB}-a": 0, f"{JOB}-b": 1}
    b["metadata"]["annotations"] = {"batch.kubernetes.io/job-completion-index": "0"}
    a["metadata"]["annotations"] = {"batch.kubernetes.io/job-completion-index": "1"}
    assert watch.step(snap(a, b), 103.0).ranks == {f"{JOB}-b": 0, f"{JOB}-a": 1}
    # Another config error is not the rendezvous: it fails.
    a["status"]["containerStatuses"][0]["state"] = {
        "waiting": {"reason": "CreateContainerConfigError", "message": 'secret "x" not found'}
    }
    assert watch.step(snap(a, b), 104.0).phase is Phase.FAIL


def test_the_log_filter_takes_result_files_out() -> None:
    log = LogFilter("tok")
    chunks = [
        b"model line 1\nperformance: 1 x\n",
        b"\ntok begin /w/perf.csv\nbW9kZWws",
        b"cGVyZm9ybWFuY2UK\ntok end\n",
        b"after",
    ]
    out = b"".join(log.feed(chunk) for chunk in chunks) + log.close()
    assert out == b"model line 1\nperformance: 1 x\nafter"
    assert log.results == {"/w/perf.csv": "model,performance\n"}
    # Blank lines of the model's own stay.
    for text in (b"a\n\nb\n", b"a\n\nb", b"a\n\n"):
        keep = LogFilter("tok")
        assert keep.feed(text) + keep.close() == text


def test_a_pull_that_cannot_succeed_fails_at_the_first_error() -> None:
    for message in ('failed to resolve reference "r/x:v1": r/x:v1: not found',
                    "pull access denied", "401 Unauthorized"):  # fmt: skip
        pulling = pod(node="n1", state={"waiting": {"reason": "ErrImagePull", "message": message}})
        step = tracker().step(snap(pulling), 101.0)
        assert step.phase is Phase.FAIL
        assert step.reason == f"ErrImagePull: the image could not be pulled: {message}"
