"""GPU inventory from vendor tool output, and declared GPUs."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from pytest_madengine.errors import MadError
from pytest_madengine.resources.gpus import Gpu, detect, inventory, parse_gpu_ids


def probe_with(outputs: dict[str, str]):
    def probe(argv: Sequence[str]) -> str | None:
        return outputs.get(argv[0])

    return probe


NVIDIA_SMI = "0, NVIDIA H100 80GB HBM3\n1, NVIDIA H100 80GB HBM3\n"
ROCM_SMI = json.dumps(
    {
        "card1": {"Card series": "AMD Instinct MI250X", "GFX Version": "gfx90a"},
        "card0": {"Card series": "AMD Instinct MI250X", "GFX Version": "gfx90a"},
    }
)
AMD_SMI = json.dumps(
    [
        {"gpu": 0, "asic": {"target_graphics_version": "gfx942"}},
        {"gpu": 1, "asic": {"target_graphics_version": "gfx942"}},
    ]
)


@pytest.mark.parametrize(
    ("spec", "ids"),
    [("4", (0, 1, 2, 3)), ("0", ()), ("0,2-3", (0, 2, 3)), ("5,", (5,)), ("", ())],
)
def test_parse_gpu_ids(spec: str, ids: tuple[int, ...]) -> None:
    assert parse_gpu_ids(spec) == ids


@pytest.mark.parametrize("spec", ["a,b", "1,1", "3-x", "3-1", "10000000", "0,5000", "-2"])
def test_bad_gpu_ids(spec: str) -> None:
    with pytest.raises(MadError, match=r"--mad-gpus"):
        parse_gpu_ids(spec)


def test_detects_nvidia() -> None:
    found = detect(probe_with({"nvidia-smi": NVIDIA_SMI}))
    assert found.gpus == (
        Gpu(0, "NVIDIA", "NVIDIA H100 80GB HBM3"),
        Gpu(1, "NVIDIA", "NVIDIA H100 80GB HBM3"),
    )
    assert (found.source, found.virtual) == ("nvidia-smi", False)


def test_detects_amd_through_amd_smi_then_rocm_smi() -> None:
    assert detect(probe_with({"amd-smi": AMD_SMI})).architecture == "gfx942"
    found = detect(probe_with({"rocm-smi": ROCM_SMI, "amd-smi": "not json"}))
    assert found.ids == (0, 1) and found.architecture == "gfx90a" and found.source == "rocm-smi"


def test_nothing_detected() -> None:
    assert detect(probe_with({})).describe() == "no GPU"


def test_declared_without_real_gpus_are_virtual() -> None:
    declared = inventory("0,2", "NVIDIA", "sm_90", probe_with({}))
    assert declared.virtual and declared.ids == (0, 2) and declared.vendor == "NVIDIA"
    assert declared.describe() == "2 virtual NVIDIA sm_90 GPU(s) [0,2] (declared)"


def test_declared_on_real_gpus_narrows_them() -> None:
    first = inventory("1", None, None, probe_with({"nvidia-smi": NVIDIA_SMI}))
    assert first.ids == (0,) and not first.virtual
    second = inventory("1,", None, None, probe_with({"nvidia-smi": NVIDIA_SMI}))
    assert second.ids == (1,) and second.source == "nvidia-smi"


def test_declared_ids_must_exist_on_real_gpus() -> None:
    with pytest.raises(MadError, match=r"--mad-gpus '0,5': no GPU 5 on this host"):
        inventory("0,5", None, None, probe_with({"nvidia-smi": NVIDIA_SMI}))
