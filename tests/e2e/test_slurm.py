"""Whole sessions with --mad-deploy slurm on the cluster of `scripts/bootstrap slurm`
(three nodes, 4 fake GPUs each, all on this machine's Docker Engine): real jobs, real
containers, nothing mocked."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from pytest_madengine.backends import SESSION_LABEL
from pytest_madengine.backends.slurm.node import JOB_LABEL
from tests.conftest import DUMMY_URL, DataServers, entry, write_tree
from tests.e2e.test_data import COUNT, data_tree, isolated_cache, log_of  # noqa: F401 - a fixture
from tests.e2e.test_manifest import manifest, pushed  # noqa: F401 - a fixture used here
from tests.e2e.test_run import junit_properties, read_perf, run, scripts, unique_tree

pytestmark = [pytest.mark.slurm, pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mad"
# Sleeps, then shows the GPUs it sees: visibility variables and mapped render nodes.
GPU_SHOW = (
    '#!/bin/sh\nsleep "${1:-2}"\n'
    'echo "hip=$HIP_VISIBLE_DEVICES host=$MAD_HOST_GPU_IDS n=$MAD_RUNTIME_NGPUS"\n'
    "ls /dev/dri\n"
    'echo "performance: $MAD_RUNTIME_NGPUS gpus"\n'
)
# A torchrun-style dummy: its node rank and master, from MAD_MULTI_NODE_RUNNER alone.
TORCHRUN_DUMMY = """#!/bin/sh
rank=$(echo "$MAD_MULTI_NODE_RUNNER" | sed -n 's/.*--node_rank=\\([0-9]*\\).*/\\1/p')
master=$(echo "$MAD_MULTI_NODE_RUNNER" | sed -n 's/.*--master_addr=\\([^ ]*\\).*/\\1/p')
nnodes=$(echo "$MAD_MULTI_NODE_RUNNER" | sed -n 's/.*--nnodes=\\([0-9]*\\).*/\\1/p')
echo "runner: $MAD_MULTI_NODE_RUNNER"
echo "node rank $rank of $nnodes, master $master, on GPUs $MAD_HOST_GPU_IDS"
[ "$rank" = 0 ] && echo "performance: $nnodes nodes"
exit 0
"""
SLEEPER = '#!/bin/sh\necho "sleeping $1"\nsleep "$1"\necho "performance: 1 s"\n'


def slurm_run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return run(pytester, "--mad-deploy", "slurm", *args)


def our_jobs(session_id: str) -> list[str]:
    """Jobs still in the queue whose comment names the session."""
    done = subprocess.run(["squeue", "--noheader", "--format=%i|%k"], capture_output=True,
                          text=True, timeout=30, check=True)  # fmt: skip
    return [
        line.split("|")[0]
        for line in done.stdout.splitlines()
        if f"session={session_id} " in line.split("|", 1)[-1] + " "
    ]


def containers_of(client: docker.DockerClient, session_id: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={session_id}"})


def session_of(properties: dict[str, dict[str, str]]) -> str:
    """The session id, from a job script's path (mad_output/slurm/<session>/<test>/job.sh)."""
    script = next(iter(properties.values()))["slurm_script"]
    return Path(script).parent.parent.name


# ---- a job over its time limit, left running while the other tests go on ----


