"""Batch scripts for sbatch, rendered from a SlurmJobSpec.

Nothing a user gives becomes shell or #SBATCH syntax: the command is an argv list quoted
with shlex.quote, #SBATCH values are quoted the way sbatch reads them, and a value that
could end a line of the script (a newline) is refused, naming its field.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2

from pytest_madengine.errors import MadError

TEMPLATE = "job.sh.j2"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# GRES names and types (gpu, gpu:mi300x) and option names go on #SBATCH lines unquoted.
PLAIN_WORD = re.compile(r"[A-Za-z0-9_.+-]+")
# sbatch splits an #SBATCH line at blanks and stops at `#`, unless inside double quotes.
NEEDS_SBATCH_QUOTES = re.compile(r'[\s"\\#]')
LINE_BREAKS = ("\n", "\r", "\0")
# Optional fields written as `#SBATCH --<name>=<value>`, in this order.
SBATCH_FIELDS = ("partition", "account", "qos", "constraint", "nodelist", "exclude", "comment")


@dataclass(frozen=True)
class SlurmJobSpec:
    """One batch job. Optional fields left None fall back to the cluster's defaults.

    The command runs once, on the job's first node: to start it on every node of a
    multi-node job, begin the argv with srun."""

    job_name: str
    command: tuple[str, ...]  # argv, run with exec at the end of the script
    output: str  # stdout and stderr; sbatch's patterns (%j = job id) apply
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodelist: str | None = None
    exclude: str | None = None
    comment: str | None = None  # squeue shows it (%k): a session marks its jobs here
    nodes: int = 1
    gpus_per_node: int = 0  # as GRES: --gres=gpu[:gpu_type]:N
    gpu_type: str | None = None
    time_limit_s: int | None = None  # Slurm counts whole minutes and rounds up
    workdir: str | None = None
    extra_sbatch: tuple[str, ...] = ()  # further options, e.g. "--exclusive", "--mem=0"
    modules: tuple[str, ...] = ()  # `module load` each, in order
    env: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Lists are welcome in the constructor; the spec keeps tuples so that it stays frozen.
        for name in ("command", "extra_sbatch", "modules"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "env", dict(self.env))


def slurm_time(seconds: int) -> str:
    """A duration as Slurm writes it: [days-]hours:minutes:seconds, e.g. 90 -> 00:01:30."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
        raise MadError(f"time limit: {seconds!r} is not a positive number of seconds")
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def sbatch_quote(value: str) -> str:
    """A value for an #SBATCH line, read back by sbatch as the same string."""
    if value and not NEEDS_SBATCH_QUOTES.search(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_line(field_name: str, value: str) -> str:
    if not isinstance(value, str):
        raise MadError(f"slurm job {field_name}: {value!r} is not a string")
    if any(brk in value for brk in LINE_BREAKS):
        raise MadError(f"slurm job {field_name}: contains a line break, which would end the line")
    return value


def _check_spec(spec: SlurmJobSpec) -> None:
    for name in ("job_name", "output"):
        if not _check_line(name, getattr(spec, name)):
            raise MadError(f"slurm job {name}: empty")
    for name in (*SBATCH_FIELDS, "workdir"):
        value = getattr(spec, name)
        if value is not None and not _check_line(name, value):
            raise MadError(f"slurm job {name}: empty (leave it None for the cluster's default)")
    gpu_type = spec.gpu_type
    if gpu_type is not None and not PLAIN_WORD.fullmatch(_check_line("gpu_type", gpu_type)):
        raise MadError(f"slurm job gpu_type: {spec.gpu_type!r} is not a GRES type name")
    for name in ("nodes", "gpus_per_node"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MadError(f"slurm job {name}: {value!r} is not a count")
    if spec.nodes < 1:
        raise MadError("slurm job nodes: must be at least 1")
    if spec.time_limit_s is not None:
        slurm_time(spec.time_limit_s)
    for i, option in enumerate(spec.extra_sbatch):
        _check_line(f"extra_sbatch[{i}]", option)
        if not option.startswith("-"):
            raise MadError(f"slurm job extra_sbatch[{i}]: {option!r} is not an sbatch option")
    for i, module in enumerate(spec.modules):
        if not _check_line(f"modules[{i}]", module):
            raise MadError(f"slurm job modules[{i}]: empty")
    if not spec.command:
        raise MadError("slurm job command: empty")
    for i, arg in enumerate(spec.command):
        # Quoted, a newline inside an argument is harmless; a NUL cannot be in an argv.
        if not isinstance(arg, str) or "\0" in arg:
            raise MadError(f"slurm job command[{i}]: {arg!r} is not an argument")
    for name, value in spec.env.items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise MadError(f"slurm job env: {name!r} is not a variable name")
        if not isinstance(value, str) or "\0" in value:
            raise MadError(f"slurm job env {name}: {value!r} is not a string value")


def _options(spec: SlurmJobSpec) -> list[str]:
    """The #SBATCH options after job name, output and node count."""
    options = []
    for name in SBATCH_FIELDS:
        value = getattr(spec, name)
        if value is not None:
            options.append(f"--{name}={sbatch_quote(value)}")
    if spec.gpus_per_node:
        kind = f"gpu:{spec.gpu_type}" if spec.gpu_type else "gpu"
        options.append(f"--gres={kind}:{spec.gpus_per_node}")
    if spec.time_limit_s is not None:
        options.append(f"--time={slurm_time(spec.time_limit_s)}")
    if spec.workdir is not None:
        options.append(f"--chdir={sbatch_quote(spec.workdir)}")
    # Given as the user wrote them: an option like --mem=0 needs no quoting, and one
    # that does is the user's to quote (sbatch's double quotes).
    options.extend(spec.extra_sbatch)
    return options


@functools.cache
def _template() -> jinja2.Template:
    text = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    # A shell script, not HTML: no autoescape; a misspelt name fails instead of vanishing.
    environment = jinja2.Environment(
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return environment.from_string(text)


def render_script(spec: SlurmJobSpec) -> str:
    """The batch script for a spec; MadError naming the field of a value that cannot go in."""
    _check_spec(spec)
    return _template().render(
        job_name=sbatch_quote(spec.job_name),
        output=sbatch_quote(spec.output),
        nodes=spec.nodes,
        options=_options(spec),
        modules=[shlex.quote(module) for module in spec.modules],
        env=[(name, shlex.quote(value)) for name, value in spec.env.items()],
        command=shlex.join(spec.command),
    )


def write_script(spec: SlurmJobSpec, path: Path) -> Path:
    """Renders the spec into an executable file at path; returns the path."""
    path.write_text(render_script(spec), encoding="utf-8")
    path.chmod(0o755)
    return path
