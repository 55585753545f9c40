"""Real jobs on the Slurm cluster of `scripts/bootstrap slurm` (three nodes, 4 fake GPUs
each): GRES, the container-removing Epilog, and SlurmCluster's submit, poll and wait."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.backends.slurm import SlurmCluster, SlurmJobSpec, write_script
from pytest_madengine.backends.slurm.watcher import JobWatch, JobWatcher
from pytest_madengine.errors import MadError
from tests.conftest import BUSYBOX_BASE, sinfo_nodes

pytestmark = pytest.mark.slurm


@pytest.fixture
def cluster(slurm) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(command_timeout_s=30)
    submitted: list[str] = []
    original = cluster.submit

    def submit(script: Path) -> str:
        submitted.append(original(script))
        return submitted[-1]

    cluster.submit = submit  # type: ignore[method-assign]
    yield cluster
    # Whatever a test left queued or running goes (a job that ended is no error).
    cluster.cancel(submitted)


def job(tmp_path: Path, name: str, command: list[str], **fields: Any) -> Path:
    spec = SlurmJobSpec(
        job_name=f"pytest-{name}",
        command=tuple(command),
        output=str(tmp_path / "%j.out"),
        workdir=str(tmp_path),
        **fields,
    )
    return write_script(spec, tmp_path / f"{name}.sh")


def output(tmp_path: Path, job_id: str) -> str:
    return (tmp_path / f"{job_id}.out").read_text()


# A time limit is counted in whole minutes and checked by slurmctld every 30 s or so: the
# job takes 60-90 s to time out. It is submitted before the first test of this module and
# checked by the last, so that the wait overlaps the other tests.
@pytest.fixture(scope="module", autouse=True)
def timeout_job(slurm, tmp_path_factory) -> Iterator[tuple[SlurmCluster, str]]:
    directory = tmp_path_factory.mktemp("slurm-timeout")
    cluster = SlurmCluster()
    job_id = cluster.submit(
        job(directory, "timeout", ["sleep", "600"], partition=slurm["partition"], time_limit_s=5)
    )
    yield cluster, job_id
    cluster.cancel([job_id])


def test_three_nodes_up_with_four_gpus_each(slurm) -> None:
    nodes = sinfo_nodes(slurm["partition"])
    assert sorted(nodes) == ["n1", "n2", "n3"] == slurm["nodes"]
    for name, (state, gres) in nodes.items():
        # Idle, or mixed: this module's time-limit job holds one CPU of a node.
        assert state in {"idle", "mixed"}, f"{name} is {state}"
        assert gres == f"gpu:{slurm['gpus_per_node']}", f"{name} has {gres}"


def test_gres_gives_the_job_its_gpu_ids(slurm, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--gres=gpu:2",
            f"--partition={slurm['partition']}",
            "--output=%j.out",
            "--parsable",
            "--wrap",
            "echo CVD=$CUDA_VISIBLE_DEVICES",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().split(";")[0]
    ids = output(tmp_path, job_id).strip().removeprefix("CVD=").split(",")
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(0 <= int(i) < slurm["gpus_per_node"] for i in ids)


def test_three_jobs_polled_together_one_squeue_a_round(slurm, cluster, tmp_path: Path) -> None:
    """The backend's JobWatcher, on its own thread, as a session drives it: every round
    asks about every outstanding job with one squeue call."""
    # All the GPUs of a node each: the three run side by side, one on every node.
    scripts = [
        job(
            tmp_path,
            f"poll{i}",
            ["sh", "-c", f"echo job {i} on $SLURMD_NODENAME; sleep 1"],
            partition=slurm["partition"],
            gpus_per_node=slurm["gpus_per_node"],
        )
        for i in range(3)
    ]
    watcher = JobWatcher(cluster, pending_timeout_s=30)
    rounds: list[tuple[list[str], list[str]]] = []  # (asked about, outstanding) each round
    watches: list[JobWatch] = []
    poll = cluster.poll

    def recorded_poll(job_ids):
        outstanding = sorted(w.job_id for w in watches if not w.done.is_set())
        rounds.append((sorted(job_ids), outstanding))
        return poll(job_ids)

    cluster.poll = recorded_poll  # type: ignore[method-assign]
    start = time.monotonic()
    job_ids = [cluster.submit(script) for script in scripts]
    try:
        watches.extend(watcher.watch(job_id) for job_id in job_ids)
        for watch in watches:
            assert watch.done.wait(60), f"job {watch.job_id} still outstanding: {watch.state}"
    finally:
        watcher.close()
    elapsed = time.monotonic() - start
    assert not any(watch.stuck or watch.error for watch in watches)
    states = [watch.state for watch in watches]
    assert all(state and state.succeeded for state in states), states
    assert sorted(state.node_list for state in states) == ["n1", "n2", "n3"]  # type: ignore[union-attr]
    for i, (job_id, state) in enumerate(zip(job_ids, states, strict=True)):
        assert state is not None
        assert output(tmp_path, job_id) == f"job {i} on {state.node_list}\n"
        assert state.submit_time and state.start_time and state.end_time
        assert state.submit_time <= state.start_time <= state.end_time
    # The three were watched before the first round: it asked about all of them at once.
    assert rounds[0][0] == sorted(job_ids), rounds
    assert all(asked == outstanding for asked, outstanding in rounds), rounds
    assert cluster.calls["squeue"] == len(rounds) == watcher.rounds
    assert cluster.calls["scontrol"] <= len(rounds)
    print(
        f"3 jobs submit-to-end {elapsed:.1f} s, {len(rounds)} polls, "
        f"{cluster.calls['squeue'] / 3:.1f} squeue calls a job"
    )


def test_more_gpus_than_a_node_has_are_refused(slurm, cluster, tmp_path: Path) -> None:
    script = job(tmp_path, "nine", ["true"], partition=slurm["partition"], gpus_per_node=9)
    with pytest.raises(MadError, match="Requested node configuration is not available"):
        cluster.submit(script)


def test_waiter_reports_a_pending_reason_that_cannot_clear(slurm, cluster, tmp_path: Path) -> None:
    failing = cluster.submit(job(tmp_path, "fails", ["false"], partition=slurm["partition"]))
    assert cluster.wait([failing], timeout_s=30).states[failing].state == "FAILED"
    dependent = cluster.submit(
        job(
            tmp_path,
            "never",
            ["true"],
            partition=slurm["partition"],
            extra_sbatch=(f"--dependency=afterok:{failing}",),
        )
    )
    result = cluster.wait([dependent], stuck_grace_s=1, timeout_s=30)
    assert list(result.stuck) == [dependent]
    assert "DependencyNeverSatisfied" in result.stuck[dependent]
    assert result.states[dependent].pending
    cluster.cancel([dependent])
    final = cluster.wait([dependent], timeout_s=30).states[dependent]
    assert final.state == "CANCELLED"


def test_cancelled_job_leaves_no_container(slurm, cluster, docker_client, tmp_path) -> None:
    label = slurm["docker_job_label"]
    script = job(
        tmp_path,
        "container",
        [
            "sh",
            "-c",
            f'exec docker run --rm --label "{label}=$SLURM_JOB_ID" {BUSYBOX_BASE} sleep 300',
        ],
        partition=slurm["partition"],
        env={"DOCKER_HOST": "unix:///var/run/docker.sock"},
    )
    job_id = cluster.submit(script)
    try:
        deadline = time.monotonic() + 30
        while not docker_client.containers.list(filters={"label": f"{label}={job_id}"}):
            assert time.monotonic() < deadline, f"no container of job {job_id} after 30 s"
            state = cluster.poll([job_id])[job_id]
            assert not state.finished, f"{state}: {output(tmp_path, job_id)}"
            time.sleep(0.2)
        cluster.cancel([job_id])
        # The job leaves the queue once its Epilog has run.
        state = cluster.wait([job_id], timeout_s=60).states[job_id]
        assert state.state == "CANCELLED"
        assert docker_client.containers.list(all=True, filters={"label": f"{label}={job_id}"}) == []
    finally:
        for container in docker_client.containers.list(
            all=True, filters={"label": f"{label}={job_id}"}
        ):
            with contextlib.suppress(Exception):
                container.remove(force=True)


def test_time_limit_ends_the_job_as_timeout(timeout_job) -> None:
    cluster, job_id = timeout_job
    result = cluster.wait([job_id], timeout_s=150)
    state = result.states[job_id]
    assert (state.state, state.reason) == ("TIMEOUT", "TimeLimit"), state
    assert state.signal == 15 or state.exit_code != 0
