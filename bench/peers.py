"""The plugin next to raw Docker (and ReFrame when it is installed), whole processes.

8 models of `sleep 2; echo performance` on one image, on this machine's Docker Engine
with 4 declared GPUs, each way timed from the start of its process(es) to the end:

- raw serial: `docker run --rm --network host` 8 times in a row;
- raw -P4: the same through `xargs -P4`;
- plugin serial: `pytest` (one test at a time);
- plugin 4 GPUs in one process: `pytest --mad-concurrency auto --mad-gpus 4`;
- plugin -n 4: `pytest -n 4 --mad-gpus 4` (one xdist worker per GPU);
- bare pytest + Docker SDK: pytest with our plugin switched off, running a test file
  that starts the 8 containers at import through the Docker SDK, 4 threads, each
  making its next container as soon as its current one started, and whose tests
  only wait for them: what any runner hosted in pytest pays (interpreter, pytest,
  the SDK) and nothing of ours, so `plugin / bare` is what the plugin itself adds;
- ReFrame, async policy, 4 jobs on the local scheduler (when `import reframe` works;
  otherwise one line says so).

A warm-up session builds the image (and writes the plugin's bytecode) first, so no
build is timed. Each way runs
`--repeat` times (default 2) and its fastest wall is kept. Goals: plugin at 4 GPUs
in one process at most 1.10 x raw -P4; plugin serial at most 1.03 x raw serial.

    python bench/peers.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchtree import CHILD_ENV, write_bench_tree

MODELS, SECONDS, GPUS = 8, 2, 4
SCRIPT = f"#!/bin/sh\nsleep {SECONDS}\necho 'performance: 1 samples_per_second'\n"
IMAGE = "mad-base/busybox:latest"  # what the bench tree's Dockerfile builds on, unchanged


def timed(run: Callable[[], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def check(argv: list[str], cwd: Path, what: str, stdin: str | None = None) -> None:
    done = subprocess.run(argv, cwd=cwd, input=stdin, env=CHILD_ENV, capture_output=True, text=True,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        said = (done.stdout + done.stderr)[-3000:]
        sys.exit(f"bench: {what} failed (exit {done.returncode}):\n{said}")


def raw_argv(root: Path) -> list[str]:
    mount = f"{root / 'scripts' / 'bench'}:/w:ro"
    return ["docker", "run", "--rm", "--network", "host", "-v", mount, IMAGE, "sh", "/w/run.sh"]


def raw_serial(root: Path) -> None:
    for _ in range(MODELS):
        check(raw_argv(root), root, "docker run")


def raw_parallel(root: Path) -> None:
    lines = "".join(f"m{i}\n" for i in range(MODELS))
    command = " ".join(raw_argv(root))
    check(["xargs", "-P", str(GPUS), "-I{}", "sh", "-c", command], root, "xargs -P4", lines)


def plugin(root: Path, *extra: str) -> Callable[[], None]:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--mad-tags=bench",
            f"--mad-gpus={GPUS}", *extra]  # fmt: skip
    return lambda: check(argv, root, "pytest " + " ".join(extra))


REFRAME_TEST = """
import reframe as rfm
import reframe.utility.sanity as sn
from reframe.core.builtins import parameter, sanity_function


@rfm.simple_test
class DockerSleep(rfm.RunOnlyRegressionTest):
    index = parameter(range({models}))
    valid_systems = ["*"]
    valid_prog_environs = ["*"]
    executable = "{command}"

    @sanity_function
    def ran(self):
        return sn.assert_found(r"performance:", self.stdout)
"""

REFRAME_CONFIG = """
site_configuration = {{
    "systems": [{{
        "name": "bench", "descr": "this machine", "hostnames": [".*"],
        "partitions": [{{
            "name": "local", "scheduler": "local", "launcher": "local",
            "environs": ["builtin"], "max_jobs": {jobs},
        }}],
    }}],
    "environments": [{{"name": "builtin"}}],
}}
"""


BARE_TEST = """
import concurrent.futures
import threading

import docker
import pytest

api = docker.from_env().api


def make():
    config = api.create_host_config(binds=[{mount!r}], network_mode="host")
    return api.create_container({image!r}, ["sh", "/w/run.sh"], host_config=config)


