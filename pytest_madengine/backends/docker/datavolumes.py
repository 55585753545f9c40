"""Fetched datasets on Docker hosts other than this machine: copied once per host into a
named volume, which later tests and sessions mount read-only.

The data is fetched once, here (the cache of `pytest_madengine.data`), and streamed as
a tar into a volume of the host through a container that is created, never started.
The host needs no credentials, no network route to the data's server and nothing
installed; a dataset goes over the wire once per host, however many tests use it.

A volume is named by the dataset's content key, and only a complete one is ever used:
the copy goes into a volume of its own (`mad-data-<key>-<random>`), and when it is
whole a second, empty volume `mad-data-<key>` is created whose label names it. Docker
creates a name once and hands back the first one, so two sessions that copy at the
same time agree on the first, and the other removes its copy. A cut copy is removed;
one whose process was killed stays, labelled, until `docker volume prune`.
"""

from __future__ import annotations

import contextlib
import queue
import tarfile
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors

from pytest_madengine.backends import LABEL_PREFIX, DataBind

DATA_LABEL = f"{LABEL_PREFIX}.data"  # the content key, on both volumes
COPY_LABEL = f"{LABEL_PREFIX}.data-volume"  # on the name volume: the complete copy
NAME_PREFIX = "mad-data-"
FILL_DIR = "/mad-data-fill"  # where the copying container has the volume
CHUNK = 1 << 20


class _Abandoned(Exception):
    """The reader of the tar went away (the copy failed)."""


class _QueueWriter:
    """A file object for tarfile that hands what it is given to a bounded queue."""

    def __init__(self, chunks: queue.Queue[bytes | BaseException | None],
                 stop: threading.Event) -> None:  # fmt: skip
        self.chunks = chunks
        self.stop = stop

    def put(self, item: bytes | BaseException | None) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(queue.Full):
                self.chunks.put(item, timeout=0.5)
                return
        raise _Abandoned

    def write(self, data: bytes) -> int:
        self.put(bytes(data))
        return len(data)


def tar_stream(directory: Path) -> Iterator[bytes]:
    """A tar of the directory's content, made as it is read (datasets outgrow memory)."""
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=16)
    stop = threading.Event()

    sink = _QueueWriter(chunks, stop)

    def write() -> None:
        try:
            # A stream ("w|") only writes; typeshed's file protocol asks for read and seek too.
            with tarfile.open(fileobj=sink, mode="w|", bufsize=CHUNK) as tar:  # type: ignore[call-overload]
                for path in sorted(directory.rglob("*")):
                    tar.add(str(path), arcname=path.relative_to(directory).as_posix(),
                            recursive=False)  # fmt: skip
            sink.put(None)
        except _Abandoned:
            pass
        except BaseException as exc:  # handed to the reader, which raises it
            with contextlib.suppress(_Abandoned):
                sink.put(exc)

    writer = threading.Thread(target=write, daemon=True, name="mad-data-tar")
    writer.start()
    try:
        while True:
            chunk = chunks.get()
            if chunk is None:
                return
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk
    finally:
        stop.set()  # the writer ends, whether or not all was read


def _complete_copy(client: docker.DockerClient, name: str) -> str | None:
    """The volume the name volume points at, when both are there."""
    try:
        named = client.volumes.get(name)
    except docker.errors.NotFound:
        return None
    copy = (named.attrs.get("Labels") or {}).get(COPY_LABEL)
    if copy:
        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(copy)
            return str(copy)
    with contextlib.suppress(docker.errors.APIError):  # its copy is gone: made again
        named.remove()
    return None


def data_volume(
    client: docker.DockerClient, bind: DataBind, image: str, labels: Mapping[str, str]
) -> tuple[str, bool]:
    """(the volume holding the data of `bind` on the engine, whether it was copied
    now). `image` is any image on the engine: its container is only created, with
    `labels` (the session's, so that a sweep removes one a killed process left)."""
    assert bind.content_key is not None
    name = f"{NAME_PREFIX}{bind.content_key}"
    found = _complete_copy(client, name)
    if found is not None:
        return found, False
    volume_labels = {DATA_LABEL: bind.content_key}
    copy_name = f"{name}-{uuid.uuid4().hex[:8]}"
    copy = client.volumes.create(copy_name, labels=volume_labels)
    try:
        helper: Any = client.containers.create(
            image, command=["true"], volumes=[f"{copy_name}:{FILL_DIR}"],
            labels=dict(labels), network_disabled=True,
        )  # fmt: skip
        try:
            helper.put_archive(FILL_DIR, tar_stream(Path(bind.source)))
        finally:
            with contextlib.suppress(docker.errors.APIError):
                helper.remove(force=True)
        named = client.volumes.create(name, labels={**volume_labels, COPY_LABEL: copy_name})
        winner = (named.attrs.get("Labels") or {}).get(COPY_LABEL)
    except BaseException:
        with contextlib.suppress(docker.errors.APIError):
            copy.remove(force=True)
        raise
    if winner != copy_name:  # another session's copy was whole first
        with contextlib.suppress(docker.errors.APIError):
            copy.remove(force=True)
        return str(winner), False
    return copy_name, True
