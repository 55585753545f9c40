"""The API server through the official client: one ApiClient per process that counts
its requests, and the client's exceptions turned into one-line errors."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from pytest_madengine.backends.kubernetes.config import K8sSettings, default_kubeconfig
from pytest_madengine.errors import MadError, first_line, read_text

# Every request has a deadline: (connect, read) seconds. Watches and log streams set
# their own read deadline.
REQUEST_TIMEOUT = (10, 30)
# Failures of the connection itself (not an answer of the API server).
CONNECTION_FAILURES: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError,
    OSError,
)
# An answer of the API server that refuses, or no answer at all.
API_FAILURES: tuple[type[BaseException], ...] = (ApiException, *CONNECTION_FAILURES)
# ... or an answer whose version cannot be read.
_VERSION_FAILURES: tuple[type[BaseException], ...] = (*API_FAILURES, ValueError)
# Requests made by this process, all clients together (bench/k8s.py reads it).
_count_lock = threading.Lock()
_count = [0]


def api_requests() -> int:
    """How many requests this process has sent to an API server so far."""
    with _count_lock:
        return _count[0]


class CountingApiClient(client.ApiClient):
    """An ApiClient that counts its requests (watches and log streams count once each)."""

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        with _count_lock:
            _count[0] += 1
        return super().call_api(*args, **kwargs)


class ApiError(MadError):
    """The API server refused a request, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def api_message(exc: BaseException) -> str:
    """The API server's own one-line message (its Status object), else the exception's."""
    if isinstance(exc, ApiException):
        try:
            body = json.loads(exc.body or "")
        except (TypeError, ValueError):
            body = None
        if isinstance(body, dict) and body.get("message"):
            return first_line(str(body["message"]))
        return f"{exc.status} {exc.reason}".strip()
    return first_line(exc)


def api_error(exc: BaseException, doing: str) -> ApiError:
    status = exc.status if isinstance(exc, ApiException) else None
    return ApiError(f"{doing}: {api_message(exc)}", status)


def connect(settings: K8sSettings, environ: Mapping[str, str] | None = None) -> tuple[Any, str]:
    """(an ApiClient, the cluster's name) from the kubeconfig the settings point at, or
    the pod's own account inside a cluster; MadError when there is none."""
    environ = os.environ if environ is None else environ
    configuration = client.Configuration()
    path = default_kubeconfig(settings, environ)
    try:
        if path is None and environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
            cluster = "in-cluster"
        elif path is None:
            raise MadError(
                "k8s: no kubeconfig (set KUBECONFIG, write ~/.kube/config, or give"
                " 'kubeconfig' in the context's k8s block)"
            )
        else:
            _check_kubeconfig(path)
            config.load_kube_config(
                config_file=str(path),
                context=settings.context,
                client_configuration=configuration,
                persist_config=False,
            )
            cluster = cluster_name(path, settings.context)
    # The client indexes what it reads as it expects it: a file of another shape gives a
    # TypeError, KeyError or AttributeError from deep inside it.
    except (config.ConfigException, OSError, ValueError, TypeError, KeyError, AttributeError,
            yaml.YAMLError) as exc:  # fmt: skip
        where = f"kubeconfig {path}" if path else "in-cluster config"
        raise MadError(f"k8s: {where}: {first_line(exc)}") from None
    # Watches, log streams and short calls of several threads share the pool.
    configuration.connection_pool_maxsize = 32
    configuration.retries = 1
    return CountingApiClient(configuration), cluster


def _check_kubeconfig(path: Path) -> None:
    """A kubeconfig read in bounded time and memory (the client would wait on a FIFO, or
    read /dev/zero for good), and of the shape the client indexes: MadError if not."""
    document = yaml.safe_load(read_text(path))
    if document is None:
        return  # the client says it is empty
    if not isinstance(document, dict):
        raise MadError(f"k8s: kubeconfig {path}: not a kubeconfig (a YAML mapping)")
    for key in ("clusters", "contexts", "users"):
        entries = document.get(key) or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise MadError(f"k8s: kubeconfig {path}: '{key}' is not a list of mappings")


def cluster_name(path: Path, context: str | None) -> str:
    """The cluster a kubeconfig context points at (for the pseudo-host's name)."""
    try:
        contexts, active = config.list_kube_config_contexts(config_file=str(path))
    except (config.ConfigException, OSError, ValueError):
        return "cluster"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    chosen = chosen or {}
    return str((chosen.get("context") or {}).get("cluster") or chosen.get("name") or "cluster")


def server_version(api: Any, timeout: float = 5.0) -> tuple[int, int] | None:
    """(major, minor) of the API server, or None when it does not say."""
    try:
        info = client.VersionApi(api).get_code(_request_timeout=(timeout, timeout))
        return int(info.major), int("".join(c for c in info.minor if c.isdigit()))
    except _VERSION_FAILURES:
        return None


def knows_indexed_jobs(version: tuple[int, int] | None) -> bool:
    """Whether Jobs may say completionMode (1.21+; an unknown server: assume a current one)."""
    return version is None or version >= (1, 21)
