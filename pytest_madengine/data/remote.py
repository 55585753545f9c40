"""The `minio`, `aws` and `nas` data providers: fetched on this machine, not in the
container, into a cache keyed by the server and the path and checked against the
server before each use, then mounted read-only.

madengine installs sshfs or the aws CLI in every container and downloads there, every
run, with the password on a command line. Here the download happens once on the host
(`fetch.DataCache`: one process fetches, the others wait and reuse; only a complete
download counts), with the logins of credential.json entries `MAD_MINIO`, `MAD_AWS_S3`
and `NAS_NODES` (or the environment variables of those names, holding JSON).

A source is `{"path": ...}` plus, as our extensions, `endpoint` and `region` (S3) and
`timeout` (seconds to connect, and to wait for an answer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pytest_madengine.contract import DataBind
from pytest_madengine.credentials import field_of
from pytest_madengine.data import DataMount, DataProgress, DataRequest, DataUnavailable
from pytest_madengine.data.fetch import (
    DataCache,
    Fetched,
    Listing,
    Progress,
    Timeouts,
    cache_key,
    display_endpoint,
    fetch_s3,
    fetch_sftp,
    list_s3,
    list_sftp,
    parse_s3_url,
)
from pytest_madengine.errors import MadError

Fetcher = Callable[[Path, Progress], Fetched]
Lister = Callable[[], Listing]


def source_field(request: DataRequest, name: str, example: str) -> str:
    """A string of the provider's source; DataUnavailable showing the expected shape."""
    source = request.source
    value = source.get(name) if isinstance(source, dict) else None
    if not isinstance(value, str) or not value:
        raise DataUnavailable(f'expected {{"{name}": "{example}"}}')
    return value


def timeouts_of(request: DataRequest) -> Timeouts:
    """The source's `timeout` (seconds) for connecting and for each answer."""
    source = request.source if isinstance(request.source, dict) else {}
    value = source.get("timeout")
    if value is None:
        return Timeouts()
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise DataUnavailable("'timeout' must be a positive number of seconds")
    return Timeouts(connect=float(value), read=float(value))


def login_entry(request: DataRequest, name: str) -> Any:
    """The credential entry, as written; DataUnavailable naming it when there is none."""
    try:
        entry = request.settings.credentials.entry(name)
    except MadError as exc:
        raise DataUnavailable(str(exc)) from None
    if entry is None:
        raise DataUnavailable(
            f"no credential {name} (in credential.json, or the environment variable {name})"
        )
    return entry


