"""What the plugin adds to pytest's start-up, whole processes, median of N each:

- bare: `pytest -p no:madengine --collect-only` of an empty directory;
- collect: `pytest --mad-tags=bench --collect-only` of an 8-model tree (no engine);
- session: the same with `-k nothing` (options, engine check, sweep, collection,
  nothing run): what a session costs before its first container.

Also lists the slowest imports of a `collect` process (python -X importtime). Child
processes may write bytecode (PYTHONDONTWRITEBYTECODE is dropped for them, as a pip
install compiles on install), so the figures are those of a second start.

    python bench/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchtree import CHILD_ENV, write_bench_tree

SCRIPT = "#!/bin/sh\necho 'performance: 1 samples_per_second'\n"


def wall(argv: list[str], cwd: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, env=CHILD_ENV, capture_output=True, text=True,
                              check=False)  # fmt: skip
        times.append(time.perf_counter() - start)
        if done.returncode not in (0, 5):  # 5: nothing collected or run
            sys.exit(f"bench: {' '.join(argv)} failed:\n{done.stdout[-2000:]}")
    return statistics.median(times)


def slowest_imports(argv: list[str], cwd: Path, count: int = 12) -> list[tuple[float, str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", *argv[1:]], cwd=cwd, env=CHILD_ENV,
                          capture_output=True, text=True, check=False)  # fmt: skip
    rows = []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if match and len(match.group(3)) <= 3:  # top-level and their direct imports
            rows.append((int(match.group(2)) / 1e6, match.group(4)))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    with tempfile.TemporaryDirectory() as scratch:
        root, empty = Path(scratch) / "tree", Path(scratch) / "empty"
        empty.mkdir()
        write_bench_tree(root, SCRIPT, [f"m{i}" for i in range(8)], n_gpus=1)
        collect = [*pytest, "--mad-tags=bench", "--mad-gpus=4", "--collect-only"]
        session = [*pytest, "--mad-tags=bench", "--mad-gpus=4", "-k", "nothing"]
        wall(collect, root, 1)  # writes the bytecode
        bare = wall([*pytest, "-p", "no:madengine", "--collect-only"], empty, runs)
        listed = wall(collect, root, runs)
        started = wall(session, root, runs)
        imports = slowest_imports(collect, root)
    print(f"median of {runs} runs each")
    print(f"bare pytest (no plugin):           {bare:.3f} s")
    print(f"plugin --collect-only (8 models):  {listed:.3f} s  (+{listed - bare:.3f} s)")
    print(f"plugin session, nothing run:       {started:.3f} s  (+{started - bare:.3f} s)")
    print("slowest imports of --collect-only (cumulative):")
    for seconds, name in imports:
        print(f"  {seconds * 1000:7.1f} ms  {name}")


if __name__ == "__main__":
    main()