@pytest.fixture(scope="module")
def over_time_limit(slurm, docker_client, tmp_path_factory) -> Iterator[subprocess.Popen[str]]:
    """A session whose model sleeps past the job's one-minute time limit (SLURM checks
    limits every 30 s or so: it ends in 60-90 s). Started before the module's other tests
    and checked by the last, so that the wait overlaps them."""
    directory = tmp_path_factory.mktemp("slurm-time-limit")
    models = [entry("overtime", scripts="scripts/dummy/sleeper.sh", args="300", timeout=0)]
    write_tree(directory, models, scripts(sleeper=SLEEPER))
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "--mad-tags",
            "overtime", "--mad-deploy", "slurm", "--junitxml", "r.xml",
            "--mad-context", json.dumps({"slurm": {"time": 1}})]  # fmt: skip
    session = subprocess.Popen(argv, cwd=directory, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    session.directory = directory  # type: ignore[attr-defined]
    yield session
    if session.poll() is None:
        session.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            session.communicate(timeout=60)


@pytest.fixture(autouse=True)
def _start_the_long_job_first(over_time_limit) -> None:
    """Every test of the module asks for it, so the first one starts it."""


# ---- the command ----


def test_examples_dummies_under_xdist_end_as_on_docker(pytester: pytest.Pytester) -> None:
    """`pytest --mad-root examples/mad --mad-tags dummies --mad-deploy slurm -n 2`: every
    model passes, and the three `failing` ones fail for the same reasons as locally."""
    root = Path(shutil.copytree(EXAMPLES, pytester.path / "mad"))
    result = slurm_run(pytester, "--mad-root", str(root), "--mad-tags", "dummies", "-n", "2",
                       "--junitxml", "r.xml")  # fmt: skip
    result.assert_outcomes(passed=9, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED *::dummy_sleep - Failed: timeout after 3 s",
            "FAILED *::dummy_fail - Failed: exit code 1",
            "FAILED *::dummy_nometric - Failed: no performance line in the log",
        ]
    )
    properties = junit_properties(pytester.path / "r.xml")
    for name, props in properties.items():
        assert props["slurm_state"] in ("COMPLETED", "FAILED"), (name, props)
        assert props["host"] == props["slurm_nodes"] and re.fullmatch(r"n[1-3]", props["host"])
        assert props["slurm_gpus"] == f"{props['host']}:{props['gpus']}", (name, props)
        assert float(props["slurm_queue_wait"]) >= 0 and float(props["slurm_run_time"]) >= 0
    assert properties["dummy2/model2"]["gpus"].count(",") == 1  # n_gpus 2
    # perf.csv names models as madengine does; a tag's parameters are in args.
    rows = {(row["model"], row["args"]): row for row in read_perf(pytester.path / "perf.csv")}
    assert rows[("dummy_multi_resnet50", "")]["performance"] == "812.4"
    assert rows[("dummy3", "--batch_size 128 --batch_size 512")]["performance"] == "5120.5"
    assert our_jobs(session_of(properties)) == []


# ---- GPUs: what SLURM allocated, mapped, and never shared ----


class AllocationSampler(threading.Thread):
    """Reads every running job's GPUs from `scontrol -d` while a session runs."""

    DETAIL = re.compile(r"\bNodes=(\S+) CPU_IDs=\S+ Mem=\S+ GRES=gpu(?::\w+)?:\d+\(IDX:([\d,-]+)\)")

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: dict[str, tuple[str, tuple[int, ...]]] = {}  # job -> (node, GPU ids)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.3):
            done = subprocess.run(["scontrol", "-d", "--oneliner", "show", "job"],
                                  capture_output=True, text=True, timeout=30)  # fmt: skip
            for line in done.stdout.splitlines():
                job = re.match(r"JobId=(\d+)", line)
                detail = self.DETAIL.search(line)
                if job and detail and "JobState=RUNNING" in line:
                    ids: list[int] = []
                    for part in detail[2].split(","):
                        low, _, high = part.partition("-")
                        ids += range(int(low), int(high or low) + 1)
                    self.seen[job[1]] = (detail[1], tuple(ids))


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
@pytest.mark.parametrize(
    "at_once", [("-n", "2"), ("--mad-concurrency", "2")], ids=["xdist", "in-process"]
)
def test_jobs_get_the_gpus_slurm_allocated_mapped_and_never_shared(
    pytester: pytest.Pytester, at_once: tuple[str, ...]
) -> None:
    devices = pytester.path / "dev"
    (devices / "dri").mkdir(parents=True)
    for name in ["kfd"] + [f"dri/renderD{128 + i}" for i in range(4)]:
        os.mknod(devices / name, 0o20666, os.makedev(1, 3))
    models = [entry(f"g{i}", scripts="scripts/dummy/show.sh", n_gpus=1 + i % 2, args="2")
              for i in range(4)]  # fmt: skip
    unique_tree(pytester, models, scripts(show=GPU_SHOW))
    context = {"gpu_device_root": str(devices), "slurm": {"nodelist": "n3"}}
    sampler = AllocationSampler()
    sampler.start()
    try:
        result = slurm_run(pytester, "--mad-tags", "dummies", *at_once, "--junitxml", "r.xml",
                           "--mad-context", json.dumps(context))  # fmt: skip
    finally:
        sampler.stop.set()
        sampler.join()
    result.assert_outcomes(passed=4)
    properties = junit_properties(pytester.path / "r.xml")
    spans = []
    for name, props in properties.items():
        gpus = tuple(int(i) for i in props["gpus"].split(","))
        # What the job's script read matches what slurmctld says it allocated.
        assert sampler.seen[props["slurm_job_id"]] == ("n3", gpus), (name, sampler.seen)
        log = Path(props["log_path"]).read_text()
        local = ",".join(str(i) for i in range(len(gpus)))
        host = ",".join(map(str, gpus))
        assert f"hip={local} host={host} n={len(gpus)}" in log, log
        assert sorted(re.findall(r"renderD\d+", log)) == [f"renderD{128 + i}" for i in gpus]
        spans.append((float(props["started_at"]), float(props["ended_at"]), set(gpus), name))
    overlapping = 0
    for first, second in ((a, b) for a in spans for b in spans if a[3] < b[3]):
        if first[0] < second[1] and second[0] < first[1]:
            overlapping += 1
            assert not first[2] & second[2], (first, second)
    assert overlapping, f"no two jobs ran side by side: {spans}"


