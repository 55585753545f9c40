"""From a planned test, the run context and its GPU lease to a backend-neutral RunSpec."""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from pytest_madengine.backends import (
    MODEL_LABEL,
    SESSION_LABEL,
    TEST_LABEL,
    Bind,
    Device,
    RunSpec,
)
from pytest_madengine.errors import MadError, read_json
from pytest_madengine.gpus import Gpu
from pytest_madengine.planning import PlannedTest
from pytest_madengine.session import Settings

WORKSPACE = "/myworkspace"
DATA_HOME = "/data"
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


def data_binds(
    model_data: str | None, data_sources: Mapping[str, object]
) -> tuple[tuple[Bind, ...], dict[str, str]]:
    """The mount and variables for a model's `data` key (data.json, `local` provider)."""
    if not model_data:
        return (), {}
    source = data_sources.get(model_data)
    if not isinstance(source, dict):
        raise MadError(f"data '{model_data}': no such entry in data.json")
    local = source.get("local")
    path = local.get("path") if isinstance(local, dict) else None
    if not path:
        providers = ", ".join(sorted(source)) or "none"
        raise MadError(
            f"data '{model_data}': only the 'local' provider is supported here (has: {providers})"
        )
    env = {"MAD_DATAHOME": DATA_HOME, "MAD_DATANAME": model_data}
    return (Bind(str(path), DATA_HOME, read_only=True),), env


def build_run_spec(
    test: PlannedTest,
    settings: Settings,
    *,
    image: str,
    gpus: Sequence[Gpu],
    session_id: str,
    test_id: str,
    log_path: Path,
    timeout_override: int | None = None,
    data_sources: Mapping[str, object] | None = None,
    secrets_env: Mapping[str, str] | None = None,
) -> RunSpec:
    model = test.model
    context = settings.effective_context
    root = settings.root.resolve()
    script_path = root / model.scripts
    copy_dir, argv = script_command(
        model.scripts,
        shlex.split(context.get("model_args") or model.args)
        + shlex.split(test.selected.extra_args),
        script_path.is_dir(),
    )
    container_dir = posixpath.join(WORKSPACE, posixpath.basename(copy_dir))
    vendor = settings.gpu_vendor
    device_root = context.get("gpu_device_root") or (None if settings.gpus.virtual else "/dev")
    # Whether the container really gets the devices (else the GPUs are virtual to it).
    if vendor == "NVIDIA":
        mapped = bool(gpus) and not settings.gpus.virtual
    else:
        mapped = bool(gpus) and device_root is not None

    env: dict[str, str] = {
        "MAD_MODEL_NAME": model.name,
        "MAD_GPU_VENDOR": vendor,
        "MAD_SYSTEM_NGPUS": str(settings.gpus.count),
        "MAD_RUNTIME_NGPUS": str(len(gpus)),
        "MAD_SYSTEM_GPU_ARCHITECTURE": context.gpu_architecture or "",
        "MAD_GUEST_OS": str(context.get("guest_os") or ""),
    }
    if gpus:
        env.update(visibility_env(vendor, gpus, mapped))
    result_files: tuple[str, ...] = ()
    if model.multiple_results:
        env["MAD_OUTPUT_CSV"] = model.multiple_results
        result_files = (posixpath.join(container_dir, model.multiple_results),)
    binds, data_env = data_binds(model.data, data_sources or {})
    env.update(data_env)
    env.update({key: str(value) for key, value in context.get("docker_env_vars", {}).items()})
    env.update(secrets_env or {})
    binds += tuple(
        Bind(str(host), str(container))
        for container, host in context.get("docker_mounts", {}).items()
    )

    devices: tuple[Device, ...] = ()
    group_add: tuple[str, ...] = ()
    nvidia_ids: tuple[int, ...] | None = None
    if mapped and vendor == "NVIDIA":
        nvidia_ids = tuple(gpu.index for gpu in gpus)
    elif mapped:
        devices, group_add = amd_devices(str(device_root), gpus), ("video",)

    return RunSpec(
        image=image,
        command=argv,
        workdir=container_dir,
        log_path=log_path,
        env=env,
        labels={SESSION_LABEL: session_id, TEST_LABEL: test_id, MODEL_LABEL: model.name},
        copies=((root / copy_dir, container_dir),),
        binds=binds,
        devices=devices,
        group_add=group_add,
        nvidia_gpu_ids=nvidia_ids,
        timeout_s=effective_timeout(
            model.timeout, timeout_override, float(context.get("timeout_multiplier") or 1.0)
        ),
        result_files=result_files,
        privileged=bool(context.get("docker_privileged", False)),
        cap_add=tuple(context.get("docker_cap_add", ())),
        cpuset_cpus=str(context.get("docker_cpus")) if context.get("docker_cpus") else None,
        network=context.get("docker_network") or "host",
        ipc=context.get("docker_ipc") or "host",
    )


def load_data_sources(root: Path) -> dict[str, object]:
    """data.json of the MAD tree ({} when there is none)."""
    path = root / "data.json"
    if not path.exists():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise MadError(f"{path}: expected a JSON object of data sources")
    return data
