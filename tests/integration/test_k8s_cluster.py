"""The real single-node Kubernetes cluster of `scripts/bootstrap k8s`, through the official
Python client: Jobs whose image comes from the loopback registry with a pull secret,
their logs, GPU limits against the node's fake extended resources, and a Foreground
delete of a running Job. Everything lives in one namespace per test session."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.conftest import BUSYBOX_BASE, TEST_IMAGE_LABEL_LINE, TEST_SESSION

pytestmark = [pytest.mark.k8s, pytest.mark.docker]

# The containerd that kubelet runs pods on (scripts/bootstrap.d/k8s.sh), to look beneath the API.
CONTAINERD_SOCK = "/run/pytest-madengine/k8s/containerd/containerd.sock"
PULL_SECRET = "registry-login"
IMAGE_REPOSITORY = "pytest-madengine-test/k8s-job"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"

T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.2)


def registry_request(address: str, login: dict[str, str], path: str, method: str) -> Any:
    token = base64.b64encode(f"{login['username']}:{login['password']}".encode()).decode()
    request = urllib.request.Request(
        f"http://{address}/v2/{path}",
        method=method,
        headers={"Authorization": f"Basic {token}", "Accept": MANIFEST_V2},
    )
    return urllib.request.urlopen(request, timeout=10)


def node_containerd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "--address", CONTAINERD_SOCK, "--namespace", "k8s.io", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="session")
def job_image(docker_client, registry, tmp_path_factory) -> Iterator[str]:
    """A tiny image in the loopback registry that prints a performance line."""
    address, login = registry
    context = tmp_path_factory.mktemp("k8s-job-image")
    (context / "Dockerfile").write_text(
        f"FROM {BUSYBOX_BASE}\n{TEST_IMAGE_LABEL_LINE}\n"
        """CMD ["sh", "-c", "echo 'performance: 1 x'"]\n"""
    )
    repository, tag = f"{address}/{IMAGE_REPOSITORY}", TEST_SESSION
    docker_client.images.build(path=str(context), tag=f"{repository}:{tag}", rm=True)
    pushed = docker_client.api.push(repository, tag, auth_config=login, stream=True, decode=True)
    for line in pushed:
        assert "error" not in line, f"push of {repository}:{tag} failed: {line['error']}"
    yield f"{repository}:{tag}"
    # The local image goes with the session's label (docker_client); the registry's copy
    # and the node's here. Best effort: a failed cleanup must not hide a test's result.
    with contextlib.suppress(OSError):
        with registry_request(address, login, f"{IMAGE_REPOSITORY}/manifests/{tag}", "HEAD") as r:
            digest = r.headers["Docker-Content-Digest"]
        registry_request(address, login, f"{IMAGE_REPOSITORY}/manifests/{digest}", "DELETE").close()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        node_containerd("images", "rm", f"{repository}:{tag}")


@pytest.fixture(scope="session")
def namespace(k8s_cluster, registry, job_image) -> Iterator[str]:
    """This session's namespace, with a pull secret for the registry. It depends on
    job_image so that it goes first: the image leaves the node after the pods do."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(k8s_cluster)
    name = f"pytest-madengine-{TEST_SESSION}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        address, login = registry
        auth = base64.b64encode(f"{login['username']}:{login['password']}".encode()).decode()
        docker_config = {"auths": {address: {**login, "auth": auth}}}
        core.create_namespaced_secret(
            name,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=PULL_SECRET),
                type="kubernetes.io/dockerconfigjson",
                string_data={".dockerconfigjson": json.dumps(docker_config)},
            ),
        )
        # Pods are refused until the controller has made the namespace's default account.
        accounts = core.list_namespaced_service_account
        wait_for(lambda: accounts(name, field_selector="metadata.name=default").items, "account")
        yield name
    finally:
        core.delete_namespace(name)

        def gone() -> bool:
            try:
                core.read_namespace(name)
            except ApiException as exc:
                return exc.status == 404
            return False

        wait_for(gone, f"deletion of namespace {name}", 90)


@pytest.fixture
def batch(k8s_cluster):
    from kubernetes import client

    return client.BatchV1Api(k8s_cluster)


@pytest.fixture
def core(k8s_cluster):
    from kubernetes import client

    return client.CoreV1Api(k8s_cluster)


