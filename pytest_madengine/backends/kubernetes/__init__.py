"""The `k8s` backend (also `kubernetes`): each test a batch/v1 Job on a Kubernetes
cluster, through the official client (the `k8s` extra).

Images are built once per session on the local Docker Engine and pushed to a registry
(--mad-registry, or the k8s block's `registry`) that the cluster pulls from with a
secret made from credential.json; a build manifest's registry images are used as they
are. Kubernetes places the pods and their GPUs: the cluster is one pseudo-host whose
GPUs our pool neither leases nor checks (Host.scheduled, scheduler_checks_fit), so the
tests of a session queue in the cluster's scheduler, not in ours.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
except ImportError as exc:  # said when the backend is chosen, not at every pytest start
    raise ImportError(
        f"{exc}: the k8s backend needs the kubernetes client (pip install 'pytest-madengine[k8s]')"
    ) from exc

from pytest_madengine.backends import (
    CONTROLLER_LABEL,
    SESSION_LABEL,
    TEST_LABEL,
    BackendSetup,
    ImageRequest,
    OutputSink,
    RunHandle,
    RunSpec,
    secret_argument_variable,
)
from pytest_madengine.backends.docker.local import ENGINE_FAILURES, LocalImages
from pytest_madengine.backends.kubernetes import manifests
from pytest_madengine.backends.kubernetes.api import (
    API_FAILURES,
    CONNECTION_FAILURES,
    REQUEST_TIMEOUT,
    api_error,
    api_message,
    cluster_name,
    connect,
    knows_indexed_jobs,
    server_version,
)
from pytest_madengine.backends.kubernetes.config import (
    K8sSettings,
    default_kubeconfig,
    parse_distributed,
    parse_settings,
)
from pytest_madengine.backends.kubernetes.manifests import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    JobPlan,
    label_value,
)
from pytest_madengine.backends.kubernetes.run import DryRun, JobRun
from pytest_madengine.backends.kubernetes.status import JobTracker
from pytest_madengine.backends.kubernetes.watch import NamespaceWatch
from pytest_madengine.contract import ImageFacts
from pytest_madengine.credentials import registry_of
from pytest_madengine.errors import HostLost, MadError, UsageProblem, first_line
from pytest_madengine.masking import mask_text
from pytest_madengine.resources.gpus import Gpu, GpuInventory
from pytest_madengine.resources.hosts import Host
from pytest_madengine.resources.interrupts import deferred_interrupts
from pytest_madengine.resources.once import Once, note_key
from pytest_madengine.resources.processes import identity_gone, process_identity

# How the kubelet is told which registry a login is for: Docker Hub's own key.
DOCKERHUB_AUTH_KEY = "https://index.docker.io/v1/"
DRY_RUN_PULL_SECRET = "pytest-madengine-registry"
SWEEP_WAIT_S = 60.0
SHARED_KEYS = ("cluster", "largest_node_gpus", "pull_secret", "indexed_jobs")


class KubernetesBackend:
    name = "k8s"

    def __init__(self, setup: BackendSetup) -> None:
        given = setup.settings
        self.session_settings = given
        try:
            self.settings: K8sSettings = parse_settings(given.context.get("k8s"))
            self.distributed = parse_distributed(given.context.get("distributed"))
        except MadError as exc:
            raise UsageProblem(str(exc)) from None
        self.session_id = setup.session_id
        self.controller = setup.controller or process_identity()
        self.namespace = self.settings.namespace
        self.dry_run: Path | None = given.k8s_dry_run
        self.registry = self.settings.registry or given.registry
        self._once = Once(setup.session_dir / "once")
        self._watches: dict[str, NamespaceWatch] = {}
        self.api: Any = None
        shared = dict(setup.shared or {})
        if given.manifest_pulls is None and not self.registry:
            raise UsageProblem(
                "k8s: built images reach the cluster through a registry: give --mad-registry"
                " HOST:PORT or 'registry' in the context's k8s block"
            )
        if self.dry_run is not None:
            path = default_kubeconfig(self.settings, os.environ)
            cluster = cluster_name(path, self.settings.context) if path and path.exists() else "k8s"
            shared.setdefault("cluster", cluster)
            auths = self._registry_auths()
            shared.setdefault("pull_secret", DRY_RUN_PULL_SECRET if auths else None)
            if "indexed_jobs" not in shared:
                shared.update(self._read_cluster())
        else:
            try:
                self.api, cluster = connect(self.settings)
            except MadError as exc:
                raise UsageProblem(str(exc)) from None
            if setup.shared is None:
                shared = self._start_session(cluster)
        self.shared = {key: shared.get(key) for key in SHARED_KEYS}
        largest = self.shared["largest_node_gpus"]
        vendor = given.gpu_vendor
        gpus = tuple(
            Gpu(index, vendor, given.context.gpu_architecture) for index in range(largest or 0)
        )
        self.gpu_resource = self.settings.gpu_resource(vendor)
        self._host = Host(
            f"k8s:{self.shared['cluster']}",
            None,
            GpuInventory(gpus, f"k8s nodes ({self.gpu_resource})", virtual=True),
            scheduled=True,
            scheduler_checks_fit=True,
        )

    # ---- session start (controller) ----

    def _start_session(self, cluster: str) -> dict[str, Any]:
        """Checks the namespace, removes what sessions killed earlier left, reads the
        nodes' GPUs and makes the session's pull secret; UsageProblem when the cluster
        cannot run anything."""
        core = client.CoreV1Api(self.api)
        try:
            core.read_namespace(self.namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                raise UsageProblem(f"k8s: namespace '{self.namespace}' does not exist") from None
            if exc.status != 403:  # a namespaced account may not read namespaces: fine
                raise UsageProblem(f"k8s: cluster {cluster}: {api_message(exc)}") from None
        except CONNECTION_FAILURES as exc:
            raise UsageProblem(
                f"k8s: cluster {cluster} does not answer: {api_message(exc)}"
            ) from None
        self.remove_orphans()
        largest = self.settings.gpus_per_node
        if largest is None:
            largest = self._largest_node_gpus(core)
        return {
            "cluster": cluster,
            "largest_node_gpus": largest,
            "pull_secret": self._make_pull_secret(core),
            "indexed_jobs": knows_indexed_jobs(server_version(self.api)),
        }

    def _read_cluster(self) -> dict[str, Any]:
        """A dry run asks a cluster that answers (the YAML is for it) whether it knows
        Indexed Jobs and how many GPUs its nodes have; it changes nothing there.
        Without an answer: a current server, and the k8s block's gpus_per_node."""
        facts: dict[str, Any] = {"indexed_jobs": True, "largest_node_gpus": None}
        try:
            api, _ = connect(self.settings)
        except MadError:
            api = None
        if api is not None:
            try:
                facts["indexed_jobs"] = knows_indexed_jobs(server_version(api, timeout=2.0))
                facts["largest_node_gpus"] = self._largest_node_gpus(client.CoreV1Api(api))
            finally:
                api.close()
        if self.settings.gpus_per_node is not None:
            facts["largest_node_gpus"] = self.settings.gpus_per_node
        return facts

    def _largest_node_gpus(self, core: client.CoreV1Api) -> int | None:
        """The most GPUs a node can give a pod; None when nodes may not be listed."""
        resource = self.settings.gpu_resource(self.session_settings.gpu_vendor)
        try:
            nodes = core.list_node(_request_timeout=(2, 10)).items
        except API_FAILURES:
            return None
        counts = [
            int((node.status.allocatable or {}).get(resource, "0") or 0)  # type: ignore[union-attr]  # the API server sets a node's status
            for node in nodes
        ]
        return max(counts, default=0)

    def _registry_auths(self) -> dict[str, dict[str, str]]:
        """The logins of credential.json for every registry the session pulls from."""
        registries = {self.registry} if self.registry else set()
        pulls = self.session_settings.manifest_pulls or ()
        registries.update(registry_of(reference) or "docker.io" for reference in pulls)
        auths = {}
        for registry in sorted(registries):
            login = self.session_settings.registry_auth(registry)
            if login:
                key = DOCKERHUB_AUTH_KEY if registry in ("docker.io", "dockerhub") else registry
                auths[key] = login
        return auths

    def _make_pull_secret(self, core: client.CoreV1Api) -> str | None:
        auths = self._registry_auths()
        if not auths:
            return None
        name = f"mad-pull-{label_value(self.session_id)}".lower()
        labels, annotations = manifests.session_labels(self.session_id, self.controller)
        body = manifests.pull_secret(name, auths, labels, annotations)
        try:
            core.create_namespaced_secret(self.namespace, body, _request_timeout=REQUEST_TIMEOUT)
        except API_FAILURES as exc:
            # The message is the API server's; it never holds the secret's data.
            raise UsageProblem(str(api_error(exc, "k8s: creating the pull secret"))) from None
        return name

    # ---- Backend ----

    def hosts(self) -> tuple[Host, ...]:
        return (self._host,)

    def hosts_down(self) -> Mapping[str, str]:
        return {}

    def shared_state(self) -> dict[str, Any]:
        return dict(self.shared)

    @functools.cached_property
    def _images(self) -> LocalImages:
        """The local Docker Engine's images, made on first use: a run from a manifest's
        registry images needs no engine here."""
        return LocalImages.connect(
            self.session_settings.output_dir / "builds",
            self._once,
            self.session_settings.clean_cache,
        )

    def prepare(
        self, request: ImageRequest, host: Host, on_output: OutputSink | None = None
    ) -> ImageFacts:
        if request.dockerfile is None and request.pull:
            assert request.reference is not None
            return ImageFacts(
                name=request.reference,
                docker_sha="",
                base_docker=request.base_docker,
                pulled=True,
                build_duration=request.build_duration,
            )
        try:
            images = self._images
            if request.dockerfile is not None:
                facts = images.build(request, on_output)
            else:
                name = request.reference or request.name
                facts = ImageFacts(
                    name,
                    images.image_id(name),
                    request.base_docker,
                    build_duration=request.build_duration,
                )
            if not self.registry:
                raise MadError(
                    f"k8s: {facts.name} is a local image; give --mad-registry (or the k8s"
                    " block's 'registry') to push it where the cluster can pull it"
                )
            reference = f"{self.registry.rstrip('/')}/{facts.name}"
            auth = self.session_settings.registry_auth(self.registry)
            digest = images.push(facts.name, reference, auth, facts.docker_sha or None)
        except ENGINE_FAILURES as exc:
            raise MadError(f"k8s: preparing {request.name}: {first_line(exc)}") from None
        # Pinned by digest: a node never runs a stale image of the same tag.
        return dataclasses.replace(facts, name=pinned(reference, digest))

    def start(self, spec: RunSpec, host: Host, on_output: OutputSink | None) -> RunHandle:
        plan = self.plan(spec)
        if self.dry_run is not None:
            return DryRun(self._write_manifests(plan))
        for scripts in plan.scripts:
            self._ensure_config_map(scripts)
        tracker = JobTracker(
            plan.name,
            self.distributed.nnodes,
            plan.gpus_per_pod,
            self.gpu_resource,
            time.monotonic(),
            self.settings.start_timeout_s,
            spec.timeout_s,
            self.shared["largest_node_gpus"],
            plan.rendezvous_name if plan.nnodes > 1 else "",
        )

        def make_secret() -> None:
            if plan.secret_env:
                values = {**spec.env, **self.settings.env, **manifests.secret_argument_env(spec)}
                values = {name: values[name] for name in plan.secret_env}
                client.CoreV1Api(self.api).create_namespaced_secret(
                    plan.namespace,
                    manifests.env_secret(plan, values),
                    _request_timeout=REQUEST_TIMEOUT,
                )

        return JobRun(
            self.api,
            self._watch(plan.namespace),
            plan,
            tracker,
            host.name,
            on_output,
            before_create=make_secret,
        )

    def plan(self, spec: RunSpec) -> JobPlan:
        """The Job of a RunSpec (what the dry run writes, and what runs)."""
        test_id = spec.labels.get(TEST_LABEL, "test")
        # A dry run names the Job after the test alone, so a second one rewrites the
        # same files; a real one makes a new name each time (a retry is a new Job).
        unique = (
            hashlib.sha256(test_id.encode()).hexdigest()[:8]
            if self.dry_run is not None
            else uuid.uuid4().hex[:8]
        )
        labels, annotations = manifests.object_labels(spec, self.settings)
        session = "" if self.dry_run is not None else self.session_id
        scripts = tuple(
            manifests.script_map(
                host_dir, container_dir, session, spec.copy_excludes, spec.copy_within
            )
            for host_dir, container_dir in spec.copies
        )
        nnodes = self.distributed.nnodes
        per_pod = spec.gpu_count
        if nnodes > 1 and self.distributed.nproc_per_node:
            per_pod = self.distributed.nproc_per_node
        secret_env = tuple(
            name
            for name, value in {**spec.env, **self.settings.env}.items()
            if value and mask_text(value, spec.secrets) != value
        ) + tuple(map(secret_argument_variable, spec.secret_arguments()))
        pull = self.shared.get("pull_secret")
        return JobPlan(
            name=manifests.job_name(test_id, unique),
            namespace=self.namespace,
            image=spec.image,
            spec=spec,
            settings=self.settings,
            gpu_resource=self.gpu_resource,
            gpus_per_pod=per_pod,
            token=uuid.uuid4().hex,
            scripts=scripts,
            pull_secrets=((pull,) if pull else ()) + self.settings.image_pull_secrets,
            secret_env=secret_env,
            nnodes=nnodes,
            indexed_jobs=bool(self.shared.get("indexed_jobs", True)),
            labels=labels,
            annotations=annotations,
        )

    def _write_manifests(self, plan: JobPlan) -> Path:
        """The test's ConfigMaps and Job as YAML; what must exist beside them (secrets,
        whose values we never write) is said in the file's header."""
        assert self.dry_run is not None
        self.dry_run.mkdir(parents=True, exist_ok=True)
        path = self.dry_run / f"{plan.name}.yaml"
        header = [
            f"pytest-madengine: test {plan.spec.labels.get(TEST_LABEL, '')}",
            "apply with: kubectl apply -f " + path.name,
        ]
        for name in plan.pull_secrets:
            if name == DRY_RUN_PULL_SECRET:
                registries = ", ".join(self._registry_auths())
                header.append(
                    f"needs the pull secret {name} for {registries}: kubectl create secret"
                    f" docker-registry {name} --docker-server=REGISTRY --docker-username=..."
                    " --docker-password=..."
                )
        if plan.secret_env:
            header.append(
                f"needs the secret {plan.secret_name} with the keys"
                f" {', '.join(plan.secret_env)} (credential.json values, not written here)"
            )
        if plan.nnodes > 1:
            header.append(
                f"needs the ConfigMap {plan.rendezvous_name} (master_addr: rank 0's pod IP,"
                " ranks: 'pod=rank ...'), which the plugin makes once every pod has an IP;"
                " with cluster DNS a headless Service does that job (see README)"
            )
        objects: list[Any] = []
        for scripts in plan.scripts:
            labels, annotations = manifests.session_labels(self.session_id, self.controller)
            body = manifests.config_map(scripts, labels, annotations)
            body.metadata.namespace = plan.namespace  # type: ignore[union-attr]  # config_map sets it
            objects.append(body)
        objects.append(manifests.job(plan))
        path.write_text(manifests.to_yaml(objects, "\n".join(header)), encoding="utf-8")
        return path

    def _ensure_config_map(self, scripts: manifests.ScriptMap) -> None:
        """The ConfigMap of a scripts directory, made once per session across workers."""

        def make() -> dict[str, str]:
            labels, annotations = manifests.session_labels(self.session_id, self.controller)
            body = manifests.config_map(scripts, labels, annotations)
            try:
                client.CoreV1Api(self.api).create_namespaced_config_map(
                    self.namespace, body, _request_timeout=REQUEST_TIMEOUT
                )
            except ApiException as exc:
                if exc.status != 409:  # there already: the same name is the same content
                    raise api_error(exc, f"k8s: creating ConfigMap {scripts.name}") from None
            except CONNECTION_FAILURES as exc:
                raise HostLost(self._host.name, api_message(exc)) from None
            return {"name": scripts.name}

        self._once.run(note_key("k8s-configmap", self.namespace, scripts.name), make)

    def _watch(self, namespace: str) -> NamespaceWatch:
        if namespace not in self._watches:
            selector = f"{SESSION_LABEL}={label_value(self.session_id)}"
            self._watches[namespace] = NamespaceWatch(self.api, namespace, selector)
        return self._watches[namespace]

    # ---- cleaning ----

    def _delete_session(self, session: str) -> int:
        """Deletes the session's Jobs (Foreground), ConfigMaps and Secrets; how many Jobs."""
        selector = f"{SESSION_LABEL}={label_value(session)}"
        batch, core = client.BatchV1Api(self.api), client.CoreV1Api(self.api)
        jobs = batch.list_namespaced_job(
            self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
        ).items
        if jobs:
            batch.delete_collection_namespaced_job(
                self.namespace,
                label_selector=selector,
                propagation_policy="Foreground",
                _request_timeout=REQUEST_TIMEOUT,
            )
        for delete in (
            core.delete_collection_namespaced_config_map,
            core.delete_collection_namespaced_secret,
        ):
            delete(self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT)
        return len(jobs)

    def _wait_gone(self, session: str) -> None:
        """Until no Job or pod of the session is left (their containers have stopped)."""
        selector = f"{SESSION_LABEL}={label_value(session)}"
        batch, core = client.BatchV1Api(self.api), client.CoreV1Api(self.api)
        deadline = time.monotonic() + self.settings.termination_grace_s + SWEEP_WAIT_S
        while time.monotonic() < deadline:
            left = (
                batch.list_namespaced_job(
                    self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
                ).items
                or core.list_namespaced_pod(
                    self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
                ).items
            )
            if not left:
                return
            time.sleep(0.5)

    def sweep(self, session_id: str) -> int:
        """Removes whatever the session left in its namespace and waits until its pods
        have gone; how many Jobs there were."""
        if self.api is None:
            return 0
        try:
            with deferred_interrupts():
                count = self._delete_session(session_id)
                self._wait_gone(session_id)
        except API_FAILURES:
            return 0  # a cluster that went away runs nothing of ours any more
        return count

    def remove_orphans(self) -> int:
        """Removes the Jobs, ConfigMaps and Secrets of earlier sessions whose controller
        (a process of this machine) is gone; how many sessions. Others are left alone."""
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
        batch, core = client.BatchV1Api(self.api), client.CoreV1Api(self.api)
        sessions: dict[str, str] = {}
        try:
            for lister in (
                batch.list_namespaced_job,
                core.list_namespaced_config_map,
                core.list_namespaced_secret,
            ):
                for item in lister(
                    self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
                ).items:
                    notes = item.metadata.annotations or {}  # type: ignore[union-attr]  # listed: has one
                    session = notes.get(SESSION_LABEL)
                    if session:
                        sessions[session] = notes.get(CONTROLLER_LABEL, "")
            gone = [s for s, owner in sessions.items() if identity_gone(owner)]
            for session in gone:
                self._delete_session(session)
        except API_FAILURES:
            return 0  # a namespaced account may not list everything: nothing is lost
        return len(gone)

    def close(self) -> None:
        for watch in self._watches.values():
            watch.stop()
        self._watches.clear()
        if "_images" in self.__dict__:
            self._images.close()
        if self.api is not None:
            with contextlib.suppress(Exception):
                self.api.close()


def pinned(reference: str, digest: str) -> str:
    """`registry/name[:tag]` as `registry/name@digest`."""
    if reference.rfind(":") > reference.rfind("/"):
        reference = reference.rpartition(":")[0]
    return f"{reference}@{digest}"


def create(setup: BackendSetup) -> KubernetesBackend:
    """The entry point of the `k8s` (and `kubernetes`) backend."""
    return KubernetesBackend(setup)
