"""The job layer of the SLURM backend: batch scripts and the cluster's commands.

Needs Jinja2 (the `slurm` extra). Of the project it uses only pytest_madengine.errors,
so that the core can build on it without the two depending on each other.
"""

from pytest_madengine.backends.slurm.cluster import (
    FINAL_STATES,
    STUCK_REASONS,
    JobState,
    Partition,
    SlurmCluster,
    WaitResult,
    parse_scontrol_jobs,
    parse_sinfo,
    parse_squeue,
    stuck_reason,
)
from pytest_madengine.backends.slurm.script import (
    SlurmJobSpec,
    render_script,
    sbatch_quote,
    slurm_time,
    write_script,
)

__all__ = [
    "FINAL_STATES",
    "STUCK_REASONS",
    "JobState",
    "Partition",
    "SlurmCluster",
    "SlurmJobSpec",
    "WaitResult",
    "parse_scontrol_jobs",
    "parse_sinfo",
    "parse_squeue",
    "render_script",
    "sbatch_quote",
    "slurm_time",
    "stuck_reason",
    "write_script",
]