def login_field(
    entry: Mapping[str, Any], entry_name: str, *keys: str, required: bool = True
) -> str | None:
    """A string of a credential entry (keys case-blind); DataUnavailable naming the
    entry and key, never the value."""
    value = field_of(entry, *keys)
    if value is None:
        if required:
            raise DataUnavailable(f"credential {entry_name} has no {keys[0].upper()}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataUnavailable(f"credential {entry_name}: {keys[0].upper()} must be a string")
    return str(value)


def fetch_cached(
    request: DataRequest, provider: str, key: str, source: str, fetch: Fetcher, listing: Lister
) -> DataMount:
    """The dataset of `key` from the cache, fetched first when it is not there, or no
    longer whole, or no longer what the server lists."""
    cache = DataCache(request.mirror_dir)
    notes: list[str] = []
    # Our errors name the provider and the source: the log's line names them already.
    own_prefix = f"{provider}: {source}: "

    def list_now() -> Listing:
        try:
            return listing()
        except MadError as exc:
            raise MadError(str(exc).removeprefix(own_prefix)) from None

    sink = request.settings.progress
    fetched_here = threading.Event()
    started = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        if sink is not None:
            elapsed = time.monotonic() - started[0]
            sink(DataProgress(request.data_name, provider, source, done, total, elapsed))

    def run(dest: Path) -> Fetched:
        fetched_here.set()
        started[0] = time.monotonic()  # the rate counts from the fetch, not the lock wait
        return fetch(dest, progress)

    try:
        path = cache.ensure(key, run, listing=list_now, tell=notes.append)
    except MadError as exc:
        # The fetchers' one-line errors start with the provider's name, as ours do.
        raise DataUnavailable(str(exc).removeprefix(f"{provider}: ")) from None
    except OSError as exc:
        raise DataUnavailable(
            f"cannot write the data cache {request.mirror_dir}: {exc.strerror or exc}"
        ) from None
    entry = cache.entry(key)
    size = entry.bytes if entry else None
    seconds = entry.seconds if entry and fetched_here.is_set() else 0.0
    if sink is not None and fetched_here.is_set():
        done = size or 0
        sink(DataProgress(request.data_name, provider, source, done, done, seconds, True))
    # Named by the content: a remote host's copy of an older version is not reused.
    bind = DataBind(str(path), request.home, cache.content_key(key), request.data_name)
    return DataMount(
        provider, (bind,), request.env, size_bytes=size, download_s=seconds, source=source,
        fetched=fetched_here.is_set(), notes=tuple(notes),
    )  # fmt: skip


class S3Provider:
    """S3 through boto3: the bucket and prefix of `path`, the login of `credential`."""

    name = "s3"
    credential = ""
    endpoint_keys: tuple[str, ...] = ()

    def endpoint(self, request: DataRequest, login: Mapping[str, Any]) -> str | None:
        source = request.source if isinstance(request.source, dict) else {}
        own = source.get("endpoint")
        if own is not None:
            if not isinstance(own, str) or not own.startswith(("http://", "https://")):
                raise DataUnavailable("'endpoint' must be an http:// or https:// URL")
            return own
        return login_field(login, self.credential, *self.endpoint_keys, required=False)

    def mount(self, request: DataRequest) -> DataMount:
        url = source_field(request, "path", "s3://bucket/prefix")
        try:
            parse_s3_url(url)
        except ValueError as exc:
            raise DataUnavailable(str(exc)) from None
        timeouts = timeouts_of(request)
        login = login_entry(request, self.credential)
        if not isinstance(login, dict):
            raise DataUnavailable(f"credential {self.credential} must be an object")
        access_key = login_field(login, self.credential, "username", "aws_access_key_id",
                                 "access_key")  # fmt: skip
        secret_key = login_field(login, self.credential, "password", "aws_secret_access_key",
                                 "secret_key")  # fmt: skip
        assert access_key is not None and secret_key is not None
        endpoint = self.endpoint(request, login)
        source = request.source if isinstance(request.source, dict) else {}
        region = source.get("region") or login_field(
            login, self.credential, "region", "aws_region", "aws_default_region", required=False
        )
        # Keyed by the server and the path, not the provider: minio and aws entries
        # naming one bucket share one copy.
        key = cache_key("s3", display_endpoint(endpoint), url)

        region_name = str(region) if region else None

        def fetch(dest: Path, progress: Progress) -> Fetched:
            return fetch_s3(url, endpoint, access_key, secret_key, dest, progress,
                            provider=self.name, timeouts=timeouts,
                            region=region_name)  # fmt: skip

        def listing() -> Listing:
            return list_s3(url, endpoint, access_key, secret_key, provider=self.name,
                           timeouts=timeouts, region=region_name)  # fmt: skip

        return fetch_cached(request, self.name, key, url, fetch, listing)


class MinioProvider(S3Provider):
    name = "minio"
    credential = "MAD_MINIO"
    endpoint_keys = ("minio_endpoint", "aws_endpoint_url_s3", "endpoint")

    def endpoint(self, request: DataRequest, login: Mapping[str, Any]) -> str | None:
        found = super().endpoint(request, login)
        if found is None:
            raise DataUnavailable(
                f"no endpoint: MINIO_ENDPOINT in credential {self.credential},"
                " or 'endpoint' in the data.json entry"
            )
        return found


class AwsProvider(S3Provider):
    """AWS S3 itself unless an endpoint is given (an S3-compatible server)."""

    name = "aws"
    credential = "MAD_AWS_S3"
    endpoint_keys = ("aws_endpoint_url_s3", "aws_endpoint_url", "endpoint")


class NasProvider:
    """A NAS over SSH/SFTP (asyncssh): the nodes of NAS_NODES are tried in order, each
    with its password or `ssh_key_file`; the host key must be known (known_hosts)."""

    name = "nas"
    credential = "NAS_NODES"

    def nodes(self, request: DataRequest) -> list[tuple[str, Mapping[str, Any]]]:
        """(how to name the node in messages, the node) for each node of NAS_NODES."""
        entry = login_entry(request, self.credential)
        listed = entry if isinstance(entry, list) else [entry]
        nodes: list[tuple[str, Mapping[str, Any]]] = []
        for index, node in enumerate(listed):
            label = f"{self.credential}[{index}]"
            if not isinstance(node, dict):
                raise DataUnavailable(f"credential {label} must be an object")
            name = field_of(node, "name")
            nodes.append((f"{label} ({name})" if isinstance(name, str) else label, node))
        if not nodes:
            raise DataUnavailable(f"credential {self.credential} lists no node")
        return nodes

    def mount(self, request: DataRequest) -> DataMount:
        path = source_field(request, "path", "/nas/dir")
        timeouts = timeouts_of(request)
        plans: list[tuple[str, str, Fetcher, Lister]] = []
        reasons = []
        for label, node in self.nodes(request):
            try:  # a node written wrong is passed over, as one that does not answer
                plans.append(self._plan(request, label, node, path, timeouts))
            except DataUnavailable as exc:
                reasons.append(str(exc))
        cache = DataCache(request.mirror_dir)
        # A copy from any node serves: the nodes are replicas of one NAS. Nodes with a
        # copy first (checked against that node), then the others in order.
        plans.sort(key=lambda plan: cache.lookup(plan[0]) is None)
        for key, source, fetch, listing in plans:
            try:
                return fetch_cached(request, self.name, key, source, fetch, listing)
            except DataUnavailable as exc:
                reasons.append(str(exc))
        raise DataUnavailable("; ".join(reasons))

    def _plan(
        self, request: DataRequest, label: str, node: Mapping[str, Any], path: str,
        timeouts: Timeouts,
    ) -> tuple[str, str, Fetcher, Lister]:  # fmt: skip
        host = login_field(node, label, "host", "ip")
        username = login_field(node, label, "username", "user")
        port_text = login_field(node, label, "port", required=False) or "22"
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise DataUnavailable(f"credential {label}: PORT must be a port number")
        key_file = login_field(node, label, "ssh_key_file", "key_file", required=False)
        password = login_field(node, label, "password", required=False)
        if key_file is None and password is None:
            raise DataUnavailable(f"credential {label} has neither PASSWORD nor ssh_key_file")
        secret: str | Path = (
            (request.settings.root / Path(key_file).expanduser()) if key_file else str(password)
        )
        known = login_field(node, label, "known_hosts", required=False)
        known_hosts = request.settings.root / Path(known).expanduser() if known else None
        assert host is not None and username is not None
        port = int(port_text)
        where = f"{username}@{host}:{port}"

        def fetch(dest: Path, progress: Progress) -> Fetched:
            return fetch_sftp(host, port, username, secret, path, dest, progress,
                              provider=self.name, timeouts=timeouts,
                              known_hosts=known_hosts)  # fmt: skip

        def listing() -> Listing:
            return list_sftp(host, port, username, secret, path, provider=self.name,
                             timeouts=timeouts, known_hosts=known_hosts)  # fmt: skip

        return cache_key(self.name, where, path), f"{where}:{path}", fetch, listing
