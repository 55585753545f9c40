"""The data fetchers' pure logic: s3:// URLs, cache keys, safe file names, scrubbed
errors, and the cache with local stand-in fetchers (no server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_madengine.data.fetch import (
    DataCache,
    Fetched,
    Listing,
    S3Location,
    SourceFile,
    UnsafeData,
    cache_key,
    local_path,
    parse_s3_url,
    scrub,
)
from pytest_madengine.errors import MadError


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://mad-data/dummy", "mad-data", "dummy"),
        ("s3://mad-data/dummy/", "mad-data", "dummy/"),
        ("s3://mad-data/a/b/c.bin", "mad-data", "a/b/c.bin"),
        ("s3://mad-data", "mad-data", ""),
        ("s3://mad-data/", "mad-data", ""),
        ("s3://mad-data//x", "mad-data", "x"),
    ],
)
def test_s3_urls(url: str, bucket: str, prefix: str) -> None:
    assert parse_s3_url(url) == S3Location(bucket, prefix)


@pytest.mark.parametrize(
    "url",
    ["mad-data/dummy", "http://host/bucket", "s3:///dummy", "s3://key:secret@bucket/x",
     "s3://bucket/x?versionId=1", "s3://host:9000/x", ""],
)  # fmt: skip
def test_not_s3_urls(url: str) -> None:
    with pytest.raises(ValueError, match="s3://"):
        parse_s3_url(url)


def test_an_s3_location_gives_its_url_back() -> None:
    assert parse_s3_url("s3://b/p/q").url == "s3://b/p/q"


def test_cache_keys_ignore_what_does_not_change_the_data() -> None:
    key = cache_key("minio", "http://127.0.0.1:9000", "s3://mad-data/dummy")
    assert cache_key("MinIO", "HTTP://127.0.0.1:9000/", "s3://mad-data/dummy/") == key
    assert cache_key("nas", "madnas@127.0.0.1:2222", "/") != cache_key("nas", "x", "")
    assert DataCache.digest(key) == DataCache.digest(key)
    assert len(DataCache.digest(key)) == 32


@pytest.mark.parametrize(
    "other",
    [
        ("aws", "http://127.0.0.1:9000", "s3://mad-data/dummy"),
        ("minio", "http://127.0.0.1:9001", "s3://mad-data/dummy"),
        ("minio", "http://127.0.0.1:9000", "s3://mad-data/Dummy"),
        ("minio", "http://127.0.0.1:9000", "s3://mad-data/dummy/sub"),
    ],
)
def test_cache_keys_tell_datasets_apart(other: tuple[str, str, str]) -> None:
    key = cache_key("minio", "http://127.0.0.1:9000", "s3://mad-data/dummy")
    assert DataCache.digest(cache_key(*other)) != DataCache.digest(key)


def test_cache_keys_cannot_be_forged_by_joining_parts() -> None:
    assert cache_key("a", "b|c", "d") != cache_key("a", "b", "c|d")


def test_local_paths_stay_under_the_destination(tmp_path: Path) -> None:
    assert local_path(tmp_path, "a/b.txt") == tmp_path / "a" / "b.txt"
    assert local_path(tmp_path, "a//./b.txt") == tmp_path / "a" / "b.txt"
    for bad in ["../x", "a/../../x", "/etc/passwd", "", "."]:
        with pytest.raises(UnsafeData):
            local_path(tmp_path, bad)


def test_scrub_stars_secrets_in_every_form_and_keeps_one_line() -> None:
    secret = "s3cr+t/with space"
    text = f"a {secret}\nb s3cr%2Bt%2Fwith%20space c s3cr%2Bt%2Fwith+space"
    assert scrub(text, [secret, None, ""]) == "a *** b *** c ***"


def counting_fetch(log: Path, payload: bytes = b"data"):
    def fetch(dest: Path) -> Fetched:
        with log.open("a") as f:
            f.write("fetch\n")
        (dest / "sub").mkdir()
        (dest / "sub" / "f.bin").write_bytes(payload)
        return Fetched(len(payload), 1)

    return fetch


def test_a_second_ensure_does_not_fetch(tmp_path: Path) -> None:
    cache, log = DataCache(tmp_path / "cache"), tmp_path / "log"
    first = cache.ensure("k", counting_fetch(log))
    second = cache.ensure("k", counting_fetch(log))
    assert first == second == cache.path("k") and (first / "sub" / "f.bin").read_bytes() == b"data"
    assert log.read_text().count("fetch") == 1
    entry = cache.entry("k")
    assert entry is not None and (entry.bytes, entry.files) == (4, 1)
    assert cache.lookup("other") is None and cache.entry("other") is None


def test_a_failed_fetch_leaves_nothing(tmp_path: Path) -> None:
    cache = DataCache(tmp_path / "cache")

    def fail_halfway(dest: Path) -> Fetched:
        (dest / "half.bin").write_bytes(b"x" * 100)
        raise MadError("minio: s3://b/p: cut")

    with pytest.raises(MadError, match="cut"):
        cache.ensure("k", fail_halfway)
    assert cache.lookup("k") is None
    assert list((tmp_path / "cache" / ".partial").iterdir()) == []
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == []


def test_a_dead_fetchers_partial_directory_is_removed_by_the_next(tmp_path: Path) -> None:
    cache = DataCache(tmp_path / "cache")
    stale = tmp_path / "cache" / ".partial" / f"{DataCache.digest('k')}.dead"
    stale.mkdir(parents=True)
    (stale / "half.bin").write_bytes(b"x")
    cache.ensure("k", counting_fetch(tmp_path / "log"))
    assert not stale.exists() and cache.lookup("k") is not None


SERVED = Listing({"sub/f.bin": SourceFile("k/sub/f.bin", 4, "v1")})


def listed_fetch(log: Path, listing: Listing = SERVED):
    """A fetch that says what it copied from, as fetch_s3 and fetch_sftp do."""
    plain = counting_fetch(log)
    return lambda dest: Fetched(*plain(dest)[:2], listing)


def test_a_copy_without_its_manifest_is_fetched_again(tmp_path: Path) -> None:
    cache, log, told = DataCache(tmp_path / "cache"), tmp_path / "log", []
    cache.ensure("k", listed_fetch(log))
    # As a copy of an older version, or one whose process died before the manifest.
    cache.manifest_path("k").write_text('{"key": "k", "bytes": 4, "files": 1}')
    cache.ensure("k", listed_fetch(log), tell=told.append)
    assert log.read_text().count("fetch") == 2 and cache.lookup("k") is not None
    assert told == ["the cached copy was fetched again: it had no manifest of its files"]


def test_a_file_changed_here_at_the_same_size_is_fetched_again(tmp_path: Path) -> None:
    cache, log, told = DataCache(tmp_path / "cache"), tmp_path / "log", []
    path = cache.ensure("k", listed_fetch(log)) / "sub" / "f.bin"
    path.write_bytes(b"DATA")  # the same size; its time moves
    cache.ensure("k", listed_fetch(log), listing=lambda: SERVED, tell=told.append)
    assert path.read_bytes() == b"data" and log.read_text().count("fetch") == 2
    assert told == ["the cached copy was repaired: sub/f.bin was changed here"]
    # Its time moved back but not its content: the digest is what counts.
    os.utime(path, ns=(1, 1))
    cache.ensure("k", listed_fetch(log), listing=lambda: SERVED, tell=told.append)
    assert log.read_text().count("fetch") == 2 and len(told) == 1


def test_a_listing_that_differs_fetches_again_and_one_that_fails_serves(tmp_path: Path) -> None:
    cache, log, told = DataCache(tmp_path / "cache"), tmp_path / "log", []
    cache.ensure("k", listed_fetch(log))
    changed = Listing({"sub/f.bin": SourceFile("k/sub/f.bin", 4, "v2"),
                       "new.bin": SourceFile("k/new.bin", 1, "v1")})  # fmt: skip
    cache.ensure("k", listed_fetch(log, changed), listing=lambda: changed, tell=told.append)
    assert log.read_text().count("fetch") == 2
    (note,) = told
    assert note.startswith("the cached copy was refreshed: changed on the server since it was ")
    assert note.endswith(": 1 changed (sub/f.bin), 1 new (new.bin)")

    def unreachable() -> Listing:
        raise MadError("cannot connect to http://127.0.0.1:1")

    told.clear()
    cache.ensure("k", listed_fetch(log), listing=unreachable, tell=told.append)
    assert log.read_text().count("fetch") == 2
    (note,) = told
    assert note.startswith("not checked against the server (cannot connect to http://127.0.0.1:1):"
                           " serving the copy fetched 20")  # fmt: skip


def test_the_content_key_names_what_the_copy_holds(tmp_path: Path) -> None:
    cache, log = DataCache(tmp_path / "cache"), tmp_path / "log"
    cache.ensure("k", listed_fetch(log))
    first = cache.content_key("k")
    (cache.path("k") / "sub" / "f.bin").unlink()
    cache.ensure("k", listed_fetch(log), listing=lambda: SERVED)  # the same files again
    assert cache.content_key("k") == first and log.read_text().count("fetch") == 2
    changed = Listing({"sub/f.bin": SourceFile("k/sub/f.bin", 4, "v2")})
    other = counting_fetch(log, b"DATA")
    cache.ensure("k", lambda dest: Fetched(*other(dest)[:2], changed), listing=lambda: changed)
    assert cache.content_key("k") != first and cache.content_key("other") != first


CHILD = """
import sys, time
from pathlib import Path
from pytest_madengine.data.fetch import DataCache, Fetched
root, log, go = map(Path, sys.argv[1:4])
def fetch(dest):
    with log.open("a") as f:
        f.write("fetch\\n")
    time.sleep(0.5)  # long enough for the others to find it under way
    (dest / "f").write_text("x")
    return Fetched(1, 1)
