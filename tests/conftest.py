"""Shared helpers: small MAD trees written into a test's directory."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from pytest_madengine.data.fetch import Fetched, Timeouts, fetch_s3, fetch_sftp
from pytest_madengine.errors import MadError

AMD_DOCKERFILE = """# CONTEXT {'gpu_vendor': 'AMD', 'guest_os': 'UBUNTU'}
ARG BASE_DOCKER=mad-base/busybox:latest
FROM $BASE_DOCKER
"""
NVIDIA_DOCKERFILE = AMD_DOCKERFILE.replace("AMD", "NVIDIA")
RUN_SH = "#!/bin/sh\necho 'performance: 42.0 samples_per_second'\n"


# How CI systems spell "this is CI": true (GitHub, GitLab), True (AppVeyor), 1 (others).
CI_TRUE = frozenset({"1", "true", "yes", "on"})


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in CI_TRUE


def component_missing(message: str) -> NoReturn:
    """A test's component (engine, hosts, registry, cluster...) is not there: skipped on
    a developer's machine, a failure under CI, which must have started everything."""
    if under_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def entry(name: str, **fields: Any) -> dict[str, Any]:
    """A models.json entry that points at the tree's shared Dockerfile and script."""
    return {
        "name": name,
        "dockerfile": "docker/dummy",
        "scripts": "scripts/dummy/run.sh",
        "n_gpus": 1,
        "tags": ["dummies"],
        **fields,
    }


def write_tree(root: Path, models: list[Any] | str, files: dict[str, str] | None = None) -> Path:
    """A MAD tree at root; `files` maps further relative paths to their contents."""
    (root / "docker").mkdir(parents=True, exist_ok=True)
    (root / "docker" / "dummy.ubuntu.amd.Dockerfile").write_text(AMD_DOCKERFILE)
    (root / "docker" / "dummy.ubuntu.nvidia.Dockerfile").write_text(NVIDIA_DOCKERFILE)
    (root / "scripts" / "dummy").mkdir(parents=True, exist_ok=True)
    (root / "scripts" / "dummy" / "run.sh").write_text(RUN_SH)
    text = models if isinstance(models, str) else json.dumps(models, indent=2)
    (root / "models.json").write_text(text)
    for relative, content in (files or {}).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


@pytest.fixture
def mad_tree(tmp_path: Path) -> Callable[..., Path]:
    def make(models: list[Any] | str, files: dict[str, str] | None = None) -> Path:
        return write_tree(tmp_path / "mad", models, files)

    return make


BUSYBOX_BASE = "mad-base/busybox:latest"
# Images our tests build carry this session's label, so that the session removes its own
# images and no other's (another session may run beside it).
TEST_IMAGE_LABEL = "org.pytest-madengine.test-session"
TEST_SESSION = uuid.uuid4().hex[:12]
TEST_IMAGE_MARK = f"{TEST_IMAGE_LABEL}={TEST_SESSION}"
TEST_IMAGE_LABEL_LINE = f"LABEL {TEST_IMAGE_MARK}"
DEBIAN_BASE = "mad-base/debian:bookworm"


@pytest.fixture(scope="session")
def docker_client():
    """The local Docker Engine with our base images; skipped without one, failed under CI."""
    import docker  # imported here: the unit tests need no engine

    try:
        client = docker.from_env(timeout=60)
        client.ping()
        client.images.get(BUSYBOX_BASE)
    except docker.errors.DockerException as exc:
        message = f"Docker Engine with {BUSYBOX_BASE} needed (run scripts/bootstrap): {exc}"
        component_missing(message)
    yield client
    remove_test_images(client)
    client.close()


def containers_of_our_images(client) -> list:
    """Containers (any state) of the images this test process built, whatever labels they
    were given: leak checks add them to those with our session label, so that a container
    started without that label is not missed."""
    built = [image.id for image in client.images.list(filters={"label": TEST_IMAGE_MARK})]
    return client.containers.list(all=True, filters={"ancestor": built}) if built else []


def remove_test_images(client) -> None:
    """Leaves an engine without the images this test session made."""
    for image in client.images.list(filters={"label": TEST_IMAGE_MARK}):
        with contextlib.suppress(Exception):  # gone already, or still used by a container
            client.images.remove(image.id, force=True)


TEST_HOSTS_FILE = Path("/var/lib/pytest-madengine/hosts.yml")


