"""The context's `k8s` block (madengine v2's form, plus keys of ours), checked once.

    "deploy": "k8s",
    "k8s": {"namespace": "bench", "registry": "registry.example:5000",
            "node_selector": {"gpu": "mi300x"}, "tolerations": [{"key": "gpu", ...}],
            "service_account": "bench", "host_network": false, "env": {"NCCL_DEBUG": "WARN"},
            "labels": {"team": "perf"}, "memory": "64Gi", "cpu": "16",
            "gpu_resource_name": "amd.com/gpu", "kubeconfig": "~/.kube/config", ...}

Keys madengine knows but that have no meaning here are accepted and ignored (listed in
IGNORED_KEYS), so its configuration files load; any other unknown key is a typo and a
usage error naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.errors import MadError

ORIGIN = "context 'k8s'"
DEFAULT_NAMESPACE = "default"
DEFAULT_GRACE_S = 10
DEFAULT_START_TIMEOUT_S = 300.0
DEFAULT_MASTER_PORT = 29500
GPU_RESOURCES = {"AMD": "amd.com/gpu", "NVIDIA": "nvidia.com/gpu"}
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")
# madengine's keys that we accept and ignore: the GPU count comes from the model's
# n_gpus, a failed Job is never retried inside Kubernetes (backoffLimit 0: a retry
# would mix two runs in one log), and results come back through the pod's log, so no
# storage for them is needed.
IGNORED_KEYS = frozenset(
    {
        "gpu_count",
        "backoff_limit",
        "ttl_seconds_after_finished",
        "allow_privileged_profiling",
        "storage_class",
        "nfs_storage_class",
        "data_storage_class",
        "local_path_storage_class",
        "single_node_results_storage_class",
        "multi_node_results_storage_class",
        "recreate_shared_data_pvc",
        "results_pvc",
        "data_pvc",
        "output_dir",
        "secrets",
        "debug",
    }
)
KEYS = (
    "namespace",
    "kubeconfig",
    "context",
    "registry",
    "gpu_resource_name",
    "gpus_per_node",
    "node_selector",
    "tolerations",
    "service_account",
    "host_network",
    "host_ipc",
    "env",
    "labels",
    "annotations",
    "memory",
    "memory_limit",
    "cpu",
    "cpu_limit",
    "resources",
    "image_pull_policy",
    "image_pull_secrets",
    "priority_class",
    "shm_size",
    "termination_grace_period",
    "start_timeout",
    "master_port",
)
# A Kubernetes name (DNS-1123 label): namespaces, service accounts, secrets.
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")


@dataclass(frozen=True)
class K8sSettings:
    """How tests become Jobs on one cluster (see README, Kubernetes)."""

    namespace: str = DEFAULT_NAMESPACE
    kubeconfig: str | None = None  # None: $KUBECONFIG, ~/.kube/config, else in-cluster
    context: str | None = None  # a kubeconfig context; None: its current one
    registry: str | None = None  # where built images are pushed; over --mad-registry
    gpu_resource_name: str | None = None  # None: amd.com/gpu or nvidia.com/gpu by vendor
    gpus_per_node: int | None = None  # what n_gpus -1 asks; None: the largest node's
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    service_account: str | None = None
    host_network: bool = False
    host_ipc: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    requests: Mapping[str, str] = field(default_factory=dict)  # resources beside the GPUs
    limits: Mapping[str, str] = field(default_factory=dict)
    image_pull_policy: str = "IfNotPresent"  # images are pinned by digest: safe
    image_pull_secrets: tuple[str, ...] = ()  # existing secrets, beside the one we make
    priority_class: str | None = None
    shm_size: str | None = None  # /dev/shm is a memory emptyDir of this size (unless host_ipc)
    termination_grace_s: int = DEFAULT_GRACE_S
    # A pod that has not started this long after its Job was made (unschedulable, an
    # image that does not come, a volume that does not mount) fails the test with the
    # scheduler's or kubelet's reason; 0: wait as long as it takes.
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    master_port: int = DEFAULT_MASTER_PORT  # multi-node rendezvous (torchrun)

    def gpu_resource(self, vendor: str) -> str:
        return self.gpu_resource_name or GPU_RESOURCES.get(vendor, GPU_RESOURCES["AMD"])


def _fail(key: str, expected: str, value: Any) -> MadError:
    return MadError(f"{ORIGIN}: '{key}' must be {expected}, got {value!r}")


def _string_map(block: Mapping[str, Any], key: str) -> dict[str, str]:
    value = block.get(key, {})
    if not isinstance(value, dict) or not all(
        isinstance(item, str | int | float) and not isinstance(item, bool)
        for item in value.values()
    ):
        raise _fail(key, "an object of strings", value)
    return {str(name): str(item) for name, item in value.items()}


def _text(block: Mapping[str, Any], key: str, pattern: re.Pattern[str] | None = None) -> str | None:
    value = block.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or (pattern and not pattern.match(value)):
        what = "a Kubernetes name (lower case, digits, '-')" if pattern is NAME else "a string"
        raise _fail(key, what, value)
    return value


def _flag(block: Mapping[str, Any], key: str) -> bool:
    value = block.get(key, False)
    if not isinstance(value, bool):
        raise _fail(key, "true or false", value)
    return value


def _number(block: Mapping[str, Any], key: str, default: float, integer: bool = False) -> Any:
    value = block.get(key, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
        raise _fail(key, "a whole number >= 0" if integer else "a number >= 0", value)
    return value


def _quantity(key: str, value: Any) -> str:
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not QUANTITY.match(text):
        raise _fail(key, 'a Kubernetes quantity such as "16Gi" or "500m"', value)
    return text


def _resources(block: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(requests, limits): madengine's memory/cpu keys, then our `resources` over them."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for key, target, name in (
        ("memory", requests, "memory"),
        ("memory_limit", limits, "memory"),
        ("cpu", requests, "cpu"),
        ("cpu_limit", limits, "cpu"),
    ):
        if block.get(key) is not None:
            target[name] = _quantity(key, block[key])
    resources = block.get("resources", {})
    if not isinstance(resources, dict) or set(resources) - {"requests", "limits"}:
        raise _fail("resources", "an object {requests, limits}", resources)
    for part, target in (("requests", requests), ("limits", limits)):
        entries = resources.get(part, {})
        if not isinstance(entries, dict):
            raise _fail(f"resources.{part}", "an object of quantities", entries)
        for name, value in entries.items():
            target[str(name)] = _quantity(f"resources.{part}.{name}", value)
    return requests, limits


def _tolerations(block: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    value = block.get("tolerations", [])
    if not isinstance(value, list) or not all(
        isinstance(item, dict) and set(item) <= set(TOLERATION_KEYS) for item in value
    ):
        raise _fail("tolerations", f"a list of objects with {', '.join(TOLERATION_KEYS)}", value)
    return tuple(dict(item) for item in value)


def parse_settings(block: Any) -> K8sSettings:
    """The checked `k8s` block ({} or None: every default); MadError naming the key."""
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise MadError(f"{ORIGIN}: expected an object, got {block!r}")
    for key in block:
        if key not in KEYS and key not in IGNORED_KEYS:
            raise MadError(f"{ORIGIN}: unknown key '{key}' (known: {', '.join(KEYS)})")
    pull_policy = block.get("image_pull_policy", "IfNotPresent")
    if pull_policy not in PULL_POLICIES:
        raise _fail("image_pull_policy", " or ".join(PULL_POLICIES), pull_policy)
    secrets = block.get("image_pull_secrets", [])
    if not isinstance(secrets, list) or not all(
        isinstance(item, str) and NAME.match(item) for item in secrets
    ):
        raise _fail("image_pull_secrets", "a list of secret names", secrets)
    gpus_per_node = block.get("gpus_per_node")
    if gpus_per_node is not None:
        gpus_per_node = _number(block, "gpus_per_node", 0, integer=True)
    requests, limits = _resources(block)
    shm = block.get("shm_size")
    port = _number(block, "master_port", DEFAULT_MASTER_PORT, integer=True)
    if not 0 < port < 65536:
        raise _fail("master_port", "a port number", port)
    return K8sSettings(
        namespace=_text(block, "namespace", NAME) or DEFAULT_NAMESPACE,
        kubeconfig=_text(block, "kubeconfig"),
        context=_text(block, "context"),
        registry=_text(block, "registry"),
        gpu_resource_name=_text(block, "gpu_resource_name"),
        gpus_per_node=gpus_per_node,
        node_selector=_string_map(block, "node_selector"),
        tolerations=_tolerations(block),
        service_account=_text(block, "service_account", NAME),
        host_network=_flag(block, "host_network"),
        host_ipc=_flag(block, "host_ipc"),
        env=_string_map(block, "env"),
        labels=_string_map(block, "labels"),
        annotations=_string_map(block, "annotations"),
        requests=requests,
        limits=limits,
        image_pull_policy=pull_policy,
        image_pull_secrets=tuple(secrets),
        priority_class=_text(block, "priority_class"),
        shm_size=_quantity("shm_size", shm) if shm is not None else None,
        termination_grace_s=_number(block, "termination_grace_period", DEFAULT_GRACE_S, True),
        start_timeout_s=float(_number(block, "start_timeout", DEFAULT_START_TIMEOUT_S)),
        master_port=port,
    )


@dataclass(frozen=True)
class Distributed:
    """The context's `distributed` block, as far as the k8s backend runs it."""

    nnodes: int = 1
    nproc_per_node: int | None = None  # GPUs (and processes) per pod; None: the model's n_gpus
    launcher: str = "torchrun"


