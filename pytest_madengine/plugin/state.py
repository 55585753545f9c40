"""What the plugin keeps for one pytest process, in the config's stash."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_madengine.core.options import Options
from pytest_madengine.core.records import BuildRecord, TestRecord
from pytest_madengine.core.session import MadSession, Session


@dataclass(frozen=True)
class PluginState:
    options: Options
    mad: MadSession
    session_id: str  # the same on the controller and every xdist worker
    session_dir: Path  # shared by the controller and its workers
    worker: bool
    runtime: Session | None  # None under --collect-only: nothing runs
    # Called while an item waits for a test that runs ahead (writes its live output).
    on_wait: Callable[[], None] | None = None


STATE = pytest.StashKey[PluginState]()
RECORD = pytest.StashKey[TestRecord]()  # on an item, once its benchmark ran
BUILD_RECORD = pytest.StashKey[BuildRecord]()  # on a build item, once its image was built


def plugin_state(config: pytest.Config) -> PluginState | None:
    return config.stash.get(STATE, None)
