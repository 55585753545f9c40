"""The host's cache of fetched datasets, and the checks a copy passes before it is served.

Each dataset is a directory named by the hash of its key, with `<hash>.json` beside it:
the manifest, written last (atomically), listing every file with its size, its time
and SHA-256 here, and what the server said of it (S3: key, size and ETag; SFTP: path,
size and mtime). A copy is served only when its manifest is there, every file of it is
there with its size (and its digest, where its time moved), and the server still lists
the same files; otherwise it is fetched again, whole, and `tell` gets one line saying
why. A server that cannot be asked leaves a sound copy served, with a line saying so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pytest_madengine.errors import MadError

Tell = Callable[[str], None]


@dataclass(frozen=True)
class SourceFile:
    """One file of a dataset as its server lists it."""

    remote: str  # the S3 key, or the path on the NAS
    size: int
    version: str  # what changes when the file does: the S3 ETag, the NAS mtime


@dataclass(frozen=True)
class Listing:
    """What a server holds of a dataset."""

    files: Mapping[str, SourceFile]  # by path under the dataset: "labels/classes.txt"
    skipped: tuple[str, ...] = ()  # what cannot be copied, one line each ("skipped x: why")


class Fetched(NamedTuple):
    """What a fetch copied, and the listing it copied from (None: it does not say)."""

    bytes: int
    files: int
    listing: Listing | None = None


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    bytes: int
    files: int
    seconds: float  # how long the fetch took


@dataclass(frozen=True)
class _LocalFile:
    size: int
    mtime_ns: int
    sha256: str
    source: SourceFile | None


@dataclass(frozen=True)
class Manifest:
    """What a complete copy holds, as written when it was fetched."""

    files: Mapping[str, _LocalFile]
    skipped: tuple[str, ...]
    fetched_at: float  # seconds since the epoch

    @property
    def listing(self) -> dict[str, SourceFile | None]:
        return {name: file.source for name, file in self.files.items()}

    def to_json(self) -> dict[str, Any]:
        files = {name: {"size": f.size, "mtime_ns": f.mtime_ns, "sha256": f.sha256,
                        "source": None if f.source is None else [f.source.remote,
                                                                 f.source.size, f.source.version]}
                 for name, f in sorted(self.files.items())}  # fmt: skip
        return {"fetched_at": self.fetched_at, "skipped": list(self.skipped), "contents": files}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """KeyError, TypeError or ValueError for anything else than what to_json wrote."""
        files = {}
        for name, f in data["contents"].items():
            source = f["source"]
            files[str(name)] = _LocalFile(
                int(f["size"]), int(f["mtime_ns"]), str(f["sha256"]),
                None if source is None else SourceFile(str(source[0]), int(source[1]),
                                                       str(source[2])),
            )  # fmt: skip
        return cls(files, tuple(str(line) for line in data["skipped"]), float(data["fetched_at"]))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def record(directory: Path, listing: Listing | None) -> Manifest:
    """The manifest of a fetch's directory: every file in it, with what the server said."""
    known = listing.files if listing else {}
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            name = path.relative_to(directory).as_posix()
            info = path.stat()
            files[name] = _LocalFile(info.st_size, info.st_mtime_ns, sha256_of(path),
                                     known.get(name))  # fmt: skip
    return Manifest(files, listing.skipped if listing else (), time.time())


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def local_damage(directory: Path, manifest: Manifest) -> str | None:
    """What is wrong with the copy here (None: every file is there, whole)."""
    missing, wrong = [], []
    for name, want in manifest.files.items():
        path = directory.joinpath(*name.split("/"))
        try:
            info = path.lstat()
        except OSError:
            missing.append(name)
            continue
        if not stat.S_ISREG(info.st_mode):
            wrong.append(f"{name} is no longer a file")
        elif info.st_size != want.size:
            wrong.append(f"{name} has {info.st_size} of its {want.size} bytes")
        # The digest only where the time moved: a change of the same size.
        elif info.st_mtime_ns != want.mtime_ns and sha256_of(path) != want.sha256:
            wrong.append(f"{name} was changed here")
    if missing:
        count = len(missing)
        wrong.insert(0, f"{count} file{'s' if count > 1 else ''} missing ({_few(missing)})")
    return "; ".join(wrong[:3]) if wrong else None


def source_change(before: Mapping[str, SourceFile | None], now: Listing) -> str | None:
    """How the server's listing differs from the copy's (None: it does not)."""
    changed = sorted(n for n, f in now.files.items() if n in before and before[n] != f)
    added = sorted(n for n in now.files if n not in before)
    removed = sorted(n for n in before if n not in now.files)
    parts = [f"{len(names)} {what} ({_few(names)})"
             for what, names in (("changed", changed), ("new", added), ("gone", removed))
             if names]  # fmt: skip
    return ", ".join(parts) or None


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


