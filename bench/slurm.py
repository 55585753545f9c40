"""What the slurm backend adds per job over plain `sbatch --wait`, and its squeue calls.

In the same run and at the same time: N short models through pytest-madengine
(`--mad-deploy slurm -n W`, after a warm-up that builds their image), and N plain
`sbatch --wait` jobs, W at a time (the same parallelism, so that both face the same
load), each running the same image and script with `docker run --rm`. squeue is
counted through a wrapper on the plugin's PATH. Prints the median seconds per job of
each, the seconds the plugin adds per job, and squeue calls per job. Needs
`scripts/bootstrap slurm`.

    python bench/slurm.py [--jobs 20] [--workers 4] [--gpus 0] [--sleep 1]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

from benchtree import write_bench_tree

from pytest_madengine.backends.slurm import parse_scontrol_jobs

IMAGE = "ci-m0_bench.ubuntu.amd"


def squeue_counter(directory: Path) -> tuple[Path, Path]:
    """A directory with an `squeue` that notes each call, then runs the real one."""
    real = shutil.which("squeue")
    if real is None:
        sys.exit("bench: squeue not found (run scripts/bootstrap slurm)")
    directory.mkdir()
    counter = directory / "calls"
    wrapper = directory / "squeue"
    wrapper.write_text(
        f'#!/bin/sh\necho >>{shlex.quote(str(counter))}\nexec {shlex.quote(real)} "$@"\n'
    )
    wrapper.chmod(0o755)
    return directory, counter


def plugin_session(
    root: Path, junit: Path, workers: int, env: dict[str, str]
) -> tuple[list[float], float]:
    """(per-test seconds (setup + call + teardown) from the session's JUnit XML, the
    session's wall-clock seconds)."""
    start = time.perf_counter()
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--mad-tags", "bench",
            "--mad-deploy", "slurm", "-n", str(workers), "--junitxml", str(junit)]  # fmt: skip
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        sys.exit(f"bench: the plugin session failed:\n{done.stdout[-3000:]}")
    cases = ElementTree.parse(junit).iter("testcase")
    return [float(case.get("time", "0")) for case in cases], time.perf_counter() - start


def plain_job(root: Path, index: int, gpus: int) -> tuple[float, str]:
    """(seconds from sbatch to its return (--wait), job id) for the same container."""
    mount = f"{root / 'scripts' / 'bench'}:/w:ro"
    command = shlex.join(["docker", "run", "--rm", "--network", "host", "--ipc", "host",
                          "-v", mount, "-w", "/w", IMAGE, "bash", "run.sh"])  # fmt: skip
    argv = ["sbatch", "--wait", "--parsable", f"--job-name=plain{index}",
            f"--output={root / f'plain{index}.out'}", "--wrap", command]  # fmt: skip
    if gpus:
        argv.insert(1, f"--gres=gpu:{gpus}")
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: plain job {index} failed: {done.stderr.strip()}")
    return seconds, done.stdout.strip().split(";")[0]


def submit_to_end(job_id: str) -> float:
    """The job's submit-to-end seconds by slurmctld's clock (whole seconds)."""
    done = subprocess.run(["scontrol", "--oneliner", "show", "job", job_id],
                          capture_output=True, text=True, check=True)  # fmt: skip
    (state,) = parse_scontrol_jobs(done.stdout)
    assert state.submit_time is not None and state.end_time is not None, state
    return state.end_time - state.submit_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4, help="xdist workers of the plugin")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per job (GRES)")
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds each job sleeps")
    options = parser.parse_args()
    script = f"#!/bin/sh\nsleep {options.sleep}\necho 'performance: 1.0 samples_per_second'\n"
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "tree"
        names = [f"m{i}" for i in range(options.jobs)]
        write_bench_tree(root, script, names, n_gpus=options.gpus)
        shims, counter = squeue_counter(Path(scratch) / "shims")
        env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}"}
        warm = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "--mad-tags", "m0", "--mad-deploy", "slurm"]  # fmt: skip
        subprocess.run(warm, cwd=root, capture_output=True, check=True)  # builds the image
        counter.unlink(missing_ok=True)
        start = time.perf_counter()
        with (
            concurrent.futures.ThreadPoolExecutor(1) as session,
            concurrent.futures.ThreadPoolExecutor(options.workers) as plain_pool,
        ):
            plugin_future = session.submit(
                plugin_session, root, root / "timed.xml", options.workers, env
            )
            plain_jobs = list(plain_pool.map(lambda i: plain_job(root, i, options.gpus),
                                             range(options.jobs)))  # fmt: skip
            plain_wall = time.perf_counter() - start
            plugin, plugin_wall = plugin_future.result()
        squeues = len(counter.read_text().splitlines()) if counter.exists() else 0
    plain = [seconds for seconds, _ in plain_jobs]
    in_slurm = statistics.median(submit_to_end(job_id) for _, job_id in plain_jobs)
    plugin_s, plain_s = statistics.median(plugin), statistics.median(plain)
    print(f"jobs: {options.jobs} each way, side by side, {options.workers} at a time each;"
          f" GPUs per job: {options.gpus}; each job sleeps {options.sleep:g} s")  # fmt: skip
    print(f"plain sbatch --wait: {plain_s:.2f} s per job (median),"
          f" {plain_wall:.1f} s for all; submit to end by slurmctld's clock:"
          f" {in_slurm:.0f} s per job (median, whole seconds)")  # fmt: skip
    print(f"pytest-madengine --mad-deploy slurm: {plugin_s:.2f} s per job (median),"
          f" {plugin_wall:.1f} s for all (with pytest and xdist start-up)")  # fmt: skip
    # sbatch --wait polls at its own, growing, intervals: the job's own span is the other
    # yardstick.
    print(f"seconds added per job: {plugin_s - plain_s:+.2f} over sbatch --wait,"
          f" {plugin_s - in_slurm:+.2f} over the plain job's submit-to-end")  # fmt: skip
    print(f"squeue calls per job: {squeues / options.jobs:.2f} ({squeues} in all)")


if __name__ == "__main__":
    main()