made, begun, lock = {{}}, set(), threading.Lock()


def run(index):
    with lock:
        begun.add(index)
        container = made.pop(index, None)
    container = container or make()
    api.start(container)
    after = index + {jobs}
    if after < {models}:
        ahead = make()
        with lock:
            late = after in begun  # it began without waiting for this one
            if not late:
                made[after] = ahead
        if late:
            api.remove_container(ahead)
    code = api.wait(container)["StatusCode"]
    output = api.logs(container)
    threading.Thread(target=api.remove_container, args=(container,)).start()
    return code, output


runs = concurrent.futures.ThreadPoolExecutor({jobs})
ran = [runs.submit(run, index) for index in range({models})]


@pytest.mark.parametrize("index", range({models}))
def test_model(index):
    code, output = ran[index].result()
    assert code == 0 and b"performance:" in output
"""


def bare(root: Path) -> Callable[[], None]:
    """pytest without our plugin, a test file driving the Docker SDK as well as it can."""
    mount = f"{root / 'scripts' / 'bench'}:/w:ro"
    (root / "bare_bench.py").write_text(
        BARE_TEST.format(mount=mount, image=IMAGE, jobs=GPUS, models=MODELS)
    )
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:madengine",
            "bare_bench.py"]  # fmt: skip
    return lambda: check(argv, root, "bare pytest")


def reframe(root: Path) -> Callable[[], None] | None:
    """ReFrame running the raw `docker run`s as checks, 4 at once (async policy)."""
    if importlib.util.find_spec("reframe") is None:
        return None
    command = " ".join(raw_argv(root))
    (root / "rfm_check.py").write_text(REFRAME_TEST.format(models=MODELS, command=command))
    (root / "rfm_config.py").write_text(REFRAME_CONFIG.format(jobs=GPUS))
    launcher = "import sys; from reframe.frontend.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", launcher,
            "-C", "rfm_config.py", "-c", "rfm_check.py", "-r", "--exec-policy", "async",
            "--prefix", str(root / "rfm")]  # fmt: skip
    return lambda: check(argv, root, "reframe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_bench_tree(root, SCRIPT, [f"m{i}" for i in range(MODELS)], n_gpus=1)
        plugin(root)()  # warm-up: builds the image
        repeat = options.repeat
        rows = [
            ("raw serial", timed(lambda: raw_serial(root), repeat)),
            ("raw -P4", timed(lambda: raw_parallel(root), repeat)),
            ("plugin serial", timed(plugin(root), repeat)),
            ("plugin 4 GPUs, one process", timed(plugin(root, "--mad-concurrency=auto"), repeat)),
            ("plugin -n 4", timed(plugin(root, "-n", str(GPUS)), repeat)),
            ("bare pytest + Docker SDK, 4", timed(bare(root), repeat)),
        ]
        run_reframe = reframe(root)
        if run_reframe is not None:
            rows.append(("ReFrame async, 4 jobs", timed(run_reframe, options.repeat)))
    walls = dict(rows)
    serial, parallel = walls["raw serial"], walls["raw -P4"]
    print(f"{MODELS} models of sleep {SECONDS}; {GPUS} GPUs; fastest of {options.repeat} runs each")
    print(f"{'way':30} {'wall':>7}  {'/ raw serial':>12}  {'/ raw -P4':>9}")
    for name, wall in rows:
        print(f"{name:30} {wall:6.2f}s  {wall / serial:12.2f}  {wall / parallel:9.2f}")
    if run_reframe is None:
        print("ReFrame: not installed (pip install reframe-hpc), row left out")
    in_process = walls["plugin 4 GPUs, one process"] / parallel
    print(f"plugin 4 GPUs in one process / raw -P4: {in_process:.2f} (goal: at most 1.10)")
    own = walls["plugin 4 GPUs, one process"] / walls["bare pytest + Docker SDK, 4"]
    print(f"plugin 4 GPUs in one process / bare pytest + Docker SDK: {own:.2f} (what is ours)")
    print(f"plugin serial / raw serial: {walls['plugin serial'] / serial:.2f} (goal: at most 1.03)")


if __name__ == "__main__":
    main()