# ---- interrupts ----


@pytest.mark.parametrize(
    ("signum", "workers"),
    [(signal.SIGINT, ["-n", "2"]), (signal.SIGTERM, []), (signal.SIGHUP, [])],
    ids=["Ctrl-C-xdist", "SIGTERM", "SIGHUP"],
)  # fmt: skip
def test_an_interrupted_session_leaves_no_job_and_no_container(
    pytester: pytest.Pytester, docker_client: docker.DockerClient, signum: int, workers: list
) -> None:
    models = [entry(f"long{i}", scripts="scripts/dummy/sleeper.sh", args="300") for i in range(2)]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--mad-tags", "dummies",
            "--mad-deploy", "slurm", *workers]  # fmt: skip
    session = subprocess.Popen(argv, cwd=pytester.path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    wanted = 2 if workers else 1
    sessions = pytester.path / "mad_output" / "slurm"

    def running() -> list[Any]:
        """Containers of this session's jobs (its job directories are under this test's)."""
        return [c for c in docker_client.containers.list(filters={"label": JOB_LABEL})
                if (sessions / c.labels.get(SESSION_LABEL, "-")).is_dir()]  # fmt: skip

    deadline = time.monotonic() + 120
    while len(started := running()) < wanted:
        assert time.monotonic() < deadline, "the jobs' containers never started"
        assert session.poll() is None, session.communicate()[0]
        time.sleep(0.2)
    session_id = started[0].labels[SESSION_LABEL]
    assert len(our_jobs(session_id)) == wanted
    session.send_signal(signum)
    output, _ = session.communicate(timeout=120)
    assert session.returncode == pytest.ExitCode.INTERRUPTED, output
    assert our_jobs(session_id) == [], output
    assert containers_of(docker_client, session_id) == [], output


def test_the_jobs_of_a_controller_that_is_gone_are_cancelled_by_the_next_session(
    pytester: pytest.Pytester, slurm
) -> None:
    """kill -9 leaves jobs queued or running: the next session cancels them."""
    gone = f"{os.uname().nodename}:{2**22 + 7}:1"  # above any pid this machine gives
    comment = f"pytest-madengine session=gone1 controller={gone}"
    argv = ["sbatch", "--parsable", f"--partition={slurm['partition']}", f"--comment={comment}",
            "--output=/dev/null", "--wrap", "sleep 300"]  # fmt: skip
    submitted = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    job_id = submitted.stdout.strip().split(";")[0]
    try:
        assert our_jobs("gone1") == [job_id]
        unique_tree(pytester, [entry("dummy")])
        slurm_run(pytester, "--mad-tags", "dummy").assert_outcomes(passed=1)
        assert our_jobs("gone1") == []
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)


# ---- several nodes ----


