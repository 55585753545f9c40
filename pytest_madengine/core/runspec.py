"""From a planned test, the run context and its GPU lease to the steps of its run
(`ModelRun`) and the backend-neutral `RunSpec` they render to."""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_madengine.backends import (
    CONTROLLER_LABEL,
    MODEL_LABEL,
    SESSION_LABEL,
    TEST_LABEL,
    Bind,
    Device,
    RunSpec,
)
from pytest_madengine.core.context import RunContext
from pytest_madengine.core.options import Options
from pytest_madengine.core.planning import PlannedTest
from pytest_madengine.data import DataMount
from pytest_madengine.errors import MadError, parse_words
from pytest_madengine.resources.gpus import Gpu
from pytest_madengine.resources.hosts import Host
from pytest_madengine.workspace import (
    RUN_DIRECTORY,
    STATE_DIR,
    WORKSPACE,
    ModelRun,
    Script,
    parse_scripts,
    render,
    timeout_line,
)

AMD_RENDER_MINOR_BASE = 128  # GPU i is /dev/dri/renderD(128+i) on ROCm hosts


def effective_timeout(model_timeout: int, override: int | None, multiplier: float) -> float | None:
    """The model's timeout (or --mad-timeout over it) times the context multiplier; 0 = none."""
    base = override if override is not None else model_timeout
    return None if base <= 0 else base * multiplier


def script_command(script: str, args: Sequence[str], is_dir: bool) -> tuple[str, tuple[str, ...]]:
    """(directory to copy in, argv) for `scripts`: .sh with bash, .py with python3."""
    if is_dir:
        return script, ("bash", "run.sh", *args)
    directory, name = posixpath.split(script)
    if name.endswith(".py"):
        return directory, ("python3", name, *args)
    if name.endswith(".sh"):
        return directory, ("bash", name, *args)
    raise MadError(f"scripts '{script}': expected a .sh or .py file, or a directory")


def visibility_env(vendor: str, gpus: Sequence[Gpu], mapped: bool) -> dict[str, str]:
    """GPU visibility variables.

    With devices mapped, the container sees only its GPUs, numbered from 0, so the
    runtime variables count from 0. Virtual GPUs map nothing: the variables carry the
    leased host ids, which is all a test can see of them. MAD_HOST_GPU_IDS always has
    the host ids.
    """
    host_ids = ",".join(str(gpu.index) for gpu in gpus)
    local_ids = ",".join(str(position) for position in range(len(gpus)))
    ids = local_ids if mapped else host_ids
    env = {"MAD_HOST_GPU_IDS": host_ids}
    if vendor == "NVIDIA":
        env.update(CUDA_VISIBLE_DEVICES=ids, NVIDIA_VISIBLE_DEVICES=host_ids if mapped else ids)
    else:
        env.update(HIP_VISIBLE_DEVICES=ids, ROCR_VISIBLE_DEVICES=ids)
    return env


def amd_devices(device_root: str, gpus: Sequence[Gpu]) -> tuple[Device, ...]:
    """/dev/kfd and the render node of each leased GPU, from device_root on the host."""
    devices = [Device(posixpath.join(device_root, "kfd"), "/dev/kfd")]
    for gpu in gpus:
        node = f"dri/renderD{AMD_RENDER_MINOR_BASE + gpu.index}"
        devices.append(Device(posixpath.join(device_root, node), f"/dev/{node}"))
    return tuple(devices)


def _secret_env(test: PlannedTest, options: Options) -> dict[str, str]:
    """`cred: X` of the model as `X_<KEY>` variables; its git login for a `url` clone."""
    model = test.model
    if not model.cred:
        return {}
    env = options.credentials.model_variables(model.cred, model.name)
    if model.url:
        login = options.credentials.git_login(model.cred, model.name)
        if login.username:
            env["MAD_GIT_USERNAME"] = login.username
        if login.password:
            env["MAD_GIT_PASSWORD"] = login.password
        if login.ssh_key_file and not Path(login.ssh_key_file).expanduser().is_file():
            # Not on this host: a path inside the image, as madengine takes it.
            env["MAD_GIT_SSH_KEY"] = login.ssh_key_file
    return env


def _ssh_key(test: PlannedTest, options: Options) -> Path | None:
    model = test.model
    if not (model.url and model.cred):
        return None
    key = options.credentials.git_login(model.cred, model.name).ssh_key_file
    path = Path(key).expanduser() if key else None
    return path if path is not None and path.is_file() else None


def clone_dir(url: str) -> str:
    """The directory a `url` model runs in: the repository's name, as madengine has it."""
    name = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    name = name.removesuffix(".git")
    if not name or name in (".", "..") or name == STATE_DIR:
        raise MadError(f"url '{url}': no repository name in it")
    return name


