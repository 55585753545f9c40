"""How well `-n auto` keeps GPUs on several hosts busy.

16 models of 2 s each on 8 declared GPUs over two hosts (scripts/bootstrap hosts 2:
4 virtual GPUs each), run in one process with `--mad-concurrency auto` and with
`-n auto`, against the ideal (16 x 2 s / 8 GPUs), a
serial run of the same session, and raw Docker: 8 threads, one per GPU, each running
2 of the same containers in a row through the Docker SDK over the same SSH tunnels
(create, start, wait, remove: what `docker run --rm` does), all measured here. The
makespan is from the first container start to the last container end (JUnit
properties for the sessions), so pytest's own start-up is left out; the wall time of
each session is printed too, against the wall of a whole process doing the raw run
(its start-up, tunnels and clients included, as a session's wall includes its own).
Goals: makespan / ideal at most 1.25; session wall / raw process wall at most 1.3.

    python bench/scaling.py [--hosts /var/lib/pytest-madengine/hosts.yml]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from xml.etree import ElementTree

from benchtree import CHILD_ENV, write_bench_tree

from pytest_madengine.backends import SESSION_LABEL
from pytest_madengine.backends.docker.links import HostLinks
from pytest_madengine.resources.hosts import load_hosts

MODELS, SECONDS, GPUS = 16, 2.0, 8
SCRIPT = f"#!/bin/sh\nsleep {SECONDS}\necho 'performance: 1 samples_per_second'\n"


def session(root: Path, hosts: Path, junit: str, *extra: str) -> tuple[float, float]:
    """(makespan from the containers' times, wall time of the session)."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--mad-tags=bench",
            f"--mad-hosts={hosts}", f"--junitxml={junit}", *extra]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=root, env=CHILD_ENV, capture_output=True, text=True,
                          check=False)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: session {' '.join(extra)} failed:\n{done.stdout[-3000:]}")
    spans = []
    for case in ElementTree.parse(root / junit).iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        spans.append((float(props["started_at"]), float(props["ended_at"])))
    return max(end for _, end in spans) - min(start for start, _ in spans), wall


def raw_docker(hosts_file: Path, image: str) -> float:
    """Makespan of the same containers run straight through the SDK, one thread a GPU."""
    spans: list[tuple[float, float]] = []
    label = {SESSION_LABEL: f"bench-{uuid.uuid4().hex[:8]}"}  # swept like a session's
    command = ["sh", "-c", SCRIPT.split("\n", 1)[1]]

    def lane(client, runs: int) -> None:
        for _ in range(runs):
            container = client.containers.create(
                image, command, labels=label, network_mode="host", ipc_mode="host"
            )
            started = time.time()
            container.start()
            container.wait()
            spans.append((started, time.time()))
            container.remove(force=True)

    with HostLinks() as links:
        hosts = load_hosts(hosts_file)
        clients = {host.name: links.client(host) for host in hosts}
        lanes = [
            threading.Thread(target=lane, args=(clients[host.name], MODELS // GPUS))
            for host in hosts
            for _ in range(host.gpus.count)
        ]
        for thread in lanes:
            thread.start()
        for thread in lanes:
            thread.join()
    if len(spans) != MODELS:
        sys.exit(f"bench: raw docker ran {len(spans)} containers, not {MODELS}")
    return max(end for _, end in spans) - min(start for start, _ in spans)


def raw_process(hosts: Path) -> float:
    """Wall of a whole process that does what raw_docker does (start-up, tunnels and
    clients included), as a session's wall includes them."""
    argv = [sys.executable, __file__, "--raw-only", "--hosts", str(hosts)]
    start = time.perf_counter()
    done = subprocess.run(argv, env=CHILD_ENV, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench: the raw process failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=Path, default=Path("/var/lib/pytest-madengine/hosts.yml"))
    parser.add_argument("--raw-only", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.raw_only:
        raw_docker(options.hosts, "ci-m00_bench.ubuntu.amd")
        return
    ideal = MODELS * SECONDS / GPUS
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_bench_tree(root, SCRIPT, [f"m{i:02d}" for i in range(MODELS)], n_gpus=1)
        session(root, options.hosts, "warmup.xml", "-n", "2")  # builds and ships the image
        raw = raw_docker(options.hosts, "ci-m00_bench.ubuntu.amd")  # shipped by the warm-up
        raw_wall = raw_process(options.hosts)
        in_process, in_process_wall = session(
            root, options.hosts, "threads.xml", "--mad-concurrency=auto"
        )
        parallel, parallel_wall = session(root, options.hosts, "auto.xml", "-n", "auto")
        serial, serial_wall = session(root, options.hosts, "serial.xml")
    print(f"models: {MODELS} x {SECONDS:g} s on {GPUS} GPUs over 2 hosts")
    print(f"ideal makespan: {ideal:.1f} s")
    print(f"raw docker, {GPUS} threads: makespan {raw:.1f} s (whole process {raw_wall:.1f} s)")
    print(f"one process, --mad-concurrency auto: makespan {in_process:.1f} s"
          f" (session {in_process_wall:.1f} s)")  # fmt: skip
    print(f"-n auto: makespan {parallel:.1f} s (session {parallel_wall:.1f} s)")
    print(f"serial:  makespan {serial:.1f} s (session {serial_wall:.1f} s)")
    print(f"makespan / ideal: one process {in_process / ideal:.2f}, -n auto"
          f" {parallel / ideal:.2f} (goal: at most 1.25)")  # fmt: skip
    print(f"raw docker / ideal: {raw / ideal:.2f} (this machine's floor)")
    print(f"session wall / raw process wall: one process {in_process_wall / raw_wall:.2f},"
          f" -n auto {parallel_wall / raw_wall:.2f} (goal: at most 1.3)")  # fmt: skip
    print(f"makespan / raw docker: one process {in_process / raw:.2f},"
          f" -n auto {parallel / raw:.2f}")  # fmt: skip
    print(f"speed-up over serial: {serial_wall / in_process_wall:.1f}x (session walls)")


if __name__ == "__main__":
    main()
