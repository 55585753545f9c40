"""SlurmCluster's polling and waiting against a scripted stand-in for Slurm's commands
(the real cluster is in tests/integration/test_slurm_cluster.py)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from pytest_madengine.backends.slurm import JobState, SlurmCluster
from pytest_madengine.errors import MadError

T0 = "2026-11-26T11:00:00"


@dataclass
class FakeJob:
    job_id: str
    starts: float | None  # None: stays pending
    ends: float
    final: str = "COMPLETED"
    exit_code: str = "0:0"
    reason: str = "Resources"  # while pending
    final_reason: str = "None"

    def squeue_line(self, now: float) -> str | None:
        if self.starts is None or now < self.starts:
            return f"{self.job_id}|PENDING|{self.reason}||{T0}|N/A|N/A"
        if now < self.ends:
            return f"{self.job_id}|RUNNING|None|n1|{T0}|{T0}|N/A"
        return None  # left the queue

    def scontrol_line(self, now: float) -> str:
        state = self.squeue_line(now)
        if state is not None:
            return f"JobId={self.job_id} JobState={state.split('|')[1]} Reason=None ExitCode=0:0"
        return (
            f"JobId={self.job_id} JobName=x JobState={self.final} Reason={self.final_reason} "
            f"ExitCode={self.exit_code} SubmitTime={T0} StartTime={T0} EndTime={T0} NodeList=n1"
        )


class FakeSlurm:
    """Answers sbatch, squeue, scontrol and scancel from FakeJobs, on a fake clock."""

    def __init__(self, *jobs: FakeJob) -> None:
        self.now = 0.0
        self.jobs = {job.job_id: job for job in jobs}
        self.argvs: list[list[str]] = []
        self.sleeps: list[float] = []
        self.answers: dict[str, subprocess.CompletedProcess[str]] = {}

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def cluster(self) -> SlurmCluster:
        return SlurmCluster(runner=self.run, clock=self.clock, sleep=self.sleep)

    def run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        assert timeout > 0
        self.argvs.append(list(argv))
        if argv[0] in self.answers:
            return self.answers[argv[0]]
        if argv[0] == "squeue":
            ids = argv[-1].removeprefix("--jobs=").split(",")
            lines = [self.jobs[i].squeue_line(self.now) for i in ids if i in self.jobs]
            return self.done(argv, "".join(f"{line}\n" for line in lines if line))
        if argv[0] == "scontrol":
            ids = argv[4:] or list(self.jobs)
            missing = [i for i in ids if i not in self.jobs]
            if len(argv) > 4 and missing:
                return self.done(argv, "", "slurm_load_jobs error: Invalid job id specified", 1)
            lines = [self.jobs[i].scontrol_line(self.now) for i in ids if i in self.jobs]
            return self.done(argv, "".join(f"{line}\n" for line in lines))
        raise AssertionError(f"unexpected command {argv}")

    @staticmethod
    def done(argv, stdout: str, stderr: str = "", rc: int = 0):
        return subprocess.CompletedProcess(list(argv), rc, stdout, stderr)

    def calls(self, name: str) -> list[list[str]]:
        return [argv for argv in self.argvs if argv[0] == name]


def test_one_squeue_for_all_jobs_and_one_scontrol_for_those_that_left() -> None:
    slurm = FakeSlurm(FakeJob("1", 0, 5), FakeJob("2", 0, 5, "FAILED", "2:0"), FakeJob("3", 9, 20))
    cluster = slurm.cluster()
    states = cluster.poll(["1", "2", "3"])
    assert [s.state for s in states.values()] == ["RUNNING", "RUNNING", "PENDING"]
    assert slurm.calls("squeue") == [
        ["squeue", "--noheader", "--format=%i|%T|%r|%N|%V|%S|%e", "--jobs=1,2,3"]
    ]
    slurm.now = 6
    states = cluster.poll(["1", "2", "3"])
    assert states["1"].succeeded and states["2"].state == "FAILED"
    assert states["2"].exit_code == 2 and states["3"].pending
    # Two jobs left the queue: one scontrol call for both (all jobs, as it shows one or all).
    assert slurm.calls("scontrol") == [["scontrol", "--oneliner", "show", "job"]]
    assert slurm.calls("squeue")[-1][-1] == "--jobs=1,2,3"
    # Finished jobs are not asked about again.
    slurm.argvs.clear()
    again = cluster.poll(["1", "2"])
    assert again == {"1": states["1"], "2": states["2"]} and slurm.argvs == []
    cluster.poll(["1", "2", "3"])
    assert slurm.argvs == [["squeue", "--noheader", "--format=%i|%T|%r|%N|%V|%S|%e", "--jobs=3"]]
    assert cluster.squeue_calls == 3


def test_one_job_that_left_is_read_by_its_id() -> None:
    slurm = FakeSlurm(FakeJob("7", 0, 1, "TIMEOUT", "0:15", final_reason="TimeLimit"))
    slurm.now = 2
    state = slurm.cluster().poll(["7"])["7"]
    assert slurm.calls("scontrol") == [["scontrol", "--oneliner", "show", "job", "7"]]
    assert (state.state, state.reason, state.signal) == ("TIMEOUT", "TimeLimit", 15)


def test_a_finished_job_that_squeue_still_lists_is_read_from_scontrol() -> None:
    slurm = FakeSlurm(FakeJob("4", 0, 1, "FAILED", "1:0"))
    slurm.now = 2
    slurm.answers["squeue"] = slurm.done([], f"4|FAILED|NonZeroExitCode|n1|{T0}|{T0}|{T0}\n")
    state = slurm.cluster().poll(["4"])["4"]
    assert (state.state, state.exit_code) == ("FAILED", 1)
    assert slurm.calls("scontrol") == [["scontrol", "--oneliner", "show", "job", "4"]]


def test_a_purged_job_is_unknown() -> None:
    slurm = FakeSlurm()
    slurm.answers["squeue"] = slurm.done(
        [], "", "slurm_load_jobs error: Invalid job id specified", 1
    )
    state = slurm.cluster().poll(["99"])["99"]
    assert state.state == "UNKNOWN" and state.finished and "MinJobAge" in (state.reason or "")


def test_wait_backs_off_from_0_2_to_2_seconds() -> None:
    slurm = FakeSlurm(FakeJob("1", 0, 12))
    changes: list[JobState] = []
    result = slurm.cluster().wait(["1"], on_change=changes.append)
    assert result.all_finished and result.states["1"].succeeded
    assert not result.stuck and not result.timed_out
    assert slurm.sleeps[:7] == pytest.approx([0.2, 0.3, 0.45, 0.675, 1.0125, 1.51875, 2.0])
    assert set(slurm.sleeps[6:]) == {2.0}
    # Done at the first poll after t=12, at most one interval late.
    assert 12 <= slurm.now < 14
    assert [c.state for c in changes] == ["RUNNING", "COMPLETED"]


def test_wait_gives_up_on_a_reason_that_does_not_clear_after_the_grace_time() -> None:
    slurm = FakeSlurm(
        FakeJob("1", None, 0, reason="ReqNodeNotAvail, UnavailableNodes:n3"),
        FakeJob("2", 1, 3),
    )
    result = slurm.cluster().wait(["1", "2"], stuck_grace_s=5)
    assert list(result.stuck) == ["1"]
    message = result.stuck["1"]
    assert re.match(r"job 1 pending for [5-7] s: ReqNodeNotAvail, UnavailableNodes:n3", message)
    assert "down, drained or reserved" in message
    assert result.states["2"].succeeded and result.states["1"].pending
    assert not result.all_finished and 5 <= slurm.now < 8
    assert not slurm.calls("scancel")  # reported, not cancelled: the caller decides


def test_a_changing_reason_restarts_the_grace_time() -> None:
    job = FakeJob("1", None, 0, reason="PartitionDown")
    slurm = FakeSlurm(job)
    cluster = slurm.cluster()
    original = slurm.run

    def run(argv, timeout):
        if slurm.now > 4:
            job.reason = "ReqNodeNotAvail"
        return original(argv, timeout)

    cluster._runner = run
    result = cluster.wait(["1"], stuck_grace_s=6)
    assert "ReqNodeNotAvail" in result.stuck["1"] and slurm.now >= 10


def test_reasons_that_clear_are_waited_for_until_the_timeout() -> None:
    slurm = FakeSlurm(FakeJob("1", None, 0, reason="Resources"))
    result = slurm.cluster().wait(["1"], stuck_grace_s=0, timeout_s=10)
    assert result.timed_out == ("1",) and not result.stuck
    assert slurm.now == pytest.approx(10)


def test_submit_returns_the_job_id_or_sbatchs_words(tmp_path) -> None:
    slurm = FakeSlurm()
    cluster = slurm.cluster()
    slurm.answers["sbatch"] = slurm.done([], "42;cluster1\n")
    assert cluster.submit(tmp_path / "job.sh") == "42"
    assert slurm.argvs[-1] == ["sbatch", "--parsable", str(tmp_path / "job.sh")]
    slurm.answers["sbatch"] = slurm.done(
        [],
        "",
        "sbatch: error: Batch job submission failed: Requested node configuration is "
        "not available\n",
        1,
    )
    with pytest.raises(MadError, match="Requested node configuration is not available"):
        cluster.submit(tmp_path / "job.sh")


def test_commands_that_hang_or_are_missing_are_errors() -> None:
    def hang(argv, timeout):
        raise subprocess.TimeoutExpired(argv, timeout)

    def missing(argv, timeout):
        raise FileNotFoundError(argv[0])

    with pytest.raises(MadError, match=r"gave no answer in 30 s"):
        SlurmCluster(runner=hang).poll(["1"])
    with pytest.raises(MadError, match=r"squeue not found"):
        SlurmCluster(runner=missing).poll(["1"])


def test_cancel_tolerates_jobs_that_already_ended() -> None:
    slurm = FakeSlurm()
    cluster = slurm.cluster()
    cluster.cancel([])
    assert slurm.argvs == []
    slurm.answers["scancel"] = slurm.done(
        [],
        "",
        "scancel: error: Kill job error on job id 5: Job/step already completing or completed\n",
        1,
    )
    cluster.cancel(["5", "6", "5"])
    assert slurm.argvs == [["scancel", "5", "6"]]
    slurm.answers["scancel"] = slurm.done([], "", "scancel: error: Access/permission denied\n", 1)
    with pytest.raises(MadError, match="permission denied"):
        cluster.cancel(["5"])
