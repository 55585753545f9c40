"""Batch scripts from SlurmJobSpec, and Slurm's time format."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from pytest_madengine.backends.slurm import (
    SlurmJobSpec,
    render_script,
    sbatch_quote,
    slurm_time,
    write_script,
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
