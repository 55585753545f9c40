"""Reading an input file (models.json, the context, hosts.yml, credential.json): what a
path that is no plain file gives, without ever waiting on it for good."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from pytest_madengine import errors
from pytest_madengine.errors import MadError, read_text


def test_a_fifo_that_nobody_writes_to_reads_as_empty_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "context.json"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert read_text(fifo) == ""
    assert time.monotonic() - started < 5


def test_a_pipe_is_read_once_its_writer_has_written(tmp_path: Path) -> None:
    # What `--mad-context-file <(make-context)` hands over: a pipe whose writer is slow.
    reading, writing = os.pipe()

    def write_late() -> None:
        time.sleep(0.3)
        os.write(writing, b'{"gpu_vendor": "AMD"}')
        os.close(writing)

    writer = threading.Thread(target=write_late)
    writer.start()
    try:
        assert read_text(Path(f"/proc/self/fd/{reading}")) == '{"gpu_vendor": "AMD"}'
    finally:
        writer.join()
        os.close(reading)


def test_a_silent_pipe_is_given_up_after_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "PIPE_SILENCE_S", 0.2)
    reading, writing = os.pipe()
    try:
        said = r"--mad-context-file /proc/self/fd/\d+: nothing came for"
        with pytest.raises(MadError, match=said):
            read_text(Path(f"/proc/self/fd/{reading}"), "--mad-context-file")
    finally:
        os.close(reading)
        os.close(writing)


def test_an_endless_device_is_refused_past_the_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "MAX_INPUT_BYTES", 1 << 20)
    with pytest.raises(MadError, match=r"^/dev/zero: larger than 1 MiB$"):
        read_text(Path("/dev/zero"))


def test_a_file_past_the_size_limit_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(errors, "MAX_INPUT_BYTES", 1 << 20)
    huge = tmp_path / "models.json"
    with huge.open("wb") as sparse:
        sparse.truncate(1 << 40)  # a terabyte of nothing: read, it would never end
    with pytest.raises(MadError, match=r"models.json: larger than 1 MiB$"):
        read_text(huge)


def test_a_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MadError, match=r"--mad-hosts .*: is a directory$"):
        read_text(tmp_path, "--mad-hosts")