def make_job(
    name: str,
    image: str,
    command: list[str] | None = None,
    limits: dict[str, str] | None = None,
    grace_seconds: int | None = None,
):
    from kubernetes import client

    container = client.V1Container(
        name="main",
        image=image,
        command=command,
        resources=client.V1ResourceRequirements(limits=limits) if limits else None,
    )
    pod = client.V1PodSpec(
        containers=[container],
        restart_policy="Never",
        image_pull_secrets=[client.V1LocalObjectReference(name=PULL_SECRET)],
        automount_service_account_token=False,
        termination_grace_period_seconds=grace_seconds,
    )
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(template=client.V1PodTemplateSpec(spec=pod), backoff_limit=0),
    )
    # As the API's JSON: an in-process pytester run earlier in the suite may have made
    # Python import the client's model classes anew, and the session's API object
    # validates against the classes it was made with.
    return client.ApiClient().sanitize_for_serialization(job)


def job_pods(core, namespace: str, job: str) -> list[Any]:
    return core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items


def wait_for_success(batch, core, namespace: str, job: str, timeout: float = 60) -> None:
    def finished() -> bool:
        status = batch.read_namespaced_job_status(job, namespace).status
        if status.failed:
            pods = [(p.metadata.name, p.status) for p in job_pods(core, namespace, job)]
            raise AssertionError(f"job {job} failed: {pods}")
        return bool(status.succeeded)

    wait_for(finished, f"success of job {job}", timeout)


def test_job_pulls_from_the_registry_and_its_log_reads_back(batch, core, namespace, job_image):
    batch.create_namespaced_job(namespace, make_job("perf", job_image))
    wait_for_success(batch, core, namespace, "perf")
    (pod,) = job_pods(core, namespace, "perf")
    assert pod.spec.node_name == "localhost"
    assert core.read_namespaced_pod_log(pod.metadata.name, namespace) == "performance: 1 x\n"


def test_gpu_limits_schedule_within_the_node_and_not_beyond(batch, core, namespace, job_image):
    for gpus in (2, 9):
        job = make_job(f"gpus-{gpus}", job_image, limits={"amd.com/gpu": str(gpus)})
        batch.create_namespaced_job(namespace, job)

    def unschedulable() -> Any:
        for pod in job_pods(core, namespace, "gpus-9"):
            for condition in pod.status.conditions or []:
                if condition.type == "PodScheduled" and condition.reason == "Unschedulable":
                    return condition
        return None

    condition = wait_for(unschedulable, "Unschedulable condition on the 9-GPU pod", 30)
    assert condition.status == "False"
    assert "Insufficient amd.com/gpu" in condition.message
    wait_for_success(batch, core, namespace, "gpus-2")
    (pod,) = job_pods(core, namespace, "gpus-2")
    assert pod.spec.containers[0].resources.limits == {"amd.com/gpu": "2"}
    (waiting,) = job_pods(core, namespace, "gpus-9")
    assert waiting.spec.node_name is None and waiting.status.phase == "Pending"


def test_foreground_delete_of_a_running_job_removes_pod_and_container(
    batch, core, namespace, job_image
):
    from kubernetes.client.rest import ApiException

    command = ["sh", "-c", "trap 'exit 0' TERM; echo started; while true; do sleep 0.2; done"]
    batch.create_namespaced_job(namespace, make_job("sleeper", job_image, command, grace_seconds=5))

    def running_container() -> str | None:
        for pod in job_pods(core, namespace, "sleeper"):
            for status in pod.status.container_statuses or []:
                if status.state.running and status.container_id:
                    return status.container_id.removeprefix("containerd://")
        return None

    container = wait_for(running_container, "running container of job sleeper")
    assert container in node_containerd("tasks", "ls", "--quiet").stdout.split()

    batch.delete_namespaced_job("sleeper", namespace, propagation_policy="Foreground")

    def job_gone() -> bool:
        try:
            batch.read_namespaced_job("sleeper", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    # Foreground: the Job goes only after its pod, and the pod only once kubelet has
    # stopped its container.
    wait_for(job_gone, "deletion of job sleeper", 30)
    assert job_pods(core, namespace, "sleeper") == []
    assert container not in node_containerd("tasks", "ls", "--quiet").stdout.split()
