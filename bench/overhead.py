"""What the plugin adds per test over a plain `docker run --rm`.

Runs N trivial models through pytest-madengine (after a warm-up session that builds
their image, so no build is timed) and the same image and script through plain
`docker run --rm` N times, in the same run. Prints the median seconds per test of each,
the seconds the plugin adds and the ratio. Goal: at most 0.25 s added per test.

    python bench/overhead.py [--tests 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

from benchtree import write_bench_tree

SCRIPT = "#!/bin/sh\necho 'performance: 1.0 samples_per_second'\n"


def plugin_session(root: Path, junit: Path) -> list[float]:
    """Per-test seconds (setup + call + teardown) from the session's JUnit XML."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--mad-tags", "bench", "--junitxml", str(junit)]  # fmt: skip
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench: the plugin session failed:\n{done.stdout[-3000:]}")
    cases = ElementTree.parse(junit).iter("testcase")
    return [float(case.get("time", "0")) for case in cases]


def raw_runs(root: Path, image: str, count: int) -> list[float]:
    seconds = []
    mount = f"{root / 'scripts' / 'bench'}:/w:ro"
    # The plugin's defaults: the host's network and IPC namespace, as madengine runs.
    argv = ["docker", "run", "--rm", "--network", "host", "--ipc", "host", "-v", mount,
            "-w", "/w", image, "bash", "run.sh"]  # fmt: skip
    for _ in range(count):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=10)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "tree"
        write_bench_tree(root, SCRIPT, [f"m{i}" for i in range(options.tests)], n_gpus=0)
        plugin_session(root, root / "warmup.xml")  # builds the image once
        plugin = plugin_session(root, root / "timed.xml")
        raw = raw_runs(root, "ci-m0_bench.ubuntu.amd", options.tests)
    plugin_s, raw_s = statistics.median(plugin), statistics.median(raw)
    print(f"tests: {options.tests}")
    print(f"plain docker run --rm: {raw_s:.3f} s per run (median)")
    print(f"pytest-madengine: {plugin_s:.3f} s per test (median)")
    print(f"added per test: {plugin_s - raw_s:.3f} s (goal: at most 0.25 s)")
    print(f"ratio: {plugin_s / raw_s:.2f}")


if __name__ == "__main__":
    main()