@dataclass(frozen=True)
class DataCache:
    """Fetched datasets on the host, one directory each, named by the hash of the
    dataset's key (see fetch.cache_key). A fetch writes into a directory of its own
    under .partial/ that is renamed into place only when complete, and the manifest
    beside it is written after: a directory without one is never served. One process
    checks or fetches a key at a time (a file lock); the others wait and then find it
    fetched."""

    root: Path
    lock_timeout: float = -1  # seconds to wait for another process's fetch; -1: no limit

    @staticmethod
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / self.digest(key)

    def manifest_path(self, key: str) -> Path:
        return self.root / f"{self.digest(key)}.json"

    def lookup(self, key: str) -> Path | None:
        """The copy's directory when there is one with its manifest (neither is read:
        ensure checks them)."""
        path = self.path(key)
        return path if path.is_dir() and self.manifest_path(key).is_file() else None

    def _info(self, key: str) -> dict[str, Any]:
        try:
            info = json.loads(self.manifest_path(key).read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def manifest(self, key: str) -> Manifest | None:
        try:
            return Manifest.from_json(self._info(key))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return None

    def content_key(self, key: str) -> str:
        """A name for what the copy holds: the same for the same files, another once it
        is refreshed (so that a copy made elsewhere under this name is made anew)."""
        manifest = self.manifest(key)
        files = sorted((name, f.sha256) for name, f in manifest.files.items()) if manifest else []
        return hashlib.sha256(json.dumps([key, files]).encode()).hexdigest()[:32]

    def entry(self, key: str) -> CacheEntry | None:
        """The cached dataset with what its fetch reported, or None when not cached."""
        path = self.lookup(key)
        if path is None:
            return None
        info = self._info(key)
        return CacheEntry(path, int(info.get("bytes", 0)), int(info.get("files", 0)),
                          float(info.get("seconds", 0.0)))  # fmt: skip

    def ensure(
        self,
        key: str,
        fetch: Callable[[Path], Fetched | Any],
        *,
        listing: Callable[[], Listing] | None = None,
        tell: Tell | None = None,
    ) -> Path:
        """The dataset's directory, fetched by fetch(dest_dir) when it is not cached or
        fails its checks; listing() asks the server what it holds now (None: never
        asked). tell(line) hears why a copy was fetched again, or served unchecked, and
        which files the server has that cannot be copied."""
        say: Tell = tell or (lambda _line: None)
        with self._locked(key):
            why = self._why_not_served(key, listing, say)
            if why is not None:
                if why:
                    say(why)
                self._fetch_into_place(key, fetch, say)
        return self.path(key)

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        import filelock

        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(locks / f"{self.digest(key)}.lock"), timeout=self.lock_timeout)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise MadError(f"data cache {self.root}: another process has been fetching "
                           f"{key} for over {self.lock_timeout:g} s") from None  # fmt: skip
        try:
            yield
        finally:
            lock.release()

    def _why_not_served(
        self, key: str, listing: Callable[[], Listing] | None, say: Tell
    ) -> str | None:
        """None: the copy is sound and current, serve it. Else why it is fetched: ""
        when there is none yet (nothing to tell)."""
        final = self.path(key)
        if not final.exists() and not final.is_symlink():
            return ""
        if final.is_symlink() or not final.is_dir():
            what = "a link" if final.is_symlink() else "a file"
            return f"the cached copy was repaired: its directory had been replaced by {what}"
        manifest = self.manifest(key)
        if manifest is None:
            return "the cached copy was fetched again: it had no manifest of its files"
        damage = local_damage(final, manifest)
        if damage:
            return f"the cached copy was repaired: {damage}"
        if listing is None:
            for line in manifest.skipped:
                say(line)
            return None
        try:
            now = listing()
        except MadError as exc:
            say(f"not checked against the server ({exc}): serving the copy fetched"
                f" {_when(manifest.fetched_at)}")  # fmt: skip
            for line in manifest.skipped:
                say(line)
            return None
        change = source_change(manifest.listing, now)
        if change:
            return (f"the cached copy was refreshed: changed on the server since it was"
                    f" fetched {_when(manifest.fetched_at)}: {change}")  # fmt: skip
        for line in now.skipped:
            say(line)
        return None

    def _fetch_into_place(self, key: str, fetch: Callable[[Path], Any], say: Tell) -> None:
        """Fetches the key anew, replacing what lies at its path; the manifest last."""
        digest, final = self.digest(key), self.path(key)
        partial_root = self.root / ".partial"
        partial_root.mkdir(parents=True, exist_ok=True)
        # Holding the lock, any partial fetch of this key is a dead process's.
        for stale in partial_root.glob(f"{digest}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f"{digest}.", dir=partial_root))
        try:
            start = time.monotonic()
            fetched = fetch(work)
            seconds = time.monotonic() - start
            listing = fetched.listing if isinstance(fetched, Fetched) else None
            manifest = record(work, listing)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        # Without its manifest, what lies at the path is never served: gone first.
        self.manifest_path(key).unlink(missing_ok=True)
        old = partial_root / f"{digest}.old-{uuid.uuid4().hex[:8]}"
        if final.exists() or final.is_symlink():
            os.rename(final, old)
        os.rename(work, final)
        info = {"key": key, "seconds": round(seconds, 3), **manifest.to_json()}
        if isinstance(fetched, Fetched):
            info.update(bytes=fetched.bytes, files=fetched.files)
        written = self.root / f".{digest}.json.{uuid.uuid4().hex[:8]}"
        written.write_text(json.dumps(info) + "\n")
        os.replace(written, self.manifest_path(key))
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
        for line in manifest.skipped:
            say(line)
