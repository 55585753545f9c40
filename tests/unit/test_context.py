"""Run context: defaults <- file <- JSON, validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_madengine.core.context import build_context
from pytest_madengine.errors import MadError


def test_defaults() -> None:
    context = build_context()
    assert context.get("guest_os") == "UBUNTU"
    assert context.get("timeout_multiplier") == 1.0
    assert context.gpu_vendor is None


def test_json_overrides_file_and_unknown_keys_are_kept(tmp_path: Path) -> None:
    file = tmp_path / "ctx.json"
    file.write_text(
        '{"gpu_vendor": "nvidia", "guest_os": "CENTOS", "custom": 1, "docker_env_vars": {"A": "1"}}'
    )
    context = build_context('{"guest_os": "UBUNTU", "docker_env_vars": {"B": "2"}}', file)
    assert context.get("docker_env_vars") == {"A": "1", "B": "2"}
    assert context.gpu_vendor == "NVIDIA"
    assert context.get("guest_os") == "UBUNTU"
    assert context.get("custom") == 1


def test_with_defaults_fills_only_missing_keys() -> None:
    context = build_context('{"gpu_vendor": "AMD"}').with_defaults(gpu_vendor="NVIDIA", x=None)
    assert context.gpu_vendor == "AMD" and "x" not in context.values


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"gpu_vendor": 3}', "--mad-context: 'gpu_vendor' must be one of AMD, NVIDIA, got 3"),
        (
            '{"docker_env_vars": {"A": [1]}}',
            "--mad-context: 'docker_env_vars' must be an object of strings, got {'A': [1]}",
        ),
        (
            '{"timeout_multiplier": 0}',
            "--mad-context: 'timeout_multiplier' must be a positive number, got 0",
        ),
        (
            '{"timeout_multiplier": true}',
            "--mad-context: 'timeout_multiplier' must be a positive number, got True",
        ),
        ('["a"]', "--mad-context: expected a JSON object, got list"),
        ('{"a": }', "--mad-context:1:7: invalid JSON: Expecting value"),
    ],
)
def test_bad_context_is_one_line(text: str, message: str) -> None:
    with pytest.raises(MadError) as caught:
        build_context(text)
    assert str(caught.value) == message


def test_missing_context_file(tmp_path: Path) -> None:
    with pytest.raises(MadError, match=r"--mad-context-file .*nope.json: No such file"):
        build_context(None, tmp_path / "nope.json")
