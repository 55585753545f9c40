"""Host-side fetchers of the data providers.

`fetch_s3` (the `minio` and `aws` providers, with boto3) and `fetch_sftp` (the `nas`
provider, with asyncssh) copy a dataset into a directory and return (bytes, files, and
the listing they copied); `list_s3` and `list_sftp` only list what the server holds, for
the cache's check (`cache.DataCache.ensure`) that a copy is still current.

Errors are MadError, one line naming the provider and the data path. Server and library
messages are never passed through whole: they are mapped to our own words, and whatever
text remains has the secrets taken out. boto3 and asyncssh are imported when first used:
they are the optional extra `data`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import posixpath
import re
import stat
import threading
import urllib.parse
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from pytest_madengine.data.cache import (  # CacheEntry and DataCache: importable from here
    CacheEntry,  # noqa: F401
    DataCache,  # noqa: F401
    Fetched,
    Listing,
    SourceFile,
)
from pytest_madengine.errors import MadError, first_line

# Called as progress(bytes done, bytes in all), from any thread.
Progress = Callable[[int, int], None]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Timeouts:
    """Seconds to connect, and to wait for an answer once connected. S3 requests are tried
    `attempts` times (with backoff), so a dead S3 server costs at most about
    attempts * (connect or read) + 3 s; an SSH server is given one try."""

    connect: float = 10.0
    read: float = 60.0
    attempts: int = 3


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # without a leading "/"; "" for the whole bucket

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_url(url: str) -> S3Location:
    """`s3://bucket/prefix` (the prefix may be empty or end in "/")."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    if "@" in parts.netloc or ":" in parts.netloc:
        raise ValueError(f"an s3:// URL names a bucket only: {url!r}")
    return S3Location(parts.netloc, parts.path.lstrip("/"))


def cache_key(provider: str, source: str, path: str) -> str:
    """The identity of a dataset for DataCache: the provider, where its server is (an
    endpoint URL, or user@host:port) and the path there. It must hold no secret."""
    source = source.strip().rstrip("/")
    scheme, sep, rest = source.partition("://")
    if sep:  # scheme and host are case-blind
        host, slash, tail = rest.partition("/")
        source = f"{scheme.lower()}://{host.lower()}{slash}{tail}"
    path = path.strip()
    path = path.rstrip("/") or path[:1]  # "s3://b/x/" is "s3://b/x"; "/" stays "/"
    return json.dumps([provider.strip().lower(), source, path])


class UnsafeData(ValueError):
    """What a server holds cannot be copied safely (a name leaving the destination, a
    loop of links); the text says what, in our words."""


def safe_relative(relative: str) -> str:
    """A remote file's path under the dataset, written plainly ("a//./b" is "a/b");
    UnsafeData for a path that would leave it (absolute, or with "..")."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise UnsafeData(f"unsafe file name from the server: {relative!r}")
    return pure.as_posix()


def local_path(dest: Path, relative: str) -> Path:
    """Where a remote file of this relative path goes under dest (see safe_relative)."""
    return dest.joinpath(*PurePosixPath(safe_relative(relative)).parts)


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """The text on one line with every secret (as is, URL-quoted or repr-escaped) starred.
    A secret of under 6 characters is starred only where it stands alone, so that a
    short one does not star every word it is part of."""
    text = " ".join(str(text).split())
    for secret in secrets:
        if not secret:
            continue
        forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
                 repr(secret)[1:-1]}  # fmt: skip
        for form in sorted(forms, key=len, reverse=True):
            if len(secret) >= 6:
                text = text.replace(form, "***")
            else:
                text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])", "***", text)
    return text


def display_endpoint(endpoint: str | None) -> str:
    """The endpoint without any user:password@ in it."""
    if not endpoint:
        return "the default AWS endpoint"
    parts = urllib.parse.urlsplit(endpoint)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return endpoint


class _Counter:
    """Bytes done so far, summed from several threads, reported to a progress callback."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.done, self._progress = total, 0, progress
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            done = self.done
        if self._progress is not None:
            self._progress(done, self.total)