def test_a_two_node_torchrun_job_has_two_ranks_and_one_master(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [entry("dist", scripts="scripts/dummy/dist.sh", n_gpus=2)],
                scripts(dist=TORCHRUN_DUMMY))  # fmt: skip
    context = {"distributed": {"launcher": "torchrun", "nnodes": 2, "nproc_per_node": 2}}
    result = slurm_run(pytester, "--mad-tags", "dist", "--junitxml", "r.xml",
                       "--mad-context", json.dumps(context))  # fmt: skip
    result.assert_outcomes(passed=1)
    props = junit_properties(pytester.path / "r.xml")["dist"]
    assert props["performance"] == "2" and props["metric"] == "nodes"  # from rank 0
    log = Path(props["log_path"])
    lines = [log.read_text(), Path(f"{log}.rank1").read_text()]
    said = [re.search(r"node rank (\d+) of 2, master (\S+), on GPUs (\S+)", text) for text in lines]
    assert all(said), lines
    assert [m[1] for m in said] == ["0", "1"]  # type: ignore[index]
    masters = {m[2] for m in said}  # type: ignore[index]
    assert len(masters) == 1 and masters == {props["slurm_master"]}
    ranks = dict(pair.split(":") for pair in props["slurm_node_ranks"].split())
    assert ranks["0"] != ranks["1"] and ranks["0"] == props["slurm_master"]
    assert "--nproc_per_node=2" in lines[1] and props["host"] == props["slurm_nodes"]
    (row,) = read_perf(pytester.path / "perf.csv")
    assert (row["nnodes"], row["gpus_per_node"], row["n_gpus"]) == ("2", "2", "4")
    assert (row["launcher"], row["deployment_type"]) == ("torchrun", "slurm")


# ---- jobs that cannot run ----


def test_a_job_that_cannot_start_fails_with_slurms_reason(pytester: pytest.Pytester, slurm) -> None:
    failed = subprocess.run(["sbatch", "--parsable", "--wait", f"--partition={slurm['partition']}",
                             "--output=/dev/null", "--wrap", "false"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    failed_id = failed.stdout.strip().split(";")[0]
    unique_tree(pytester, [entry("never")])
    context = {"slurm": {"extra_sbatch": [f"--dependency=afterok:{failed_id}"],
                         "pending_timeout": 1}}  # fmt: skip
    result = slurm_run(pytester, "--mad-tags", "never", "--junitxml", "r.xml",
                       "--mad-context", json.dumps(context))  # fmt: skip
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["slurm job * could not start: pending for * s: DependencyNeverSatisfied (a job it"
         " depends on did not end as required)"]
    )  # fmt: skip
    assert our_jobs(session_of(junit_properties(pytester.path / "r.xml"))) == []


def test_an_unknown_partition_is_a_usage_error(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [entry("dummy")])
    result = slurm_run(pytester, "--mad-tags", "dummy",
                       "--mad-context", '{"slurm": {"partition": "nope"}}')  # fmt: skip
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*context 'slurm': partition 'nope' does not exist*"])


def test_the_readmes_exclusive_example_runs_on_the_gpus_the_test_asked_for(
    pytester: pytest.Pytester,
) -> None:
    """`extra_sbatch: ["--exclusive", "--mem=0"]` gives the job all of a node's GPUs: the
    test runs on the count it asked for, and the JUnit properties say what the job held."""
    models = [entry("alone", scripts="scripts/dummy/show.sh", n_gpus=1, args="0")]
    unique_tree(pytester, models, scripts(show=GPU_SHOW))
    context = {"slurm": {"extra_sbatch": ["--exclusive", "--mem=0"]}}
    result = slurm_run(pytester, "--mad-tags", "alone", "--junitxml", "r.xml",
                       "--mad-context", json.dumps(context))  # fmt: skip
    result.assert_outcomes(passed=1)
    props = junit_properties(pytester.path / "r.xml")["alone"]
    node = props["slurm_nodes"]
    assert props["slurm_gpus_allocated"] == f"{node}:0,1,2,3", props
    assert props["slurm_gpus"] == f"{node}:0" and props["gpus"] == "0", props
    log = Path(props["log_path"]).read_text()
    assert "host=0 n=1" in log, log
    assert f"SLURM gave {node} GPUs '0,1,2,3' (the job holds more than it asked for)" in log, log


def resume(node: str) -> None:
    """Back in service (ReturnToService=2 may have done it already: then scontrol refuses)."""
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"],
                   capture_output=True, timeout=30)  # fmt: skip