@pytest.fixture
def real_home(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """pytester points HOME at a scratch dir; SSH needs the real ~/.ssh (keys, known_hosts)."""
    monkeypatch.setenv("HOME", pwd.getpwuid(os.getuid()).pw_dir)


def _answering_hosts(inventory: Path, component: str) -> Iterator[Path]:
    """The inventory once all its hosts answer (skipped, or failed under CI, when one
    does not); afterwards the hosts lose the images this test session made."""
    from pytest_madengine.backends.docker.links import HostLinks, check_hosts
    from pytest_madengine.resources.hosts import load_hosts

    problem = None
    if not inventory.exists():
        problem = f"{inventory} missing"
    else:
        with HostLinks() as links:
            down = check_hosts(load_hosts(inventory), links)
        problem = "; ".join(f"{name}: {why}" for name, why in down.items()) or None
    if problem:
        message = f"test hosts needed (run scripts/bootstrap {component}): {problem}"
        component_missing(message)
    yield inventory
    with HostLinks() as links:
        for host in load_hosts(inventory):
            with contextlib.suppress(Exception):  # a host a test killed may be coming back
                client = links.client(host)
                remove_test_images(client)
                client.close()


@pytest.fixture(scope="session")
def test_hosts(docker_client) -> Iterator[Path]:
    """The SSH-reachable Docker hosts of `scripts/bootstrap hosts 2`."""
    yield from _answering_hosts(TEST_HOSTS_FILE, "hosts 2")


TLS_HOSTS_FILE = Path("/var/lib/pytest-madengine/hosts-tls.yml")


@pytest.fixture(scope="session")
def tls_hosts(docker_client) -> Iterator[Path]:
    """The tcp:// host with TLS client certificates of `scripts/bootstrap tls-host`."""
    yield from _answering_hosts(TLS_HOSTS_FILE, "tls-host")


REGISTRY_CREDENTIALS = Path("/var/lib/pytest-madengine/registry/credential.json")


@pytest.fixture(scope="session")
def registry() -> tuple[str, dict[str, str]]:
    """The local registry of `scripts/bootstrap registry`: (address, its login)."""
    import urllib.error
    import urllib.request

    problem = None
    try:
        address, login = next(iter(json.loads(REGISTRY_CREDENTIALS.read_text()).items()))
        try:
            urllib.request.urlopen(f"http://{address}/v2/", timeout=5)
            problem = f"{address} lets anyone in"
        except urllib.error.HTTPError as exc:
            problem = None if exc.code == 401 else f"{address} answers {exc.code}"
    except (OSError, ValueError, StopIteration) as exc:
        problem = str(exc)
    if problem:
        message = f"registry needed (run scripts/bootstrap registry): {problem}"
        component_missing(message)
    return address, {"username": login["username"], "password": login["password"]}


K8S_KUBECONFIG = Path("/var/lib/pytest-madengine/k8s/kubeconfig")
K8S_NODE = "localhost"


@pytest.fixture(scope="session")
def k8s_cluster():
    """An ApiClient for the single-node cluster of `scripts/bootstrap k8s` once its node is
    Ready; skipped without it (or without the `kubernetes` client), failed under CI."""
    problem = None
    try:
        import urllib3
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException

        try:
            api = config.new_client_from_config(config_file=str(K8S_KUBECONFIG))
            node = client.CoreV1Api(api).read_node(K8S_NODE, _request_timeout=10)
            if not any(c.type == "Ready" and c.status == "True" for c in node.status.conditions):
                problem = f"node {K8S_NODE} is not Ready"
        except (config.ConfigException, OSError, ApiException, urllib3.exceptions.HTTPError) as exc:
            problem = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    except ImportError as exc:
        problem = f"{exc} (pip install -e '.[k8s]')"
    if problem:
        message = f"Kubernetes cluster needed (run scripts/bootstrap k8s): {problem}"
        component_missing(message)
    yield api
    api.close()


# The data servers of `scripts/bootstrap data`: S3 (SeaweedFS) on 127.0.0.1:9000 and an
# SFTP NAS on 127.0.0.1:2222, each with the sample dataset `dummy`.
DATA_DIR = Path("/var/lib/pytest-madengine/data")
CREDENTIALS = DATA_DIR / "credential.json"
SAMPLE = DATA_DIR / "sample" / "dummy"
DUMMY_URL = "s3://mad-data/dummy"
QUICK = Timeouts(connect=1, read=1, attempts=1)


@dataclass(frozen=True)
class DataServers:
    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)  # pytest prints fixtures of failed tests
    nas_host: str
    nas_port: int
    nas_user: str
    nas_password: str = field(repr=False)
    nas_key: Path

    credentials: Path = CREDENTIALS  # credential.json with MAD_MINIO, MAD_AWS_S3, NAS_NODES

    def s3(self, url: str, dest: Path, **options) -> Fetched:
        return fetch_s3(url, self.endpoint, self.access_key, self.secret_key, dest,
                        provider="minio", **options)  # fmt: skip

    def sftp(self, path: str, dest: Path, **options) -> Fetched:
        return fetch_sftp(self.nas_host, self.nas_port, self.nas_user, self.nas_password, path,
                          dest, **options)  # fmt: skip