# ---- S3 ----

_S3_CODES = {
    "SignatureDoesNotMatch": "login refused: wrong secret key",
    "InvalidAccessKeyId": "login refused: unknown access key",
    "AccessDenied": "access denied",
    "403": "access denied",
    "NoSuchBucket": "no such bucket",
    "NoSuchKey": "no such object",
    "404": "not found",
}


def _s3_problem(exc: Exception, endpoint: str, timeouts: Timeouts) -> str | None:
    """Our words for a botocore error (None: not one)."""
    from boto3 import exceptions as b3ex
    from botocore import exceptions as bex

    if isinstance(exc, b3ex.RetriesExceededError):  # a download cut short on every try
        last = exc.last_exception  # type: ignore[attr-defined]  # set by its __init__, unstubbed
        why = _s3_problem(last, endpoint, timeouts) if isinstance(last, Exception) else None
        return f"the download broke off on every try ({why or first_line(last or exc)})"
    if isinstance(exc, bex.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        return f"{_S3_CODES.get(code, 'refused')} ({code}, HTTP {status})"
    if isinstance(exc, bex.ConnectTimeoutError):
        return f"no connection to {endpoint} within {timeouts.connect:g} s"
    if isinstance(exc, bex.ReadTimeoutError):
        return f"{endpoint} did not answer within {timeouts.read:g} s"
    if isinstance(exc, bex.EndpointConnectionError):
        return f"cannot connect to {endpoint}"
    if isinstance(exc, bex.ConnectionClosedError | bex.ResponseStreamingError):
        return f"{endpoint} closed the connection"
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return "no access key or secret key given"
    if isinstance(exc, bex.BotoCoreError):
        return first_line(exc)
    return None


def _s3_listing(client: Any, where: S3Location) -> Listing:
    """Each object of the dataset by its path under the prefix. A prefix is a directory
    ("dummy" lists "dummy/..."), or else one object."""
    prefix = where.prefix
    directory = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    found: dict[str, SourceFile] = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=directory)
    for page in pages:
        for item in page.get("Contents", []):
            key = item["Key"]
            if not key.endswith("/"):  # "directory" marker objects hold nothing
                found[safe_relative(key[len(directory) :])] = SourceFile(
                    key, int(item["Size"]), str(item.get("ETag", ""))
                )
    if not found and prefix and not prefix.endswith("/"):
        from botocore.exceptions import ClientError

        with contextlib.suppress(ClientError):  # not an object either: told by the caller
            head = client.head_object(Bucket=where.bucket, Key=prefix)
            found[PurePosixPath(prefix).name] = SourceFile(
                prefix, int(head["ContentLength"]), str(head.get("ETag", ""))
            )
    return Listing(found)


def _with_s3(
    url: str, endpoint: str | None, access_key: str, secret_key: str,
    work: Callable[[Any, S3Location], _T], *, provider: str, timeouts: Timeouts,
    region: str | None, connections: int = 10,
) -> _T:  # fmt: skip
    """work(client, location) with an S3 client of the login; every error it meets is
    a MadError of one line naming the provider and the URL, without a secret."""
    secrets = (secret_key, access_key)
    shown = display_endpoint(endpoint)

    def fail(why: str) -> MadError:
        return MadError(scrub(f"{provider}: {url}: {why}", secrets))

    try:
        where = parse_s3_url(url)
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise fail("boto3 is not installed (pip install 'pytest-madengine[data]')") from None

    config = Config(
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
        retries={"max_attempts": timeouts.attempts, "mode": "standard"},
        max_pool_connections=connections,
        # MinIO and SeaweedFS serve buckets as paths, not as host names.
        s3={"addressing_style": "path"} if endpoint else {},
    )
    try:
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint or None, region_name=region,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, config=config,
        )  # fmt: skip
        return work(client, where)
    except (UnsafeData, _NoObjects) as exc:
        raise fail(str(exc)) from None
    except Exception as exc:
        # botocore's timeouts are OSErrors too: its own classes first.
        why = _s3_problem(exc, shown, timeouts)
        if why is None and isinstance(exc, OSError):
            why = (
                f"cannot write {exc.filename}: {exc.strerror}" if exc.filename else first_line(exc)
            )
        if why is None:
            raise
        raise fail(why) from None