LAUNCHERS = ("torchrun",)


def parse_distributed(block: Any) -> Distributed:
    if not block:
        return Distributed()
    if not isinstance(block, dict):
        raise MadError(f"context 'distributed': expected an object, got {block!r}")
    where = "context 'distributed'"
    nnodes = block.get("nnodes", 1)
    if isinstance(nnodes, bool) or not isinstance(nnodes, int) or nnodes < 1:
        raise MadError(f"{where}: 'nnodes' must be a whole number >= 1, got {nnodes!r}")
    per_node = block.get("nproc_per_node")
    if per_node is not None and (
        isinstance(per_node, bool) or not isinstance(per_node, int) or per_node < 1
    ):
        raise MadError(f"{where}: 'nproc_per_node' must be a whole number >= 1, got {per_node!r}")
    launcher = block.get("launcher") or "torchrun"
    if nnodes > 1 and launcher not in LAUNCHERS:
        raise MadError(
            f"{where}: launcher '{launcher}' on several nodes is not supported by the k8s"
            f" backend (supported: {', '.join(LAUNCHERS)})"
        )
    return Distributed(nnodes, per_node, str(launcher))


def default_kubeconfig(settings: K8sSettings, environ: Mapping[str, str]) -> Path | None:
    """The kubeconfig file to read: the block's, $KUBECONFIG's first, ~/.kube/config;
    None when there is none (in a pod: the in-cluster account)."""
    if settings.kubeconfig:
        return Path(settings.kubeconfig).expanduser()
    first = environ.get("KUBECONFIG", "").split(":")[0]
    if first:
        return Path(first).expanduser()
    home = Path("~/.kube/config").expanduser()
    return home if home.exists() else None
