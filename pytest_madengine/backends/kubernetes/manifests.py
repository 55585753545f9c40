"""A test's Kubernetes objects, built with the client's models from its RunSpec.

Pure: nothing here talks to a cluster, so the unit tests read the objects and the dry
run writes them as YAML.

- The model's scripts (the RunSpec's copies) travel in a ConfigMap per directory,
  shared by every test of the session that uses it; a small wrapper (`WRAPPER`, a
  constant: no shell text is built from user input) copies them into the working
  directory, runs the model with SIGTERM passed on, and prints the result files
  (multiple_results) into the log between lines with a token of the run, where the
  log reader takes them out again. ConfigMaps rather than an image per test: nothing
  to build or push when a script changes, and a Job starts from the model's image.
- Values of credential.json in the environment go into a Secret of the Job, never
  into the Job itself (anyone who may read Jobs would read them, and the dry run
  would print them).
- One Job per test: backoffLimit 0 (a retry inside Kubernetes would mix two runs in
  one log), restartPolicy Never, GPUs as limits of the GPU resource, and the pod's
  activeDeadlineSeconds from the effective timeout: counted from the pod's start on
  its node, so time in the queue is not taken from the benchmark.
"""

from __future__ import annotations

import base64
import hashlib
import math
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from pytest_madengine.backends import (
    CONTROLLER_LABEL,
    MODEL_LABEL,
    SESSION_LABEL,
    RunSpec,
    secret_argument_variable,
)
from pytest_madengine.backends.kubernetes.config import K8sSettings
from pytest_madengine.copies import copy_entries
from pytest_madengine.errors import MadError

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "pytest-madengine"
JOB_NAME_LABEL = "job-name"  # set on its pods by the Job controller
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # Indexed Jobs (1.21+)
CONTAINER = "main"
COPIES_ROOT = "/mad/copies"
# A ConfigMap holds at most 1 MiB; keys and YAML take a little of it.
CONFIGMAP_BYTES = 1000 * 1024
JOB_NAME_MAX = 52  # pods add "-<index>-<5 random>"; the job-name label holds 63
LABEL_VALUE_MAX = 63
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_NAME_BAD = re.compile(r"[^a-z0-9-]+")

# Runs in the container as `sh -c WRAPPER madengine-run <model argv...>`. Its inputs
# come from variables of the pod (set below), never from text pasted into it.
WRAPPER = r"""
i=0
printf '%s\n' "$MAD_K8S_COPY_TO" | while IFS= read -r dest; do
  [ -n "$dest" ] || continue
  mkdir -p "$dest" && cp -R "/mad/copies/$i/..data/." "$dest/" || {
    echo "madengine: cannot copy the model's scripts to $dest" >&2; exit 1; }
  i=$((i + 1))
done || exit 125
cd "$MAD_K8S_WORKDIR" || exit 125
if [ -n "${MAD_K8S_RANKS:-}" ]; then
  for pair in $MAD_K8S_RANKS; do
    [ "${pair%%=*}" = "$POD_NAME" ] && NODE_RANK=${pair#*=}
  done
  export NODE_RANK
  MAD_MULTI_NODE_RUNNER="torchrun --nnodes=$NNODES --nproc_per_node=$NPROC_PER_NODE"
  MAD_MULTI_NODE_RUNNER="$MAD_MULTI_NODE_RUNNER --node_rank=$NODE_RANK"
  MAD_MULTI_NODE_RUNNER="$MAD_MULTI_NODE_RUNNER --master_addr=$MASTER_ADDR"
  MAD_MULTI_NODE_RUNNER="$MAD_MULTI_NODE_RUNNER --master_port=$MASTER_PORT"
  export MAD_MULTI_NODE_RUNNER
fi
"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
wait "$child"
rc=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
printf '%s\n' "$MAD_K8S_RESULTS" | while IFS= read -r path; do
  [ -n "$path" ] && [ -f "$path" ] || continue
  if command -v base64 >/dev/null 2>&1; then
    printf '\n%s begin %s\n' "$MAD_K8S_TOKEN" "$path"
    base64 "$path"
    printf '%s end\n' "$MAD_K8S_TOKEN"
  else
    echo "madengine: no base64 in the image, $path is not read back" >&2
  fi
done
exit "$rc"
""".strip()


@dataclass(frozen=True)
class ScriptFile:
    key: str  # the ConfigMap key
    path: str  # relative to the directory
    content: bytes
    executable: bool


