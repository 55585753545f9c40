"""Host-side fetchers of the data providers, and the host's cache of fetched datasets.

`fetch_s3` (the `minio` and `aws` providers, with boto3) and `fetch_sftp` (the `nas`
provider, with asyncssh) copy a dataset into a directory and return (bytes, files).
`DataCache.ensure` runs a fetcher at most once per dataset however many processes ask,
and only a complete download ever counts as cached.

Errors are MadError, one line naming the provider and the data path. Server and library
messages are never passed through whole: they are mapped to our own words, and whatever
text remains has the secrets taken out. boto3 and asyncssh are imported when first used:
they are the optional extra `data`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, TypeVar

from pytest_madengine.errors import MadError, first_line

# Called as progress(bytes done, bytes in all), from any thread.
Progress = Callable[[int, int], None]
_T = TypeVar("_T")


class Fetched(NamedTuple):
    """What a fetch copied."""

    bytes: int
    files: int


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


def local_path(dest: Path, relative: str) -> Path:
    """Where a remote file of this relative path goes under dest; UnsafeData for a path
    that would leave dest (absolute, or with "..")."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise UnsafeData(f"unsafe file name from the server: {relative!r}")
    return dest.joinpath(*pure.parts)


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
        last = exc.last_exception
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


def _s3_objects(client: Any, where: S3Location) -> list[tuple[str, str, int]]:
    """(key, path relative to the prefix, size) of each object of the dataset. A prefix
    is a directory ("dummy" lists "dummy/..."), or else one object."""
    prefix = where.prefix
    directory = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    found = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=directory)
    for page in pages:
        for item in page.get("Contents", []):
            key = item["Key"]
            if not key.endswith("/"):  # "directory" marker objects hold nothing
                found.append((key, key[len(directory) :], int(item["Size"])))
    if not found and prefix and not prefix.endswith("/"):
        from botocore.exceptions import ClientError

        with contextlib.suppress(ClientError):  # not an object either: told below
            head = client.head_object(Bucket=where.bucket, Key=prefix)
            found.append((prefix, PurePosixPath(prefix).name, int(head["ContentLength"])))
    return found


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
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config
    except ImportError:
        raise fail("boto3 is not installed (pip install 'pytest-madengine[data]')") from None

    config = Config(
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
        retries={"max_attempts": timeouts.attempts, "mode": "standard"},
        max_pool_connections=max(10, workers * 4),
        # MinIO and SeaweedFS serve buckets as paths, not as host names.
        s3={"addressing_style": "path"} if endpoint else {},
    )
    try:
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint or None, region_name=region,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, config=config,
        )  # fmt: skip
        objects = _s3_objects(client, where)
        if not objects:
            raise fail("no objects there")
        counter = _Counter(sum(size for _, _, size in objects), progress)
        transfer = TransferConfig(max_concurrency=4)

        def download(key: str, relative: str) -> None:
            target = local_path(dest_dir, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(
                where.bucket, key, str(target), Callback=counter.add, Config=transfer
            )

        # Objects in parallel: many small files are the common case for datasets.
        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            futures = [pool.submit(download, key, rel) for key, rel, _ in objects]
            try:
                for future in concurrent.futures.as_completed(futures):
                    future.result()
            finally:
                for future in futures:
                    future.cancel()
        return Fetched(counter.total, len(objects))
    except MadError:
        raise
    except UnsafeData as exc:
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


async def _sftp_files(sftp: Any, remote_path: str) -> list[tuple[str, str, int]]:
    """(remote path, path relative to remote_path, size) of every file there, following
    symbolic links; a file alone gives itself under its own name."""
    top = await sftp.stat(remote_path)
    if not stat.S_ISDIR(top.permissions or 0):
        return [(remote_path, PurePosixPath(remote_path).name, int(top.size or 0))]
    found: list[tuple[str, str, int]] = []
    pending = [(remote_path.rstrip("/") or "/", "")]
    seen = 0
    while pending:
        directory, relative = pending.pop()
        seen += 1
        if seen > 100_000:  # a loop of directory links
            raise UnsafeData("more than 100000 directories (a loop of links?)")
        for entry in await sftp.readdir(directory):
            name = entry.filename
            if name in (".", ".."):
                continue
            path = f"{directory.rstrip('/')}/{name}"
            attrs = entry.attrs
            if stat.S_ISLNK(attrs.permissions or 0):
                attrs = await sftp.stat(path)
            mode = attrs.permissions or 0
            if stat.S_ISDIR(mode):
                pending.append((path, f"{relative}{name}/"))
            elif stat.S_ISREG(mode):
                found.append((path, f"{relative}{name}", int(attrs.size or 0)))
    return found


async def _sftp_fetch(
    host: str, port: int, username: str, secret: str | Path, remote_path: str,
    dest_dir: Path, progress: Progress | None,
    timeouts: Timeouts, known_hosts: Path | None, workers: int,
) -> Fetched:  # fmt: skip
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
            files = await _sftp_files(sftp, remote_path)
            counter = _Counter(sum(size for _, _, size in files), progress)
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
                    await sftp.get(remote, target, block_size=256 * 1024, progress_handler=handler)

            await asyncio.gather(*(one(remote, rel) for remote, rel, _ in files))
            return Fetched(counter.total, len(files))


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
    key_file = password_or_key_file if isinstance(password_or_key_file, Path) else None
    secrets = (None if key_file else str(password_or_key_file),)
    where = f"{provider}: {username}@{host}:{port}:{remote_path}"
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        missing = "asyncssh is not installed (pip install 'pytest-madengine[data]')"
        raise MadError(f"{where}: {missing}") from None

    def fetch() -> Coroutine[Any, Any, Fetched]:
        return _sftp_fetch(host, port, username, password_or_key_file, remote_path, dest_dir,
                           progress, timeouts, known_hosts, workers)  # fmt: skip

    try:
        return _run(fetch)
    except Exception as exc:
        why = _sftp_problem(exc, timeouts, key_file)
        if why is None:
            raise
        raise MadError(scrub(f"{where}: {why}", secrets)) from None


# ---- the cache ----


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    bytes: int
    files: int
    seconds: float  # how long the fetch took


@dataclass(frozen=True)
class DataCache:
    """Fetched datasets on the host, one directory each, named by the hash of the
    dataset's key (see cache_key). A fetch writes into a directory of its own under
    .partial/ that is renamed into place only when complete: what lies at a key's path
    is always whole. One process fetches a key at a time (a file lock); the others wait
    and then find it fetched."""

    root: Path
    lock_timeout: float = -1  # seconds to wait for another process's fetch; -1: no limit

    @staticmethod
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / self.digest(key)

    def lookup(self, key: str) -> Path | None:
        path = self.path(key)
        return path if path.is_dir() else None

    def entry(self, key: str) -> CacheEntry | None:
        """The cached dataset with what its fetch reported, or None when not cached."""
        path = self.lookup(key)
        if path is None:
            return None
        try:
            info = json.loads(path.with_name(path.name + ".json").read_text())
        except (OSError, ValueError):
            info = {}
        return CacheEntry(path, int(info.get("bytes", 0)), int(info.get("files", 0)),
                          float(info.get("seconds", 0.0)))  # fmt: skip

    def ensure(self, key: str, fetch: Callable[[Path], Fetched | Any]) -> Path:
        """The dataset's directory, fetched first by fetch(dest_dir) when not cached."""
        import filelock

        final = self.path(key)
        if final.is_dir():
            return final
        digest = self.digest(key)
        partial_root = self.root / ".partial"
        locks = self.root / ".locks"
        partial_root.mkdir(parents=True, exist_ok=True)
        locks.mkdir(parents=True, exist_ok=True)
        try:
            lock = filelock.FileLock(str(locks / f"{digest}.lock"), timeout=self.lock_timeout)
            with lock:
                if final.is_dir():  # another process fetched it while we waited
                    return final
                # Holding the lock, any partial fetch of this key is a dead process's.
                for stale in partial_root.glob(f"{digest}.*"):
                    shutil.rmtree(stale, ignore_errors=True)
                work = Path(tempfile.mkdtemp(prefix=f"{digest}.", dir=partial_root))
                try:
                    start = time.monotonic()
                    fetched = fetch(work)
                    seconds = time.monotonic() - start
                    os.rename(work, final)
                except BaseException:
                    shutil.rmtree(work, ignore_errors=True)
                    raise
                info = {"key": key, "seconds": round(seconds, 3)}
                if isinstance(fetched, Fetched):
                    info.update(bytes=fetched.bytes, files=fetched.files)
                with contextlib.suppress(OSError):  # the data is what counts
                    final.with_name(final.name + ".json").write_text(json.dumps(info) + "\n")
        except filelock.Timeout:
            raise MadError(f"data cache {self.root}: another process has been fetching "
                           f"{key} for over {self.lock_timeout:g} s") from None  # fmt: skip
        return final
