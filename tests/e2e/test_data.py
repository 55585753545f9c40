"""Models with data, whole sessions against the data servers of `scripts/bootstrap data`
(S3 on 127.0.0.1:9000 for minio and aws, an SFTP NAS on 127.0.0.1:2222 for nas)."""

from __future__ import annotations

import fnmatch
import json
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pytest_madengine.backends.docker.datavolumes import DATA_LABEL
from pytest_madengine.backends.docker.links import HostLinks
from pytest_madengine.data.fetch import DataCache, cache_key
from pytest_madengine.resources.hosts import load_hosts
from tests.conftest import DUMMY_URL, SAMPLE, DataServers, entry
from tests.e2e.test_run import junit_properties, read_perf, run, scripts, unique_tree

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client", "real_home")]

# Counts the files of its data, and fails if it can write there (the mount is read-only).
COUNT = """#!/bin/sh
echo "MAD_DATAHOME=$MAD_DATAHOME MAD_DATANAME=$MAD_DATANAME"
if [ -n "$MAD_DATAHOME" ] && touch "$MAD_DATAHOME/written" 2>/dev/null; then
  echo "the data is writable"; exit 3
fi
count=$(find "${MAD_DATAHOME:-/nonexistent}" -type f 2>/dev/null | wc -l)
echo "performance: $count files"
"""
# Fails without the dataset's README: the script decides what missing data means.
NEED = """#!/bin/sh
test -f "$MAD_DATAHOME/README.txt" || { echo "no data here"; exit 4; }
echo "performance: 1 ok"
"""
SAMPLE_FILES = 4  # README.txt, weights.bin, labels/train.csv, labels/classes.txt