@dataclass(frozen=True)
class ScriptMap:
    """One directory of the RunSpec's copies, as a ConfigMap."""

    name: str  # the ConfigMap's name: its content's hash, so equal directories share one
    container_dir: str
    files: tuple[ScriptFile, ...]


@dataclass(frozen=True)
class JobPlan:
    """Everything a test's Job is made of, beside its RunSpec."""

    name: str
    namespace: str
    image: str
    spec: RunSpec
    settings: K8sSettings
    gpu_resource: str
    gpus_per_pod: int
    token: str  # marks the result files in the log
    scripts: tuple[ScriptMap, ...] = ()
    pull_secrets: tuple[str, ...] = ()
    secret_env: tuple[str, ...] = ()  # names of variables read from the Job's Secret
    nnodes: int = 1
    indexed_jobs: bool = True  # the server knows completionMode (Kubernetes 1.21+)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def secret_name(self) -> str:
        return f"{self.name}-env"

    @property
    def rendezvous_name(self) -> str:
        return f"{self.name}-rdzv"


def label_value(text: str) -> str:
    """A label value that says the same where it can (63 characters of [A-Za-z0-9_.-],
    alphanumeric at both ends); the whole text goes to an annotation beside it."""
    value = _LABEL_VALUE_BAD.sub("-", text)[:LABEL_VALUE_MAX].strip("-_.")
    return value


def job_name(test_id: str, unique: str) -> str:
    """`mad-<test>-<unique>`, a DNS label short enough for the pods' names (the test's
    name: its node id without the file)."""
    stem = _NAME_BAD.sub("-", test_id.rpartition("::")[2].lower()).strip("-")
    room = JOB_NAME_MAX - len("mad--") - len(unique)
    stem = stem[:room].strip("-") or "test"
    return f"mad-{stem}-{unique}"


def object_labels(spec: RunSpec, settings: K8sSettings) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) of every object of the test: ours (the session's, for the
    watch and the sweeps; the test's and controller's in full as annotations) and the
    user's."""
    labels = {**settings.labels, MANAGED_BY_LABEL: MANAGED_BY}
    annotations = dict(settings.annotations)
    for key, value in spec.labels.items():
        annotations[key] = value
        if key in (SESSION_LABEL, MODEL_LABEL):
            labels[key] = label_value(value)
    return labels, annotations


def session_labels(session_id: str, controller: str) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) of the session's shared objects (ConfigMaps, the pull secret)."""
    labels = {MANAGED_BY_LABEL: MANAGED_BY, SESSION_LABEL: label_value(session_id)}
    return labels, {CONTROLLER_LABEL: controller, SESSION_LABEL: session_id}


def script_map(
    host_dir: Path,
    container_dir: str,
    session_id: str,
    excludes: Iterable[Path] = (),
    within: Path | None = None,
) -> ScriptMap:
    """The directory's files as a ConfigMap of the session; MadError when they do not
    fit in one. A single file (a pre script, our runner) is a directory of one file,
    placed in its container path's directory. Links inside `within` (the MAD tree) are
    copied as their files; a ConfigMap holds no link, so others are left out."""
    files: list[ScriptFile] = []
    digest = hashlib.sha256()
    total = 0
    if host_dir.is_file():
        # Named as the container path names it (our runner is container_run.sh here).
        found = [(host_dir, posixpath.basename(container_dir.rstrip("/")))]
        container_dir = posixpath.dirname(container_dir.rstrip("/")) or "/"
    else:
        found = [
            (entry.source, entry.relative)
            for entry in copy_entries(host_dir, within, excludes)
            if entry.kind == "file"
        ]
    for path, relative in found:
        content = path.read_bytes()
        total += len(content) + len(relative)
        if total > CONFIGMAP_BYTES:
            raise MadError(
                f"{host_dir}: the model's scripts hold over {CONFIGMAP_BYTES // 1024} KiB,"
                " more than a ConfigMap carries to the cluster; bake the large files into"
                " the model's image (its Dockerfile) and keep scripts/ small"
            )
        executable = bool(path.stat().st_mode & 0o111)
        files.append(ScriptFile(f"f{len(files)}", relative, content, executable))
        for part in (relative.encode(), b"\0", content, b"\0", b"x" if executable else b"-"):
            digest.update(part)
    session = f"{label_value(session_id)}-" if session_id else ""
    name = f"mad-scripts-{session}{digest.hexdigest()[:12]}".lower()
    return ScriptMap(name, container_dir, tuple(files))