while not go.exists():
    time.sleep(0.01)
print(DataCache(root).ensure("shared", fetch))
"""


def test_processes_asking_at_once_fetch_once(tmp_path: Path) -> None:
    go, log = tmp_path / "go", tmp_path / "log"
    argv = [sys.executable, "-c", CHILD, str(tmp_path / "cache"), str(log), str(go)]
    children = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    go.touch()
    paths = {child.communicate(timeout=60)[0].strip() for child in children}
    assert all(child.returncode == 0 for child in children)
    assert paths == {str(DataCache(tmp_path / "cache").path("shared"))}
    assert log.read_text().count("fetch") == 1


def test_processes_finding_a_damaged_copy_at_once_repair_it_once(tmp_path: Path) -> None:
    def one_file(dest: Path) -> Fetched:
        (dest / "f").write_text("x")
        return Fetched(1, 1)

    copy = DataCache(tmp_path / "cache").ensure("shared", one_file)
    (copy / "f").write_text("")  # truncated
    go, log = tmp_path / "go", tmp_path / "log"
    argv = [sys.executable, "-c", CHILD, str(tmp_path / "cache"), str(log), str(go)]
    children = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    go.touch()
    paths = {child.communicate(timeout=60)[0].strip() for child in children}
    assert all(child.returncode == 0 for child in children) and paths == {str(copy)}
    assert log.read_text().count("fetch") == 1 and (copy / "f").read_text() == "x"


def test_a_killed_fetch_is_never_cached(tmp_path: Path) -> None:
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from pytest_madengine.data.fetch import DataCache\n"
        "def fetch(dest):\n"
        "    (dest / 'half.bin').write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "DataCache(Path(sys.argv[1])).ensure('k', fetch)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], check=False)
    assert done.returncode == -9
    cache = DataCache(tmp_path / "cache")
    assert cache.lookup("k") is None
    cache.ensure("k", counting_fetch(tmp_path / "log"))
    assert os.listdir(tmp_path / "cache" / ".partial") == []


def test_scrub_stars_a_short_secret_only_where_it_stands_alone() -> None:
    assert scrub("mad-data key=abc abcdef", ["abc", "a"]) == "mad-data key=*** abcdef"
