"""Batch scripts from SlurmJobSpec, Slurm's time format, and squeue/scontrol output."""

from __future__ import annotations

import dataclasses
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from pytest_madengine.backends.slurm import (
    SlurmJobSpec,
    parse_scontrol_jobs,
    parse_squeue,
    render_script,
    sbatch_quote,
    slurm_time,
    stuck_reason,
    write_script,
)
from pytest_madengine.backends.slurm.cluster import (
    parse_exit_code,
    scontrol_fields,
    slurm_timestamp,
)
from pytest_madengine.errors import MadError


def spec(**fields) -> SlurmJobSpec:
    base = {"job_name": "dummy", "command": ("python3", "run.py"), "output": "/logs/%j.out"}
    return SlurmJobSpec(**{**base, **fields})


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1, "00:00:01"),
        (59, "00:00:59"),
        (90, "00:01:30"),
        (3600, "01:00:00"),
        (7200, "02:00:00"),
        (86399, "23:59:59"),
        (86400, "1-00:00:00"),
        (3 * 86400 + 3661, "3-01:01:01"),
    ],
)
def test_slurm_time(seconds: int, text: str) -> None:
    assert slurm_time(seconds) == text


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "60"])
def test_slurm_time_wants_positive_whole_seconds(bad) -> None:
    with pytest.raises(MadError, match="time limit"):
        slurm_time(bad)


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("mad", "mad"),
        ("n[1-3],n5", "n[1-3],n5"),
        ("mi300x&hbm", "mi300x&hbm"),
        ("a b", '"a b"'),
        ("#1", '"#1"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("", '""'),
    ],
)
def test_sbatch_quote(value: str, quoted: str) -> None:
    assert sbatch_quote(value) == quoted


def test_minimal_script() -> None:
    assert render_script(spec()) == (
        "#!/bin/bash\n"
        "# Batch script rendered by pytest-madengine from a SlurmJobSpec. Every value below was\n"
        "# quoted when rendered: #SBATCH values for sbatch, the rest for bash.\n"
        "#SBATCH --job-name=dummy\n"
        "#SBATCH --output=/logs/%j.out\n"
        "#SBATCH --nodes=1\n"
        "\n"
        "exec python3 run.py\n"
    )


def test_full_script() -> None:
    text = render_script(
        spec(
            job_name="bench dummy",
            partition="mad",
            account="proj1",
            qos="high",
            constraint="mi300x",
            nodelist="n[1-2]",
            exclude="n3",
            nodes=2,
            gpus_per_node=4,
            gpu_type="mi300x",
            time_limit_s=5400,
            workdir="/scratch/run dir",
            extra_sbatch=("--exclusive", "--mem=0"),
            modules=("rocm/6.2", "python"),
            env={"MAD_MODEL_NAME": "dummy", "NOTE": "it's $HOME"},
        )
    )
    sbatch_lines = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert sbatch_lines == [
        '#SBATCH --job-name="bench dummy"',
        "#SBATCH --output=/logs/%j.out",
        "#SBATCH --nodes=2",
        "#SBATCH --partition=mad",
        "#SBATCH --account=proj1",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=mi300x",
        "#SBATCH --nodelist=n[1-2]",
        "#SBATCH --exclude=n3",
        "#SBATCH --gres=gpu:mi300x:4",
        "#SBATCH --time=01:30:00",
        '#SBATCH --chdir="/scratch/run dir"',
        "#SBATCH --exclusive",
        "#SBATCH --mem=0",
    ]
    assert "module load rocm/6.2 || exit\nmodule load python || exit\n" in text
    assert "export MAD_MODEL_NAME=dummy\nexport NOTE='it'\"'\"'s $HOME'\n" in text
    assert text.endswith("\nexec python3 run.py\n")
    # Every #SBATCH line comes before the first command: sbatch stops reading them there.
    first_command = next(
        i for i, line in enumerate(text.splitlines()) if line and not line.startswith("#")
    )
    assert all(not line.startswith("#SBATCH") for line in text.splitlines()[first_command:])


def test_gpus_without_type_and_zero_gpus() -> None:
    assert "#SBATCH --gres=gpu:2\n" in render_script(spec(gpus_per_node=2))
    assert "--gres" not in render_script(spec(gpus_per_node=0))


HOSTILE = ["$(touch pwned)", "`id`", "a'b", 'a"b', "x; rm -rf /", "two\nlines", "*", "", "-n"]


