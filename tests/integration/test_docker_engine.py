"""Images and containers on the real Docker Engine (started by scripts/bootstrap)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
import uuid
from pathlib import Path

import pytest

from pytest_madengine.backends import SESSION_LABEL, Device, ImageRequest, RunSpec
from pytest_madengine.backends.docker.containers import ContainerRun, remove_session
from pytest_madengine.backends.docker.images import (
    CONTENT_HASH_LABEL,
    ImageBuilder,
    content_hash,
)
from pytest_madengine.errors import MadError
from pytest_madengine.resources.once import Once
from tests.conftest import BUSYBOX_BASE, TEST_IMAGE_LABEL_LINE

pytestmark = pytest.mark.docker


@pytest.fixture
def image_name(docker_client):
    name = f"ci-test-{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(Exception):
        docker_client.images.remove(name, force=True)


@pytest.fixture
def context_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "docker"
    directory.mkdir()
    # Unique content: an image built from the same content earlier would be reused.
    (directory / "t.Dockerfile").write_text(
        f"ARG BASE_DOCKER={BUSYBOX_BASE}\nFROM $BASE_DOCKER\nRUN echo built > /built.txt\n"
        f"{TEST_IMAGE_LABEL_LINE}\n# {uuid.uuid4().hex}\n"
    )
    return directory


def builder(client, tmp_path: Path, lock: str = "locks", no_cache: bool = False) -> ImageBuilder:
    """A builder as one process of a session sees it; `lock` names the session."""
    return ImageBuilder(client, tmp_path / "builds", Once(tmp_path / lock), no_cache)


def test_build_once_then_reuse_by_content(docker_client, tmp_path, context_dir, image_name):
    spec = ImageRequest(image_name, context_dir / "t.Dockerfile", context_dir)
    first = builder(docker_client, tmp_path).ensure(spec)
    assert first.built and first.log_path and "built" in Path(first.log_path).read_text()
    labels = docker_client.images.get(image_name).labels
    assert labels[CONTENT_HASH_LABEL] == content_hash(spec)
    # A later session (a new builder, new lock dir) finds the same content and builds nothing.
    again = builder(docker_client, tmp_path, "locks2").ensure(spec)
    assert not again.built and again.docker_sha == first.docker_sha
    assert first.base_docker == BUSYBOX_BASE


def test_changed_context_or_build_args_rebuild(docker_client, tmp_path, context_dir, image_name):
    spec = ImageRequest(image_name, context_dir / "t.Dockerfile", context_dir)
    first = builder(docker_client, tmp_path).ensure(spec)
    (context_dir / "extra.txt").write_text("new file in the build context")
    second = builder(docker_client, tmp_path, "l2").ensure(spec)
    assert second.built and second.docker_sha != first.docker_sha
    with_args = ImageRequest(spec.name, spec.dockerfile, context_dir, {"BASE_DOCKER": BUSYBOX_BASE})
    assert builder(docker_client, tmp_path, "l3").ensure(with_args).built


def test_failed_build_reports_tail_and_is_not_retried(docker_client, tmp_path, image_name):
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "b.Dockerfile").write_text(
        f"FROM {BUSYBOX_BASE}\nRUN echo step-output && exit 3\n"
    )
    spec = ImageRequest(image_name, directory / "b.Dockerfile", directory)
    with pytest.raises(MadError) as caught:
        builder(docker_client, tmp_path).ensure(spec)
    reason, _, tail = str(caught.value).partition("\n")
    assert reason.startswith(f"image {image_name} failed to build: The command")
    assert "returned a non-zero code: 3" in reason and "step-output" in tail
    # Another worker of the same session fails at once from the note, without building.
    with pytest.raises(MadError, match="failed to build"):
        builder(docker_client, tmp_path).ensure(spec)


# Session names below are this run's own: a container left by a run that was killed
# (its engine stopped under it) must not count against a later run's test.
THIS_RUN = uuid.uuid4().hex[:8]


def _spec(tmp_path: Path, command: tuple[str, ...], **kw) -> RunSpec:
    session = kw.pop("session", "s")
    return RunSpec(
        image=BUSYBOX_BASE,
        command=command,
        workdir="/myworkspace/job",
        log_path=tmp_path / "logs" / "t.log",
        labels={SESSION_LABEL: f"{session}-{THIS_RUN}"},
        **kw,
    )


def _ours(client, session: str) -> list:
    label = f"{SESSION_LABEL}={session}-{THIS_RUN}"
    return client.containers.list(all=True, filters={"label": label})


def test_run_streams_log_copies_scripts_and_reads_results(docker_client, tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (job / "run.sh").write_text("echo from-script $MAD_X; echo 'a,b' > out.csv\n")
    spec = _spec(
        tmp_path, ("sh", "run.sh"), session="s-run", env={"MAD_X": "42"},
        copies=((job, "/myworkspace/job"),), result_files=("/myworkspace/job/out.csv",),
    )  # fmt: skip
    outcome = ContainerRun(docker_client, spec, "here").wait()
    assert (outcome.exit_code, outcome.timed_out, outcome.host) == (0, False, "here")
    assert outcome.log_path.read_text() == "from-script 42\n"
    assert outcome.results == {"/myworkspace/job/out.csv": "a,b\n"}
    assert not list(job.glob("out.csv"))  # nothing written into the user's tree
    assert _ours(docker_client, "s-run") == []


def test_crash_gives_exit_code_and_missing_result_is_none(docker_client, tmp_path):
    spec = _spec(tmp_path, ("sh", "-c", "echo boom >&2; exit 7"), result_files=("/nope.csv",))
    outcome = ContainerRun(docker_client, spec, "local").wait()
    assert outcome.exit_code == 7 and outcome.results == {"/nope.csv": None}
    assert "boom" in outcome.log_path.read_text()


def test_timeout_kills_and_removes_the_container(docker_client, tmp_path):
    spec = _spec(tmp_path, ("sh", "-c", "echo started; sleep 60"), session="s-to", timeout_s=1.5)
    start = time.monotonic()
    outcome = ContainerRun(docker_client, spec, "local").wait()
    assert outcome.timed_out and outcome.exit_code is None
    assert time.monotonic() - start < 20
    assert "started" in outcome.log_path.read_text()
    assert _ours(docker_client, "s-to") == []


def test_fake_amd_device_nodes_reach_the_container(docker_client, tmp_path):
    devices = tmp_path / "dev"
    (devices / "dri").mkdir(parents=True)
    for name in ("kfd", "dri/renderD128"):
        os.mknod(devices / name, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    spec = _spec(
        tmp_path, ("sh", "-c", "ls /dev/kfd /dev/dri/renderD128 && id -G"),
        devices=(Device(str(devices / "kfd"), "/dev/kfd"),
                 Device(str(devices / "dri/renderD128"), "/dev/dri/renderD128")),
        group_add=("video",),
    )  # fmt: skip
    outcome = ContainerRun(docker_client, spec, "local").wait()
    log = outcome.log_path.read_text()
    assert outcome.exit_code == 0, log
    assert "/dev/kfd" in log and "/dev/dri/renderD128" in log and "44" in log.split()


def test_remove_session_removes_leftovers(docker_client):
    session = f"s-{uuid.uuid4().hex[:8]}"
    docker_client.containers.create(BUSYBOX_BASE, ["sleep", "30"], labels={SESSION_LABEL: session})
    assert remove_session(docker_client, session) == 1
    assert (
        docker_client.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={session}"})
        == []
    )


def test_clean_cache_rebuilds_once_per_session(docker_client, tmp_path, context_dir, image_name):
    spec = ImageRequest(image_name, context_dir / "t.Dockerfile", context_dir)
    assert builder(docker_client, tmp_path, "first").ensure(spec).built
    rebuilt = builder(docker_client, tmp_path, "second", no_cache=True).ensure(spec)
    assert rebuilt.built and "Using cache" not in Path(rebuilt.log_path).read_text()
    # Another worker of that session (same lock dir) reuses the fresh build.
    assert not builder(docker_client, tmp_path, "second", no_cache=True).ensure(spec).built


def test_a_bound_workspace_gives_what_the_archive_gives_and_follows_no_link(
    docker_client, tmp_path
):
    job = tmp_path / "job"
    job.mkdir()
    (job / "run.sh").write_text(
        "echo 'a,b' > out.csv; mkdir sub; echo new > sub/made.txt; mkfifo pipe;"
        " ln -s /etc/hostname link.csv; ln -s /etc sub/etc\n"
    )
    outcomes = {}
    for bound in (False, True):
        collect = tmp_path / f"back-{bound}"
        collect.mkdir()
        spec = _spec(
            tmp_path, ("sh", "run.sh"), session=f"s-bound-{bound}",
            copies=((job, "/myworkspace/job"),), collect_to=collect,
            result_files=("/myworkspace/job/out.csv", "/myworkspace/job/link.csv"),
        )  # fmt: skip
        workspace = tmp_path / "bound" if bound else None
        outcomes[bound] = ContainerRun(docker_client, spec, "here", workspace_dir=workspace).wait()
        back = sorted(str(p.relative_to(collect)) for p in collect.rglob("*"))
        assert back == ["out.csv", "run.sh", "sub", "sub/made.txt"], back
        assert _ours(docker_client, f"s-bound-{bound}") == []
    assert outcomes[True].results == outcomes[False].results == {
        "/myworkspace/job/out.csv": "a,b\n", "/myworkspace/job/link.csv": None,
    }  # fmt: skip
    assert not (tmp_path / "bound").exists()  # removed with the run


def test_an_engine_that_cannot_see_the_workspace_says_so_for_the_archive_way(
    docker_client, tmp_path, monkeypatch
):
    """As a daemon with another file system (a snap's, a VM's) would: the directory to
    bind is not there for it. The backend then sends the workspace as an archive."""
    from pytest_madengine.backends.docker import containers

    def filled_elsewhere(copies, excludes, root, workdir, within=None):
        shutil.rmtree(root)
        return ()

    monkeypatch.setattr(containers, "fill_workspace", filled_elsewhere)
    spec = _spec(tmp_path, ("true",), session="s-unseen")
    with pytest.raises(containers.WorkspaceNotShared):
        ContainerRun(docker_client, spec, "here", workspace_dir=tmp_path / "unseen")
    assert _ours(docker_client, "s-unseen") == []