@pytest.fixture(scope="session")
def data_servers() -> DataServers:
    """The logins of credential.json once both servers serve the dummy dataset (skipped
    without them, failed under CI)."""
    problem = None
    try:
        entries = json.loads(CREDENTIALS.read_text())
        minio, (by_password, by_key) = entries["MAD_MINIO"], entries["NAS_NODES"]
        servers = DataServers(
            minio["MINIO_ENDPOINT"], minio["USERNAME"], minio["PASSWORD"],
            by_password["HOST"], int(by_password["PORT"]), by_password["USERNAME"],
            by_password["PASSWORD"], Path(by_key["ssh_key_file"]),
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as probe:
            servers.s3(DUMMY_URL + "/README.txt", Path(probe, "s3"), timeouts=QUICK)
            servers.sftp("/dummy/README.txt", Path(probe, "nas"), timeouts=QUICK)
    except (OSError, ValueError, KeyError, MadError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        message = f"data servers needed (run scripts/bootstrap data): {problem}"
        component_missing(message)
    return servers


SLURM_CLUSTER_FILE = Path("/var/lib/pytest-madengine/slurm/cluster.json")
SLURM_UP_STATES = {"idle", "mixed", "allocated", "completing"}


def sinfo_nodes(partition: str) -> dict[str, tuple[str, str]]:
    """node -> (state, GRES) as sinfo reports them."""
    done = subprocess.run(
        ["sinfo", "--noheader", "--Node", f"--partition={partition}", "--format=%N %T %G"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    if done.returncode != 0:
        raise OSError(f"sinfo: {done.stderr.strip() or done.returncode}")
    return {name: (state, gres) for name, state, gres in map(str.split, done.stdout.splitlines())}


@pytest.fixture(scope="module")
def slurm() -> dict[str, Any]:
    """The facts (cluster.json) of the Slurm cluster of `scripts/bootstrap slurm` once all
    its nodes are up; skipped when there is no cluster, failed under CI."""
    try:
        facts = json.loads(SLURM_CLUSTER_FILE.read_text())
        nodes = sinfo_nodes(facts["partition"])
        down = [n for n in facts["nodes"] if nodes.get(n, ("missing",))[0] not in SLURM_UP_STATES]
        problem = f"nodes not up: {', '.join(down)} ({nodes})" if down else None
    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        problem = str(exc)
    if problem:
        message = f"Slurm cluster needed (run scripts/bootstrap slurm): {problem}"
        component_missing(message)
    return facts


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium of `scripts/bootstrap chromium`, for the tests that open pages."""
    from tests.browser import chromium_path

    path = chromium_path()
    if path is None:
        component_missing("chromium needed (run scripts/bootstrap chromium)")
    return path


POSTGRES_URL_FILE = Path("/var/lib/pytest-madengine/postgres/url")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of the bootstrap's PostgreSQL whose tables land in a schema of
    this test's own (dropped afterwards): tests beside it share the one database."""
    import sqlalchemy as sa  # imported here: most tests need no database

    try:
        url = POSTGRES_URL_FILE.read_text(encoding="utf-8").strip()
        engine = sa.create_engine(url, connect_args={"connect_timeout": 10})
        with engine.begin() as connection:
            connection.exec_driver_sql("SELECT 1")
    except (OSError, sa.exc.SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        component_missing(f"PostgreSQL needed (run scripts/bootstrap postgres): {reason}")
    schema = f"mad_test_{uuid.uuid4().hex[:12]}"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in url else "?"
    yield f"{url}{separator}options=-csearch_path%3D{schema}"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    engine.dispose()
