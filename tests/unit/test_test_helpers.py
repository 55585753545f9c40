"""The suite's own helpers: a missing component fails the suite under CI, however the CI
system spells it, and is skipped on a developer's machine."""

from __future__ import annotations

import pytest

from tests.conftest import component_missing


@pytest.mark.parametrize("value", ["true", "True", "TRUE", "1", "yes", " on "])
def test_a_missing_component_fails_under_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    # Skipped and Failed are BaseExceptions: caught alike, so that a skip reads as a miss.
    with pytest.raises(BaseException, match="engine needed") as ended:
        component_missing("engine needed")
    assert ended.type is pytest.fail.Exception


@pytest.mark.parametrize("value", [None, "", "0", "false", "False", "no"])
def test_a_missing_component_is_skipped_elsewhere(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(BaseException, match="engine needed") as ended:
        component_missing("engine needed")
    assert ended.type is pytest.skip.Exception
