"""How this process reaches Docker hosts: TLS clients, SSH tunnels, health checks."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import docker
import docker.errors
import docker.tls

from pytest_madengine.backends.docker.containers import (
    CLIENT_TIMEOUT_S,
    MAX_POOL_SIZE,
    EngineError,
    bounded,
)
from pytest_madengine.errors import MadError, first_line
from pytest_madengine.resources.gpus import GpuInventory
from pytest_madengine.resources.hosts import Host
from pytest_madengine.resources.processes import start_helper

PING_TIMEOUT_S = 20


class _OwnCaApiClient(docker.APIClient):
    """An API client that verifies against its own CA only: requests lets the
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE variables replace a session's CA file
    (docker-py#2433), so this session does not read the environment."""

    @property
    def trust_env(self) -> bool:
        return False

    @trust_env.setter
    def trust_env(self, value: bool) -> None:
        pass  # requests.Session.__init__ sets it; ours stays off


class _OwnCaDockerClient(docker.DockerClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.api = _OwnCaApiClient(*args, **kwargs)


def client_for(host: Host, timeout: int = CLIENT_TIMEOUT_S) -> docker.DockerClient:
    """A Docker SDK client straight to the host's endpoint (see HostLinks for ssh://).

    ssh:// here goes through the `ssh` command (`docker system dial-stdio` on the host
    per connection): slow, but it needs no socket on the far side.
    """
    return bounded(_client_for(host, timeout), timeout)


def _client_for(host: Host, timeout: int = CLIENT_TIMEOUT_S) -> docker.DockerClient:
    """The client of client_for, before its requests get their deadlines."""
    if host.docker is None:
        return docker.from_env(timeout=timeout, max_pool_size=MAX_POOL_SIZE)
    if host.docker.startswith("ssh://"):
        return docker.DockerClient(
            base_url=host.docker, use_ssh_client=True, timeout=timeout, max_pool_size=MAX_POOL_SIZE
        )
    tls: docker.tls.TLSConfig | bool = False
    if host.tls:
        tls = docker.tls.TLSConfig(
            client_cert=(host.tls["cert"], host.tls["key"]) if "cert" in host.tls else None,
            ca_cert=host.tls.get("ca"),
            verify=bool(host.tls.get("ca", True)),
        )
        if "ca" in host.tls:
            return _OwnCaDockerClient(
                base_url=host.docker, tls=tls, timeout=timeout, max_pool_size=MAX_POOL_SIZE
            )
    return docker.DockerClient(
        base_url=host.docker, tls=tls, timeout=timeout, max_pool_size=MAX_POOL_SIZE
    )


TUNNEL_START_S = 20
SSH_CONNECT_TIMEOUT_S = 10


class SshTunnel:
    """An OpenSSH `-L` forward from a local socket to the host's Docker socket.

    Over it each API request is a new channel of one SSH connection, where docker-py's
    own ssh:// transport starts `docker system dial-stdio` on the host per connection
    (about 0.4 s a request). OpenSSH checks known_hosts and reads ~/.ssh/config.
    """

    def __init__(self, host: Host) -> None:
        url = urllib.parse.urlsplit(host.docker or "")
        self.host = host
        self.target = f"{url.username}@{url.hostname}" if url.username else str(url.hostname)
        self.port = ["-p", str(url.port)] if url.port else []
        self._dir = tempfile.mkdtemp(prefix="mad-ssh-")
        self.local = os.path.join(self._dir, "docker.sock")
        self.url = f"unix://{self.local}"
        self._process: subprocess.Popen[bytes] | None = None

    def _ssh(self, *argv: str) -> list[str]:
        timeout = f"ConnectTimeout={SSH_CONNECT_TIMEOUT_S}"
        return ["ssh", "-o", "BatchMode=yes", "-o", timeout, *self.port, *argv]

    def remote_socket(self) -> str | None:
        """The host's Docker socket as its SSH sessions see it (DOCKER_HOST or default)."""
        script = 'printf %s "${DOCKER_HOST:-unix:///var/run/docker.sock}"'
        try:
            done = subprocess.run(
                self._ssh(self.target, script),
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise MadError(f"ssh {self.target}: no answer in 30 s") from None
        if done.returncode != 0:
            error = done.stderr.strip().splitlines()
            raise MadError(f"ssh {self.target}: {error[-1] if error else done.returncode}")
        return done.stdout[len("unix://") :] if done.stdout.startswith("unix://") else None

    def start(self, remote: str) -> None:
        forward = f"{self.local}:{remote}"
        argv = self._ssh("-N", "-o", "ExitOnForwardFailure=yes", "-L", forward, self.target)
        # Outside pytest's process group: the cleanup after a signal to the group goes
        # through this tunnel; it still ends with this process.
        self._process = start_helper(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait(self) -> None:
        """Until the local socket is there; MadError when the tunnel could not start."""
        assert self._process is not None
        deadline = time.monotonic() + TUNNEL_START_S
        while not os.path.exists(self.local):
            if self._process.poll() is not None or time.monotonic() > deadline:
                error = self._process.stderr.read().decode() if self._process.stderr else ""
                self.close()
                raise MadError(f"ssh tunnel to {self.host.name}: {error.strip() or 'no socket'}")
            time.sleep(0.02)

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)


class HostLinks:
    """How this process reaches the hosts' engines.

    An ssh:// host is reached through one OpenSSH tunnel. The controller opens them
    when it checks the hosts and hands their sockets to its xdist workers, so a
    session makes one SSH connection per host, not one per worker. A host whose engine
    is not on a socket falls back to docker-py's ssh:// transport.
    """

    def __init__(self, shared: Mapping[str, str] | None = None) -> None:
        # Tunnels of another process on this machine (a worker's controller).
        self._shared = {
            name: url
            for name, url in (shared or {}).items()
            if os.path.exists(url.removeprefix("unix://"))
        }
        self._tunnels: dict[str, SshTunnel] = {}
        self._direct: set[str] = set()

    def __enter__(self) -> HostLinks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def urls(self) -> dict[str, str]:
        """Host name -> local socket URL of every tunnel this process can use."""
        return {**self._shared, **{name: t.url for name, t in self._tunnels.items()}}

    def _needs_tunnel(self, host: Host) -> bool:
        return bool(host.docker and host.docker.startswith("ssh://")) and not (
            host.name in self._shared or host.name in self._tunnels or host.name in self._direct
        )

    def open(self, hosts: Sequence[Host]) -> dict[str, str]:
        """Opens the tunnels the hosts need, all at once; host name -> why it failed."""
        pending = [SshTunnel(host) for host in hosts if self._needs_tunnel(host)]
        failed: dict[str, str] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(pending))) as pool:
            remotes = list(pool.map(_remote_or_error, pending))
        started = []
        for tunnel, remote in zip(pending, remotes, strict=True):
            if isinstance(remote, MadError):
                failed[tunnel.host.name] = str(remote)
                tunnel.close()
            elif remote is None:
                self._direct.add(tunnel.host.name)
                tunnel.close()
            else:
                tunnel.start(remote)
                started.append(tunnel)
        for tunnel in started:
            try:
                tunnel.wait()
            except MadError as exc:
                failed[tunnel.host.name] = str(exc)
                continue
            self._tunnels[tunnel.host.name] = tunnel
        return failed

    def client(self, host: Host, timeout: int = CLIENT_TIMEOUT_S) -> docker.DockerClient:
        """A client of the host's engine (not pinged); MadError when no tunnel opens."""
        failed = self.open([host])
        if failed:
            raise MadError(failed[host.name])
        url = self.urls.get(host.name)
        if url is None:
            return client_for(host, timeout)
        client = docker.DockerClient(base_url=url, timeout=timeout, max_pool_size=MAX_POOL_SIZE)
        return bounded(client, timeout)

    def forget(self, host: Host) -> None:
        """Closes this process's tunnel to a host that stopped answering (a new one is
        opened when the host is asked for again); a shared tunnel stays."""
        tunnel = self._tunnels.pop(host.name, None)
        if tunnel is not None:
            tunnel.close()

    def close(self) -> None:
        for name in list(self._tunnels):
            self._tunnels.pop(name).close()


_DOCKER_HOST_TUNNELS: dict[str, SshTunnel] = {}
_DOCKER_HOST_LOCK = threading.Lock()


def docker_host_tunnel(url: str) -> str:
    """A local socket URL forwarded to the engine of an ssh:// DOCKER_HOST, as
    --mad-hosts reaches an SSH host (docker-py's ssh:// needs paramiko, and starts a
    process on the host per connection): one tunnel per process, closed at its exit.
    MadError when no tunnel can be made, saying what to do instead."""
    with _DOCKER_HOST_LOCK:
        tunnel = _DOCKER_HOST_TUNNELS.get(url)
        if tunnel is None:
            tunnel = SshTunnel(Host(url, url, GpuInventory((), "none")))
            remote = tunnel.remote_socket()
            if remote is None:
                tunnel.close()
                raise MadError(
                    "the engine there is not on a Unix socket that an SSH tunnel can"
                    " reach: install paramiko (pip install paramiko), or set DOCKER_HOST"
                    " to a tcp:// or unix:// address"
                )
            tunnel.start(remote)
            tunnel.wait()
            _DOCKER_HOST_TUNNELS[url] = tunnel
            atexit.register(tunnel.close)
        return tunnel.url


def _remote_or_error(tunnel: SshTunnel) -> str | MadError | None:
    try:
        return tunnel.remote_socket()
    except MadError as exc:
        return exc


def _ping(host: Host, links: HostLinks) -> str | None:
    """None when the host's engine answers, else why not (one line)."""
    try:
        client = links.client(host, timeout=PING_TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure to reach it (SDK, SSH, TLS, OS) means down
        return first_line(exc)
    return None


def check_hosts(hosts: Sequence[Host], links: HostLinks) -> dict[str, str]:
    """Host name -> reason, for every host whose engine does not answer (checked at once)."""
    failed = links.open(hosts)
    reachable = [host for host in hosts if host.name not in failed]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(reachable))) as pool:
        pings = pool.map(lambda host: _ping(host, links), reachable)
        reasons = dict(zip((host.name for host in reachable), pings, strict=True))
    failed.update({name: reason for name, reason in reasons.items() if reason is not None})
    return failed


def connect(base_url: str | None = None, timeout: int = CLIENT_TIMEOUT_S) -> docker.DockerClient:
    """A client for DOCKER_HOST (or base_url); a one-line error when nothing answers.
    An ssh:// engine is reached through an SSH tunnel, as --mad-hosts reaches one."""
    where = base_url or os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if where.startswith("ssh://"):
            base_url = docker_host_tunnel(where)
        client = bounded(
            docker.DockerClient(base_url=base_url, timeout=timeout, max_pool_size=MAX_POOL_SIZE)
            if base_url
            else docker.from_env(timeout=timeout, max_pool_size=MAX_POOL_SIZE)
        )
        client.ping()
    except (docker.errors.DockerException, MadError) as exc:
        raise EngineError(
            f"no Docker Engine answers at {where}: {first_line(exc)} (start one: scripts/bootstrap)"
        ) from None
    return client
