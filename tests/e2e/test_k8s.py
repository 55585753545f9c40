"""Whole sessions with `--mad-deploy k8s` on the single-node cluster of `scripts/bootstrap
k8s`: images built here, pushed to the loopback registry and pulled by the node with a
secret made from credential.json; each test a Job in a namespace of its own."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.backends import SESSION_LABEL
from tests.conftest import K8S_KUBECONFIG, K8S_NODE, entry
from tests.e2e.test_run import junit_properties, read_perf, scripts, unique_tree

pytestmark = [pytest.mark.k8s, pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mad"
KUBECTL = "/var/lib/pytest-madengine/k8s/bin/current/kubectl"
CONTAINERD_SOCK = "/run/pytest-madengine/k8s/containerd/containerd.sock"
SLEEPER = '#!/bin/sh\necho "sleeping $1"\nsleep "$1"\necho "performance: $2 s"\n'
# Rank 0 listens on the rendezvous port; rank 1 says hello to MASTER_ADDR.
PAIR = """#!/bin/sh
echo "rank $NODE_RANK of $NNODES, master $MASTER_ADDR:$MASTER_PORT, runner: $MAD_MULTI_NODE_RUNNER"
if [ "$NODE_RANK" = 0 ]; then
  echo "rank 0 heard: $(nc -l -p "$MASTER_PORT")"
  echo "performance: 2 nodes"
else
  for i in 1 2 3 4 5 6 7 8 9 10; do
    echo "hello from $POD_NAME" | nc "$MASTER_ADDR" "$MASTER_PORT" && break
    sleep 1
  done
fi
"""


@pytest.fixture
def namespace(k8s_cluster: Any) -> Iterator[str]:
    """A namespace of this test's own; what the test left in it is asserted gone by the
    test itself, the namespace is deleted after it without waiting."""
    from kubernetes import client

    core = client.CoreV1Api(k8s_cluster)
    name = f"mad-e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    deadline = time.monotonic() + 30
    # Pods are refused until the namespace's default service account exists.
    while not core.list_namespaced_service_account(
        name, field_selector="metadata.name=default"
    ).items:
        assert time.monotonic() < deadline, "no default service account"
        time.sleep(0.2)
    yield name
    core.delete_namespace(name)


@pytest.fixture
def k8s_tree(
    pytester: pytest.Pytester, registry: tuple[str, dict[str, str]]
) -> Callable[..., Path]:
    """A tree of test models (unique images) with credential.json holding the registry's login."""

    def make(models: list[Any], files: dict[str, str] | None = None) -> Path:
        root = unique_tree(pytester, models, files)
        address, login = registry
        (root / "credential.json").write_text(json.dumps({address: login}))
        return root

    return make


def k8s_args(namespace: str, registry: tuple[str, dict[str, str]], **block: Any) -> list[str]:
    context: dict[str, Any] = {
        "k8s": {"namespace": namespace, "kubeconfig": str(K8S_KUBECONFIG), **block.pop("k8s", {})},
        **block,
    }
    return [
        "--mad-deploy",
        "k8s",
        "--mad-registry",
        registry[0],
        "--mad-context",
        json.dumps(context),
    ]


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args, timeout=300)


def left_in(k8s_cluster: Any, namespace: str) -> list[str]:
    """Jobs, pods, ConfigMaps and Secrets of ours still in the namespace."""
    from kubernetes import client

    batch, core = client.BatchV1Api(k8s_cluster), client.CoreV1Api(k8s_cluster)
    selector = "app.kubernetes.io/managed-by=pytest-madengine"
    found = [f"job/{j.metadata.name}" for j in batch.list_namespaced_job(namespace).items]
    found += [f"pod/{p.metadata.name}" for p in core.list_namespaced_pod(namespace).items]
    found += [
        f"configmap/{c.metadata.name}"
        for c in core.list_namespaced_config_map(namespace, label_selector=selector).items
    ]
    found += [
        f"secret/{s.metadata.name}"
        for s in core.list_namespaced_secret(namespace, label_selector=selector).items
    ]
    return found