def config_map(
    scripts: ScriptMap, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> client.V1ConfigMap:
    data: dict[str, str] = {}
    binary: dict[str, bytes | str] = {}  # the client takes either; ours are base64 text
    for item in scripts.files:
        try:
            data[item.key] = item.content.decode("utf-8")
        except UnicodeDecodeError:
            binary[item.key] = base64.b64encode(item.content).decode()
    return client.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=client.V1ObjectMeta(
            name=scripts.name, labels=dict(labels), annotations=dict(annotations)
        ),
        data=data or None,
        binary_data=binary or None,
        immutable=True,  # the kubelet then need not watch it
    )


def env_secret(plan: JobPlan, values: Mapping[str, str]) -> client.V1Secret:
    return client.V1Secret(
        api_version="v1",
        kind="Secret",
        metadata=client.V1ObjectMeta(
            name=plan.secret_name, labels=dict(plan.labels), annotations=dict(plan.annotations)
        ),
        type="Opaque",
        string_data=dict(values),
    )


def pull_secret(
    name: str,
    auths: Mapping[str, Mapping[str, str]],
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> client.V1Secret:
    """A kubernetes.io/dockerconfigjson secret with the registries' logins."""
    import json

    config = {
        "auths": {
            registry: {
                "username": login["username"],
                "password": login["password"],
                "auth": base64.b64encode(
                    f"{login['username']}:{login['password']}".encode()
                ).decode(),
            }
            for registry, login in auths.items()
        }
    }
    return client.V1Secret(
        api_version="v1",
        kind="Secret",
        metadata=client.V1ObjectMeta(name=name, labels=dict(labels), annotations=dict(annotations)),
        type="kubernetes.io/dockerconfigjson",
        string_data={".dockerconfigjson": json.dumps(config)},
    )


def rendezvous_map(plan: JobPlan, ranks: Mapping[str, int], master_addr: str) -> client.V1ConfigMap:
    """Where the pods of a multi-node test meet: rank 0's pod IP and each pod's rank."""
    pairs = " ".join(f"{pod}={rank}" for pod, rank in sorted(ranks.items(), key=lambda i: i[1]))
    return client.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=client.V1ObjectMeta(
            name=plan.rendezvous_name,
            labels=dict(plan.labels),
            annotations=dict(plan.annotations),
        ),
        data={"master_addr": master_addr, "ranks": pairs},
    )


def docker_memory(text: str) -> str:
    """A Docker memory size ("16g", "512m", bytes) as a Kubernetes quantity ("16Gi")."""
    match = re.fullmatch(r"\s*(\d+)\s*([bkmgt]?)b?\s*", text.lower())
    if not match:
        raise MadError(f"context 'docker_memory': {text!r} is not a size such as 16g")
    number, unit = match.groups()
    suffix = {"": "", "b": "", "k": "Ki", "m": "Mi", "g": "Gi", "t": "Ti"}[unit]
    return f"{number}{suffix}"


def _env(name: str, value: str) -> client.V1EnvVar:
    return client.V1EnvVar(name=name, value=value)


def _field_env(name: str, path: str) -> client.V1EnvVar:
    source = client.V1EnvVarSource(field_ref=client.V1ObjectFieldSelector(field_path=path))
    return client.V1EnvVar(name=name, value_from=source)


def _map_env(name: str, config_map_name: str, key: str) -> client.V1EnvVar:
    selector = client.V1ConfigMapKeySelector(name=config_map_name, key=key)
    return client.V1EnvVar(name=name, value_from=client.V1EnvVarSource(config_map_key_ref=selector))


def secret_argument_env(spec: RunSpec) -> dict[str, str]:
    """The variables that carry the command's secret arguments (from the Job's Secret)."""
    return {secret_argument_variable(i): value for i, value in spec.secret_arguments().items()}


def _command(spec: RunSpec) -> list[str]:
    """The RunSpec's command with each secret argument as `$(VARIABLE)`, which the
    kubelet expands from the container's environment: no manifest holds the value."""
    hidden = spec.secret_arguments()
    return [
        f"$({secret_argument_variable(i)})" if i in hidden else argument
        for i, argument in enumerate(spec.command)
    ]


