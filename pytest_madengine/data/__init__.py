"""Where a model's data comes from: providers behind one interface and a registry.

A model with `data: <name>` names an entry of the tree's data.json; each key of the
entry (`local`, `nas`, `minio`, `aws`...) names a provider and holds its source. The
providers are tried in the entry's order and the first that can serve wins; when none
can, the model runs without its data and its log says why (as madengine does).
Providers are found by name in the entry-point group `pytest_madengine.data_providers`:

    [project.entry-points."pytest_madengine.data_providers"]
    myfs = "mypackage.data:MyFsProvider"     # a class: MyFsProvider() -> DataProvider

`nas`, `minio` and `aws` fetch on this machine into a cache (see `cache.DataCache`):
one download however many tests, workers or sessions need it, checked against the
server's listing before each use.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pytest_madengine.contract import DataBind
from pytest_madengine.credentials import Credentials
from pytest_madengine.errors import MadError
from pytest_madengine.registry import registered

ENTRY_POINT_GROUP = "pytest_madengine.data_providers"
# madengine's MAD_DATAHOME: /data_dlm and the provider's index (0 for a model's one dataset).
DATA_HOME = "/data_dlm_0"
# Keys of a data.json entry that are settings, not providers.
ENTRY_SETTINGS = ("home", "mirrorlocal")


class DataUnavailable(MadError):
    """This provider cannot serve the data (source missing, server down...): try the next."""


class DataMissing(MadError):
    """No provider of the entry serves the data: the model runs without it."""

    def __init__(self, data_name: str, reasons: tuple[str, ...]) -> None:
        tried = "; ".join(reasons) or "the entry names no provider"
        super().__init__(f"data '{data_name}': no provider serves it ({tried})")
        self.data_name = data_name
        self.reasons = reasons  # "<provider>: <why>", one per provider tried

    def log_lines(self) -> tuple[str, ...]:
        """What the model's log says: a line per provider, then the outcome."""
        own = tuple(f"data '{self.data_name}': {reason}" for reason in self.reasons)
        return (*own, f"data '{self.data_name}': no provider serves it;"
                      " the model runs without its data")  # fmt: skip


@dataclass(frozen=True)
class DataProgress:
    """A download under way (`finished` once, at its end), for a progress display."""

    data_name: str
    provider: str
    source: str
    done: int  # bytes
    total: int
    elapsed_s: float
    finished: bool = False

    def describe(self) -> str:
        """One line: bytes so far and the rate, or the whole download at its end."""
        mib = 1 << 20
        rate = self.done / mib / self.elapsed_s if self.elapsed_s > 0 else 0.0
        what = f"data '{self.data_name}' ({self.provider} {self.source})"
        if self.finished:
            return (f"{what}: {self.done / mib:.1f} MiB downloaded in {self.elapsed_s:.2f} s"
                    f" ({rate:.1f} MiB/s)")  # fmt: skip
        return f"{what}: {self.done / mib:.1f} of {self.total / mib:.1f} MiB, {rate:.1f} MiB/s"


ProgressSink = Callable[[DataProgress], None]


@dataclass(frozen=True)
class DataMount:
    """How the data reaches the container, and what perf.csv records of it."""

    provider: str
    binds: tuple[DataBind, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    size_bytes: int | None = None
    download_s: float | None = None  # None: nothing is downloaded; 0.0: a copy was there
    source: str = ""  # where the data comes from, for logs: s3://..., user@host:/path
    fetched: bool = False  # this call downloaded it
    # What the log says before the mount: why a cached copy was fetched again or not
    # checked, and files of the source that could not be copied.
    notes: tuple[str, ...] = ()


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where fetched datasets live when nothing says otherwise: the user's cache, so
    that later sessions reuse them."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME") or Path.home(), ".cache"))
    return Path(base) / "pytest-madengine" / "data"


@dataclass(frozen=True)
class DataSettings:
    """What every provider of a session gets besides its source."""

    credentials: Credentials = field(default_factory=Credentials)
    root: Path = field(default_factory=Path.cwd)  # the MAD tree: relative paths start here
    cache_dir: Path = field(default_factory=default_cache_dir)
    force_mirror_local: Path | None = None  # --mad-force-mirror-local: over any mirrorlocal
    progress: ProgressSink | None = None


@dataclass(frozen=True)
class DataRequest:
    """One provider's part of a data.json entry, with the session's settings."""

    data_name: str
    source: Any  # the provider's value in the entry
    home: str  # MAD_DATAHOME in the container
    mirror_dir: Path  # where fetched copies live (the cache, or mirrorlocal)
    settings: DataSettings

    @property
    def env(self) -> dict[str, str]:
        return {"MAD_DATAHOME": self.home, "MAD_DATANAME": self.data_name}


class DataProvider(Protocol):
    name: str

    def mount(self, request: DataRequest) -> DataMount:
        """The data of `request.source` at `request.home` in the container;
        DataUnavailable with a one-line reason (never a secret) when it cannot."""
        ...


@functools.cache
def providers() -> dict[str, DataProvider]:
    """Every installed provider, by name (ours are registered the same way)."""
    found: dict[str, DataProvider] = {}
    for point in registered(ENTRY_POINT_GROUP):
        provider = point.load()()
        found[point.name] = provider
    return found


def mirror_dir(entry: Mapping[str, Any], source: Any, settings: DataSettings) -> Path:
    """Where a provider's fetched copies live: force-mirror-local, else the
    `mirrorlocal` of its source (where madengine reads it), else the entry's (where
    FORMATS.md puts it), else the cache."""
    if settings.force_mirror_local is not None:
        return settings.force_mirror_local
    for holder in (source, entry):
        mirror = holder.get("mirrorlocal") if isinstance(holder, Mapping) else None
        if isinstance(mirror, str) and mirror:
            return settings.root / mirror  # an absolute one stays as it is
    return settings.cache_dir


def resolve_data(
    data_name: str, sources: Mapping[str, Any], settings: DataSettings | None = None
) -> DataMount:
    """The first provider of the entry that serves the data. DataMissing (with each
    provider's reason) when none does; MadError when the entry itself is wrong."""
    settings = settings or DataSettings()
    entry = sources.get(data_name)
    if entry is None:
        raise MadError(f"data '{data_name}': no such entry in data.json")
    if not isinstance(entry, dict):
        raise MadError(f"data '{data_name}': the data.json entry must be an object")
    home = entry.get("home") or DATA_HOME
    if not isinstance(home, str) or not home.startswith("/"):
        raise MadError(f"data '{data_name}': 'home' must be an absolute container path")
    installed = providers()
    reasons = []
    for provider_name, source in entry.items():
        if provider_name in ENTRY_SETTINGS:
            continue
        provider = installed.get(provider_name)
        if provider is None:
            reasons.append(f"{provider_name}: no such provider installed")
            continue
        mirror = mirror_dir(entry, source, settings)
        request = DataRequest(data_name, source, home, mirror, settings)
        try:
            return provider.mount(request)
        except DataUnavailable as exc:
            reasons.append(f"{provider_name}: {exc}")
    raise DataMissing(data_name, tuple(reasons))