def test_command_and_env_reach_the_program_unchanged(tmp_path: Path) -> None:
    """The rendered script, run by bash (its #SBATCH lines are comments), gives the program
    exactly the argv and environment of the spec: nothing is evaluated by the shell."""
    script = write_script(
        spec(
            command=(
                "python3",
                "-c",
                "import os, sys; print(repr((sys.argv[1:], os.environ['V'])))",
                *HOSTILE,
            ),
            env={"V": "$(touch pwned) `id` it's\nnext"},
            workdir=str(tmp_path),
        ),
        tmp_path / "job.sh",
    )
    assert script.stat().st_mode & 0o111
    done = subprocess.run(
        ["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr((HOSTILE, "$(touch pwned) `id` it's\nnext"))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "field",
    [
        "job_name",
        "output",
        "partition",
        "account",
        "qos",
        "constraint",
        "nodelist",
        "exclude",
        "workdir",
        "gpu_type",
    ],
)
def test_line_break_in_a_field_is_refused_by_name(field: str) -> None:
    with pytest.raises(MadError, match=rf"slurm job {field}: contains a line break"):
        render_script(spec(**{field: "a\nb"}))
    with pytest.raises(MadError, match=rf"slurm job {field}: contains a line break"):
        render_script(spec(**{field: "a\rb"}))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"extra_sbatch": ("--mem=0", "--x\n#SBATCH --y")}, r"extra_sbatch\[1\]: contains a line"),
        ({"extra_sbatch": ("exclusive",)}, r"extra_sbatch\[0\]: 'exclusive' is not an sbatch"),
        ({"modules": ("rocm\nrm -rf /",)}, r"modules\[0\]: contains a line break"),
        ({"modules": ("",)}, r"modules\[0\]: empty"),
        ({"env": {"BAD NAME": "x"}}, r"env: 'BAD NAME' is not a variable name"),
        ({"env": {"1X": "x"}}, r"env: '1X' is not a variable name"),
        ({"env": {"X": 3}}, r"env X: 3 is not a string value"),
        ({"command": ()}, r"command: empty"),
        ({"command": ("echo", "a\0b")}, r"command\[1\]"),
        ({"job_name": ""}, r"job_name: empty"),
        ({"partition": ""}, r"partition: empty"),
        ({"nodes": 0}, r"nodes: must be at least 1"),
        ({"gpus_per_node": -1}, r"gpus_per_node: -1 is not a count"),
        ({"gpu_type": "mi300x:4"}, r"gpu_type: 'mi300x:4' is not a GRES type name"),
        ({"time_limit_s": 0}, r"time limit: 0"),
    ],
)
def test_invalid_values_are_refused_by_name(fields: dict, message: str) -> None:
    with pytest.raises(MadError, match=message):
        render_script(spec(**fields))


