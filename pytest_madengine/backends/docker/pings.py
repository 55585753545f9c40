"""The heartbeat's pings of the Docker hosts: GET /_ping on a client of its own per host
(the tests' clients and their connections are left alone), each within its deadline."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import docker
import requests

from pytest_madengine.backends.docker.links import HostLinks
from pytest_madengine.errors import first_line
from pytest_madengine.resources.health import Ping
from pytest_madengine.resources.hosts import Host


class Pinger:
    def __init__(self, links: HostLinks, local: Callable[[], docker.DockerClient]) -> None:
        self.links = links
        self.local = local  # the engine of DOCKER_HOST, for a host without `docker`
        self._clients: dict[str, docker.DockerClient] = {}
        self._lock = threading.Lock()

    def ping(self, host: Host, deadline_s: float) -> Ping:
        """The round trip of a ping, or offline (no link, no answer in time) or error
        (an answer other than OK, a TLS handshake refused) with the one-line reason."""
        try:
            client = self._client(host, deadline_s)
            start = time.monotonic()
            answer = client.api.get(f"{client.api.base_url}/_ping", timeout=deadline_s)
            round_trip = time.monotonic() - start
        except requests.exceptions.SSLError as exc:
            self._forget(host)
            return Ping.error(first_line(exc))
        except Exception as exc:  # no link, no answer in time: the host is not there
            self._forget(host)
            return Ping.offline(first_line(exc) or type(exc).__name__)
        if not answer.ok:
            return Ping.error(f"the engine answered {answer.status_code} {answer.reason}")
        return Ping.answered(round_trip)

    def _client(self, host: Host, deadline_s: float) -> docker.DockerClient:
        if host.docker is None:
            return self.local()
        with self._lock:
            client = self._clients.get(host.name)
        if client is None:
            client = self.links.client(host, timeout=max(1, math.ceil(deadline_s)))
            with self._lock:
                self._clients[host.name] = client
        return client

    def _forget(self, host: Host) -> None:
        """A client that failed is made anew at the next ping (its connection may hang);
        the host's tunnel stays: the tests' clients use it too."""
        with self._lock:
            client = self._clients.pop(host.name, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
