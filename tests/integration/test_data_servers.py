"""The data fetchers against the real data servers of `scripts/bootstrap data`: S3
(SeaweedFS) on 127.0.0.1:9000 and the NAS (SFTP) on 127.0.0.1:2222."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_madengine.data.fetch import (
    DataCache,
    Fetched,
    Timeouts,
    cache_key,
    fetch_s3,
    fetch_sftp,
)
from pytest_madengine.errors import MadError
from tests.conftest import CREDENTIALS, DUMMY_URL, QUICK, SAMPLE, DataServers


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def assert_one_line_without(error: pytest.ExceptionInfo[MadError], *secrets: str) -> str:
    text = str(error.value)
    assert "\n" not in text and text.strip() == text
    if any(secret in text or secret in repr(error.value) for secret in secrets):
        # Told without the text: a failing test must not print the secret either.
        pytest.fail("the error message holds a secret", pytrace=False)
    return text


# ---- fetching ----


def test_s3_fetch_copies_the_dataset(data_servers: DataServers, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    fetched = data_servers.s3(DUMMY_URL, tmp_path, progress=lambda d, t: seen.append((d, t)))
    want = files_of(SAMPLE)
    assert files_of(tmp_path) == want
    assert fetched[:2] == (sum(map(len, want.values())), len(want))
    assert fetched.listing is not None and sorted(fetched.listing.files) == sorted(want)
    assert max(seen) == (fetched.bytes, fetched.bytes)


def test_s3_fetch_of_one_object(data_servers: DataServers, tmp_path: Path) -> None:
    assert data_servers.s3(DUMMY_URL + "/labels/classes.txt", tmp_path).files == 1
    assert (tmp_path / "classes.txt").read_bytes() == (
        SAMPLE / "labels" / "classes.txt"
    ).read_bytes()


def test_sftp_fetch_with_the_password(data_servers: DataServers, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    fetched = data_servers.sftp("/dummy", tmp_path, progress=lambda d, t: seen.append((d, t)))
    want = files_of(SAMPLE)
    assert files_of(tmp_path) == want and fetched.files == len(want)
    assert max(seen) == (fetched.bytes, fetched.bytes)


def test_sftp_fetch_with_the_key_file(data_servers: DataServers, tmp_path: Path) -> None:
    d = data_servers
    fetch_sftp(d.nas_host, d.nas_port, d.nas_user, d.nas_key, "/dummy/labels", tmp_path)
    assert files_of(tmp_path) == files_of(SAMPLE / "labels")


# ---- the cache ----


def test_a_second_ensure_is_served_from_the_cache(data_servers: DataServers, tmp_path: Path):
    cache, calls = DataCache(tmp_path / "cache"), []
    key = cache_key("minio", data_servers.endpoint, DUMMY_URL)

    def fetch(dest: Path) -> Fetched:
        calls.append(dest)
        return data_servers.s3(DUMMY_URL, dest)

    first = cache.ensure(key, fetch)
    start = time.monotonic()
    second = cache.ensure(key, fetch)
    assert time.monotonic() - start < 0.1
    assert first == second and len(calls) == 1 and files_of(first) == files_of(SAMPLE)
    entry = cache.entry(key)
    assert entry is not None and entry.files == len(files_of(SAMPLE))


CHILD = """
import json, sys, time
from pathlib import Path
from pytest_madengine.data.fetch import DataCache, cache_key, fetch_s3
cache_root, log, go = map(Path, sys.argv[1:4])
kill_after = sys.argv[4]
minio = json.loads(Path(sys.argv[5]).read_text())["MAD_MINIO"]

def progress(done, total):
    if kill_after == "yes" and done > 0:
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)  # a download cut off halfway

def fetch(dest):
    with log.open("a") as f:
        f.write("fetch\\n")
    return fetch_s3("s3://mad-data/dummy", minio["MINIO_ENDPOINT"], minio["USERNAME"],
                    minio["PASSWORD"], dest, progress, provider="minio")

