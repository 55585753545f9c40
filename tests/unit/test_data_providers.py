"""The data providers without a server: credential shapes, the order providers are
tried in, where copies live, one-line errors without secrets, the records and reports
of a dataset, and the tar that carries a dataset to another Docker host."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
import threading
import time
from pathlib import Path

import pytest

from pytest_madengine.backends.docker.datavolumes import tar_stream
from pytest_madengine.core.records import DataFacts, ModelFacts, ResultRow, Status, TestRecord
from pytest_madengine.credentials import load_credentials
from pytest_madengine.data import (
    DATA_HOME,
    DataMissing,
    DataProgress,
    DataSettings,
    resolve_data,
)
from pytest_madengine.data import remote as remote_module
from pytest_madengine.data.fetch import Fetched, Listing, SourceFile
from pytest_madengine.errors import MadError
from pytest_madengine.reporting.perf_csv import human_size, perf_rows

ACCESS, SECRET, NAS_PASSWORD = "MADACCESSKEY0001", "very-secret-key-0001", "nas-pass-0001"
CREDENTIALS = {
    "MAD_MINIO": {"USERNAME": ACCESS, "PASSWORD": SECRET,
                  "MINIO_ENDPOINT": "http://127.0.0.1:9000"},
    "MAD_AWS_S3": {"username": ACCESS, "password": SECRET},
    "NAS_NODES": [{"NAME": "n1", "HOST": "127.0.0.1", "PORT": "2222", "USERNAME": "u",
                   "PASSWORD": NAS_PASSWORD}],
    "dockerhub": {"username": "me", "password": "hub-pass-0001"},
}  # fmt: skip


def settings(tmp_path: Path, credentials: dict | None = None, environ=None, **more) -> DataSettings:
    written = CREDENTIALS if credentials is None else credentials
    (tmp_path / "credential.json").write_text(json.dumps(written))
    loaded = load_credentials(tmp_path, environ=environ or {})
    return DataSettings(loaded, tmp_path, tmp_path / "cache", **more)


# What the fake servers hold, and list when asked: the file `part`, never changed.
LISTING = Listing({"part": SourceFile("part", 10, "v1")})


def fake_listing(*args, **kwargs) -> Listing:
    """Stands in for list_s3 / list_sftp."""
    return LISTING


class FakeServer:
    """Stands in for fetch_s3 / fetch_sftp: writes a file, counts calls, or fails."""

    def __init__(self, dest_at: int, fail: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.dest_at = dest_at  # where the fetcher takes dest_dir (progress follows)
        self.fail = fail

    def __call__(self, *args, **kwargs) -> Fetched:
        self.calls.append((args, kwargs))
        dest, progress = args[self.dest_at], args[self.dest_at + 1]
        (dest / "part").write_bytes(b"x" * 10)
        if progress:
            progress(5, 10)
            progress(10, 10)
        if self.fail:
            raise MadError(f"{kwargs['provider']}: somewhere: {self.fail}")
        return Fetched(10, 1, LISTING)


@pytest.fixture(autouse=True)
def fake_listings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote_module, "list_s3", fake_listing)
    monkeypatch.setattr(remote_module, "list_sftp", fake_listing)


@pytest.fixture
def fake_s3(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    server = FakeServer(dest_at=4)
    monkeypatch.setattr(remote_module, "fetch_s3", server)
    return server


@pytest.fixture
def fake_sftp(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    server = FakeServer(dest_at=5)
    monkeypatch.setattr(remote_module, "fetch_sftp", server)
    return server


# ---- credential.json of every shape ----


def test_entries_of_every_shape_load_and_are_checked_only_when_used(tmp_path: Path) -> None:
    odd = {**CREDENTIALS, "LIST": [1, 2], "NUMBER": 3, "nested": {"a": {"password": "deep-pw-1"}}}
    (tmp_path / "credential.json").write_text(json.dumps(odd))
    credentials = load_credentials(tmp_path, environ={})
    assert credentials.entry("NAS_NODES")[0]["HOST"] == "127.0.0.1"
    assert credentials.registry_auth("docker.io") == {"username": "me", "password": "hub-pass-0001"}
    shown = credentials.redact(f"{ACCESS} {SECRET} {NAS_PASSWORD} deep-pw-1 hub-pass-0001 me")
    assert shown == "*** *** *** *** *** me"


def test_environment_variables_override_the_data_entries(tmp_path: Path) -> None:
    override = {
        "USERNAME": "ENVACCESS000",
        "PASSWORD": "env-secret-01",
        "MINIO_ENDPOINT": "http://e",
    }
    environ = {"MAD_MINIO": json.dumps(override), "NAS_NODES": "{not json, secret-ish"}
    credentials = settings(tmp_path, environ=environ).credentials
    assert credentials.entry("MAD_MINIO") == override
    assert credentials.entry("MAD_AWS_S3") == CREDENTIALS["MAD_AWS_S3"]
    with pytest.raises(MadError) as error:
        credentials.entry("NAS_NODES")
    assert str(error.value).startswith("environment variable NAS_NODES:1:2: invalid JSON")
    assert "secret-ish" not in str(error.value)
    assert credentials.redact("ENVACCESS000 env-secret-01 {not json, secret-ish") == "*** *** ***"


# ---- the order of providers, and running without the data ----


def test_the_first_provider_that_serves_wins_in_the_entry_order(
    tmp_path: Path, fake_s3: FakeServer
) -> None:
    (tmp_path / "here").mkdir()
    sources = {
        "d": {"local": {"path": "missing"}, "minio": {"path": "s3://b/d"},
              "local2": {"path": "x"}, "aws": {"path": "s3://b/d"}},
        "e": {"local": {"path": "here"}, "minio": {"path": "s3://b/e"}, "home": "/data"},
    }  # fmt: skip
    mount = resolve_data("d", sources, settings(tmp_path))
    assert mount.provider == "minio" and mount.env == {"MAD_DATAHOME": DATA_HOME,
                                                       "MAD_DATANAME": "d"}  # fmt: skip
    assert len(fake_s3.calls) == 1
    local = resolve_data("e", sources, settings(tmp_path))
    assert local.provider == "local" and local.env["MAD_DATAHOME"] == "/data"
    assert local.binds[0].source == str(tmp_path / "here") and local.size_bytes is None
    assert not (tmp_path / "missing").exists()


def test_when_no_provider_serves_each_says_why_in_a_line(tmp_path: Path) -> None:
    sources = {"d": {"local": {"path": "missing"}, "minio": {"url": "s3://b/d"},
                     "aws": {"path": "b/d"}, "nas": {"path": "/d"}, "ftp": {}}}  # fmt: skip
    credentials = {**CREDENTIALS, "NAS_NODES": [{"HOST": "h", "PASSWORD": NAS_PASSWORD}]}
    with pytest.raises(DataMissing) as error:
        resolve_data("d", sources, settings(tmp_path, credentials))
    assert error.value.log_lines() == (
        "data 'd': local: missing: no such file or directory on this machine",
        'data \'d\': minio: expected {"path": "s3://bucket/prefix"}',
        "data 'd': aws: not an s3://bucket/prefix URL: 'b/d'",
        "data 'd': nas: credential NAS_NODES[0] has no USERNAME",
        "data 'd': ftp: no such provider installed",
        "data 'd': no provider serves it; the model runs without its data",
    )
    assert "\n" not in str(error.value) and NAS_PASSWORD not in str(error.value)


@pytest.mark.parametrize(
    ("credentials", "provider", "why"),
    [
        ({}, "minio", "no credential MAD_MINIO (in credential.json, or the environment"
                      " variable MAD_MINIO)"),
        ({"MAD_MINIO": ["x"]}, "minio", "credential MAD_MINIO must be an object"),
        ({"MAD_MINIO": {"USERNAME": ACCESS}}, "minio", "credential MAD_MINIO has no PASSWORD"),
        ({"MAD_MINIO": {"USERNAME": ACCESS, "PASSWORD": SECRET}}, "minio",
         "no endpoint: MINIO_ENDPOINT in credential MAD_MINIO, or 'endpoint' in the data.json"
         " entry"),
        ({"MAD_AWS_S3": {"USERNAME": ACCESS, "PASSWORD": {"k": SECRET}}}, "aws",
         "credential MAD_AWS_S3: PASSWORD must be a string"),
        ({"NAS_NODES": []}, "nas", "credential NAS_NODES lists no node"),
        ({"NAS_NODES": [{"NAME": "a", "HOST": "h", "USERNAME": "u"}]}, "nas",
         "credential NAS_NODES[0] (a) has neither PASSWORD nor ssh_key_file"),
        ({"NAS_NODES": {"HOST": "h", "USERNAME": "u", "PORT": "x", "PASSWORD": NAS_PASSWORD}},
         "nas", "credential NAS_NODES[0]: PORT must be a port number"),
    ],
)  # fmt: skip
def test_a_wrong_credential_is_named_never_shown(
    tmp_path: Path, credentials: dict, provider: str, why: str
) -> None:
    path = "s3://b/d" if provider != "nas" else "/d"
    with pytest.raises(DataMissing) as error:
        resolve_data("d", {"d": {provider: {"path": path}}}, settings(tmp_path, credentials))
    assert error.value.reasons == (f"{provider}: {why}",)
    assert SECRET not in str(error.value) and NAS_PASSWORD not in str(error.value)


def test_a_wrong_entry_fails_the_test(tmp_path: Path) -> None:
    with pytest.raises(MadError, match=r"data 'd': no such entry in data\.json"):
        resolve_data("d", {}, settings(tmp_path))
    with pytest.raises(MadError, match=r"data 'd': the data\.json entry must be an object"):
        resolve_data("d", {"d": ["local"]}, settings(tmp_path))
    with pytest.raises(MadError, match="'home' must be an absolute container path"):
        resolve_data("d", {"d": {"home": "rel"}}, settings(tmp_path))


# ---- fetched once, into the cache or a mirror ----


def test_a_fetched_dataset_is_reused_and_says_so(tmp_path: Path, fake_s3: FakeServer) -> None:
    seen: list[DataProgress] = []
    sources = {"d": {"minio": {"path": "s3://b/d", "timeout": 2}}}
    first = resolve_data("d", sources, settings(tmp_path, progress=seen.append))
    second = resolve_data("d", sources, settings(tmp_path, progress=seen.append))
    assert len(fake_s3.calls) == 1
    args, kwargs = fake_s3.calls[0]
    assert args[:4] == ("s3://b/d", "http://127.0.0.1:9000", ACCESS, SECRET)
    assert kwargs["timeouts"].connect == 2 and kwargs["provider"] == "minio"
    assert first.fetched and first.size_bytes == 10 and first.download_s is not None
    assert not second.fetched and second.download_s == 0.0 and second.size_bytes == 10
    assert first.notes == second.notes == ()
    assert first.binds == second.binds and first.binds[0].content_key
    assert Path(first.binds[0].source, "part").read_bytes() == b"x" * 10
    assert Path(first.binds[0].source).parent == tmp_path / "cache"
    assert [(e.done, e.total, e.finished) for e in seen] == [(5, 10, False), (10, 10, False),
                                                           (10, 10, True)]  # fmt: skip
    assert seen[-1].describe().startswith("data 'd' (minio s3://b/d): 0.0 MiB downloaded in ")


def test_minio_and_aws_naming_one_bucket_share_one_copy(
    tmp_path: Path, fake_s3: FakeServer
) -> None:
    credentials = {
        **CREDENTIALS,
        "MAD_AWS_S3": {**CREDENTIALS["MAD_AWS_S3"], "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000"},
    }
    sources = {"a": {"minio": {"path": "s3://b/d"}}, "b": {"aws": {"path": "s3://b/d/"}}}
    resolve_data("a", sources, settings(tmp_path, credentials))
    assert not resolve_data("b", sources, settings(tmp_path, credentials)).fetched
    assert len(fake_s3.calls) == 1


def test_mirrorlocal_and_force_mirror_local_choose_where_the_copy_lives(
    tmp_path: Path, fake_s3: FakeServer
) -> None:
    sources = {
        "entry": {"minio": {"path": "s3://b/1"}, "mirrorlocal": "mirror-a"},
        "own": {"minio": {"path": "s3://b/2", "mirrorlocal": str(tmp_path / "mirror-b")}},
    }
    plain = settings(tmp_path)
    assert Path(resolve_data("entry", sources, plain).binds[0].source).parent == (
        tmp_path / "mirror-a"
    )
    assert Path(resolve_data("own", sources, plain).binds[0].source).parent == (
        tmp_path / "mirror-b"
    )
    forced = settings(tmp_path, force_mirror_local=tmp_path / "forced")
    for name in sources:
        assert Path(resolve_data(name, sources, forced).binds[0].source).parent == (
            tmp_path / "forced"
        )


def test_a_failed_fetch_leaves_nothing_in_the_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(remote_module, "fetch_s3", FakeServer(4, fail="closed the connection"))
    sources = {"d": {"minio": {"path": "s3://b/d"}}}
    with pytest.raises(DataMissing) as error:
        resolve_data("d", sources, settings(tmp_path))
    assert error.value.reasons == ("minio: somewhere: closed the connection",)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == []
    assert list((tmp_path / "cache" / ".partial").iterdir()) == []


def test_nas_tries_its_nodes_in_order_and_takes_any_nodes_copy(
    tmp_path: Path, fake_sftp: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = [
        {"NAME": "bad", "HOST": "h0"},
        {"NAME": "down", "HOST": "h1", "USERNAME": "u", "PASSWORD": NAS_PASSWORD},
        {"NAME": "up", "HOST": "h2", "PORT": 2222, "USERNAME": "u", "ssh_key_file": "id_key"},
    ]
    calls: list[str] = []

    def sftp(host, port, user, secret, path, dest, progress, **kwargs):
        calls.append(host)
        if host == "h1":
            raise MadError(f"nas: {user}@{host}:{port}:{path}: connection refused")
        return fake_sftp(host, port, user, secret, path, dest, progress, **kwargs)

    monkeypatch.setattr(remote_module, "fetch_sftp", sftp)
    made = settings(tmp_path, {"NAS_NODES": nodes})
    mount = resolve_data("d", {"d": {"nas": {"path": "/d"}}}, made)
    assert calls == ["h1", "h2"] and mount.source == "u@h2:2222:/d"
    (args, _), = fake_sftp.calls  # fmt: skip
    assert args[3] == tmp_path / "id_key"  # a key file, relative to the tree
    again = resolve_data("d", {"d": {"nas": {"path": "/d"}}}, made)
    assert calls == ["h1", "h2"] and not again.fetched  # h2's copy, h2 asked first


# ---- what the records and reports say ----


def test_data_facts_reach_perf_csv_and_junit_and_cross_xdist() -> None:
    fetched = DataFacts("d", "minio", "s3://b/d", 1153434, 1.23456, fetched=True)
    record = TestRecord("m", Status.SUCCESS, ModelFacts("m", 1, dataname="d",
                        data_provider="minio"), rows=(ResultRow("m", Status.SUCCESS, 1.0, "x"),),
                        data=fetched)  # fmt: skip
    assert TestRecord.from_dict(record.to_dict()) == record
    (row,) = perf_rows(record, machine="here")
    assert (row["dataname"], row["data_provider_type"], row["data_size"],
            row["data_download_duration"]) == ("d", "minio", "1.2M", "1.235")  # fmt: skip
    properties = dict(record.junit_properties())
    assert properties["data_size"] == "1153434" and properties["data_fetched"] == "true"
    cached = dataclasses.replace(record, data=DataFacts("d", "minio", "s3://b/d", 10, 0.0))
    assert perf_rows(cached, machine="h")[0]["data_download_duration"] == "0.000"
    missing = DataFacts("d", problem="data 'd': no provider serves it (x)")
    properties = dict(TestRecord("m", Status.SUCCESS, ModelFacts("m", 1),
                                 data=missing).junit_properties())  # fmt: skip
    assert properties["data_problem"] == missing.problem and properties["data_provider"] == ""


@pytest.mark.parametrize(
    ("size", "shown"),
    [(None, ""), (0, "0"), (1023, "1023"), (1024, "1.0K"), (1025, "1.1K"), (524288, "512K"),
     (1048577, "1.1M"), (10 << 20, "10M"), (20 << 30, "20G")],
)  # fmt: skip
def test_sizes_as_du_writes_them(size: int | None, shown: str) -> None:
    assert human_size(size) == shown


# ---- a dataset as a tar stream, for a volume on another host ----


def test_tar_stream_carries_the_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"a" * 3_000_000)
    (tmp_path / "top.txt").write_text("top")
    data = b"".join(tar_stream(tmp_path))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = sorted(tar.getnames())
        content = tar.extractfile("sub/a.bin").read()  # type: ignore[union-attr]
    assert names == ["sub", "sub/a.bin", "top.txt"] and content == b"a" * 3_000_000
    # A copy that fails midway drops the stream: its writer thread ends with it.
    stream = tar_stream(tmp_path)
    next(stream)
    stream.close()
    deadline = time.monotonic() + 5
    while any(t.name == "mad-data-tar" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the tar writer outlived its reader"
        time.sleep(0.05)


# ---- options ----


def test_force_mirror_local_is_made_and_checked_before_any_test(tmp_path: Path) -> None:
    from pytest_madengine.core.options import RawOptions, parse_options
    from pytest_madengine.errors import UsageProblem
    from tests.conftest import entry, write_tree

    root = write_tree(tmp_path / "mad", [entry("alpha")])

    def parse(mirror: str | None, environ: dict[str, str]):
        raw = RawOptions(root=str(root), tags=("alpha",), base_dir=tmp_path,
                         force_mirror_local=mirror, environ=environ)  # fmt: skip
        return parse_options(raw)

    options = parse("mirror/deep", {"HOME": str(tmp_path / "home")})
    assert options.force_mirror_local == tmp_path / "mirror" / "deep"
    assert options.force_mirror_local.is_dir()
    assert options.data_cache == tmp_path / "home" / ".cache" / "pytest-madengine" / "data"
    assert parse(None, {"XDG_CACHE_HOME": "/xdg"}).data_cache == Path("/xdg/pytest-madengine/data")
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageProblem, match=r"--mad-force-mirror-local .*file: exists and is not"):
        parse("file", {})