def model_scripts(
    test: PlannedTest, options: Options
) -> tuple[tuple[Script, ...], tuple[Script, ...]]:
    """Pre and post scripts of the context and of the model entry: the context's pre
    scripts first and its post scripts last, so that they enclose the model's own."""
    context = options.effective_context
    root = options.root
    entry = test.model.entry
    model_where = f"model '{test.model.name}'"
    pre = parse_scripts(context.get("pre_scripts"), "context 'pre_scripts'", root)
    pre += parse_scripts(entry.get("pre_scripts"), f"{model_where}: 'pre_scripts'", root)
    post = parse_scripts(entry.get("post_scripts"), f"{model_where}: 'post_scripts'", root)
    post += parse_scripts(context.get("post_scripts"), "context 'post_scripts'", root)
    return pre, post


@dataclass(frozen=True)
class GpuAccess:
    """How a test's container sees its GPUs on its host."""

    count: int  # MAD_RUNTIME_NGPUS, and what the backend asks a scheduler for
    gpus: tuple[Gpu, ...]  # the leased GPUs; none when the cluster's scheduler picks
    mapped: bool  # whether the container really gets the devices (else they are virtual)
    devices: tuple[Device, ...] = ()
    group_add: tuple[str, ...] = ()
    nvidia_ids: tuple[int, ...] | None = None


def gpu_access(n_gpus: int, host: Host, gpus: Sequence[Gpu], vendor: str) -> GpuAccess:
    """The GPUs of a test asking for `n_gpus` (-1: all) on its host and lease."""
    if host.scheduler_checks_fit:
        # The cluster's scheduler judges the request, and its device plugin sets the
        # visibility variables: the test asks for its n_gpus, -1 being a whole node's.
        return GpuAccess(host.gpus.count if n_gpus < 0 else n_gpus, (), False)
    device_root = host.device_root or (None if host.gpus.virtual else "/dev")
    if vendor == "NVIDIA":
        mapped = bool(gpus) and not host.gpus.virtual
        ids = tuple(gpu.index for gpu in gpus) if mapped else None
        return GpuAccess(len(gpus), tuple(gpus), mapped, nvidia_ids=ids)
    mapped = bool(gpus) and device_root is not None
    if not mapped:
        return GpuAccess(len(gpus), tuple(gpus), False)
    devices = amd_devices(str(device_root), gpus)
    return GpuAccess(len(gpus), tuple(gpus), True, devices, ("video",))


def _command(test: PlannedTest, options: Options) -> tuple[str, tuple[str, ...]]:
    """(directory to copy in, argv) of the model's script with its args and parameters."""
    model = test.model
    args = options.effective_context.get("model_args") or model.args
    return script_command(
        model.scripts,
        parse_words(args, f"model '{model.name}': args")
        + parse_words(test.selected.extra_args, f"model '{model.name}': parameters"),
        # A url model's scripts may come with its repository: madengine's rule then.
        (options.root / model.scripts).is_dir()
        or (model.url is not None and not model.scripts.endswith((".sh", ".py"))),
    )


def _env(
    test: PlannedTest, options: Options, host: Host, access: GpuAccess, data: DataMount | None
) -> dict[str, str]:
    """The container's variables: madengine's MAD_*, GPU visibility, the data's, the
    context's, then the model's credentials."""
    model, context, vendor = test.model, options.effective_context, options.gpu_vendor
    env: dict[str, str] = {
        "MAD_MODEL_NAME": model.name,
        "MAD_GPU_VENDOR": vendor,
        "MAD_SYSTEM_NGPUS": str(host.gpus.count),
        "MAD_RUNTIME_NGPUS": str(access.count),
        "MAD_SYSTEM_GPU_ARCHITECTURE": host.architecture or context.gpu_architecture or "",
        "MAD_GUEST_OS": str(context.get("guest_os") or ""),
    }
    if access.gpus:
        env.update(visibility_env(vendor, access.gpus, access.mapped))
    if model.multiple_results:
        env["MAD_OUTPUT_CSV"] = model.multiple_results
    env.update(data.env if data else {})
    env.update({key: str(value) for key, value in context.get("docker_env_vars", {}).items()})
    env.update(_secret_env(test, options))
    return env


def _container_settings(context: RunContext) -> dict[str, Any]:
    """The RunSpec fields the context's docker_* keys set."""
    return {
        "binds": tuple(
            Bind(str(host), str(container))
            for container, host in context.get("docker_mounts", {}).items()
        ),
        "privileged": bool(context.get("docker_privileged", False)),
        "cap_add": tuple(context.get("docker_cap_add", ())),
        "cpuset_cpus": str(context.get("docker_cpus")) if context.get("docker_cpus") else None,
        "memory": str(context.get("docker_memory")) if context.get("docker_memory") else None,
        "network": context.get("docker_network") or "host",
        "ipc": context.get("docker_ipc") or "host",
    }


