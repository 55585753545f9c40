"""What the controller costs per test on a fleet: a simulated one, so only our own code
is measured (issue #23).

A backend of this bench's own, installed through the `pytest_madengine.backends` entry
points exactly as a third party's would be (a module and its dist-info in a temporary
directory on PYTHONPATH), stands for 125 hosts of 8 GPUs: each run ends at once and its
log holds one performance line. N generated models (N = 1,000, 3,000, 10,000) run in
one process with `--mad-concurrency auto` and in `-n 4`, each with `--junitxml`; for
each: wall, tests/s, peak RSS (the largest process, from getrusage of the children),
against bare pytest's floor for the same N (N trivial parametrized tests, `--junitxml`,
no plugin loaded) measured in the same run. The ratios printed are those of issue #23's
"Done when": wall / floor <= 10 and wall(10,000) / wall(1,000) <= 11 in one process.

    python bench/scale.py [--quick]     # --quick: N = 1,000 only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from benchtree import CHILD_ENV, write_bench_tree

HOSTS, GPUS_PER_HOST = 125, 8
SIZES = (1_000, 3_000, 10_000)

# The simulated fleet: every run "ends" as it starts, with one performance line.
FLEET_BACKEND = f"""
import time
from pytest_madengine.backends import ImageFacts, RunOutcome
from pytest_madengine.resources.gpus import Gpu, GpuInventory
from pytest_madengine.resources.hosts import Host

PERFORMANCE = b"performance: 1 samples_per_second\\n"
HOSTS = tuple(
    Host(f"fleet-{{n:03d}}", f"tcp://fleet-{{n:03d}}.invalid:2376",
         GpuInventory(tuple(Gpu(i, "AMD", "gfx942") for i in range({GPUS_PER_HOST})),
                      "declared", virtual=True))
    for n in range(1, {HOSTS} + 1)
)

class Ended:
    def __init__(self, spec, host):
        now = time.time()
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        spec.log_path.write_bytes(PERFORMANCE)
        self.outcome = RunOutcome(0, False, spec.log_path, now, now, host.name)
    def wait(self):
        return self.outcome
    def cancel(self):
        pass

class FleetBackend:
    name = "fleetsim"
    def __init__(self, setup):
        pass
    def hosts(self):
        return HOSTS
    def hosts_down(self):
        return {{}}
    def shared_state(self):
        return {{}}
    def prepare(self, request, host, on_output=None):
        return ImageFacts(request.name, "sha256:simulated")
    def start(self, spec, host, on_output):
        return Ended(spec, host)
    def sweep(self, session_id):
        return 0
    def close(self):
        pass

def create(setup):
    return FleetBackend(setup)
"""

# Runs a command and reports its wall time and its largest process's peak RSS.
MEASURE = textwrap.dedent("""
    import json, resource, subprocess, sys, time
    start = time.perf_counter()
    done = subprocess.run(sys.argv[2:], capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(sys.argv[1], "w") as out:
        json.dump({"wall": wall, "rss_kb": peak_kb, "rc": done.returncode,
                   "tail": (done.stdout + done.stderr)[-3000:]}, out)
""")

FLOOR_TEST = textwrap.dedent("""
    import pytest

    @pytest.mark.parametrize("case", range({n}))
    def test_floor(case):
        pass
""")


@dataclass(frozen=True)
class Figure:
    wall: float
    rss_mb: float
    tests: int

    @property
    def rate(self) -> float:
        return self.tests / self.wall


def install_fleet_backend(site: Path) -> None:
    """The backend module and its distribution metadata, as `pip install` leaves them."""
    site.mkdir(parents=True)
    (site / "fleetsim.py").write_text(FLEET_BACKEND)
    info = site / "fleetsim-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fleetsim\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[pytest_madengine.backends]\nfleetsim = fleetsim:create\n"
    )


def measure(argv: list[str], cwd: Path, env: dict[str, str], junit: Path, n: int) -> Figure:
    """Runs pytest in a fresh measuring process; every one of the n tests must pass."""
    report = cwd.parent / f"{cwd.name}.json"
    subprocess.run([sys.executable, "-c", MEASURE, str(report), *argv], cwd=cwd, env=env,
                   check=True)  # fmt: skip
    facts = json.loads(report.read_text())
    passed = sum(
        1
        for case in ElementTree.parse(junit).iter("testcase")
        if not any(child.tag in ("failure", "error", "skipped") for child in case)
    )
    if facts["rc"] != 0 or passed != n:
        sys.exit(f"bench: {' '.join(argv)}: rc {facts['rc']}, {passed}/{n} passed:\n"
                 f"{facts['tail']}")  # fmt: skip
    return Figure(facts["wall"], facts["rss_kb"] / 1024, n)


def floor(work: Path, n: int) -> Figure:
    """Bare pytest: n trivial parametrized tests with --junitxml, no plugin loaded."""
    root = work / f"floor-{n}"
    root.mkdir()
    (root / "test_floor.py").write_text(FLOOR_TEST.format(n=n))
    env = {**CHILD_ENV, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--junitxml=floor.xml", "test_floor.py"]  # fmt: skip
    return measure(argv, root, env, root / "floor.xml", n)


def fleet(work: Path, site: Path, n: int, *extra: str) -> Figure:
    """n models on the simulated fleet, with `extra` (the way of running)."""
    root = work / f"fleet-{n}-{'-'.join(arg.strip('-') for arg in extra)}"
    root.mkdir()
    write_bench_tree(root, "#!/bin/sh\n", [f"m{i:05d}" for i in range(n)], 1)
    paths = [str(site), *filter(None, [CHILD_ENV.get("PYTHONPATH")])]
    env = {**CHILD_ENV, "PYTHONPATH": os.pathsep.join(paths)}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--mad-tags=bench", "--mad-deploy=fleetsim", "--mad-concurrency=auto",
            "--junitxml=r.xml", *extra]  # fmt: skip
    return measure(argv, root, env, root / "r.xml", n)


def line(label: str, figure: Figure, base: Figure) -> str:
    return (f"  {label:<24} {figure.wall:8.2f} s {figure.rate:8.0f} tests/s "
            f"{figure.rss_mb:7.0f} MB   x{figure.wall / base.wall:5.1f} wall "
            f"x{figure.rss_mb / base.rss_mb:4.1f} RSS of the floor")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1,000 only")
    args = parser.parse_args()
    sizes = SIZES[:1] if args.quick else SIZES
    print(f"simulated fleet: {HOSTS} hosts x {GPUS_PER_HOST} GPUs; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    one: dict[int, Figure] = {}
    with tempfile.TemporaryDirectory(prefix="mad-scale-") as tmp:
        work = Path(tmp)
        site = work / "site"
        install_fleet_backend(site)
        for n in sizes:
            base = floor(work, n)
            one[n] = fleet(work, site, n)
            four = fleet(work, site, n, "-n", "4")
            print(f"N = {n:,}")
            print(line("bare pytest (floor)", base, base))
            print(line("one process, auto", one[n], base))
            print(line("-n 4", four, base))
    if len(one) > 1:
        low, high = min(one), max(one)
        print(f"wall({high:,}) / wall({low:,}), one process: "
              f"{one[high].wall / one[low].wall:.1f} (tests x{high // low})")  # fmt: skip


if __name__ == "__main__":
    main()