while not go.exists():
    time.sleep(0.01)
key = cache_key("minio", minio["MINIO_ENDPOINT"], "s3://mad-data/dummy")
print(DataCache(cache_root).ensure(key, fetch))
"""


def children(tmp_path: Path, count: int, kill: bool) -> list[subprocess.Popen[str]]:
    argv = [sys.executable, "-c", CHILD, str(tmp_path / "cache"), str(tmp_path / "log"),
            str(tmp_path / "go"), "yes" if kill else "no", str(CREDENTIALS)]  # fmt: skip
    started = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    (tmp_path / "go").touch()
    return started


def test_four_processes_asking_at_once_download_once(data_servers: DataServers, tmp_path: Path):
    started = children(tmp_path, 4, kill=False)
    paths = {child.communicate(timeout=120)[0].strip() for child in started}
    assert [child.returncode for child in started] == [0] * 4
    key = cache_key("minio", data_servers.endpoint, DUMMY_URL)
    assert paths == {str(DataCache(tmp_path / "cache").path(key))}
    assert (tmp_path / "log").read_text().count("fetch") == 1
    assert files_of(Path(paths.pop())) == files_of(SAMPLE)


def test_a_cut_download_leaves_nothing_cached(data_servers: DataServers, tmp_path: Path) -> None:
    (child,) = children(tmp_path, 1, kill=True)
    child.communicate(timeout=120)
    assert child.returncode == -9
    cache = DataCache(tmp_path / "cache")
    key = cache_key("minio", data_servers.endpoint, DUMMY_URL)
    assert cache.lookup(key) is None
    assert [p.name for p in cache.root.iterdir() if not p.name.startswith(".")] == []
    # The next fetch of the key removes the dead one's partial download.
    assert files_of(cache.ensure(key, lambda dest: data_servers.s3(DUMMY_URL, dest))) == files_of(
        SAMPLE
    )
    assert list((cache.root / ".partial").iterdir()) == []


# ---- errors: one line, no secret ----


def test_s3_wrong_secret(data_servers: DataServers, tmp_path: Path) -> None:
    d = data_servers
    wrong = d.secret_key[::-1] + "Zq"
    with pytest.raises(MadError) as error:
        fetch_s3(DUMMY_URL, d.endpoint, d.access_key, wrong, tmp_path, provider="minio")
    text = assert_one_line_without(error, wrong, d.secret_key)
    assert text.startswith(f"minio: {DUMMY_URL}: login refused")


def test_sftp_wrong_password(data_servers: DataServers, tmp_path: Path) -> None:
    d = data_servers
    wrong = d.nas_password[::-1] + "Zq"
    with pytest.raises(MadError) as error:
        fetch_sftp(d.nas_host, d.nas_port, d.nas_user, wrong, "/dummy", tmp_path)
    text = assert_one_line_without(error, wrong, d.nas_password)
    assert text.startswith(f"nas: {d.nas_user}@{d.nas_host}:{d.nas_port}:/dummy: login refused")


def test_sftp_key_not_authorized(data_servers: DataServers, tmp_path: Path) -> None:
    import asyncssh

    key = tmp_path / "other_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))
    d = data_servers
    with pytest.raises(MadError, match="login refused") as error:
        fetch_sftp(d.nas_host, d.nas_port, d.nas_user, key, "/dummy", tmp_path / "out")
    assert_one_line_without(error)


def test_sftp_unknown_host_key_is_refused(data_servers: DataServers, tmp_path: Path) -> None:
    (tmp_path / "known_hosts").write_text("")
    with pytest.raises(MadError, match="host key not trusted") as error:
        data_servers.sftp("/dummy", tmp_path / "out", known_hosts=tmp_path / "known_hosts")
    assert_one_line_without(error, data_servers.nas_password)


@pytest.mark.parametrize(
    ("url", "why"),
    [("s3://mad-data-missing/dummy", "no such bucket"), ("s3://mad-data/missing", "no objects")],
)
def test_s3_missing_data(data_servers: DataServers, tmp_path: Path, url: str, why: str) -> None:
    with pytest.raises(MadError) as error:
        data_servers.s3(url, tmp_path)
    text = assert_one_line_without(error, data_servers.secret_key)
    assert text.startswith(f"minio: {url}: {why}")


def test_sftp_missing_path(data_servers: DataServers, tmp_path: Path) -> None:
    with pytest.raises(MadError) as error:
        data_servers.sftp("/missing", tmp_path)
    text = assert_one_line_without(error, data_servers.nas_password)
    assert text.endswith(":/missing: no such file or directory")


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_s3_server_that_is_not_there(data_servers: DataServers, tmp_path: Path, unused_port):
    d, start = data_servers, time.monotonic()
    with pytest.raises(MadError, match="cannot connect to http://127") as error:
        fetch_s3(DUMMY_URL, f"http://127.0.0.1:{unused_port}", d.access_key, d.secret_key,
                 tmp_path, timeouts=QUICK)  # fmt: skip
    assert time.monotonic() - start < 5
    assert_one_line_without(error, d.secret_key)


def test_s3_server_that_does_not_answer(data_servers: DataServers, tmp_path: Path, silent_port):
    d, start = data_servers, time.monotonic()
    with pytest.raises(MadError, match="did not answer within 1 s") as error:
        fetch_s3(DUMMY_URL, f"http://127.0.0.1:{silent_port}", d.access_key, d.secret_key,
                 tmp_path, timeouts=QUICK)  # fmt: skip
    assert time.monotonic() - start < 5
    assert_one_line_without(error, d.secret_key)


def test_sftp_server_that_is_not_there(data_servers: DataServers, tmp_path: Path, unused_port):
    d, start = data_servers, time.monotonic()
    with pytest.raises(MadError, match="connection refused") as error:
        fetch_sftp(d.nas_host, unused_port, d.nas_user, d.nas_password, "/dummy", tmp_path,
                   timeouts=QUICK)  # fmt: skip
    assert time.monotonic() - start < 5
    assert_one_line_without(error, d.nas_password)


def test_sftp_server_that_does_not_answer(data_servers: DataServers, tmp_path: Path, silent_port):
    d, start = data_servers, time.monotonic()
    with pytest.raises(MadError, match="no answer within 1 s") as error:
        fetch_sftp(d.nas_host, silent_port, d.nas_user, d.nas_password, "/dummy", tmp_path,
                   timeouts=QUICK)  # fmt: skip
    assert time.monotonic() - start < 5
    assert_one_line_without(error, d.nas_password)


def server_side_pids(server_port: int, client_port: int) -> set[int]:
    """The processes holding the server's end of one loopback TCP connection (found by
    its socket's inode): only this test's connection is stopped, never another's."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    sockets = {f"socket:[{row[9]}]" for row in rows if row[1] == local and row[2] == remote}
    pids = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) in sockets:
                pids.add(int(fd.parts[2]))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def test_sftp_server_that_stops_answering_after_the_login(
    data_servers: DataServers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncssh

    d, stopped = data_servers, []
    start_sftp = asyncssh.SSHClientConnection.start_sftp_client

    async def stop_the_server_first(self, *args, **kwargs):
        stopped.extend(server_side_pids(d.nas_port, self.get_extra_info("sockname")[1]))
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        return await start_sftp(self, *args, **kwargs)

    monkeypatch.setattr(asyncssh.SSHClientConnection, "start_sftp_client", stop_the_server_first)
    start = time.monotonic()
    try:
        with pytest.raises(MadError, match=r"stopped answering|connection lost") as error:
            d.sftp("/dummy", tmp_path, timeouts=Timeouts(connect=2, read=3))
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    assert stopped and time.monotonic() - start < 8
    assert_one_line_without(error, d.nas_password)