@pytest.fixture
def set_down(slurm) -> Iterator[Callable[[str], None]]:
    """Sets a node DOWN (it kills the node's jobs); the node is resumed however the test
    ends. Other sessions share the cluster: one node, as briefly as the test allows."""
    downed: list[str] = []

    def down(node: str) -> None:
        downed.append(node)
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down",
                        "reason=pytest-madengine node failure test"],
                       check=True, capture_output=True, timeout=30)  # fmt: skip

    yield down
    for node in downed:
        resume(node)


@pytest.fixture
def background(pytester: pytest.Pytester) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts pytest sessions in the test's directory; one still running when the test
    ends is interrupted (its jobs are cancelled)."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args]
        session = subprocess.Popen(argv, cwd=pytester.path, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)  # fmt: skip
        started.append(session)
        return session

    yield start
    for session in started:
        if session.poll() is None:
            session.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                session.communicate(timeout=60)


def job_state(job_id: str) -> tuple[str, str]:
    """(state, nodes) of a job in the queue; ("", "") once it left the queue."""
    done = subprocess.run(["squeue", "--noheader", "--format=%T|%N", f"--jobs={job_id}"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    state, _, nodes = done.stdout.strip().partition("|")
    return state, nodes


def test_a_node_that_fails_mid_run_fails_the_test_as_node_fail(
    pytester: pytest.Pytester, docker_client: docker.DockerClient, set_down, background
) -> None:
    """SLURM would requeue the job and run the model again into the same log: the test
    fails with NODE_FAIL instead, and leaves no job and no container."""
    unique_tree(pytester, [entry("victim", scripts="scripts/dummy/sleeper.sh", args="20")],
                scripts(sleeper=SLEEPER))  # fmt: skip
    # Alone on its node (--exclusive), so that setting the node down ends no other job.
    context = {"slurm": {"extra_sbatch": ["--exclusive"]}}
    session = background("--mad-tags", "victim", "--mad-deploy", "slurm", "--junitxml", "r.xml",
                         "--mad-context", json.dumps(context))  # fmt: skip
    sessions = pytester.path / "mad_output" / "slurm"
    deadline = time.monotonic() + 120
    while not (running := [c for c in docker_client.containers.list(filters={"label": JOB_LABEL})
                           if (sessions / c.labels.get(SESSION_LABEL, "-")).is_dir()]):  # fmt: skip
        assert time.monotonic() < deadline, "the job's container never started"
        assert session.poll() is None, session.communicate()[0]
        time.sleep(0.2)
    job_id = running[0].labels[JOB_LABEL]
    logs = pytester.path / "mad_output" / "logs"
    while not any("sleeping 20" in log.read_text() for log in logs.glob("*/victim*.log")):
        assert time.monotonic() < deadline, "the model never started"
        time.sleep(0.2)
    state, node = job_state(job_id)
    assert state == "RUNNING" and node, (state, node)
    set_down(node)
    while job_state(job_id)[0] == "RUNNING":  # SLURM ends (or requeues) it
        assert time.monotonic() < deadline + 60, "the job outlived its node"
        time.sleep(0.2)
    resume(node)
    output, _ = session.communicate(timeout=300)
    assert session.returncode == pytest.ExitCode.TESTS_FAILED, output
    props = junit_properties(pytester.path / "r.xml")["victim"]
    assert props["slurm_state"] == "NODE_FAIL", props
    assert re.fullmatch(rf"slurm job {job_id} NODE_FAIL( \(.*\))?: a node of the job failed",
                        props["failure_reason"]), props  # fmt: skip
    assert Path(props["log_path"]).read_text().count("sleeping 20") == 1
    assert our_jobs(running[0].labels[SESSION_LABEL]) == []
    assert containers_of(docker_client, running[0].labels[SESSION_LABEL]) == []
    # By its name too, in case the label went missing (the node script names it so).
    assert docker_client.containers.list(all=True, filters={"name": f"mad-slurm-{job_id}-"}) == []


# ---- dry run ----


def test_a_dry_run_writes_the_scripts_and_submits_nothing(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [entry("dummy", n_gpus=2, timeout=600)])
    context = {"slurm": {"account": "proj x", "modules": ["rocm/6.2"], "env": {"A": "it's"}}}
    result = run(pytester, "--mad-tags", "dummy", "--mad-slurm-dry-run", "--junitxml", "r.xml",
                 "--mad-context", json.dumps(context))  # fmt: skip
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*slurm dry run: wrote */mad_output/slurm/*/job.sh"])
    script = next((pytester.path / "mad_output" / "slurm").glob("*/dummy.*/job.sh"))
    text = script.read_text()
    for line in ('#SBATCH --account="proj x"', "#SBATCH --gres=gpu:2", "#SBATCH --time=00:15:00",
                 "module load rocm/6.2 || exit", "export A='it'\"'\"'s'",
                 "#SBATCH --no-requeue"):  # fmt: skip
        assert line in text, text
    assert (script.parent / "node.sh").exists() and (script.parent / "container.env").exists()
    assert our_jobs(script.parent.parent.name) == []


# ---- images from a registry ----


def test_a_manifest_image_is_pulled_on_the_nodes_once_each(
    pytester: pytest.Pytester,
    pushed: str,  # noqa: F811 - the fixture imported above
    registry,
) -> None:
    address, login = registry
    manifest(pytester.path / "build_manifest.json", {"m0": pushed, "m1": pushed}, address)
    (pytester.path / "credential.json").write_text(json.dumps({address: login}))
    result = slurm_run(pytester, "--mad-manifest=build_manifest.json", "-n", "2",
                       "--junitxml", "r.xml")  # fmt: skip
    result.assert_outcomes(passed=2)
    properties = junit_properties(pytester.path / "r.xml")
    assert {props["image"] for props in properties.values()} == {pushed}
    assert {props["image_pulled"] for props in properties.values()} == {"true"}
    nodes = {props["host"] for props in properties.values()}
    session_dir = pytester.path / "mad_output" / "slurm" / session_of(properties)
    assert len(list(session_dir.glob("pulls/*.done"))) == len(nodes)
    # The login reached the nodes in the jobs' environment, never in a file of the session.
    token = base64.b64encode(f"{login['username']}:{login['password']}".encode()).decode()
    files = [path.read_bytes() for path in pytester.path.rglob("*")
             if path.is_file() and path.name != "credential.json"]  # fmt: skip
    everything = result.stdout.str().encode() + b"".join(files)
    assert login["password"].encode() not in everything and token.encode() not in everything


# ---- data ----


def test_local_and_fetched_data_reach_the_jobs_read_only(
    pytester: pytest.Pytester,
    data_servers: DataServers,
    isolated_cache: Path,  # noqa: F811 - the fixture imported above
    real_home: None,
) -> None:
    local = pytester.path / "local-data"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "one.txt").write_text("1")
    models = [entry(f"with_{kind}", data=f"dummy_{kind}", scripts="scripts/dummy/count.sh")
              for kind in ("local", "minio")]  # fmt: skip
    data = {"dummy_local": {"local": {"path": str(local)}, "home": "/data"},
            "dummy_minio": {"minio": {"path": DUMMY_URL}}}  # fmt: skip
    data_tree(pytester, data_servers, models, data)
    result = slurm_run(pytester, "--mad-tags", "dummies", "-n", "2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines_random(["with_local*SUCCESS*1*files*",
                                        "with_minio*SUCCESS*4*files*"])  # fmt: skip
    # The session's note on the data comes first, then what the job printed.
    minio = log_of(pytester, "with_minio")
    assert minio[0].startswith("data 'dummy_minio': minio "), minio
    assert "MAD_DATAHOME=/data_dlm_0 MAD_DATANAME=dummy_minio" in minio
    assert "MAD_DATAHOME=/data MAD_DATANAME=dummy_local" in log_of(pytester, "with_local")


# ---- checked last (tests run in file order): the job over its time limit ----


def test_a_job_over_its_time_limit_fails_with_slurms_reason(over_time_limit) -> None:
    output, _ = over_time_limit.communicate(timeout=240)
    directory: Path = over_time_limit.directory  # type: ignore[attr-defined]
    assert over_time_limit.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "killed by SLURM at its time limit of 00:01:00" in output
    props = junit_properties(directory / "r.xml")["overtime"]
    assert props["slurm_state"] == "TIMEOUT", (props, output)
    assert re.fullmatch(
        r"slurm job \d+ TIMEOUT \(TimeLimit\): killed by SLURM at its time limit of 00:01:00",
        props["failure_reason"],
    ), props
    session_id = Path(props["slurm_script"]).parent.parent.name
    client = docker.from_env()
    try:
        assert containers_of(client, session_id) == []
    finally:
        client.close()