def test_spec_is_frozen_and_keeps_tuples() -> None:
    job = spec(command=["echo", "hi"], modules=["a"], extra_sbatch=["--exclusive"])
    assert job.command == ("echo", "hi") and job.modules == ("a",)
    assert job == spec(command=("echo", "hi"), modules=("a",), extra_sbatch=("--exclusive",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.job_name = "other"  # type: ignore[misc]


# ---- squeue and scontrol output (samples from Slurm 22.05) ----


def local(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


SQUEUE = """\
13|PENDING|DependencyNeverSatisfied||2026-11-26T11:25:11|N/A|N/A
15|PENDING|ReqNodeNotAvail, UnavailableNodes:n3||2026-11-26T11:25:15|N/A|N/A
16|PENDING|None||2026-11-26T11:25:16|2026-11-26T11:30:00|N/A
17|RUNNING|None|n2|2026-11-26T11:25:17|2026-11-26T11:25:18|2026-11-26T11:26:18
18|COMPLETING|None|n[1-2]|2026-11-26T11:25:17|2026-11-26T11:25:18|2026-11-26T11:25:30
"""


def test_parse_squeue() -> None:
    jobs = {job.job_id: job for job in parse_squeue(SQUEUE)}
    assert list(jobs) == ["13", "15", "16", "17", "18"]
    assert jobs["13"].state == "PENDING" and jobs["13"].reason == "DependencyNeverSatisfied"
    assert jobs["15"].reason == "ReqNodeNotAvail, UnavailableNodes:n3"
    assert jobs["15"].node_list is None and jobs["15"].start_time is None
    # The expected start of a pending job, and the expected end of a running one, are not times.
    assert jobs["16"].reason is None and jobs["16"].start_time is None
    running = jobs["17"]
    assert running.state == "RUNNING" and running.node_list == "n2"
    assert running.submit_time == local("2026-11-26T11:25:17")
    assert running.start_time == local("2026-11-26T11:25:18")
    assert running.end_time is None and not running.finished and not running.pending
    assert jobs["18"].node_list == "n[1-2]" and not jobs["18"].finished


def test_parse_squeue_rejects_a_foreign_format() -> None:
    with pytest.raises(MadError, match="squeue: unexpected line"):
        parse_squeue("JOBID PARTITION NAME\n")


TIMEOUT_LINE = (
    "JobId=8 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901758 "
    "Nice=0 Account=(null) QOS=(null) JobState=TIMEOUT Reason=TimeLimit Dependency=(null) "
    "Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:15 RunTime=00:01:08 "
    "TimeLimit=00:01:00 TimeMin=N/A SubmitTime=2026-11-26T11:09:07 "
    "EligibleTime=2026-11-26T11:09:07 AccrueTime=2026-11-26T11:09:07 "
    "StartTime=2026-11-26T11:09:07 EndTime=2026-11-26T11:10:15 Deadline=N/A "
    "Partition=mad AllocNode:Sid=localhost:10853 ReqNodeList=(null) ExcNodeList=(null) "
    "NodeList=n1 BatchHost=n1 NumNodes=1 NumCPUs=1 ReqB:S:C:T=0:0:*:* "
    "TRES=cpu=1,node=1,billing=1 Socks/Node=* Command=(null) WorkDir=/tmp/sl "
    "StdErr=/tmp/sl/slurm-8.out StdIn=/dev/null StdOut=/tmp/sl/slurm-8.out Power= "
)
FAILED_LINE = (
    "JobId=11 JobName=my job = 2 UserId=root(0) JobState=FAILED Reason=NonZeroExitCode "
    "ExitCode=3:0 SubmitTime=2026-11-26T11:25:04 StartTime=2026-11-26T11:25:04 "
    "EndTime=2026-11-26T11:25:05 NodeList=n1 WorkDir=/tmp/sl/dir with space Power= "
)
PENDING_LINE = (
    "JobId=15 JobName=wrap JobState=PENDING Reason=ReqNodeNotAvail,_UnavailableNodes:n3 "
    "ExitCode=0:0 SubmitTime=2026-11-26T11:25:15 StartTime=Unknown EndTime=Unknown NodeList= "
)


def test_scontrol_fields_keep_blanks_inside_values() -> None:
    fields = scontrol_fields(FAILED_LINE)
    assert fields["JobName"] == "my job = 2"
    assert fields["WorkDir"] == "/tmp/sl/dir with space"
    assert fields["Power"] == ""
    assert scontrol_fields(TIMEOUT_LINE)["AllocNode:Sid"] == "localhost:10853"


def test_parse_scontrol_jobs() -> None:
    text = f"{TIMEOUT_LINE}\n{FAILED_LINE}\n{PENDING_LINE}\n"
    timeout, failed, pending = parse_scontrol_jobs(text)
    assert timeout.job_id == "8" and timeout.state == "TIMEOUT" and timeout.finished
    assert timeout.reason == "TimeLimit" and timeout.exit_code == 0 and timeout.signal == 15
    assert timeout.node_list == "n1"
    assert timeout.start_time == local("2026-11-26T11:09:07")
    assert timeout.end_time == local("2026-11-26T11:10:15")
    assert failed.state == "FAILED" and failed.exit_code == 3 and failed.signal is None
    assert not failed.succeeded
    assert pending.pending and pending.node_list is None
    assert pending.start_time is None and pending.end_time is None and pending.exit_code is None
    assert parse_scontrol_jobs("No jobs in the system\n") == []


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0:0", (0, None)),
        ("3:0", (3, None)),
        ("0:15", (0, 15)),
        ("1", (1, None)),
        ("", (None, None)),
    ],
)
def test_parse_exit_code(text: str, parsed: tuple) -> None:
    assert parse_exit_code(text) == parsed


@pytest.mark.parametrize("text", ["N/A", "Unknown", "None", "", "garbage"])
def test_no_timestamp(text: str) -> None:
    assert slurm_timestamp(text) is None


@pytest.mark.parametrize(
    ("reason", "stuck"),
    [
        ("ReqNodeNotAvail, UnavailableNodes:n3", True),
        ("ReqNodeNotAvail,_UnavailableNodes:n3", True),
        ("InvalidAccount", True),
        ("PartitionDown", True),
        ("PartitionConfig", True),
        ("BadConstraints", True),
        ("DependencyNeverSatisfied", True),
        ("QOSMaxGRESPerJob", True),
        ("AssocMaxCpuPerJobLimit", True),
        ("Resources", False),
        ("Priority", False),
        ("Dependency", False),
        ("BeginTime", False),
        ("AssocGrpGRES", False),
        (None, False),
    ],
)
def test_stuck_reasons(reason: str | None, stuck: bool) -> None:
    assert (stuck_reason(reason) is not None) is stuck
