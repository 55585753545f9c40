"""The slurm backend's settings: the context's `slurm` block and `distributed` block,
checked once when the session starts (a bad key is a usage error naming it)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_madengine.backends.slurm.script import LINE_BREAKS
from pytest_madengine.errors import UsageProblem

# Seconds the job gets beyond the model's timeout: pulling the image and starting the
# container count against SLURM's limit, and the model's own timeout is enforced exactly
# inside the job.
DEFAULT_TIME_MARGIN_S = 300
# A job pending for a reason that waiting does not clear fails after this long.
DEFAULT_PENDING_TIMEOUT_S = 120.0
LAUNCHERS = ("torchrun",)
DEFAULT_MASTER_PORT_BASE = 29500

STRING_KEYS = ("partition", "account", "qos", "constraint", "nodelist", "exclude", "gpu_type")
KNOWN_KEYS = (
    *STRING_KEYS,
    "modules",
    "extra_sbatch",
    "env",
    "time",
    "time_margin",
    "gpus_per_node",
    "nodes",
    "pending_timeout",
    "dry_run",
)
TIME_FORMS = re.compile(r"(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?")


@dataclass(frozen=True)
class Distributed:
    """One job over several nodes, each running the container with a launcher prefix."""

    nnodes: int = 1
    launcher: str | None = None  # torchrun
    nproc_per_node: int | None = None  # default: the GPUs per node (1 without GPUs)
    master_port: int | None = None  # default: 29500 + job id % 1000, apart per job


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodelist: str | None = None
    exclude: str | None = None
    gpu_type: str | None = None
    modules: tuple[str, ...] = ()
    extra_sbatch: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    time_limit_s: int | None = None  # over the one derived from the timeout
    time_margin_s: int = DEFAULT_TIME_MARGIN_S
    gpus_per_node: int | None = None  # over what sinfo says of the partition
    pending_timeout_s: float = DEFAULT_PENDING_TIMEOUT_S
    dry_run: bool = False
    distributed: Distributed = Distributed()
    device_root: str = "/dev"  # where a node's AMD GPUs are (kfd, dri/renderD*)

    def job_time_limit(self, timeout_s: float | None) -> int | None:
        """The job's --time in seconds: `time` when given, else the model's timeout
        plus the margin; None (the partition's default) when the model has none."""
        if self.time_limit_s is not None:
            return self.time_limit_s
        if timeout_s is None:
            return None
        return int(-(-timeout_s // 1)) + self.time_margin_s


def parse_slurm_time(value: Any, where: str) -> int:
    """Seconds from Slurm's forms: a number of minutes (60), "MM:SS", "HH:MM:SS",
    "D-HH", "D-HH:MM", "D-HH:MM:SS"."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UsageProblem(f"{where}: expected minutes or Slurm's [D-]HH:MM:SS, got {value!r}")
    if isinstance(value, int):
        minutes = value
        if minutes <= 0:
            raise UsageProblem(f"{where}: must be positive, got {value!r}")
        return minutes * 60
    match = TIME_FORMS.fullmatch(value.strip())
    if not match:
        raise UsageProblem(f"{where}: expected minutes or Slurm's [D-]HH:MM:SS, got {value!r}")
    days = int(match["days"] or 0)
    parts = [int(part) for part in (match["a"], match["b"], match["c"]) if part is not None]
    if match["days"] is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (*parts, 0, 0)[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:  # MM:SS
        hours, minutes, seconds = 0, *parts
    else:  # minutes
        hours, minutes, seconds = 0, parts[0], 0
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise UsageProblem(f"{where}: must be positive, got {value!r}")
    return total


def _positive_int(value: Any, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UsageProblem(f"{where}: expected a whole number, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise UsageProblem(f"{where}: expected a whole number, got {value!r}") from None
    if number < minimum:
        raise UsageProblem(f"{where}: must be at least {minimum}, got {number}")
    return number


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise UsageProblem(f"{where}: expected a number of seconds, got {value!r}")
    return float(value)


def _one_line(value: str, where: str) -> str:
    """The value, refused when it holds a line break or NUL (it goes on one script line)."""
    if any(brk in value for brk in LINE_BREAKS):
        raise UsageProblem(f"{where}: {value!r} holds a line break or NUL, which would end"
                           " its line of the job's script")  # fmt: skip
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UsageProblem(f"{where}: expected a list of strings, got {value!r}")
    return tuple(_one_line(item, f"{where}[{index}]") for index, item in enumerate(value))


def _sbatch_options(value: Any, where: str) -> tuple[str, ...]:
    options = _strings(value, where)
    for index, option in enumerate(options):
        if not option.startswith("-"):
            raise UsageProblem(f"{where}[{index}]: {option!r} is not an sbatch option")
    return options


def _distributed(block: Any) -> Distributed:
    where = "context 'distributed'"
    if block is None:
        return Distributed()
    if not isinstance(block, dict):
        raise UsageProblem(f"{where}: expected an object, got {block!r}")
    launcher = block.get("launcher")
    if launcher is not None and launcher not in LAUNCHERS:
        known = ", ".join(LAUNCHERS)
        raise UsageProblem(f"{where}: launcher {launcher!r} is not one the slurm backend starts"
                           f" ({known})")  # fmt: skip
    nproc = block.get("nproc_per_node")
    port = block.get("master_port")
    if nproc is not None:
        nproc = _positive_int(nproc, f"{where}: 'nproc_per_node'")
    if port is not None:
        port = _positive_int(port, f"{where}: 'master_port'")
    nnodes = _positive_int(block.get("nnodes", 1), f"{where}: 'nnodes'")
    return Distributed(nnodes=nnodes, launcher=launcher, nproc_per_node=nproc, master_port=port)


def parse_settings(context: Mapping[str, Any]) -> SlurmSettings:
    """The settings of a run context; UsageProblem naming the key for a bad value."""
    block = context.get("slurm")
    block = {} if block is None else block
    where = "context 'slurm'"
    if not isinstance(block, dict):
        raise UsageProblem(f"{where}: expected an object, got {block!r}")
    unknown = sorted(set(block) - set(KNOWN_KEYS))
    if unknown:
        raise UsageProblem(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(KNOWN_KEYS)})"
        )
    values: dict[str, Any] = {}
    for key in STRING_KEYS:
        value = block.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise UsageProblem(f"{where}: '{key}' must be a non-empty string, got {value!r}")
        values[key] = value if value is None else _one_line(value, f"{where}: '{key}'")
    env = block.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(name, str) and isinstance(item, str | int | float) and not isinstance(item, bool)
        for name, item in env.items()
    ):
        raise UsageProblem(f"{where}: 'env' must be an object of strings, got {env!r}")
    distributed = _distributed(context.get("distributed"))
    if "nodes" in block:  # madengine's spelling of the node count
        nodes = _positive_int(block["nodes"], f"{where}: 'nodes'")
        distributed = Distributed(nodes, distributed.launcher, distributed.nproc_per_node,
                                  distributed.master_port)  # fmt: skip
    gpus = block.get("gpus_per_node")
    if gpus is not None:
        gpus = _positive_int(gpus, f"{where}: 'gpus_per_node'", minimum=0)
    time_limit = block.get("time")
    if time_limit is not None:
        time_limit = parse_slurm_time(time_limit, f"{where}: 'time'")
    margin = _seconds(block.get("time_margin", DEFAULT_TIME_MARGIN_S), f"{where}: 'time_margin'")
    pending = block.get("pending_timeout", DEFAULT_PENDING_TIMEOUT_S)
    dry_run = block.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise UsageProblem(f"{where}: 'dry_run' must be true or false, got {dry_run!r}")
    return SlurmSettings(
        **values,
        modules=_strings(block.get("modules", []), f"{where}: 'modules'"),
        extra_sbatch=_sbatch_options(block.get("extra_sbatch", []), f"{where}: 'extra_sbatch'"),
        env={name: str(item) for name, item in env.items()},
        time_limit_s=time_limit,
        time_margin_s=int(margin),
        gpus_per_node=gpus,
        pending_timeout_s=_seconds(pending, f"{where}: 'pending_timeout'"),
        dry_run=dry_run,
        distributed=distributed,
        device_root=str(context.get("gpu_device_root") or "/dev"),
    )