def _run_spec(
    test: PlannedTest,
    options: Options,
    host: Host,
    access: GpuAccess,
    argv: tuple[str, ...],
    named: RunNames,
) -> RunSpec:
    """What the backend runs: the image, command, variables and container settings."""
    root, data = options.root, named.data
    return RunSpec(
        image=named.image,
        image_id=named.image_id,
        command=argv,
        workdir=WORKSPACE,
        log_path=named.log_path,
        env=_env(test, options, host, access, data),
        labels={
            SESSION_LABEL: named.session_id,
            TEST_LABEL: named.test_id,
            MODEL_LABEL: test.model.name,
            CONTROLLER_LABEL: named.controller,
        },
        # A script at the tree's root copies the whole tree: never its secrets, its git
        # history, or our own output (logs of earlier sessions).
        copy_excludes=(
            root / "credential.json",
            root / ".git",
            *_resolved((options.output_dir, options.perf_csv)),
        ),
        copy_within=root,
        data=data.binds if data else (),
        devices=access.devices,
        group_add=access.group_add,
        nvidia_gpu_ids=access.nvidia_ids,
        gpu_count=access.count,
        timeout_s=named.timeout_s,
        log_notes=tuple(named.log_notes),
        secrets=options.credentials.secrets(),
        collect_to=options.workspace,
        collect_keep_out=_our_output(options),
        collect_ledger=options.output_dir / "collected.json",
        keep_alive=options.keep_alive,
        **_container_settings(options.effective_context),
    )


@dataclass(frozen=True)
class RunNames:
    """What names one run and where it writes: its image, ids, log, data and deadline."""

    image: str
    image_id: str | None
    session_id: str
    test_id: str
    log_path: Path
    data: DataMount | None
    controller: str
    log_notes: tuple[str, ...]
    timeout_s: float | None


def build_model_run(
    test: PlannedTest,
    options: Options,
    host: Host,
    *,
    image: str,
    image_id: str | None = None,
    gpus: Sequence[Gpu],
    session_id: str,
    test_id: str,
    log_path: Path,
    data: DataMount | None = None,
    controller: str = "",
    log_notes: Sequence[str] = (),
) -> ModelRun:
    """The container of one test on its host, and the steps run in it: the host's own
    GPU facts (device root, architecture) come from `host`, the user's settings from
    `options`."""
    model, context = test.model, options.effective_context
    script_dir, argv = _command(test, options)
    access = gpu_access(model.n_gpus, host, gpus, options.gpu_vendor)
    timeout_s = effective_timeout(
        model.timeout, options.timeout, float(context.get("timeout_multiplier") or 1.0)
    )
    named = RunNames(image, image_id, session_id, test_id, log_path, data, controller,
                     tuple(log_notes), timeout_s)  # fmt: skip
    pre, post = model_scripts(test, options)
    # madengine's context key: a command prefix of every model, inside the tools' own.
    encapsulate = str(context.get("encapsulate_script") or "").strip()
    return ModelRun(
        spec=_run_spec(test, options, host, access, argv, named),
        tree_root=options.root,
        script_dir=script_dir,
        argv=argv,
        timeout_line=timeout_line(timeout_s),
        model_dir=clone_dir(model.url) if model.url else RUN_DIRECTORY,
        keep_model_dir=options.keep_model_dir or options.keep_alive,
        clone_url=model.url,
        ssh_key=_ssh_key(test, options),
        pre_scripts=pre,
        post_scripts=post,
        wrappers=(encapsulate,) if encapsulate else (),
        skip_model=options.skip_model_run,
        result_file=model.multiple_results,
        # A multiple_results CSV is one file the next run overwrites: such models run once.
        repeat=1 if model.multiple_results else options.repeat or model.repeat or 1,
        warmup=0 if model.multiple_results else _warmup(model.warmup, options.warmup),
    )


def _warmup(own: int | None, option: int | None) -> int:
    return option if option is not None else own or 0


def _our_output(options: Options) -> tuple[Path, ...]:
    """Host paths that a run's files never land on (see RunSpec.collect_keep_out)."""
    ours = [options.output_dir, options.perf_csv, options.perf_csv.with_name("perf_super.csv")]
    if options.summary is not None:
        ours.append(options.summary)
    return _resolved(tuple(ours))


@functools.lru_cache(maxsize=16)
def _resolved(paths: tuple[Path, ...]) -> tuple[Path, ...]:
    """The session's own paths, their links resolved once, not for every test (a
    resolve is a system call per part of the path)."""
    return tuple(path.resolve() for path in paths)


def build_run_spec(test: PlannedTest, options: Options, host: Host, **facts: Any) -> RunSpec:
    """The backend's spec of a test, its steps rendered, without tools (see
    build_model_run for the arguments)."""
    return render(build_model_run(test, options, host, **facts))
