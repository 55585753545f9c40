"""What the k8s backend adds per test over Jobs made and awaited with the client alone.

Runs N trivial models through pytest-madengine with `--mad-deploy k8s` (after a warm-up
session that builds, pushes and pulls their image, so none of that is timed) and N Jobs
of the same image, made and awaited with the official client alone (create, watch the
Job's pods until the container ends, read the log, delete), in the same run and
namespace. Prints the median seconds per test of each, the seconds the plugin adds,
and the API requests per test of each (a watch or a followed log counts once).

    python bench/k8s.py [--tests 10] [--kubeconfig FILE] [--registry HOST:PORT]

Needs `scripts/bootstrap engine base-images registry k8s` (or a cluster, a registry and
its login in a credential.json given with --credentials).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from benchtree import write_bench_tree
from kubernetes import client, watch

from pytest_madengine.backends.kubernetes.api import CountingApiClient, api_requests

SCRIPT = "#!/bin/sh\necho 'performance: 1.0 samples_per_second'\n"
KUBECONFIG = "/var/lib/pytest-madengine/k8s/kubeconfig"
CREDENTIALS = "/var/lib/pytest-madengine/registry/credential.json"


def plugin_session(root: Path, junit: Path, context: dict[str, Any], registry: str) -> list[float]:
    """Per-test seconds (setup + call + teardown) from the session's JUnit XML; the
    session runs in this process, so its API requests are counted here."""
    argv = [
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(root),
        "--mad-root",
        str(root),
        "--mad-tags",
        "bench",
        "--mad-deploy",
        "k8s",
        "--mad-registry",
        registry,
        "--mad-context",
        json.dumps(context),
        "--mad-output",
        str(root / "mad_output"),
        "--mad-perf-csv",
        str(root / "perf.csv"),
        "--junitxml",
        str(junit),
        str(root),
    ]
    if pytest.main(argv) != 0:
        sys.exit("bench: the plugin session failed (see above)")
    return [float(case.get("time", "0")) for case in ElementTree.parse(junit).iter("testcase")]


def image_of(junit: Path) -> str:
    case = next(ElementTree.parse(junit).iter("testcase"))
    return next(p.get("value", "") for p in case.iter("property") if p.get("name") == "image")


def client_alone(api: Any, namespace: str, image: str, secret: str, count: int) -> list[float]:
    """N Jobs of the image, one after another: create, watch its pods until the
    container has ended, read the log, delete (in the background)."""
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    seconds = []
    for index in range(count):
        name = f"bench-raw-{index}-{uuid.uuid4().hex[:6]}"
        container = client.V1Container(name="main", image=image, command=["sh", "-c", SCRIPT])
        pod = client.V1PodSpec(
            containers=[container],
            restart_policy="Never",
            automount_service_account_token=False,
            image_pull_secrets=[client.V1LocalObjectReference(name=secret)],
        )
        job = client.V1Job(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(spec=pod)),
        )
        start = time.perf_counter()
        batch.create_namespaced_job(namespace, job)
        pod_name = None
        stream = watch.Watch()
        for event in stream.stream(
            core.list_namespaced_pod,
            namespace,
            label_selector=f"job-name={name}",
            timeout_seconds=120,
        ):
            status = event["object"].status
            states = [s.state for s in status.container_statuses or []]
            if states and states[0].terminated:
                pod_name = event["object"].metadata.name
                stream.stop()
        if pod_name is None:
            sys.exit(f"bench: Job {name} did not end")
        log = core.read_namespaced_pod_log(pod_name, namespace)
        batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        seconds.append(time.perf_counter() - start)
        if "performance" not in log:
            sys.exit(f"bench: Job {name} printed no performance line: {log!r}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=10)
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG", KUBECONFIG))
    parser.add_argument("--credentials", default=CREDENTIALS, help="credential.json with the login")
    parser.add_argument("--registry", help="default: the first entry of --credentials")
    options = parser.parse_args()
    logins = json.loads(Path(options.credentials).read_text())
    registry = options.registry or next(iter(logins))
    login = logins[registry]
    from kubernetes import config

    configuration = client.Configuration()
    config.load_kube_config(options.kubeconfig, client_configuration=configuration)
    api = CountingApiClient(configuration)
    core = client.CoreV1Api(api)
    namespace = f"mad-bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        while not core.list_namespaced_service_account(
            namespace, field_selector="metadata.name=default"
        ).items:
            time.sleep(0.2)
        auth = base64.b64encode(f"{login['username']}:{login['password']}".encode()).decode()
        secret = client.V1Secret(
            metadata=client.V1ObjectMeta(name="bench-pull"),
            type="kubernetes.io/dockerconfigjson",
            string_data={".dockerconfigjson": json.dumps({"auths": {registry: {"auth": auth}}})},
        )
        core.create_namespaced_secret(namespace, secret)
        context = {"k8s": {"namespace": namespace, "kubeconfig": options.kubeconfig}}
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch) / "tree"
            write_bench_tree(root, SCRIPT, [f"m{i}" for i in range(options.tests)], n_gpus=1)
            (root / "credential.json").write_text(json.dumps({registry: login}))
            plugin_session(root, root / "warmup.xml", context, registry)  # build, push, pull
            image = image_of(root / "warmup.xml")
            before = api_requests()
            started = time.perf_counter()
            plugin = plugin_session(root, root / "timed.xml", context, registry)
            plugin_wall = time.perf_counter() - started
            plugin_calls = api_requests() - before
        before = api_requests()
        raw = client_alone(api, namespace, image, "bench-pull", options.tests)
        raw_calls = api_requests() - before
    finally:
        core.delete_namespace(namespace)
    plugin_s, raw_s = statistics.median(plugin), statistics.median(raw)
    count = options.tests
    print(f"tests: {count}, image {image}")
    print(
        f"client alone (create, watch, log, delete): {raw_s:.3f} s per Job (median),"
        f" {raw_calls / count:.1f} API requests per Job"
    )
    print(
        f"pytest-madengine --mad-deploy k8s: {plugin_s:.3f} s per test (median),"
        f" {plugin_calls / count:.1f} API requests per test"
        f" ({plugin_calls} in the session, with its start and sweep)"
    )
    print(
        f"added per test: {plugin_s - raw_s:.3f} s; whole session {plugin_wall:.1f} s"
        f" ({plugin_wall / count:.3f} s per test with collection, start and sweep)"
    )


if __name__ == "__main__":
    main()