def node_tasks() -> set[str]:
    """Ids of the containers running on the node's containerd."""
    done = subprocess.run(
        ["ctr", "--address", CONTAINERD_SOCK, "--namespace", "k8s.io", "tasks", "ls", "--quiet"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return set(done.stdout.split())


def test_the_example_tree_runs_as_jobs_as_it_runs_in_docker(
    pytester: pytest.Pytester,
    registry: tuple[str, dict[str, str]],
    namespace: str,
    k8s_cluster: Any,
) -> None:
    """`pytest --mad-root examples/mad --mad-tags dummies --mad-deploy k8s`: the same
    outcomes as on Docker (its three failing models fail for the same reasons)."""
    root = pytester.path / "mad"
    shutil.copytree(EXAMPLES, root)
    address, login = registry
    (root / "credential.json").write_text(json.dumps({address: login}))
    result = run(
        pytester,
        "--mad-root",
        str(root),
        "--mad-tags",
        "dummies",
        "--junitxml",
        "r.xml",
        *k8s_args(namespace, registry),
    )
    result.assert_outcomes(passed=9, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED mad/models.json::dummy_sleep - Failed: timeout after 3 s",
            "FAILED mad/models.json::dummy_fail - Failed: exit code 1",
            "FAILED mad/models.json::dummy_nometric - Failed: no performance line in the log",
        ]
    )
    properties = junit_properties(pytester.path / "r.xml")
    dummy = properties["dummy"]
    assert dummy["k8s_node"] == dummy["host"] == K8S_NODE
    assert dummy["k8s_pod"].startswith(dummy["k8s_job"]) and dummy["k8s_namespace"] == namespace
    assert dummy["k8s_gpus"] == "1 amd.com/gpu" and float(dummy["k8s_queue_wait"]) >= 0
    assert dummy["image"].startswith(f"{address}/ci-dummy_dummy.ubuntu.amd@sha256:")
    assert "model dummy on 1 GPU(s)" in Path(dummy["log_path"]).read_text()
    rows = {row["model"]: row for row in read_perf(pytester.path / "perf.csv")}
    # multiple_results came back through the pod's log.
    assert rows["dummy_multi_resnet50"]["performance"] == "812.4"
    assert rows["dummy2/model2"]["n_gpus"] == "2"
    assert left_in(k8s_cluster, namespace) == []
    assert login["password"] not in result.stdout.str() + (pytester.path / "r.xml").read_text()


def test_more_gpus_than_the_node_has_fails_with_the_schedulers_reason(
    pytester: pytest.Pytester,
    k8s_tree: Callable[..., Path],
    registry: Any,
    namespace: str,
    k8s_cluster: Any,
) -> None:
    k8s_tree([entry("huge", n_gpus=9)])
    started = time.monotonic()
    result = run(
        pytester, "--mad-tags", "huge", "--junitxml", "r.xml", *k8s_args(namespace, registry)
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "unschedulable: 0/1 nodes are available: 1 Insufficient amd.com/gpu."
            " (asks 9 amd.com/gpu; the largest node has 4)",
            "FAILED models.json::huge - Failed: unschedulable: 0/1 nodes are available*",
        ]
    )
    assert time.monotonic() - started < 60  # not a hang
    properties = junit_properties(pytester.path / "r.xml")["huge"]
    assert properties["k8s_pod"].startswith(properties["k8s_job"]) and not properties["k8s_node"]
    assert properties["k8s_gpus"] == "9 amd.com/gpu"
    assert left_in(k8s_cluster, namespace) == []


@pytest.mark.parametrize(
    "at_once", [("-n", "3"), ("--mad-concurrency", "3")], ids=["xdist", "in-process"]
)
def test_no_two_running_pods_hold_the_same_gpu(
    pytester: pytest.Pytester,
    k8s_tree: Callable[..., Path],
    registry: Any,
    namespace: str,
    k8s_cluster: Any,
    at_once: tuple[str, ...],
) -> None:
    """Three tests at once (xdist workers, or threads of one process) that together ask
    for more GPUs than the node's four: Kubernetes queues them, so the GPUs of the pods
    running at any moment add up to four at most, and one waited in the queue."""
    models = [
        entry(f"g{i}", n_gpus=gpus, args=f"3 {i}", scripts="scripts/dummy/sleeper.sh")
        for i, gpus in enumerate((3, 3, 2))
    ]
    k8s_tree(models, scripts(sleeper=SLEEPER))
    result = run(
        pytester,
        "--mad-tags",
        "dummies",
        *at_once,
        "--junitxml",
        "r.xml",
        *k8s_args(namespace, registry),
    )
    result.assert_outcomes(passed=3)
    runs = []
    for properties in junit_properties(pytester.path / "r.xml").values():
        count, resource = properties["k8s_gpus"].split()
        assert resource == "amd.com/gpu"
        runs.append(
            (
                float(properties["started_at"]),
                float(properties["ended_at"]),
                int(count),
                float(properties["k8s_queue_wait"]),
            )
        )
    # The API's times have whole seconds: a pod that started in the second another ended
    # started after it, so each run holds its GPUs over [start, end).
    for moment, _, _, _ in runs:
        held = sum(gpus for start, end, gpus, _ in runs if start <= moment < end)
        assert held <= 4, runs
    assert max(wait for *_, wait in runs) > 1.0, runs  # one waited for GPUs
    assert left_in(k8s_cluster, namespace) == []