def environment(plan: JobPlan) -> list[client.V1EnvVar]:
    """The container's variables: the RunSpec's (its secrets from the Job's Secret),
    the k8s block's, the wrapper's, and the multi-node rendezvous."""
    spec, settings = plan.spec, plan.settings
    values = {**spec.env, **settings.env}
    secret = set(plan.secret_env)
    env = [_env(name, value) for name, value in values.items() if name not in secret]
    for name in plan.secret_env:
        selector = client.V1SecretKeySelector(name=plan.secret_name, key=name)
        env.append(
            client.V1EnvVar(name=name, value_from=client.V1EnvVarSource(secret_key_ref=selector))
        )
    env += [
        _env("MAD_K8S_WORKDIR", spec.workdir),
        _env("MAD_K8S_COPY_TO", "\n".join(item.container_dir for item in plan.scripts)),
        _env("MAD_K8S_RESULTS", "\n".join(spec.result_files)),
        _env("MAD_K8S_TOKEN", plan.token),
    ]
    if plan.nnodes > 1:
        per_node = plan.gpus_per_pod or 1
        env += [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_IP", "status.podIP"),
            # Made once every pod has its IP: until then the kubelet waits to start them.
            _map_env("MASTER_ADDR", plan.rendezvous_name, "master_addr"),
            _map_env("MAD_K8S_RANKS", plan.rendezvous_name, "ranks"),
            _env("MASTER_PORT", str(settings.master_port)),
            _env("NNODES", str(plan.nnodes)),
            _env("NPROC_PER_NODE", str(per_node)),
            _env("WORLD_SIZE", str(plan.nnodes * per_node)),
        ]
    return env


def _resources(plan: JobPlan) -> client.V1ResourceRequirements | None:
    limits = dict(plan.settings.limits)
    if plan.spec.memory:
        limits["memory"] = docker_memory(plan.spec.memory)
    if plan.gpus_per_pod > 0:
        limits[plan.gpu_resource] = str(plan.gpus_per_pod)
    requests = dict(plan.settings.requests)
    if not limits and not requests:
        return None
    return client.V1ResourceRequirements(limits=limits or None, requests=requests or None)


Volumes = tuple[list[client.V1Volume], list[client.V1VolumeMount]]


def _copy_volumes(plan: JobPlan) -> Volumes:
    """The config maps of the run's copied files, one volume each under COPIES_ROOT."""
    volumes: list[client.V1Volume] = []
    mounts: list[client.V1VolumeMount] = []
    for index, scripts in enumerate(plan.scripts):
        items = [
            client.V1KeyToPath(key=f.key, path=f.path, mode=0o755 if f.executable else None)
            for f in scripts.files
        ]
        source = client.V1ConfigMapVolumeSource(name=scripts.name, items=items or None)
        volumes.append(client.V1Volume(name=f"copy-{index}", config_map=source))
        mounts.append(
            client.V1VolumeMount(
                name=f"copy-{index}",
                mount_path=posixpath.join(COPIES_ROOT, str(index)),
                read_only=True,
            )
        )
    return volumes, mounts


def _host_volumes(plan: JobPlan) -> Volumes:
    """The spec's binds and datasets, as paths on the node."""
    volumes: list[client.V1Volume] = []
    mounts: list[client.V1VolumeMount] = []
    for index, bind in enumerate(plan.spec.binds):
        # Never created on the node (as `docker run --mount` would not): a path that is
        # not there fails the pod's mount instead of looking like empty data.
        kind = "File" if Path(bind.host_path).is_file() else "Directory"
        source = client.V1HostPathVolumeSource(path=bind.host_path, type=kind)
        volumes.append(client.V1Volume(name=f"bind-{index}", host_path=source))
        mounts.append(
            client.V1VolumeMount(
                name=f"bind-{index}", mount_path=bind.container_path, read_only=bind.read_only
            )
        )
    for index, data in enumerate(plan.spec.data):
        # A dataset is a path on the node: a shared filesystem mounted alike on every
        # node, as madengine's `local` (a fetched copy is on this machine's disk, which
        # a node of a one-machine cluster shares).
        source = client.V1HostPathVolumeSource(path=data.source, type="Directory")
        volumes.append(client.V1Volume(name=f"data-{index}", host_path=source))
        mounts.append(
            client.V1VolumeMount(
                name=f"data-{index}", mount_path=data.container_path, read_only=True
            )
        )
    return volumes, mounts


