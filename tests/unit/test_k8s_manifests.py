"""The k8s backend's pure parts: the context's k8s block, the Job and ConfigMaps made
from a RunSpec (read back as the API would read them), and GPU placement by the
cluster's scheduler instead of our pool."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from pytest_madengine.backends import (
    CONTROLLER_LABEL,
    SESSION_LABEL,
    TEST_LABEL,
    Bind,
    DataBind,
    RunSpec,
)
from pytest_madengine.backends.kubernetes import manifests, pinned
from pytest_madengine.backends.kubernetes.config import parse_distributed, parse_settings
from pytest_madengine.backends.kubernetes.manifests import JobPlan
from pytest_madengine.core.options import RawOptions, parse_options
from pytest_madengine.core.runspec import build_run_spec
from pytest_madengine.core.session import MadSession
from pytest_madengine.errors import MadError
from pytest_madengine.resources.gpus import Gpu, GpuInventory
from pytest_madengine.resources.hosts import Host
from pytest_madengine.resources.placement import HostPool
from tests.conftest import entry, write_tree

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def cluster_host(gpus: int = 4) -> Host:
    inventory = GpuInventory(tuple(Gpu(i, "AMD") for i in range(gpus)), "k8s", virtual=True)
    return Host("k8s:test", None, inventory, scheduled=True, scheduler_checks_fit=True)


def spec(tmp_path: Path, **fields: object) -> RunSpec:
    base = RunSpec(
        image="reg:5000/ci-x@sha256:abc",
        command=("bash", "run.sh", "--batch", "8"),
        workdir="/myworkspace/dummy",
        log_path=tmp_path / "x.log",
        env={"MAD_MODEL_NAME": "dummy2/model1", "PLAIN": "1"},
        labels={
            SESSION_LABEL: "abc123",
            TEST_LABEL: "scripts/dummy2/models.json::dummy2/model1[batch=8]",
            "org.pytest-madengine.model": "dummy2/model1",
            CONTROLLER_LABEL: "vm:12:345",
        },
        copies=((tmp_path, "/myworkspace/dummy"),),
        timeout_s=7.5,
        gpu_count=2,
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def plan(tmp_path: Path, block: dict | None = None, **fields: object) -> JobPlan:
    run = spec(tmp_path, **fields.pop("spec", {}))  # type: ignore[arg-type]
    settings = parse_settings(block or {})
    labels, annotations = manifests.object_labels(run, settings)
    values: dict = dict(
        name=manifests.job_name(run.labels[TEST_LABEL], "0a1b2c3d"),
        namespace="bench",
        image=run.image,
        spec=run,
        settings=settings,
        gpu_resource="amd.com/gpu",
        gpus_per_pod=run.gpu_count,
        token="tok",
        pull_secrets=("mad-pull-abc123",),
        labels=labels,
        annotations=annotations,
    )
    values.update(fields)
    return JobPlan(**values)


def job_dict(job_plan: JobPlan) -> dict:
    return manifests.plain([manifests.job(job_plan)])[0]


def test_the_job_runs_once_with_its_deadline_gpus_and_pull_secret(tmp_path: Path) -> None:
    job = job_dict(plan(tmp_path))
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["spec"]["backoffLimit"] == 0 and "completionMode" not in job["spec"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["activeDeadlineSeconds"] == 8  # 7.5 s, rounded up
    assert pod["terminationGracePeriodSeconds"] == 10
    assert pod["imagePullSecrets"] == [{"name": "mad-pull-abc123"}]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == "reg:5000/ci-x@sha256:abc"
    assert container["resources"] == {"limits": {"amd.com/gpu": "2"}}
    assert container["command"][:2] == ["/bin/sh", "-c"]
    assert container["command"][3:] == ["madengine-run", "bash", "run.sh", "--batch", "8"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["PLAIN"] == "1" and env["MAD_K8S_WORKDIR"] == "/myworkspace/dummy"
    assert env["MAD_K8S_TOKEN"] == "tok"
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts == {"shm": "/dev/shm"}  # no scripts in this plan: the shm volume alone


def test_no_timeout_no_deadline_and_no_gpus_no_limit(tmp_path: Path) -> None:
    pod = job_dict(plan(tmp_path, gpus_per_pod=0, spec={"timeout_s": None}))["spec"]["template"]
    assert "activeDeadlineSeconds" not in pod["spec"]
    assert "resources" not in pod["spec"]["containers"][0]


def test_names_and_labels_are_what_kubernetes_accepts(tmp_path: Path) -> None:
    job_plan = plan(tmp_path)
    assert job_plan.name == "mad-dummy2-model1-batch-8-0a1b2c3d"
    assert DNS_LABEL.match(job_plan.name) and len(job_plan.name) <= 52
    long = manifests.job_name("models.json::" + "x" * 200, "0a1b2c3d")
    assert len(long) <= 52 and DNS_LABEL.match(long)
    job = job_dict(job_plan)
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert all(LABEL_VALUE.match(value) for value in labels.values()), labels
        assert labels["app.kubernetes.io/managed-by"] == "pytest-madengine"
        assert labels[SESSION_LABEL] == "abc123"
    # What a label cannot hold is kept whole in an annotation.
    annotations = job["metadata"]["annotations"]
    assert annotations[TEST_LABEL] == "scripts/dummy2/models.json::dummy2/model1[batch=8]"
    assert annotations[CONTROLLER_LABEL] == "vm:12:345"
    assert job["metadata"]["labels"]["org.pytest-madengine.model"] == "dummy2-model1"


def test_the_k8s_block_reaches_the_pod(tmp_path: Path) -> None:
    block = {
        "namespace": "bench",
        "node_selector": {"gpu": "mi300x"},
        "tolerations": [
            {"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}
        ],
        "service_account": "runner",
        "host_network": True,
        "env": {"NCCL_DEBUG": "WARN"},
        "labels": {"team": "perf"},
        "memory": "64Gi",
        "cpu_limit": 16,
        "resources": {"limits": {"example.com/fpga": 1}},
        "priority_class": "batch",
        "image_pull_secrets": ["corp-registry"],
        "termination_grace_period": 3,
        "shm_size": "8Gi",
        "gpu_count": 8,
        "backoff_limit": 3,  # madengine's, ignored
    }
    job_plan = plan(tmp_path, block)
    job = job_dict(
        dataclasses.replace(
            job_plan,
            pull_secrets=job_plan.pull_secrets + job_plan.settings.image_pull_secrets,
        )
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "mi300x"}
    assert pod["tolerations"] == [
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}
    ]
    assert pod["serviceAccountName"] == "runner" and "automountServiceAccountToken" not in pod
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["priorityClassName"] == "batch" and pod["terminationGracePeriodSeconds"] == 3
    assert pod["imagePullSecrets"] == [{"name": "mad-pull-abc123"}, {"name": "corp-registry"}]
    assert job["spec"]["backoffLimit"] == 0  # never madengine's backoff_limit
    (container,) = pod["containers"]
    assert container["resources"] == {
        "limits": {"cpu": "16", "example.com/fpga": "1", "amd.com/gpu": "2"},
        "requests": {"memory": "64Gi"},
    }
    assert {"name": "NCCL_DEBUG", "value": "WARN"} in container["env"]
    assert job["metadata"]["labels"]["team"] == "perf"
    shm = next(volume for volume in pod["volumes"] if volume["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"namspace": "x"}, "unknown key 'namspace'"),
        ({"namespace": "Bad_Name"}, "'namespace' must be a Kubernetes name"),
        ({"tolerations": {"key": "x"}}, "'tolerations' must be a list"),
        ({"memory": "lots"}, "'memory' must be a Kubernetes quantity"),
        ({"host_network": "yes"}, "'host_network' must be true or false"),
        ({"image_pull_policy": "Sometimes"}, "'image_pull_policy' must be Always"),
        ({"start_timeout": -1}, "'start_timeout' must be a number >= 0"),
        ("k8s", "expected an object"),
    ],
)
def test_a_wrong_k8s_block_names_the_key(block: object, message: str) -> None:
    with pytest.raises(MadError, match=re.escape(message)):
        parse_settings(block)


def test_distributed_block() -> None:
    assert parse_distributed(None).nnodes == 1
    assert parse_distributed({"nnodes": 2, "nproc_per_node": 4}).nproc_per_node == 4
    with pytest.raises(MadError, match="launcher 'mpirun' on several nodes is not supported"):
        parse_distributed({"nnodes": 2, "launcher": "mpirun"})
    with pytest.raises(MadError, match="'nnodes' must be a whole number >= 1"):
        parse_distributed({"nnodes": 0})


def test_several_nodes_an_indexed_job_meeting_at_rank_0(tmp_path: Path) -> None:
    job_plan = plan(tmp_path, nnodes=3, gpus_per_pod=4)
    job = job_dict(job_plan)
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert job["spec"]["completionMode"] == "Indexed"
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    by_name = {item["name"]: item for item in env}
    assert by_name["MASTER_ADDR"]["valueFrom"]["configMapKeyRef"] == {
        "name": job_plan.rendezvous_name,
        "key": "master_addr",
    }
    assert by_name["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert by_name["WORLD_SIZE"]["value"] == "12" and by_name["MASTER_PORT"]["value"] == "29500"
    # A server without Indexed Jobs (1.20) is not sent the field it does not know.
    old = job_dict(dataclasses.replace(job_plan, indexed_jobs=False))
    assert "completionMode" not in old["spec"] and old["spec"]["completions"] == 3
    rendezvous = manifests.plain(
        [manifests.rendezvous_map(job_plan, {"p-b": 1, "p-a": 0}, "10.0.0.7")]
    )[0]
    assert rendezvous["data"] == {"master_addr": "10.0.0.7", "ranks": "p-a=0 p-b=1"}


def test_scripts_travel_in_a_configmap_shared_by_equal_directories(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    (scripts / "sub").mkdir(parents=True)
    (scripts / "run.sh").write_text("echo hi\n")
    (scripts / "run.sh").chmod(0o755)
    (scripts / "sub" / "blob.bin").write_bytes(b"\xff\x00\xfe")
    first = manifests.script_map(scripts, "/myworkspace/dummy", "abc123")
    again = manifests.script_map(scripts, "/elsewhere", "abc123")
    assert first.name == again.name and DNS_LABEL.match(first.name.replace(".", "-"))
    body = manifests.plain([manifests.config_map(first, {}, {})])[0]
    assert body["data"] == {"f0": "echo hi\n"} and body["binaryData"] == {"f1": "/wD+"}
    assert body["immutable"] is True
    job_plan = plan(tmp_path, scripts=(first,))
    pod = job_dict(job_plan)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "copy-0")["configMap"]
    assert volume["items"] == [
        {"key": "f0", "path": "run.sh", "mode": 0o755},
        {"key": "f1", "path": "sub/blob.bin"},
    ]
    (scripts / "run.sh").write_text("echo changed\n")
    assert manifests.script_map(scripts, "/myworkspace/dummy", "abc123").name != first.name


def test_a_single_file_copy_lands_at_its_container_path(tmp_path: Path) -> None:
    runner = tmp_path / "container_run.sh"
    runner.write_text("echo steps\n")
    single = manifests.script_map(runner, "/myworkspace/.madengine/run.sh", "abc123")
    assert single.container_dir == "/myworkspace/.madengine"
    assert [(f.path, f.content) for f in single.files] == [("run.sh", b"echo steps\n")]


def test_scripts_too_big_for_a_configmap_say_so(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0" * (manifests.CONFIGMAP_BYTES + 1))
    with pytest.raises(MadError, match="more than a ConfigMap carries"):
        manifests.script_map(tmp_path, "/w", "s")


def test_secrets_go_to_a_secret_and_never_into_the_job(tmp_path: Path) -> None:
    run_env = {"PLAIN": "1", "HF_TOKEN": "hunter2-secret"}
    job_plan = plan(tmp_path, secret_env=("HF_TOKEN",), spec={"env": run_env})
    text = manifests.to_yaml([manifests.job(job_plan)])
    assert "hunter2-secret" not in text
    env = job_dict(job_plan)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": job_plan.secret_name, "key": "HF_TOKEN"}},
    } in env
    secret = manifests.plain([manifests.env_secret(job_plan, {"HF_TOKEN": "hunter2-secret"})])
    assert secret[0]["stringData"] == {"HF_TOKEN": "hunter2-secret"}


def test_binds_are_host_paths_never_created(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("x")
    binds = (
        Bind(str(tmp_path), "/data", True),
        Bind(str(tmp_path / "data.txt"), "/d.txt"),
        Bind("/not/here", "/missing"),
    )
    pod = job_dict(plan(tmp_path, spec={"binds": binds}))["spec"]["template"]["spec"]
    paths = {
        v["hostPath"]["path"]: v["hostPath"]["type"] for v in pod["volumes"] if "hostPath" in v
    }
    assert paths == {
        str(tmp_path): "Directory",
        str(tmp_path / "data.txt"): "File",
        "/not/here": "Directory",
    }
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "bind-0", "mountPath": "/data", "readOnly": True} in mounts


def test_docker_memory_becomes_a_limit(tmp_path: Path) -> None:
    assert manifests.docker_memory("16g") == "16Gi" and manifests.docker_memory("512m") == "512Mi"
    assert manifests.docker_memory("1048576") == "1048576"
    resources = job_dict(plan(tmp_path, spec={"memory": "2g"}))["spec"]["template"]["spec"]
    assert resources["containers"][0]["resources"]["limits"]["memory"] == "2Gi"
    with pytest.raises(MadError, match="not a size"):
        manifests.docker_memory("lots")


def test_yaml_is_plain_documents_with_a_comment_header(tmp_path: Path) -> None:
    job_plan = plan(tmp_path)
    text = manifests.to_yaml([manifests.job(job_plan)], "first line\nsecond")
    assert text.startswith("# first line\n# second\n")
    (document,) = list(yaml.safe_load_all(text))
    assert document["metadata"]["name"] == job_plan.name


def test_images_are_pinned_by_digest() -> None:
    assert pinned("reg:5000/ci-x", "sha256:1") == "reg:5000/ci-x@sha256:1"
    assert pinned("reg:5000/team/ci-x:latest", "sha256:1") == "reg:5000/team/ci-x@sha256:1"


def test_a_host_that_schedules_its_own_gpus_is_never_leased(tmp_path: Path) -> None:
    pool = HostPool([cluster_host(4)], tmp_path)
    # Three tests of a whole node's GPUs each, all at once: nothing is held here.
    assert all(pool.try_acquire(4, f"t{i}") is not None for i in range(3))
    assert pool.unfit_reason(9) is None  # the cluster's scheduler says why, not our pool


def test_a_test_asks_the_cluster_for_its_n_gpus(tmp_path: Path) -> None:
    root = write_tree(tmp_path, [entry("two", n_gpus=2), entry("all", n_gpus=-1)])
    options = parse_options(RawOptions(root=str(root), tags=("dummies",), base_dir=tmp_path))
    host = cluster_host(8)
    specs = {
        test.name: build_run_spec(
            test,
            options,
            host,
            image="i",
            gpus=(),
            session_id="s",
            test_id=test.name,
            log_path=tmp_path / "l",
        )
        for test in MadSession(options).plan.tests
    }
    assert specs["two"].gpu_count == 2 and specs["two"].env["MAD_RUNTIME_NGPUS"] == "2"
    assert specs["all"].gpu_count == 8 and specs["all"].env["MAD_SYSTEM_NGPUS"] == "8"
    # The device plugin sets GPU visibility on a cluster; we set none.
    assert "HIP_VISIBLE_DEVICES" not in specs["two"].env


def test_secrets_and_our_output_stay_out_of_the_scripts_configmap(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("echo hi\n")
    (tmp_path / "credential.json").write_text('{"reg": {"password": "hunter2"}}')
    (tmp_path / "mad_output" / "logs").mkdir(parents=True)
    (tmp_path / "mad_output" / "logs" / "old.log").write_text("old")
    scripts = manifests.script_map(
        tmp_path, "/w", "s", (tmp_path / "credential.json", tmp_path / "mad_output")
    )
    assert [item.path for item in scripts.files] == ["run.sh"]


def test_datasets_are_read_only_paths_on_the_node(tmp_path: Path) -> None:
    data = (DataBind("/cache/imagenet", "/data_dlm_0", "key1", "imagenet"),)
    pod = job_dict(plan(tmp_path, spec={"data": data}))["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "data-0")
    assert volume["hostPath"] == {"path": "/cache/imagenet", "type": "Directory"}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "data-0")
    assert mount == {"name": "data-0", "mountPath": "/data_dlm_0", "readOnly": True}


def test_a_secret_argument_is_in_no_manifest_only_in_the_jobs_secret(tmp_path: Path) -> None:
    secret = "t0k3n-value"
    run = {"command": ("bash", "run.sh", "--token", secret), "secrets": (secret,)}
    job_plan = plan(tmp_path, spec=run, secret_env=("MAD_SECRET_ARG_3",))
    text = manifests.to_yaml([manifests.job(job_plan)], "header")
    assert secret not in text
    container = job_dict(job_plan)["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-2:] == ["--token", "$(MAD_SECRET_ARG_3)"]
    from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
                   if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]}  # fmt: skip
    assert from_secret == {
        "MAD_SECRET_ARG_3": {"name": job_plan.secret_name, "key": "MAD_SECRET_ARG_3"}
    }
    assert manifests.secret_argument_env(job_plan.spec) == {"MAD_SECRET_ARG_3": secret}