class _NoObjects(Exception):
    def __str__(self) -> str:
        return "no objects there"


def list_s3(
    url: str, endpoint: str | None, access_key: str, secret_key: str, *,
    provider: str = "s3", timeouts: Timeouts = Timeouts(), region: str | None = None,
) -> Listing:  # fmt: skip
    """What s3://bucket/prefix holds now (one listing; no object is read)."""
    return _with_s3(url, endpoint, access_key, secret_key, _s3_listing, provider=provider,
                    timeouts=timeouts, region=region)  # fmt: skip


def fetch_s3(
    url: str,
    endpoint: str | None,
    access_key: str,
    secret_key: str,
    dest_dir: Path,
    progress: Progress | None = None,
    *,
    provider: str = "s3",
    timeouts: Timeouts = Timeouts(),
    workers: int = 4,
    region: str | None = None,
) -> Fetched:
    """Copies every object under s3://bucket/prefix into dest_dir, keeping the paths below
    the prefix. endpoint: the server's URL (None: AWS itself)."""

    def copy(client: Any, where: S3Location) -> Fetched:
        from boto3.s3.transfer import TransferConfig

        listing = _s3_listing(client, where)
        if not listing.files:
            raise _NoObjects
        counter = _Counter(sum(file.size for file in listing.files.values()), progress)
        transfer = TransferConfig(max_concurrency=4)

        def download(key: str, relative: str) -> None:
            target = local_path(dest_dir, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(
                where.bucket, key, str(target), Callback=counter.add, Config=transfer
            )

        # Objects in parallel: many small files are the common case for datasets.
        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            futures = [pool.submit(download, file.remote, relative)
                       for relative, file in listing.files.items()]  # fmt: skip
            try:
                for future in concurrent.futures.as_completed(futures):
                    future.result()
            finally:
                for future in futures:
                    future.cancel()
        return Fetched(counter.total, len(listing.files), listing)

    return _with_s3(url, endpoint, access_key, secret_key, copy, provider=provider,
                    timeouts=timeouts, region=region,
                    connections=max(10, workers * 4))  # fmt: skip


# ---- SFTP ----


class _Stalled(Exception):
    """The server took the login, then stopped answering."""


def _run(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Runs a coroutine to its end from plain code, even where an event loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


async def _broken_link(sftp: Any, path: str) -> str:
    """Why a link cannot be followed: where it leads, link after link."""
    import asyncssh

    first, current, seen = None, path, {path}
    for _ in range(40):  # the kernel's own limit on links in a row
        try:
            target = await sftp.readlink(current)
        except asyncssh.SFTPError:
            break
        first = first or target
        current = posixpath.normpath(posixpath.join(posixpath.dirname(current), target))
        if current in seen:
            return f"a loop of links ({first})"
        seen.add(current)
        try:
            attrs = await sftp.lstat(current)
        except asyncssh.SFTPNoSuchFile:
            return f"a link to nothing ({first})"
        except asyncssh.SFTPError:
            break
        if not stat.S_ISLNK(attrs.permissions or 0):
            break
    return f"a link that cannot be followed ({first or 'unreadable'})"


async def _sftp_listing(sftp: Any, remote_path: str) -> Listing:
    """Every file there by its path under remote_path, following links; a file alone
    gives itself under its own name. A link that leads nowhere, or back into a
    directory that holds it, is skipped with a line naming it."""
    import asyncssh

    top = await sftp.stat(remote_path)
    if not stat.S_ISDIR(top.permissions or 0):
        name = PurePosixPath(remote_path).name
        return Listing({name: SourceFile(remote_path, int(top.size or 0), f"mtime={top.mtime}")})
    found: dict[str, SourceFile] = {}
    skipped: list[str] = []
    top_dir = remote_path.rstrip("/") or "/"
    # (directory, its path under the dataset, the real paths of it and its parents)
    pending: list[tuple[str, str, tuple[str, ...]]] = [
        (top_dir, "", (await sftp.realpath(top_dir),))
    ]
    while pending:
        directory, relative, real_chain = pending.pop()
        if len(found) + len(pending) > 10_000_000:  # a guard, should links still loop
            raise UnsafeData("more than 10000000 files and directories (a loop of links?)")
        for entry in await sftp.readdir(directory):
            name = entry.filename
            if name in (".", ".."):
                continue
            path, inner = f"{directory.rstrip('/')}/{name}", f"{relative}{name}"
            attrs, real = entry.attrs, f"{real_chain[-1].rstrip('/')}/{name}"
            if stat.S_ISLNK(attrs.permissions or 0):
                try:
                    attrs = await sftp.stat(path)
                    real = await sftp.realpath(path)
                except asyncssh.SFTPError:
                    skipped.append(f"skipped {inner}: {await _broken_link(sftp, path)}")
                    continue
            mode = attrs.permissions or 0
            if stat.S_ISDIR(mode):
                if real in real_chain:
                    skipped.append(f"skipped {inner}: a link back to a directory that holds it"
                                   f" ({real}), a loop")  # fmt: skip
                else:
                    pending.append((path, f"{inner}/", (*real_chain, real)))
            elif stat.S_ISREG(mode):
                found[inner] = SourceFile(path, int(attrs.size or 0), f"mtime={attrs.mtime}")
    return Listing(found, tuple(sorted(skipped)))


async def _with_sftp(
    host: str, port: int, username: str, secret: str | Path, timeouts: Timeouts,
    known_hosts: Path | None, work: Callable[[Any], Coroutine[Any, Any, _T]],
) -> _T:  # fmt: skip
    """work(sftp) on an SFTP session of the login."""
    import asyncssh

    if isinstance(secret, Path):
        auth: dict[str, Any] = {"client_keys": [str(secret)], "password": None,
                                "preferred_auth": "publickey"}  # fmt: skip
    else:
        auth = {"client_keys": None, "password": secret, "preferred_auth": "password"}
    # A stalled server misses its keepalives and loses the connection: the read timeout.
    interval = max(1.0, timeouts.read / 3)
    async with asyncssh.connect(
        host, port, username=username, known_hosts=str(known_hosts) if known_hosts else (),
        config=None, agent_path=None, connect_timeout=timeouts.connect,
        keepalive_interval=interval, keepalive_count_max=3, **auth,
    ) as conn:  # fmt: skip
        try:
            sftp = await asyncio.wait_for(conn.start_sftp_client(), timeouts.read)
        except asyncio.TimeoutError:  # told apart from a connect timeout
            raise _Stalled from None
        async with sftp:
            return await work(sftp)
    # mypy cannot tell: asyncssh's __aexit__ is typed `-> bool` but never swallows.
    raise AssertionError("unreachable")


async def _sftp_copy(
    sftp: Any, remote_path: str, dest_dir: Path, progress: Progress | None, workers: int
) -> Fetched:
    listing = await _sftp_listing(sftp, remote_path)
    counter = _Counter(sum(file.size for file in listing.files.values()), progress)
    limit = asyncio.Semaphore(max(1, workers))

    async def one(remote: str, relative: str) -> None:
        target = local_path(dest_dir, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        copied = 0

        def handler(_src: bytes, _dst: bytes, done: int, _total: int) -> None:
            nonlocal copied
            counter.add(done - copied)
            copied = done

        async with limit:
            # A link is copied as the file it leads to (the listing followed it).
            await sftp.get(remote, target, block_size=256 * 1024, progress_handler=handler,
                           follow_symlinks=True)  # fmt: skip

    await asyncio.gather(*(one(file.remote, rel) for rel, file in listing.files.items()))
    return Fetched(counter.total, len(listing.files), listing)


def _sftp_problem(exc: BaseException, timeouts: Timeouts, key_file: Path | None) -> str | None:
    """Our words for an asyncssh or socket error (None: not one)."""
    import asyncssh

    if isinstance(exc, UnsafeData):
        return str(exc)
    if isinstance(exc, asyncssh.PermissionDenied):
        return "login refused (wrong password or key)"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return "host key not trusted (it is not in known_hosts, or differs from it)"
    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return "no such file or directory"
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return "permission denied"
    if isinstance(exc, asyncssh.KeyImportError):
        return f"cannot use the key file {key_file}: {first_line(exc)}"
    if isinstance(exc, _Stalled):
        return f"the server stopped answering (nothing for {timeouts.read:g} s)"
    # What a keepalive timeout gives, depending on what was under way.
    lost = (asyncssh.ConnectionLost, asyncssh.ChannelOpenError, asyncssh.SFTPConnectionLost)
    if isinstance(exc, lost):
        return f"connection lost (closed by the server, or no answer for {timeouts.read:g} s)"
    if isinstance(exc, asyncssh.Error):
        return f"{type(exc).__name__}: {first_line(exc)}"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return f"no answer within {timeouts.connect:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError):
        if exc.filename is not None and key_file is not None and str(exc.filename) == str(key_file):
            return f"cannot read the key file {key_file}: {exc.strerror}"
        if exc.filename is not None:
            return f"cannot write {exc.filename}: {exc.strerror}"
        return f"cannot connect: {exc.strerror or first_line(exc)}"
    return None


def _sftp_call(
    host: str, port: int, username: str, secret: str | Path, remote_path: str,
    provider: str, work: Callable[[], Coroutine[Any, Any, _T]], timeouts: Timeouts,
) -> _T:  # fmt: skip
    """Runs work(); every error it meets is a MadError of one line naming the provider
    and the path, without a secret."""
    key_file = secret if isinstance(secret, Path) else None
    secrets = (None if key_file else str(secret),)
    where = f"{provider}: {username}@{host}:{port}:{remote_path}"
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        missing = "asyncssh is not installed (pip install 'pytest-madengine[data]')"
        raise MadError(f"{where}: {missing}") from None
    try:
        return _run(work)
    except Exception as exc:
        why = _sftp_problem(exc, timeouts, key_file)
        if why is None:
            raise
        raise MadError(scrub(f"{where}: {why}", secrets)) from None


def list_sftp(
    host: str, port: int, username: str, password_or_key_file: str | Path, remote_path: str,
    *, provider: str = "nas", timeouts: Timeouts = Timeouts(), known_hosts: Path | None = None,
) -> Listing:  # fmt: skip
    """What the SFTP server holds at remote_path now (no file is read)."""

    def work() -> Coroutine[Any, Any, Listing]:
        return _with_sftp(host, port, username, password_or_key_file, timeouts, known_hosts,
                          lambda sftp: _sftp_listing(sftp, remote_path))  # fmt: skip

    return _sftp_call(host, port, username, password_or_key_file, remote_path, provider, work,
                      timeouts)  # fmt: skip


def fetch_sftp(
    host: str,
    port: int,
    username: str,
    password_or_key_file: str | Path,
    remote_path: str,
    dest_dir: Path,
    progress: Progress | None = None,
    *,
    provider: str = "nas",
    timeouts: Timeouts = Timeouts(),
    known_hosts: Path | None = None,
    workers: int = 4,
) -> Fetched:
    """Copies a file, or a directory's files (recursively), from an SFTP server into
    dest_dir. A str is the password, a Path a private key file. The server's host key
    must be in known_hosts (default ~/.ssh/known_hosts): never skipped."""

    def work() -> Coroutine[Any, Any, Fetched]:
        return _with_sftp(host, port, username, password_or_key_file, timeouts, known_hosts,
                          lambda sftp: _sftp_copy(sftp, remote_path, dest_dir, progress,
                                                  workers))  # fmt: skip

    return _sftp_call(host, port, username, password_or_key_file, remote_path, provider, work,
                      timeouts)  # fmt: skip
