"""Planning as madengine plans: every fitting Dockerfile, ctx_test, MAD_CONTAINER_IMAGE,
skip_gpu_arch waived on request; and the run options as parsed once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_madengine.core.options import RawOptions, parse_options
from pytest_madengine.core.session import MadSession
from pytest_madengine.errors import UsageProblem
from tests.conftest import entry, write_tree

ROCM_DOCKERFILE = "# CONTEXT {'gpu_vendor': 'AMD'}\nFROM mad-base/busybox:latest\n"
CTX_DOCKERFILE = "# CONTEXT {'ctx_test': 'yes'}\nFROM mad-base/busybox:latest\n"


def plan(tmp_path: Path, models: list, context: dict | None = None, **raw):
    files = {"docker/dummy.rocm.amd.Dockerfile": ROCM_DOCKERFILE,
             "docker/ctx.only.Dockerfile": CTX_DOCKERFILE}  # fmt: skip
    root = write_tree(tmp_path / "mad", models, files)
    options = parse_options(RawOptions(
        root=str(root), tags=("dummies",), context_json=json.dumps(context or {}),
        base_dir=tmp_path, environ={}, **raw,
    ))  # fmt: skip
    return options, MadSession(options).plan.tests


def test_every_fitting_dockerfile_is_a_test_named_by_it(tmp_path: Path) -> None:
    _, tests = plan(tmp_path, [entry("m", parametrize=[{"bs": "8"}])])
    assert [(t.name, t.image) for t in tests] == [
        ("m[bs=8,rocm.amd]", "ci-m_dummy.rocm.amd"),
        ("m[bs=8,ubuntu.amd]", "ci-m_dummy.ubuntu.amd"),
    ]
    # One fitting Dockerfile: the id stays as it was (the NVIDIA one does not fit AMD).
    _, [only] = plan(tmp_path / "n", [entry("m")], {"gpu_vendor": "NVIDIA"})
    assert (only.name, only.dockerfile.relpath) == ("m", "docker/dummy.ubuntu.nvidia.Dockerfile")


def test_ctx_test_is_read_from_the_working_directory(tmp_path: Path) -> None:
    _, [skipped] = plan(tmp_path / "a", [entry("c", dockerfile="docker/ctx")])
    assert skipped.dockerfile is None and "none of the 1 Dockerfile(s)" in skipped.skip_reason
    (tmp_path / "ctx_test").write_text("yes\n")
    options, [chosen] = plan(tmp_path, [entry("c", dockerfile="docker/ctx")])
    assert options.effective_context.get("ctx_test") == "yes"
    assert (
        chosen.dockerfile is not None and chosen.dockerfile.relpath == "docker/ctx.only.Dockerfile"
    )


def test_mad_container_image_plans_one_test_per_model_and_no_build(tmp_path: Path) -> None:
    _, [test] = plan(tmp_path, [entry("m")], {"MAD_CONTAINER_IMAGE": "rocm/pytorch:latest"})
    assert (test.name, test.image, test.dockerfile, test.skip_reason) == (
        "m", "rocm/pytorch:latest", None, None
    )  # fmt: skip
    assert "(MAD_CONTAINER_IMAGE)" in test.describe()


def test_skip_gpu_arch_is_waived_on_request(tmp_path: Path) -> None:
    models = [entry("m", skip_gpu_arch="gfx90a")]
    context = {"gpu_architecture": "gfx90a"}
    both = ["m[rocm.amd]", "m[ubuntu.amd]"]  # the two AMD Dockerfiles
    _, tests = plan(tmp_path / "a", models, context)
    assert [t.name for t in tests] == both
    assert all("skip_gpu_arch lists gfx90a" in (t.skip_reason or "") for t in tests)
    options, tests = plan(tmp_path / "b", models, context, disable_skip_gpu_arch=True)
    assert [t.name for t in tests] == both
    assert options.disable_skip_gpu_arch and all(t.skip_reason is None for t in tests)


def test_run_options_are_parsed_once(tmp_path: Path) -> None:
    options, _ = plan(
        tmp_path, [entry("m")], {"docker_gpus": "1,3"}, keep_alive=True, keep_model_dir=True,
        skip_model_run=True, force_mirror_local="mirror",
    )  # fmt: skip
    assert (options.keep_alive, options.keep_model_dir, options.skip_model_run) == (True,) * 3
    assert options.force_mirror_local == tmp_path / "mirror"
    assert options.gpus.ids == (1, 3) and options.workspace == tmp_path
    # docker_gpus names ids ("1" is GPU 1, not one GPU), as madengine reads it.
    options, _ = plan(tmp_path / "one", [entry("m")], {"docker_gpus": "1"})
    assert options.gpus.ids == (1,)


def test_a_bad_tools_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "tools.json").write_text('{"tools": {"t": {"cmd": 5}}}')
    with pytest.raises(UsageProblem, match=r"tools.json: tool 't': 'cmd' must be a string"):
        plan(tmp_path, [entry("m")], tools_file="tools.json")