@pytest.fixture
def isolated_cache(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The sessions' data cache, this test's own (real_home points HOME at root's)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(pytester.path / "xdg"))
    monkeypatch.delenv("MAD_MINIO", raising=False)
    monkeypatch.delenv("MAD_AWS_S3", raising=False)
    monkeypatch.delenv("NAS_NODES", raising=False)
    return pytester.path / "xdg" / "pytest-madengine" / "data"


def data_tree(pytester: pytest.Pytester, servers: DataServers, models: list, data: dict) -> Path:
    """A tree with the bootstrap's logins; model names of its own (image names are
    shared by every session on the engine)."""
    root = unique_tree(pytester, models, scripts(count=COUNT, need=NEED))
    shutil.copy(servers.credentials, root / "credential.json")
    (root / "data.json").write_text(json.dumps(data, indent=2))
    return root


def secrets_of(servers: DataServers) -> tuple[str, ...]:
    return (servers.secret_key, servers.access_key, servers.nas_password)


def assert_no_secret(servers: DataServers, *texts: str) -> None:
    for text in texts:
        if any(secret in text for secret in secrets_of(servers)):
            pytest.fail("a secret reached the output", pytrace=False)  # told without it


def outputs(pytester: pytest.Pytester, result: pytest.RunResult) -> list[str]:
    """Everything a session wrote: terminal, reports and the models' logs."""
    logs = [p.read_text() for p in pytester.path.glob("mad_output/logs/*/*.log")]
    reports = [p.read_text() for p in pytester.path.glob("*.xml")] + [
        (pytester.path / "perf.csv").read_text()
    ]
    return [result.stdout.str(), result.stderr.str(), *logs, *reports]


def log_of(pytester: pytest.Pytester, model: str) -> list[str]:
    """The lines of the latest log of a model, but madengine's `Setting timeout to N
    seconds.` that every run prints (tests/e2e/test_conformance.py checks that one)."""
    logs = sorted(pytester.path.glob(f"mad_output/logs/*/{model}.*.log"),
                  key=lambda path: path.stat().st_mtime)  # fmt: skip
    lines = logs[-1].read_text().splitlines()
    return [line for line in lines if not line.startswith("Setting timeout to ")]


def test_data_from_local_nas_minio_and_aws_and_a_second_session_downloads_nothing(
    pytester: pytest.Pytester, data_servers: DataServers, isolated_cache: Path
) -> None:
    local = pytester.path / "local-data"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "one.txt").write_text("1")
    models = [entry(f"with_{kind}", data=f"dummy_{kind}", scripts="scripts/dummy/count.sh")
              for kind in ("local", "nas", "minio", "aws")]  # fmt: skip
    data = {
        "dummy_local": {"local": {"path": str(local)}, "home": "/data"},
        # The first provider that answers wins: the missing local path is passed over.
        "dummy_nas": {"local": {"path": str(pytester.path / "nowhere")},
                      "nas": {"path": "/dummy"}},
        "dummy_minio": {"minio": {"path": DUMMY_URL}},
        "dummy_aws": {"aws": {"path": DUMMY_URL + "/labels"}},
    }  # fmt: skip
    data_tree(pytester, data_servers, models, data)
    first = run(pytester, "--mad-tags", "dummies", "--junitxml", "r1.xml")
    first.assert_outcomes(passed=4)
    first.stdout.fnmatch_lines_random([
        "madengine: data 'dummy_nas' (nas madnas@127.0.0.1:2222:/dummy): 1.0 MiB downloaded in *",
        f"madengine: data 'dummy_minio' (minio {DUMMY_URL}): 1.0 MiB downloaded in * MiB/s)",
        f"madengine: data 'dummy_aws' (aws {DUMMY_URL}/labels): 0.0 MiB downloaded in *",
        "with_local*SUCCESS*1*files*", "with_nas*SUCCESS*4*files*",
        "with_minio*SUCCESS*4*files*", "with_aws*SUCCESS*2*files*",
    ])  # fmt: skip
    assert not (pytester.path / "nowhere").exists()  # `local` never makes a path
    rows = {row["model"]: row for row in read_perf(pytester.path / "perf.csv")}
    assert {model: row["data_provider_type"] for model, row in rows.items()} == {
        "with_local": "local", "with_nas": "nas", "with_minio": "minio", "with_aws": "aws"
    }  # fmt: skip
    assert rows["with_minio"]["dataname"] == "dummy_minio"
    assert rows["with_minio"]["data_size"] == "1.1M" and rows["with_local"]["data_size"] == ""
    assert float(rows["with_minio"]["data_download_duration"]) > 0
    properties = junit_properties(pytester.path / "r1.xml")
    assert [properties[f"with_{k}"]["data_fetched"] for k in ("local", "nas", "minio", "aws")] == [
        "false", "true", "true", "true"
    ]  # fmt: skip
    note, said = log_of(pytester, "with_minio")[:2]
    assert fnmatch.fnmatch(note, f"data 'dummy_minio': minio {DUMMY_URL}: 1.1M downloaded in"
                                 " * s, at MAD_DATAHOME=/data_dlm_0")  # fmt: skip
    assert said == "MAD_DATAHOME=/data_dlm_0 MAD_DATANAME=dummy_minio"
    assert log_of(pytester, "with_local")[1] == "MAD_DATAHOME=/data MAD_DATANAME=dummy_local"
    assert_no_secret(data_servers, *outputs(pytester, first))

    second = run(pytester, "--mad-tags", "dummies", "--junitxml", "r2.xml")
    second.assert_outcomes(passed=4)
    assert "downloaded" not in second.stdout.str()
    rows = read_perf(pytester.path / "perf.csv")[4:]
    assert {row["model"]: row["data_download_duration"] for row in rows} == {
        "with_local": "", "with_nas": "0.000", "with_minio": "0.000", "with_aws": "0.000"
    }  # fmt: skip
    again = junit_properties(pytester.path / "r2.xml")
    assert {props["data_fetched"] for props in again.values()} == {"false"}
    assert log_of(pytester, "with_nas")[0].startswith(
        "data 'dummy_nas': nas madnas@127.0.0.1:2222:/dummy: 1.1M, the copy fetched earlier"
    )
    cached = [p for p in isolated_cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(cached) == 3  # nas, minio, aws: one copy each, in the user's cache


def test_eight_models_on_one_dataset_download_it_once_under_xdist(
    pytester: pytest.Pytester, data_servers: DataServers, isolated_cache: Path
) -> None:
    models = [entry(f"shared{i}", data="shared", scripts="scripts/dummy/need.sh") for i in range(8)]
    data_tree(pytester, data_servers, models, {"shared": {"minio": {"path": DUMMY_URL}}})
    (pytester.path / "docker" / "dummy.ubuntu.nvidia.Dockerfile").unlink()
    pytester.makeini("[pytest]\nmad_tags = dummies\n")
    mirror = pytester.path / "mirror"
    result = run(pytester, "-n", "4", "--mad-gpus", "4", "--junitxml", "r.xml",
                 f"--mad-force-mirror-local={mirror}")  # fmt: skip
    result.assert_outcomes(passed=8)
    properties = junit_properties(pytester.path / "r.xml")
    fetched = [name for name, props in properties.items() if props["data_fetched"] == "true"]
    assert len(fetched) == 1, properties
    durations = [row["data_download_duration"] for row in read_perf(pytester.path / "perf.csv")]
    assert sorted(durations)[:7] == ["0.000"] * 7 and float(sorted(durations)[7]) > 0
    # The controller tells the one download a worker made.
    result.stdout.fnmatch_lines(
        ["*= madengine data =*", f"data 'shared' (minio {DUMMY_URL}): 1.0 MiB downloaded in *"]
    )
    assert result.stdout.str().count(f"data 'shared' (minio {DUMMY_URL}): ") == 1
    key = cache_key("s3", data_servers.endpoint, DUMMY_URL)
    assert DataCache(mirror).lookup(key) is not None and not isolated_cache.exists()
    quiet = run(pytester, "-q", "--mad-force-mirror-local", str(pytester.path / "mirror2"))
    quiet.assert_outcomes(passed=8)
    assert "data 'shared'" not in quiet.stdout.str()  # a download, but -q says nothing


# ---- no provider serves: the model runs without its data, and its log says why ----


SIZE = 1 << 20
LISTING = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>cut</Name>'
    "<Prefix>data/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
    f"<IsTruncated>false</IsTruncated><Contents><Key>data/big.bin</Key><Size>{SIZE}</Size>"
    '<ETag>"e"</ETag><LastModified>2024-01-01T00:00:00.000Z</LastModified></Contents>'
    "</ListBucketResult>"
)


class _CuttingS3(BaseHTTPRequestHandler):
    """An S3 server whose one object always breaks off after 1000 of its bytes."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _head(self, length: int, kind: str = "application/octet-stream") -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", '"e"')
        self.end_headers()

    def do_HEAD(self) -> None:
        self._head(SIZE)

    def do_GET(self) -> None:
        if "list-type=2" in self.path:
            self._head(len(LISTING), "application/xml")
            self.wfile.write(LISTING.encode())
            return
        self._head(SIZE)
        self.wfile.write(b"x" * 1000)
        self.close_connection = True


@pytest.fixture
def cutting_s3() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CuttingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_without_a_provider_the_model_runs_without_its_data_and_its_log_says_why(
    pytester: pytest.Pytester, data_servers: DataServers, isolated_cache: Path,
    cutting_s3: str, silent_port: int, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    data = {
        "keys": {"minio": {"url": DUMMY_URL}},
        "bucket": {"minio": {"path": "s3://no-such-bucket/dummy"}},
        "silent": {"aws": {"path": DUMMY_URL, "endpoint": f"http://127.0.0.1:{silent_port}",
                           "timeout": 1}},
        "cut": {"aws": {"path": "s3://cut/data", "endpoint": cutting_s3}},
        "nas": {"nas": {"path": "/missing", "timeout": 2}},
        "local": {"local": {"path": str(pytester.path / "nowhere")}},
    }  # fmt: skip
    models = [entry(f"needs_{name}", data=name, scripts="scripts/dummy/need.sh") for name in data]
    models.append(entry("count_keys", data="keys", scripts="scripts/dummy/count.sh"))
    data_tree(pytester, data_servers, models, data)
    # NAS_NODES from the environment, over credential.json: a node that never answers,
    # then the real one.
    nodes = json.loads(data_servers.credentials.read_text())["NAS_NODES"]
    monkeypatch.setenv("NAS_NODES", json.dumps([{**nodes[0], "PORT": str(silent_port)}, nodes[0]]))
    result = run(pytester, "--mad-tags", "dummies", "--junitxml", "r.xml")
    # The script decides: need.sh fails without its data, count.sh passes on none.
    result.assert_outcomes(failed=6, passed=1)
    nas = f"{data_servers.nas_user}@127.0.0.1"
    reasons = {
        "keys": 'minio: expected {"path": "s3://bucket/prefix"}',
        "bucket": "minio: s3://no-such-bucket/dummy: no such bucket (NoSuchBucket, HTTP 404)",
        "silent": f"aws: {DUMMY_URL}: http://127.0.0.1:{silent_port} did not answer within 1 s",
        "cut": "aws: s3://cut/data: the download broke off on every try (1000 read, but total"
               f" bytes expected is {SIZE}.)",
        "nas": f"nas: {nas}:{silent_port}:/missing: no answer within 2 s;"
               f" {nas}:2222:/missing: no such file or directory",
        "local": f"local: {pytester.path}/nowhere: no such file or directory on this machine",
    }  # fmt: skip
    for name, reason in reasons.items():
        assert log_of(pytester, f"needs_{name}") == [
            f"data '{name}': {reason}",
            f"data '{name}': no provider serves it; the model runs without its data",
            "no data here",
        ]
        result.stdout.fnmatch_lines(["*= madengine data =*", f"needs_{name}: data '{name}': no*"])
    properties = junit_properties(pytester.path / "r.xml")
    assert properties["count_keys"]["data_problem"] == f"data 'keys': no provider serves it" \
        f" ({reasons['keys']})"  # fmt: skip
    assert properties["count_keys"]["performance"] == "0"
    assert not (pytester.path / "nowhere").exists()
    # Nothing half-written: no dataset, no partial download left in the cache.
    assert [p.name for p in isolated_cache.iterdir() if not p.name.startswith(".")] == []
    assert list((isolated_cache / ".partial").iterdir()) == []
    assert_no_secret(data_servers, *outputs(pytester, result))


def test_a_dataset_changed_on_the_server_is_fetched_again_and_the_log_says_why(
    pytester: pytest.Pytester, data_servers: DataServers, isolated_cache: Path,
    unique_dataset: str,
) -> None:  # fmt: skip
    models = [entry("changing", data="d", scripts="scripts/dummy/count.sh")]
    data_tree(pytester, data_servers, models, {"d": {"minio": {"path": unique_dataset}}})
    run(pytester, "--mad-tags", "dummies").assert_outcomes(passed=1)
    bucket, prefix = unique_dataset.removeprefix("s3://").split("/", 1)
    s3_client(data_servers).put_object(Bucket=bucket, Key=f"{prefix}/extra.txt", Body=b"new")
    second = run(pytester, "--mad-tags", "dummies")
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines([f"changing*SUCCESS*{SAMPLE_FILES + 1}*files*"])
    why, note = log_of(pytester, "changing")[:2]
    where = f"data 'd': minio {unique_dataset}"
    assert fnmatch.fnmatch(why, f"{where}: the cached copy was refreshed: changed on the server"
                                " since it was fetched *: 1 new (extra.txt)")  # fmt: skip
    assert fnmatch.fnmatch(note, f"{where}: 1.1M downloaded in * s, at MAD_DATAHOME=/data_dlm_0")


# ---- remote Docker hosts ----


def s3_client(servers: DataServers):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=servers.endpoint, region_name="us-east-1",
        aws_access_key_id=servers.access_key, aws_secret_access_key=servers.secret_key,
        config=Config(s3={"addressing_style": "path"}),
    )  # fmt: skip


@pytest.fixture
def unique_dataset(data_servers: DataServers) -> Iterator[str]:
    """A dataset of this test alone in the S3, removed afterwards."""
    client = s3_client(data_servers)
    prefix = f"e2e-{uuid.uuid4().hex[:12]}"
    files = {path.relative_to(SAMPLE).as_posix(): path.read_bytes()
             for path in SAMPLE.rglob("*") if path.is_file()}  # fmt: skip
    for name, body in files.items():
        client.put_object(Bucket="mad-data", Key=f"{prefix}/{name}", Body=body)
    yield f"s3://mad-data/{prefix}"
    # What the test put there too.
    for item in client.list_objects_v2(Bucket="mad-data", Prefix=f"{prefix}/").get("Contents", []):
        client.delete_object(Bucket="mad-data", Key=item["Key"])


def test_remote_hosts_get_the_data_as_a_volume_copied_once_per_host(
    pytester: pytest.Pytester, data_servers: DataServers, isolated_cache: Path,
    test_hosts: Path, unique_dataset: str,
) -> None:  # fmt: skip
    models = [entry(f"remote{i}", data="d", scripts="scripts/dummy/count.sh") for i in range(4)]
    data_tree(pytester, data_servers, models, {"d": {"minio": {"path": unique_dataset}}})
    dataset = cache_key("s3", data_servers.endpoint, unique_dataset)
    links = HostLinks()
    engines = {host.name: links.client(host) for host in load_hosts(test_hosts)}

    labels: set[str] = set()  # of every version of the data, for the removal at the end

    def label() -> str:  # the volumes are named by what the cached copy holds
        now = f"{DATA_LABEL}={DataCache(isolated_cache).content_key(dataset)}"
        labels.add(now)
        return now

    def volumes() -> dict[str, list[str]]:
        return {name: sorted(volume.name for volume in client.volumes.list(
                    filters={"label": label()}))
                for name, client in engines.items()}  # fmt: skip

    try:
        first = run(pytester, "--mad-tags", "dummies", f"--mad-hosts={test_hosts}", "-n", "2",
                    "--junitxml", "r.xml")  # fmt: skip
        first.assert_outcomes(passed=4)
        first.stdout.fnmatch_lines_random([f"remote{i}*SUCCESS*{SAMPLE_FILES}*files*"
                                           for i in range(4)])  # fmt: skip
        hosts = {props["host"] for props in junit_properties(pytester.path / "r.xml").values()}
        copied = volumes()
        # On each host that ran a test: the copy and the name that points at it.
        assert all(len(copied[name]) == 2 for name in hosts), copied
        second = run(pytester, "--mad-tags", "dummies", f"--mad-hosts={test_hosts}", "-n", "2")
        second.assert_outcomes(passed=4)
        again = volumes()
        assert {name: again[name] for name in hosts} == {name: copied[name] for name in hosts}
        # A copy removed behind our back is made again, never mounted anew and empty.
        for client in engines.values():
            for volume in client.volumes.list(filters={"label": label()}):
                if volume.name.count("-") == 3:  # mad-data-<key>-<n>: the copy
                    volume.remove()
        third = run(pytester, "--mad-tags", "dummies", f"--mad-hosts={test_hosts}")
        third.assert_outcomes(passed=4)
        third.stdout.fnmatch_lines_random([f"remote{i}*SUCCESS*{SAMPLE_FILES}*files*"
                                           for i in range(4)])  # fmt: skip
        # Changed on the server: the hosts get the new copy, not the one they hold.
        bucket, prefix = unique_dataset.removeprefix("s3://").split("/", 1)
        s3_client(data_servers).put_object(Bucket=bucket, Key=f"{prefix}/extra", Body=b"new")
        fourth = run(pytester, "--mad-tags", "dummies", f"--mad-hosts={test_hosts}")
        fourth.assert_outcomes(passed=4)
        fourth.stdout.fnmatch_lines_random([f"remote{i}*SUCCESS*{SAMPLE_FILES + 1}*files*"
                                            for i in range(4)])  # fmt: skip
    finally:
        label()
        for client in engines.values():
            for each in labels:
                for volume in client.volumes.list(filters={"label": each}):
                    volume.remove(force=True)
            client.close()
        links.close()
