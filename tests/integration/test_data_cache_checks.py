"""A cached dataset is checked before each use, against the real data servers of
`scripts/bootstrap data`: served only while whole and still what the server lists,
fetched again (with a line saying why) otherwise. Each test has a dataset of its own on
the server (a unique S3 prefix, a unique NAS directory), removed afterwards."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_madengine.credentials import Credentials
from pytest_madengine.data import DataMissing, DataMount, DataSettings, resolve_data
from tests.conftest import CREDENTIALS, DATA_DIR, SAMPLE, DataServers
from tests.e2e.test_data import s3_client

NAS_ROOT = DATA_DIR / "nas"  # the NAS account's chroot: "/x" there is NAS_ROOT/x here


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@dataclass(frozen=True)
class ServerDataset:
    """A copy of the sample dataset on one server, this test's alone."""

    provider: str  # minio or nas
    path: str  # the data.json source's path
    put: Callable[[str, bytes], None]  # writes a file of the dataset on the server


@pytest.fixture
def s3_dataset(data_servers: DataServers) -> Iterator[ServerDataset]:
    client, prefix = s3_client(data_servers), f"cache-check-{uuid.uuid4().hex[:12]}"

    def put(name: str, body: bytes) -> None:
        client.put_object(Bucket="mad-data", Key=f"{prefix}/{name}", Body=body)

    for name, body in files_of(SAMPLE).items():
        put(name, body)
    yield ServerDataset("minio", f"s3://mad-data/{prefix}", put)
    listed = client.list_objects_v2(Bucket="mad-data", Prefix=f"{prefix}/").get("Contents", [])
    for item in listed:
        client.delete_object(Bucket="mad-data", Key=item["Key"])


@pytest.fixture
def nas_dataset(data_servers: DataServers) -> Iterator[ServerDataset]:
    name = f"cache-check-{uuid.uuid4().hex[:12]}"
    here = NAS_ROOT / name
    shutil.copytree(SAMPLE, here)

    def put(relative: str, body: bytes) -> None:
        path = here / relative
        mtime = path.stat().st_mtime if path.exists() else time.time()
        path.write_bytes(body)
        # The NAS tells versions by size and mtime in whole seconds: a write within the
        # second of the fetch would pass unseen. A later write moves the mtime, so here.
        os.utime(path, (mtime + 10, mtime + 10))

    yield ServerDataset("nas", f"/{name}", put)
    shutil.rmtree(here)


@pytest.fixture(params=["minio", "nas"])
def dataset(request: pytest.FixtureRequest) -> ServerDataset:
    return request.getfixturevalue({"minio": "s3_dataset", "nas": "nas_dataset"}[request.param])


def mount(dataset: ServerDataset, cache: Path, **login_changes: str) -> DataMount:
    """The dataset as a model's data, with the bootstrap's logins (some changed)."""
    entries = json.loads(CREDENTIALS.read_text())
    entries["MAD_MINIO"].update(login_changes)
    settings = DataSettings(Credentials(entries), cache.parent, cache)
    return resolve_data("d", {"d": {dataset.provider: {"path": dataset.path}}}, settings)


def copy_of(served: DataMount) -> Path:
    return Path(served.binds[0].source)


def test_a_truncated_file_is_fetched_again(dataset: ServerDataset, tmp_path: Path) -> None:
    first = mount(dataset, tmp_path / "cache")
    weights = copy_of(first) / "weights.bin"
    size = weights.stat().st_size
    with weights.open("r+b") as handle:
        handle.truncate(100)
    again = mount(dataset, tmp_path / "cache")
    assert files_of(copy_of(again)) == files_of(SAMPLE)
    assert again.fetched and again.notes == (
        f"the cached copy was repaired: weights.bin has 100 of its {size} bytes",
    )


def test_an_emptied_copy_is_fetched_again(dataset: ServerDataset, tmp_path: Path) -> None:
    copy = copy_of(mount(dataset, tmp_path / "cache"))
    for child in list(copy.iterdir()):
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    again = mount(dataset, tmp_path / "cache")
    assert files_of(copy_of(again)) == files_of(SAMPLE)
    assert again.fetched and again.notes == (
        "the cached copy was repaired: 4 files missing (README.txt, labels/classes.txt,"
        " labels/train.csv and 1 more)",
    )


