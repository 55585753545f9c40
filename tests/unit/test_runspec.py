"""From a planned test to the container: command, env, devices, SDK arguments."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import docker.types
import pytest

from pytest_madengine.backends import SESSION_LABEL, DataBind, Device
from pytest_madengine.backends.docker.containers import create_kwargs
from pytest_madengine.core.options import RawOptions, parse_options
from pytest_madengine.core.runspec import (
    build_model_run,
    effective_timeout,
    script_command,
    visibility_env,
)
from pytest_madengine.core.session import MadSession
from pytest_madengine.data import DataMissing, DataMount, resolve_data
from pytest_madengine.errors import MadError
from pytest_madengine.resources.gpus import Gpu, GpuInventory
from pytest_madengine.resources.hosts import local_host
from pytest_madengine.workspace import render
from tests.conftest import entry, write_tree


def run_for(tmp_path: Path, context: str, gpus: GpuInventory, lease: int = 1, **fields):
    root = write_tree(tmp_path, [entry("alpha", **fields)])
    raw = RawOptions(root=str(root), tags=("alpha",), context_json=context, base_dir=tmp_path)
    options = dataclasses.replace(parse_options(raw), gpus=gpus)
    test = MadSession(options).plan.tests[0]
    host = local_host(gpus, options.context.get("gpu_device_root"))
    return build_model_run(
        test, options, host, image="img", gpus=gpus.gpus[:lease], session_id="s1",
        test_id="models.json::alpha", log_path=tmp_path / "alpha.log",
    )  # fmt: skip


def spec_for(tmp_path: Path, context: str, gpus: GpuInventory, lease: int = 1, **fields):
    return render(run_for(tmp_path, context, gpus, lease, **fields))


def amd(count: int, virtual: bool = True) -> GpuInventory:
    return GpuInventory(tuple(Gpu(i, "AMD", "gfx942") for i in range(count)), "declared", virtual)


def nvidia(count: int, virtual: bool = False) -> GpuInventory:
    gpus = tuple(Gpu(i, "NVIDIA", "NVIDIA H100") for i in range(count))
    return GpuInventory(gpus, "nvidia-smi", virtual)


def test_timeouts() -> None:
    assert effective_timeout(60, None, 1.0) == 60
    assert effective_timeout(60, 10, 2.0) == 20
    assert effective_timeout(0, None, 3.0) is None
    assert effective_timeout(60, 0, 1.0) is None


def test_script_kinds() -> None:
    assert script_command("scripts/a/run.sh", ["--x", "1"], False) == (
        "scripts/a",
        ("bash", "run.sh", "--x", "1"),
    )
    assert script_command("scripts/a/m.py", [], False) == ("scripts/a", ("python3", "m.py"))
    assert script_command("scripts/a", [], True) == ("scripts/a", ("bash", "run.sh"))
    with pytest.raises(MadError, match=r"scripts 'scripts/a/x.rb': expected a .sh or .py"):
        script_command("scripts/a/x.rb", [], False)


def test_visibility_counts_from_zero_when_devices_are_mapped() -> None:
    gpus = [Gpu(2, "AMD"), Gpu(3, "AMD")]
    assert visibility_env("AMD", gpus, mapped=True) == {
        "MAD_HOST_GPU_IDS": "2,3",
        "HIP_VISIBLE_DEVICES": "0,1",
        "ROCR_VISIBLE_DEVICES": "0,1",
    }
    assert visibility_env("NVIDIA", gpus, mapped=False) == {
        "MAD_HOST_GPU_IDS": "2,3",
        "CUDA_VISIBLE_DEVICES": "2,3",
        "NVIDIA_VISIBLE_DEVICES": "2,3",
    }


def test_spec_env_labels_command_and_copies(tmp_path: Path) -> None:
    run = run_for(
        tmp_path, '{"docker_env_vars": {"EXTRA": "1"}, "timeout_multiplier": 2}', amd(2),
        args="--batch_size 8", timeout=30,
    )  # fmt: skip
    assert run.argv == ("bash", "run.sh", "--batch_size", "8")
    assert run.timeout_line == "Setting timeout to 60 seconds."
    spec = render(run)
    assert spec.command[:2] == ("sh", ".madengine/run.sh") and spec.workdir == "/myworkspace"
    assert (tmp_path / "scripts/dummy", "/myworkspace/scripts/dummy") in spec.copies
    assert spec.timeout_s == 60
    assert spec.labels[SESSION_LABEL] == "s1"
    assert {k: spec.env[k] for k in ("MAD_MODEL_NAME", "MAD_GPU_VENDOR", "MAD_SYSTEM_NGPUS",
                                      "MAD_RUNTIME_NGPUS", "MAD_GUEST_OS", "EXTRA")} == {
        "MAD_MODEL_NAME": "alpha", "MAD_GPU_VENDOR": "AMD", "MAD_SYSTEM_NGPUS": "2",
        "MAD_RUNTIME_NGPUS": "1", "MAD_GUEST_OS": "UBUNTU", "EXTRA": "1",
    }  # fmt: skip
    # Virtual AMD GPUs without a device root: nothing mapped, host ids visible.
    assert spec.devices == () and spec.env["HIP_VISIBLE_DEVICES"] == "0"
    assert not spec.privileged and spec.cap_add == ()


def test_encapsulate_script_of_the_context_is_the_innermost_prefix(tmp_path: Path) -> None:
    run = run_for(tmp_path, '{"encapsulate_script": "numactl --interleave=all"}', amd(1))
    assert run.wrappers == ("numactl --interleave=all",)


def test_cred_variables_and_git_login_reach_the_run(tmp_path: Path) -> None:
    (tmp_path / "credential.json").write_text(
        '{"GITLAB": {"username": "ci", "password": "t0ken-not-real"}}'
    )
    run = run_for(tmp_path, "{}", amd(1), cred="GITLAB", url="https://git.example/team/m.git")
    env = run.spec.env
    assert (env["GITLAB_USERNAME"], env["GITLAB_PASSWORD"]) == ("ci", "t0ken-not-real")
    assert (env["MAD_GIT_USERNAME"], env["MAD_GIT_PASSWORD"]) == ("ci", "t0ken-not-real")
    assert "t0ken-not-real" in run.spec.secrets
    assert (run.model_dir, run.clone_url) == ("m", "https://git.example/team/m.git")


def test_an_ssh_key_file_on_this_host_is_copied_in_for_the_clone(tmp_path: Path) -> None:
    key = tmp_path / "id_test"
    key.write_text("not a real key\n")
    (tmp_path / "credential.json").write_text(
        f'{{"GIT": {{"username": "git", "ssh_key_file": "{key}"}}}}'
    )
    spec = spec_for(tmp_path, "{}", amd(1), cred="GIT", url="ssh://git@example/m.git")
    assert (key, "/myworkspace/.madengine/ssh_key") in spec.copies
    assert spec.env["MAD_GIT_SSH_KEY"] == "/myworkspace/.madengine/ssh_key"


def test_model_args_from_context_replace_the_entry_args(tmp_path: Path) -> None:
    run = run_for(tmp_path, '{"model_args": "--epochs 1"}', amd(1), args="--batch_size 8")
    assert run.argv == ("bash", "run.sh", "--epochs", "1")


def test_amd_devices_from_a_device_root(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, '{"gpu_device_root": "/fake/dev"}', amd(4), lease=2)
    assert spec.devices == (
        Device("/fake/dev/kfd", "/dev/kfd"),
        Device("/fake/dev/dri/renderD128", "/dev/dri/renderD128"),
        Device("/fake/dev/dri/renderD129", "/dev/dri/renderD129"),
    )
    assert spec.group_add == ("video",)
    kwargs = create_kwargs(spec)
    assert kwargs["devices"][0] == "/fake/dev/kfd:/dev/kfd:rwm"
    assert kwargs["group_add"] == ["video"] and "device_requests" not in kwargs


def test_nvidia_gets_a_device_request_for_its_gpus(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, '{"gpu_vendor": "NVIDIA"}', nvidia(4), lease=2)
    kwargs = create_kwargs(spec)
    assert kwargs["device_requests"] == [
        docker.types.DeviceRequest(driver="nvidia", device_ids=["0", "1"], capabilities=[["gpu"]])
    ]
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "0,1" and spec.env["NVIDIA_VISIBLE_DEVICES"] == "0,1"
    assert "devices" not in kwargs and "group_add" not in kwargs and kwargs["privileged"] is False


def test_virtual_nvidia_gpus_get_no_device_request(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, '{"gpu_vendor": "NVIDIA"}', nvidia(2, virtual=True))
    assert "device_requests" not in create_kwargs(spec)


def test_privileges_and_mounts_only_when_the_context_asks(tmp_path: Path) -> None:
    spec = spec_for(
        tmp_path,
        '{"docker_privileged": true, "docker_cap_add": ["SYS_PTRACE"],'
        ' "docker_mounts": {"/ctr": "/host"}}',
        amd(1),
    )
    kwargs = create_kwargs(spec)
    assert kwargs["privileged"] is True and kwargs["cap_add"] == ["SYS_PTRACE"]
    # A bind mount, not a volume: the engine refuses a host path that does not exist.
    assert kwargs["mounts"] == [docker.types.Mount("/ctr", "/host", type="bind", read_only=False)]
    assert "volumes" not in kwargs


def test_host_network_and_ipc_as_madengine_unless_the_context_says_otherwise(
    tmp_path: Path,
) -> None:
    default = create_kwargs(spec_for(tmp_path / "a", "{}", amd(1)))
    assert (default["network_mode"], default["ipc_mode"]) == ("host", "host")
    own = create_kwargs(
        spec_for(tmp_path / "b", '{"docker_network": "bridge", "docker_ipc": "private"}', amd(1))
    )
    assert (own["network_mode"], own["ipc_mode"]) == ("bridge", "private")


def test_local_data_is_mounted_at_datahome_read_only_and_never_created(tmp_path: Path) -> None:
    (tmp_path / "imagenet").mkdir()
    sources = {"imagenet": {"local": {"path": str(tmp_path / "imagenet")}}}
    mount = resolve_data("imagenet", sources)
    assert mount == DataMount(
        "local",
        (DataBind(str(tmp_path / "imagenet"), "/data_dlm_0", name="imagenet"),),
        {"MAD_DATAHOME": "/data_dlm_0", "MAD_DATANAME": "imagenet"},
        source=str(tmp_path / "imagenet"),
    )
    context = '{"docker_mounts": {"/ctr": "/host"}}'
    spec = dataclasses.replace(spec_for(tmp_path / "t", context, amd(1)), data=mount.binds)
    own, bound = create_kwargs(spec)["mounts"]
    assert own == docker.types.Mount("/ctr", "/host", type="bind", read_only=False)
    # A Mount, beside the context's: Docker fails on a missing path instead of making it.
    assert bound == docker.types.Mount("/data_dlm_0", str(tmp_path / "imagenet"), type="bind",
                                       read_only=True)  # fmt: skip
    assert create_kwargs(spec, {"k": "vol"})["mounts"] == [own, bound]  # no key: a path
    keyed = dataclasses.replace(spec, data=(DataBind("/cache/abc", "/d", "abc"),))
    assert create_kwargs(keyed, {"abc": "mad-data-abc-1"})["mounts"] == [
        own,
        docker.types.Mount("/d", "mad-data-abc-1", type="volume", read_only=True),
    ]
    missing = {"x": {"local": {"path": str(tmp_path / "nowhere")}}}
    with pytest.raises(DataMissing, match=r"data .x.: no provider serves it \(local: .*nowhere"):
        resolve_data("x", missing)
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(MadError, match=r"data 'y': no such entry in data.json"):
        resolve_data("y", {})
