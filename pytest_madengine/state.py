"""What the plugin keeps for one pytest session (the pytest side of the core's MadSession)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_madengine.backends import OutputSink
from pytest_madengine.credentials import Credentials
from pytest_madengine.hosts import Host, HostLinks
from pytest_madengine.manifest import BuildManifest
from pytest_madengine.reporting.perf_csv import PerfCsv
from pytest_madengine.session import MadSession


@dataclass
class MadState:
    mad: MadSession
    session_id: str  # the same on the controller and every xdist worker
    git_commit: str  # of the MAD tree, for perf.csv
    output_dir: Path
    perf_csv: PerfCsv | None  # None on xdist workers: only the controller writes reports
    hosts: list[Host] = field(default_factory=list)
    hosts_down: dict[str, str] = field(default_factory=dict)  # name -> why, found at start
    links: HostLinks = field(default_factory=HostLinks)  # SSH tunnels, shared with workers
    manifest: BuildManifest | None = None  # images come from it, not from builds
    credentials: Credentials = field(default_factory=Credentials)
    retries: int = 1  # placements more after a host is lost mid-run
    summary_path: Path | None = None
    live_output: OutputSink | None = None
    # Filled on the controller as reports arrive: (test name, status, properties, rows).
    results: list[dict[str, object]] = field(default_factory=list)


MAD_STATE = pytest.StashKey[MadState]()