def wait_for_running_pod(k8s_cluster: Any, namespace: str, timeout: float = 90) -> Any:
    from kubernetes import client

    core = client.CoreV1Api(k8s_cluster)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pod in core.list_namespaced_pod(namespace).items:
            for status in pod.status.container_statuses or []:
                if status.state.running and status.container_id:
                    return pod
        time.sleep(0.3)
    raise AssertionError(f"no running pod in {namespace} after {timeout} s")


def start_session(
    pytester: pytest.Pytester, namespace: str, registry: Any, *more: str
) -> subprocess.Popen:
    args = [
        "--mad-tags",
        "sleepy",
        "-p",
        "no:cacheprovider",
        *k8s_args(namespace, registry, k8s={"termination_grace_period": 2}),
        *more,
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", *args],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_an_interrupted_session_leaves_no_job_pod_or_container(
    pytester: pytest.Pytester,
    k8s_tree: Callable[..., Path],
    registry: Any,
    namespace: str,
    k8s_cluster: Any,
) -> None:
    """Ctrl-C (SIGTERM goes through the same handler) while a pod runs: its Job is
    deleted in the Foreground and the session waits until its container has stopped."""
    k8s_tree(
        [entry("sleepy", args="600 1", scripts="scripts/dummy/sleeper.sh")],
        scripts(sleeper=SLEEPER),
    )
    session = start_session(pytester, namespace, registry)
    try:
        pod = wait_for_running_pod(k8s_cluster, namespace)
        container = pod.status.container_statuses[0].container_id.removeprefix("containerd://")
        assert container in node_tasks()
        session.send_signal(signal.SIGINT)
        output, _ = session.communicate(timeout=90)
    finally:
        if session.poll() is None:
            session.kill()
    assert "KeyboardInterrupt" in output, output
    assert left_in(k8s_cluster, namespace) == [], output
    assert container not in node_tasks()


def test_a_pod_deleted_from_outside_fails_saying_so(
    pytester: pytest.Pytester,
    k8s_tree: Callable[..., Path],
    registry: Any,
    namespace: str,
    k8s_cluster: Any,
) -> None:
    """`kubectl delete pod` while the model runs: the container ends with 143 on SIGTERM;
    the test fails saying its pod was deleted from outside, not only `exit code 143`."""
    from kubernetes import client

    k8s_tree(
        [entry("sleepy", args="600 1", scripts="scripts/dummy/sleeper.sh")],
        scripts(sleeper=SLEEPER),
    )
    session = start_session(pytester, namespace, registry, "--junitxml", "r.xml")
    try:
        pod = wait_for_running_pod(k8s_cluster, namespace)
        client.CoreV1Api(k8s_cluster).delete_namespaced_pod(pod.metadata.name, namespace)
        output, _ = session.communicate(timeout=120)
    finally:
        if session.poll() is None:
            session.kill()
    assert session.returncode == pytest.ExitCode.TESTS_FAILED, output
    reason = junit_properties(pytester.path / "r.xml")["sleepy"]["failure_reason"]
    assert reason.startswith(
        f"pod {pod.metadata.name} was deleted from outside this session (at "
    ), reason
    assert "Kubernetes does not record by whom" in reason, reason
    # 143 where the model's shell ends on SIGTERM, 137 where the grace ran out first.
    assert re.search(r"while its container ran( \(it ended with exit code (137|143)\))?$", reason)
    assert f"pod {pod.metadata.name} was deleted from outside this session" in output, output
    assert left_in(k8s_cluster, namespace) == [], output


def test_a_killed_sessions_jobs_are_removed_by_the_next_session(
    pytester: pytest.Pytester,
    k8s_tree: Callable[..., Path],
    registry: Any,
    namespace: str,
    k8s_cluster: Any,
) -> None:
    from kubernetes import client

    k8s_tree(
        [
            entry("sleepy", args="600 1", scripts="scripts/dummy/sleeper.sh"),
            entry("quick", args="0 5", scripts="scripts/dummy/sleeper.sh"),
        ],
        scripts(sleeper=SLEEPER),
    )
    session = start_session(pytester, namespace, registry)
    try:
        pod = wait_for_running_pod(k8s_cluster, namespace)
    finally:
        session.kill()  # kill -9: nothing of it can clean
        session.communicate(timeout=30)
    dead = pod.metadata.labels[SESSION_LABEL]
    assert client.BatchV1Api(k8s_cluster).list_namespaced_job(namespace).items  # left running
    result = run(pytester, "--mad-tags", "quick", *k8s_args(namespace, registry))
    result.assert_outcomes(passed=1)
    jobs = (
        client.BatchV1Api(k8s_cluster)
        .list_namespaced_job(namespace, label_selector=f"{SESSION_LABEL}={dead}")
        .items
    )
    # Deleted in the Foreground: gone, or going (its pod stops within the grace period).
    assert all(job.metadata.deletion_timestamp for job in jobs)


