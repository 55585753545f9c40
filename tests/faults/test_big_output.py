"""A model that prints a lot (issue 20, item 11: 500 MB of lines took 128 s for an 8 s
container): its output is read in the blocks it wrote, not a piece per line, and
reaches the log whole, in order and masked."""

from __future__ import annotations

import uuid
from pathlib import Path

import docker
import pytest

from pytest_madengine.backends import SESSION_LABEL, RunSpec
from pytest_madengine.backends.docker.containers import ContainerRun
from tests.conftest import BUSYBOX_BASE

pytestmark = pytest.mark.docker
LINES = 20_000


def test_many_lines_reach_the_log_in_blocks_whole_in_order_and_masked(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    # Numbered lines, and a secret split over two writes of the model.
    command = ("sh", "-c", f"seq 1 {LINES}; printf 'the s3cr'; sleep 0.2; echo 'et-value ends'")
    spec = RunSpec(
        image=BUSYBOX_BASE, command=command, workdir="/",
        log_path=tmp_path / "logs" / "t.log",
        labels={SESSION_LABEL: f"h3-{uuid.uuid4().hex[:8]}"},
        secrets=("s3cret-value",),
    )  # fmt: skip
    pieces: list[bytes] = []
    outcome = ContainerRun(docker_client, spec, "local", on_output=pieces.append).wait()
    assert outcome.exit_code == 0
    expected = "".join(f"{n}\n" for n in range(1, LINES + 1)) + "the *** ends\n"
    assert outcome.log_path.read_text() == expected
    assert b"".join(pieces).decode() == expected
    # Handed on as the model wrote it (seq writes 4 KiB blocks), not one piece a line.
    assert len(pieces) < LINES / 20, f"{len(pieces)} pieces for {LINES} lines"
