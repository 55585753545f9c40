"""The node side of a SLURM job: a bash script that runs the test's container with the
Docker CLI (`docker create` argv from the RunSpec, the GPUs SLURM allocated made
visible), and what it leaves in the job's directory (facts, results).

The job's directory must be on a filesystem that the nodes and this machine share (as
the job's output file must): the script reads its files there and writes its facts.
"""

from __future__ import annotations

import functools
import math
import re
import shlex
import shutil
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

from pytest_madengine.backends import RunSpec, secret_argument_variable
from pytest_madengine.backends.docker.local import tar_directories
from pytest_madengine.errors import MadError

TEMPLATE = "node.sh.j2"
# Where the job's copy of our log writer lives (runlog.node_copy): the container's output
# reaches the test's log through it, masked, on the node.
NODE_LIBRARY = "lib"
# The job's variable with the base64 registry login of its pull (never in a file of ours).
PULL_AUTH_VARIABLE = "MAD_PULL_AUTH"
# Containers a job starts carry the job id here: the cluster's Epilog, our cancel and
# sweep remove them by it (INFRA.md: scancel alone leaves them running).
JOB_LABEL = "org.pytest-madengine.slurm-job"
# Set in the job from what SLURM allocated, not from the session's placeholder lease.
GPU_VARIABLES = frozenset(
    {
        "MAD_HOST_GPU_IDS",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
    }
)
ENV_FILE_NAME = re.compile(r"[^\s=#][^=\n\r\0]*")
MAX_RESULT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class NodeScript:
    """What the node script of one job needs beyond the RunSpec."""

    job_dir: Path
    vendor: str  # AMD | NVIDIA
    device_root: str  # where a node's kfd and dri/renderD* are (AMD)
    # The variable SLURM puts this node's GPU ids in: SLURM_JOB_GPUS in the batch step,
    # SLURM_STEP_GPUS in an srun step (a multi-node job).
    gpu_variable: str = "SLURM_JOB_GPUS"
    nnodes: int = 1
    launcher: str | None = None
    nproc_per_node: int = 1
    master_port: int | None = None
    pull_mark: Path | None = None  # pull the image once per node (marks beside this path)
    pull_registry: str | None = None  # the registry whose login PULL_AUTH_VARIABLE holds


def _mount(host_path: str, container_path: str, read_only: bool) -> str:
    """A --mount value; docker reads it as CSV, so a field with a comma is quoted."""
    fields = ["type=bind", f"source={host_path}", f"target={container_path}"]
    if read_only:
        fields.append("readonly")
    quoted = ['"' + f.replace('"', '""') + '"' if ("," in f or '"' in f) else f for f in fields]
    return ",".join(quoted)


def create_args(spec: RunSpec) -> list[str]:
    """The `docker create` options of a spec, as the docker backend sets them through the
    SDK; the GPUs, env file, name and job label are added in the job."""
    args = ["--workdir", spec.workdir, "--network", spec.network]
    if spec.ipc:
        args += ["--ipc", spec.ipc]
    for key, value in spec.labels.items():
        args += ["--label", f"{key}={value}"]
    if spec.privileged:
        args.append("--privileged")
    for device in spec.devices:
        args += ["--device", f"{device.host_path}:{device.container_path}:rwm"]
    for group in spec.group_add:
        args += ["--group-add", group]
    for bind in spec.binds:
        # --mount, not -v: a host path that does not exist is an error, not a new directory.
        args += ["--mount", _mount(bind.host_path, bind.container_path, bind.read_only)]
    for data in spec.data:
        # Read-only, from this machine's path: the nodes share its filesystem (a fetched
        # copy's cache as well as a `local` path).
        args += ["--mount", _mount(data.source, data.container_path, read_only=True)]
    if spec.memory:
        args += ["--memory", spec.memory, "--memory-swap", spec.memory]
    for capability in spec.cap_add:
        args += ["--cap-add", capability]
    if spec.cpuset_cpus:
        args += ["--cpuset-cpus", spec.cpuset_cpus]
    return args


def env_file_text(env: Mapping[str, str], secret_names: Collection[str] = ()) -> str:
    """The container's variables for `docker create --env-file` (NAME=VALUE a line, read
    literally): in a file of the job's directory, so that no value shows in `ps` or in
    the scripts. A secret's variable is written by its name alone: docker takes its
    value from the job's environment, so no file holds it. The GPU variables are left
    to the job."""
    lines = []
    for name, value in env.items():
        if name in GPU_VARIABLES:
            continue
        if not ENV_FILE_NAME.fullmatch(name):
            raise MadError(f"slurm: variable name {name!r} cannot go into docker's --env-file")
        if name in secret_names:
            lines.append(f"{name}\n")
            continue
        if any(brk in value for brk in ("\n", "\r", "\0")):
            raise MadError(
                f"slurm: variable {name} holds a line break, which docker's --env-file cannot carry"
            )
        lines.append(f"{name}={value}\n")
    return "".join(lines)


def _command_text(spec: RunSpec) -> str:
    hidden = spec.secret_arguments()
    return " ".join(
        f'"${secret_argument_variable(position)}"' if position in hidden else shlex.quote(argument)
        for position, argument in enumerate(spec.command)
    )


