"""The job layer of the SLURM backend: batch scripts.

Needs Jinja2 (the `slurm` extra). Of the project it uses only pytest_madengine.errors,
so that the core can build on it without the two depending on each other.
"""

from pytest_madengine.backends.slurm.script import (
    SlurmJobSpec,
    render_script,
    sbatch_quote,
    slurm_time,
    write_script,
)

__all__ = [
    "SlurmJobSpec",
    "render_script",
    "sbatch_quote",
    "slurm_time",
    "write_script",
]