def test_dry_run_manifests_apply_on_the_server(
    pytester: pytest.Pytester,
    k8s_tree: Callable[..., Path],
    registry: Any,
    namespace: str,
    k8s_cluster: Any,
) -> None:
    _, login = registry
    k8s_tree(
        [entry("alpha"), entry("beta", n_gpus=2, scripts="scripts/dummy/sleeper.sh")],
        scripts(sleeper=SLEEPER),
    )
    result = run(
        pytester,
        "--mad-tags",
        "dummies",
        "--mad-k8s-dry-run",
        "manifests",
        *k8s_args(namespace, registry),
    )
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*k8s dry run: manifests written to */manifests/mad-alpha-*.yaml"])
    files = sorted((pytester.path / "manifests").glob("*.yaml"))
    assert len(files) == 2
    text = "".join(path.read_text() for path in files)
    assert login["password"] not in text and "pytest-madengine-registry" in text
    assert left_in(k8s_cluster, namespace) == []  # nothing applied
    applied = subprocess.run(
        [
            KUBECTL,
            "--kubeconfig",
            str(K8S_KUBECONFIG),
            "apply",
            "--dry-run=server",
            "-n",
            namespace,
            "-f",
            str(pytester.path / "manifests"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    # A Job each, with its ConfigMaps: the model's scripts and our runner's two files.
    assert applied.stdout.count("job.batch/") == 2
    assert applied.stdout.count("(server dry run)") == 8


def test_two_nodes_meet_at_rank_0(
    pytester: pytest.Pytester,
    k8s_tree: Callable[..., Path],
    registry: Any,
    namespace: str,
    k8s_cluster: Any,
) -> None:
    """nnodes 2: two pods of one Job, ranked, the rendezvous at rank 0's pod IP. The
    pods use the node's network: on this one-node cluster the host's firewall (Docker's
    FORWARD policy) drops traffic between pods on the bridge."""
    k8s_tree(
        [entry("pair", scripts="scripts/dummy/pair.sh", timeout=60)],
        {"scripts/dummy/pair.sh": PAIR},
    )
    distributed = {"launcher": "torchrun", "nnodes": 2, "nproc_per_node": 1}
    result = run(
        pytester,
        "--mad-tags",
        "pair",
        "--junitxml",
        "r.xml",
        *k8s_args(namespace, registry, k8s={"host_network": True}, distributed=distributed),
    )
    result.assert_outcomes(passed=1)
    properties = junit_properties(pytester.path / "r.xml")["pair"]
    pods = properties["k8s_pod"].split(",")
    assert len(pods) == 2 and properties["performance"] == "2"
    log = Path(properties["log_path"])
    rank0 = log.read_text()
    assert "rank 0 of 2" in rank0 and f"rank 0 heard: hello from {pods[1]}" in rank0
    assert "--nnodes=2 --nproc_per_node=1 --node_rank=0 --master_addr=" in rank0
    (rank1,) = log.parent.glob(f"{log.stem}.{pods[1]}.log")
    assert "rank 1 of 2" in rank1.read_text()
    (row,) = read_perf(pytester.path / "perf.csv")
    assert (row["nnodes"], row["launcher"], row["deployment_type"]) == ("2", "torchrun", "k8s")
    assert left_in(k8s_cluster, namespace) == []


def test_an_image_the_registry_lacks_fails_at_the_first_pull_error(
    pytester: pytest.Pytester,
    k8s_tree: Callable[..., Path],
    registry: Any,
    namespace: str,
    k8s_cluster: Any,
) -> None:
    """A build manifest naming an image the registry does not have: the node's pull is
    refused, the test fails with the registry's word at once, and its pod goes at once."""
    address, _ = registry
    model = entry("ghost")
    k8s_tree([model])
    image = "ci-ghost_dummy.ubuntu.amd"
    built = {
        "model": "ghost",
        "docker_image": image,
        "registry": address,
        "registry_image": f"{address}/pytest-madengine-test/no-such-image:v1",
    }
    manifest = {"built_images": {image: built}, "built_models": {image: model}, "context": {}}
    (pytester.path / "build_manifest.json").write_text(json.dumps(manifest))
    started = time.monotonic()
    result = run(pytester, "--mad-manifest", "build_manifest.json", *k8s_args(namespace, registry))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["ErrImagePull: the image could not be pulled: *not found*"])
    assert time.monotonic() - started < 30
    assert left_in(k8s_cluster, namespace) == []