@functools.cache
def _template() -> jinja2.Template:
    text = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    environment = jinja2.Environment(
        # bash's ${#array[@]} would open a Jinja comment: comments are spelt otherwise.
        comment_start_string="<#--",
        comment_end_string="--#>",
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return environment.from_string(text)


def _timeout_text(timeout_s: float | None) -> str | None:
    if timeout_s is None:
        return None
    return f"{max(timeout_s, 0.001):.3f}".rstrip("0").rstrip(".")


def render_node_script(spec: RunSpec, node: NodeScript) -> str:
    """The node script of a spec (bash); MadError for a value that cannot be passed."""
    if node.launcher is None and node.nnodes > 1:
        raise MadError("slurm: a job over several nodes needs a launcher (torchrun)")
    for i, arg in enumerate(spec.command):
        if "\0" in arg:
            raise MadError(f"slurm: command[{i}] holds a NUL byte")
    q = shlex.quote
    job_dir = node.job_dir
    if node.master_port is not None:
        port = str(node.master_port)
    else:
        # Jobs that share a node (and the host network) must not share a port.
        port = "$((29500 + ${SLURM_JOB_ID:-0} % 1000))"
    return _template().render(
        job_dir=q(str(job_dir)),
        image=q(spec.image),
        # The id where it is known (a built image): a tag another session moves meanwhile
        # cannot swap the image under the test.
        run_image=q(spec.image_id or spec.image),
        log=q(str(spec.log_path)),
        nnodes=node.nnodes,
        gpu_count=spec.gpu_count,
        gpu_source=f"${{{node.gpu_variable}:-${{CUDA_VISIBLE_DEVICES:-}}}}",
        vendor=node.vendor,
        device_root=q(node.device_root.rstrip("/") or "/"),
        launcher=node.launcher,
        master_port=port,
        nproc_per_node=node.nproc_per_node,
        pull=node.pull_mark is not None,
        pull_mark=q(str(node.pull_mark)) if node.pull_mark else "",
        pull_registry=q(node.pull_registry) if node.pull_registry else None,
        job_label=JOB_LABEL,
        env_file=q(str(job_dir / "container.env")),
        library=q(str(job_dir / NODE_LIBRARY)),
        create_args=shlex.join(create_args(spec)),
        command=_command_text(spec),
        copies=q(str(job_dir / "copies.tar")) if spec.copies else None,
        timeout=_timeout_text(spec.timeout_s),
        results=[q(path) for path in spec.result_files],
    )


def write_copies(spec: RunSpec, path: Path) -> None:
    """The host directories of a spec as one tar at `path`, placed at their container
    paths (`docker cp -` extracts it at `/`), without the spec's excluded paths: the
    same archive the docker backend puts into its containers."""
    copies = tar_directories(spec.copies, spec.copy_excludes, spec.copy_within)
    with copies as archive, path.open("wb") as out:
        shutil.copyfileobj(archive, out)


@dataclass(frozen=True)
class NodeFacts:
    """What a node script wrote of its run (facts.<rank>)."""

    rank: int
    node: str | None = None
    gpus: tuple[int, ...] = ()  # those the test runs on
    allocated: tuple[int, ...] = ()  # all SLURM gave, when more than asked (--exclusive)
    mapped: bool = False
    master: str | None = None
    image_id: str | None = None
    started: float | None = None  # epoch seconds
    ended: float | None = None
    exit_code: int | None = None  # the container's
    timed_out: bool = False
    oom_killed: bool = False
    signal: str | None = None  # the signal that stopped the script (scancel, time limit)

    @property
    def container_ended(self) -> bool:
        return self.exit_code is not None or self.timed_out


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _ids(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.isdigit())


def parse_facts(text: str, rank: int) -> NodeFacts:
    """facts.<rank> (key=value lines, later lines win)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    gpus = _ids(values.get("gpus", ""))
    code = values.get("exit", "")
    return NodeFacts(
        rank=rank,
        node=values.get("node") or None,
        gpus=gpus,
        allocated=_ids(values.get("allocated", "")),
        mapped=values.get("mapped") == "1",
        master=values.get("master") or None,
        image_id=values.get("image_id") or None,
        started=_float(values.get("started")),
        ended=_float(values.get("ended")),
        exit_code=int(code) if code.lstrip("-").isdigit() else None,
        timed_out=values.get("timed_out") == "1",
        oom_killed=values.get("oom") == "true",
        signal=values.get("signal") or None,
    )


def read_facts(job_dir: Path, nnodes: int) -> list[NodeFacts]:
    """The facts of every node rank that wrote any, rank 0 first."""
    found = []
    for rank in range(nnodes):
        path = job_dir / f"facts.{rank}"
        if path.exists():
            found.append(parse_facts(path.read_text(encoding="utf-8", errors="replace"), rank))
    return found


def read_result(path: Path) -> str | None:
    """A result file the node script wrote (masked), or None when the run left none
    (or one over the size bound)."""
    try:
        with path.open("rb") as source:
            data = source.read(MAX_RESULT_BYTES + 1)
    except OSError:
        return None
    return None if len(data) > MAX_RESULT_BYTES else data.decode("utf-8", errors="replace")