def test_a_copy_replaced_by_a_file_is_fetched_again(
    s3_dataset: ServerDataset, tmp_path: Path
) -> None:
    copy = copy_of(mount(s3_dataset, tmp_path / "cache"))
    shutil.rmtree(copy)
    copy.write_text("not a dataset")
    again = mount(s3_dataset, tmp_path / "cache")
    assert copy_of(again) == copy and files_of(copy) == files_of(SAMPLE)
    assert again.fetched and again.notes == (
        "the cached copy was repaired: its directory had been replaced by a file",
    )


def test_a_dataset_changed_on_the_server_is_fetched_again(
    dataset: ServerDataset, tmp_path: Path
) -> None:
    first = mount(dataset, tmp_path / "cache")
    old = (SAMPLE / "labels" / "classes.txt").read_bytes()
    new = bytes(reversed(old))  # the same size: only the server's version tells
    assert new != old
    dataset.put("labels/classes.txt", new)
    dataset.put("extra.txt", b"added later\n")
    again = mount(dataset, tmp_path / "cache")
    assert files_of(copy_of(again)) == {
        **files_of(SAMPLE), "labels/classes.txt": new, "extra.txt": b"added later\n"
    }  # fmt: skip
    assert again.fetched and copy_of(again) == copy_of(first)
    (note,) = again.notes
    assert note.startswith("the cached copy was refreshed: changed on the server since it was")
    assert note.endswith(": 1 changed (labels/classes.txt), 1 new (extra.txt)")
    # Unchanged since: served as it is.
    third = mount(dataset, tmp_path / "cache")
    assert not third.fetched and third.notes == ()


def test_a_sound_copy_is_served_when_the_server_cannot_be_asked(
    s3_dataset: ServerDataset, tmp_path: Path
) -> None:
    mount(s3_dataset, tmp_path / "cache")
    # The login is not part of the dataset's key: the same copy, a server that refuses.
    served = mount(s3_dataset, tmp_path / "cache", PASSWORD="not-the-secret-key")
    assert not served.fetched and files_of(copy_of(served)) == files_of(SAMPLE)
    (note,) = served.notes
    assert note.startswith(
        "not checked against the server (login refused: wrong secret key"
        " (SignatureDoesNotMatch, HTTP 403)): serving the copy fetched 20"
    )


def test_a_damaged_copy_is_never_served_when_the_server_cannot_be_asked(
    s3_dataset: ServerDataset, tmp_path: Path
) -> None:
    copy = copy_of(mount(s3_dataset, tmp_path / "cache"))
    (copy / "README.txt").unlink()
    with pytest.raises(DataMissing, match="login refused: wrong secret key"):
        mount(s3_dataset, tmp_path / "cache", PASSWORD="not-the-secret-key")


def test_links_on_the_nas_that_lead_nowhere_are_named_and_skipped(
    nas_dataset: ServerDataset, tmp_path: Path
) -> None:
    here = NAS_ROOT / nas_dataset.path.lstrip("/")
    (here / "labels" / "dangling").symlink_to("no-such-file")
    (here / "loop-a").symlink_to("loop-b")
    (here / "loop-b").symlink_to("loop-a")
    (here / "same.txt").symlink_to("README.txt")  # a sound link is followed
    served = mount(nas_dataset, tmp_path / "cache")
    want = {**files_of(SAMPLE), "same.txt": (SAMPLE / "README.txt").read_bytes()}
    assert files_of(copy_of(served)) == want
    skipped = (
        "skipped labels/dangling: a link to nothing (no-such-file)",
        "skipped loop-a: a loop of links (loop-b)",
        "skipped loop-b: a loop of links (loop-a)",
    )
    assert served.notes == skipped
    # Said again each time the copy is served.
    again = mount(nas_dataset, tmp_path / "cache")
    assert not again.fetched and again.notes == skipped


def test_a_link_on_the_nas_back_to_a_directory_above_is_named_and_skipped(
    nas_dataset: ServerDataset, tmp_path: Path
) -> None:
    here = NAS_ROOT / nas_dataset.path.lstrip("/")
    (here / "labels" / "up").symlink_to("..")
    (here / "labels-too").symlink_to("labels")  # a sound link to a directory is followed
    served = mount(nas_dataset, tmp_path / "cache")
    labels = {f"labels-too/{name}": body for name, body in files_of(SAMPLE / "labels").items()}
    assert files_of(copy_of(served)) == {**files_of(SAMPLE), **labels}
    assert served.notes == (
        f"skipped labels-too/up: a link back to a directory that holds it ({nas_dataset.path}),"
        " a loop",
        f"skipped labels/up: a link back to a directory that holds it ({nas_dataset.path}), a loop",
    )
