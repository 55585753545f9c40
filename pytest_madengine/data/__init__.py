"""Where a model's data comes from: providers behind one interface and a registry.

A model with `data: <name>` names an entry of the tree's data.json; each key of the
entry (`local`, `nas`, `minio`, `aws`...) names a provider and holds its source. The
providers are tried in the entry's order and the first that can serve wins. Providers
are found by name in the entry-point group `pytest_madengine.data_providers`:

    [project.entry-points."pytest_madengine.data_providers"]
    myfs = "mypackage.data:MyFsProvider"     # a class: MyFsProvider() -> DataProvider
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from pytest_madengine.backends import Bind
from pytest_madengine.errors import MadError

ENTRY_POINT_GROUP = "pytest_madengine.data_providers"
DATA_HOME = "/data"
# Keys of a data.json entry that are settings, not providers.
ENTRY_SETTINGS = ("home", "mirrorlocal")


class DataUnavailable(MadError):
    """This provider cannot serve the data (source missing, server down...): try the next."""


@dataclass(frozen=True)
class DataMount:
    """How the data reaches the container, and what perf.csv records of it."""

    provider: str
    binds: tuple[Bind, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    size_bytes: int | None = None
    download_s: float | None = None


class DataProvider(Protocol):
    name: str

    def mount(self, data_name: str, source: Any, home: str) -> DataMount:
        """The data of `source` (the provider's value in the entry) at `home` in the
        container; DataUnavailable with a one-line reason when it cannot."""
        ...


@functools.cache
def providers() -> dict[str, DataProvider]:
    """Every installed provider, by name (ours are registered the same way)."""
    found: dict[str, DataProvider] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        provider = point.load()()
        found[point.name] = provider
    return found


def resolve_data(data_name: str, sources: Mapping[str, Any]) -> DataMount:
    """The first provider of the entry that serves the data; MadError naming the entry
    and each provider's reason when none does."""
    entry = sources.get(data_name)
    if not isinstance(entry, dict):
        raise MadError(f"data '{data_name}': no such entry in data.json")
    home = str(entry.get("home") or DATA_HOME)
    installed = providers()
    reasons = []
    for provider_name, source in entry.items():
        if provider_name in ENTRY_SETTINGS:
            continue
        provider = installed.get(provider_name)
        if provider is None:
            reasons.append(f"{provider_name}: no such provider installed")
            continue
        try:
            return provider.mount(data_name, source, home)
        except DataUnavailable as exc:
            reasons.append(f"{provider_name}: {exc}")
    tried = "; ".join(reasons) or "the entry names no provider"
    raise MadError(f"data '{data_name}': no provider can serve it ({tried})")