def _volumes(plan: JobPlan) -> Volumes:
    """Every volume of the pod and where its container mounts it."""
    copies, copy_mounts = _copy_volumes(plan)
    on_host, host_mounts = _host_volumes(plan)
    volumes, mounts = [*copies, *on_host], [*copy_mounts, *host_mounts]
    if not plan.settings.host_ipc:
        # Frameworks outgrow the runtime's 64 MB /dev/shm (Docker runs with --ipc=host).
        memory = client.V1EmptyDirVolumeSource(medium="Memory", size_limit=plan.settings.shm_size)
        volumes.append(client.V1Volume(name="shm", empty_dir=memory))
        mounts.append(client.V1VolumeMount(name="shm", mount_path="/dev/shm"))
    return volumes, mounts


def _container(plan: JobPlan, mounts: list[client.V1VolumeMount]) -> client.V1Container:
    """The pod's one container: the image, the wrapped command, variables and limits."""
    spec = plan.spec
    security = None
    if spec.privileged or spec.cap_add:
        security = client.V1SecurityContext(
            privileged=spec.privileged or None,
            capabilities=client.V1Capabilities(add=list(spec.cap_add)) if spec.cap_add else None,
        )
    return client.V1Container(
        name=CONTAINER,
        image=plan.image,
        image_pull_policy=plan.settings.image_pull_policy,
        command=["/bin/sh", "-c", WRAPPER, "madengine-run", *_command(spec)],
        env=environment(plan),
        resources=_resources(plan),
        volume_mounts=mounts or None,
        security_context=security,
    )


def _pod(plan: JobPlan) -> client.V1PodSpec:
    """The pod of each node: its container, volumes, and the k8s block's settings."""
    spec, settings = plan.spec, plan.settings
    volumes, mounts = _volumes(plan)
    return client.V1PodSpec(
        containers=[_container(plan, mounts)],
        restart_policy="Never",
        volumes=volumes or None,
        image_pull_secrets=[client.V1LocalObjectReference(name=name) for name in plan.pull_secrets]
        or None,
        termination_grace_period_seconds=settings.termination_grace_s,
        active_deadline_seconds=math.ceil(spec.timeout_s) if spec.timeout_s else None,
        node_selector=dict(settings.node_selector) or None,
        tolerations=[client.V1Toleration(**_snake(t)) for t in settings.tolerations] or None,
        service_account_name=settings.service_account,
        # A benchmark has no use for the API; a pod without the token starts sooner.
        automount_service_account_token=None if settings.service_account else False,
        host_network=settings.host_network or None,
        host_ipc=settings.host_ipc or None,
        dns_policy="ClusterFirstWithHostNet" if settings.host_network else None,
        priority_class_name=settings.priority_class,
        enable_service_links=False,
    )


def job(plan: JobPlan) -> client.V1Job:
    """The batch/v1 Job of a run: one pod, or one per node rank."""
    pod = _pod(plan)
    several = plan.nnodes > 1
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=plan.name,
            namespace=plan.namespace,
            labels=dict(plan.labels),
            annotations=dict(plan.annotations),
        ),
        spec=client.V1JobSpec(
            backoff_limit=0,
            completions=plan.nnodes if several else None,
            parallelism=plan.nnodes if several else None,
            # Each pod's index is its node rank (Kubernetes 1.21+; on older servers, which
            # do not know the field, the ranks follow the pods' names).
            completion_mode="Indexed" if several and plan.indexed_jobs else None,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(
                    labels=dict(plan.labels), annotations=dict(plan.annotations)
                ),
                spec=pod,
            ),
        ),
    )


def _snake(toleration: Mapping[str, Any]) -> dict[str, Any]:
    """A toleration as written in YAML (tolerationSeconds) for the model's fields."""
    return {
        ("toleration_seconds" if key == "tolerationSeconds" else key): value
        for key, value in toleration.items()
    }


def plain(objects: Iterable[Any]) -> list[dict[str, Any]]:
    """The objects as the API reads them (camelCase, no empty fields)."""
    serializer = client.ApiClient()
    return [serializer.sanitize_for_serialization(obj) for obj in objects]


def to_yaml(objects: Sequence[Any], header: str = "") -> str:
    """The objects as one multi-document YAML file, `header` as comment lines above."""
    comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    body = yaml.safe_dump_all(plain(objects), sort_keys=False, default_flow_style=False)
    return comment + body
