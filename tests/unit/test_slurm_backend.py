"""The slurm backend's pure parts: settings, the node script's docker options and
variables, facts and outcomes, sinfo, and the shared poller against a scripted Slurm
(the real cluster is in tests/e2e/test_slurm.py)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from pytest_madengine.backends import Bind, DataBind, Device, RunSpec
from pytest_madengine.backends.slurm import JobState, parse_sinfo
from pytest_madengine.backends.slurm.backend import JobFiles, job_failure, job_outcome
from pytest_madengine.backends.slurm.cluster import parse_scontrol_jobs
from pytest_madengine.backends.slurm.node import (
    NodeFacts,
    NodeScript,
    create_args,
    env_file_text,
    parse_facts,
    read_result,
    render_node_script,
)
from pytest_madengine.backends.slurm.settings import parse_settings, parse_slurm_time
from pytest_madengine.backends.slurm.watcher import JobWatch, JobWatcher
from pytest_madengine.errors import MadError, UsageProblem
from tests.unit.test_slurm_waiter import FakeJob, FakeSlurm


def spec(tmp_path: Path, **fields) -> RunSpec:
    base = {
        "image": "ci-dummy_dummy.ubuntu.amd",
        "command": ("bash", "run.sh", "--batch_size", "8"),
        "workdir": "/myworkspace/dummy",
        "log_path": tmp_path / "dummy.log",
    }
    return RunSpec(**{**base, **fields})


# ---- settings ----


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(1, 60), ("90", 5400), ("10:30", 630), ("01:02:03", 3723), ("2-3", 183600),
     ("1-00:30", 88200), ("1-0:0:5", 86405)],
)  # fmt: skip
def test_slurm_time_forms(value, seconds: int) -> None:
    assert parse_slurm_time(value, "t") == seconds


@pytest.mark.parametrize("bad", [0, "0", "abc", "1:2:3:4", True, 1.5, "-5"])
def test_bad_slurm_times_are_usage_problems(bad) -> None:
    with pytest.raises(UsageProblem, match="t: "):
        parse_slurm_time(bad, "t")


def test_settings_from_the_context() -> None:
    settings = parse_settings(
        {
            "slurm": {
                "partition": "mad", "account": "proj", "modules": ["rocm/6.2"],
                "extra_sbatch": ["--exclusive"], "env": {"NCCL_DEBUG": "INFO", "N": 3},
                "time": "00:30:00", "pending_timeout": 5, "gpu_type": "mi300x",
            },
            "distributed": {"launcher": "torchrun", "nnodes": 2, "nproc_per_node": 4},
            "gpu_device_root": "/fake/dev",
        }
    )  # fmt: skip
    assert (settings.partition, settings.account, settings.gpu_type) == ("mad", "proj", "mi300x")
    assert settings.modules == ("rocm/6.2",) and settings.extra_sbatch == ("--exclusive",)
    assert settings.env == {"NCCL_DEBUG": "INFO", "N": "3"}
    assert settings.time_limit_s == 1800 and settings.pending_timeout_s == 5
    assert settings.distributed.nnodes == 2 and settings.distributed.nproc_per_node == 4
    assert settings.device_root == "/fake/dev"
    # `time` wins over the timeout; without it, the timeout plus the margin (none: none).
    assert settings.job_time_limit(7200) == 1800
    plain = parse_settings({})
    assert plain.job_time_limit(3.2) == 4 + plain.time_margin_s
    assert plain.job_time_limit(None) is None
    assert plain.distributed.nnodes == 1 and plain.device_root == "/dev"
    # madengine's spelling of the node count
    assert parse_settings({"slurm": {"nodes": 3}}).distributed.nnodes == 3


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"slurm": {"partion": "mad"}}, r"unknown key\(s\) partion \(known: partition"),
        ({"slurm": {"partition": ""}}, "'partition' must be a non-empty string"),
        ({"slurm": {"env": {"A": True}}}, "'env' must be an object of strings"),
        ({"slurm": {"modules": "rocm"}}, None),  # one string is a list of one
        ({"slurm": {"pending_timeout": "soon"}}, "'pending_timeout': expected a number"),
        ({"slurm": {"dry_run": "yes"}}, "'dry_run' must be true or false"),
        ({"distributed": {"launcher": "mpirun"}}, "launcher 'mpirun' is not one"),
        ({"distributed": {"nnodes": 0}}, "'nnodes': must be at least 1"),
        ({"slurm": []}, "context 'slurm': expected an object"),
    ],
)
def test_bad_settings_name_the_key(context, message) -> None:
    if message is None:
        assert parse_settings(context).modules == ("rocm",)
        return
    with pytest.raises(UsageProblem, match=message):
        parse_settings(context)


# ---- the node script ----


def test_create_args_mirror_the_docker_backend(tmp_path: Path) -> None:
    args = create_args(
        spec(
            tmp_path,
            labels={"org.pytest-madengine.session": "s1", "org.pytest-madengine.test": "a b"},
            binds=(Bind("/data,1", "/data"), Bind("/ro", "/in", read_only=True)),
            data=(DataBind("/cache/ab12", "/data_dlm_0/dummy", "ab12"),),
            devices=(Device("/dev/x", "/dev/y"),),
            group_add=("video",),
            privileged=True,
            cap_add=("SYS_PTRACE",),
            cpuset_cpus="0-1",
            memory="2g",
            ipc=None,
            network="bridge",
        )
    )
    assert args == [
        "--workdir", "/myworkspace/dummy", "--network", "bridge",
        "--label", "org.pytest-madengine.session=s1", "--label", "org.pytest-madengine.test=a b",
        "--privileged", "--device", "/dev/x:/dev/y:rwm", "--group-add", "video",
        "--mount", 'type=bind,"source=/data,1",target=/data',
        "--mount", "type=bind,source=/ro,target=/in,readonly",
        "--mount", "type=bind,source=/cache/ab12,target=/data_dlm_0/dummy,readonly",
        "--memory", "2g", "--memory-swap", "2g", "--cap-add", "SYS_PTRACE",
        "--cpuset-cpus", "0-1",
    ]  # fmt: skip


def test_env_file_leaves_gpu_variables_to_the_job_and_refuses_line_breaks() -> None:
    text = env_file_text(
        {"MAD_MODEL_NAME": "dummy", "HIP_VISIBLE_DEVICES": "0", "MAD_HOST_GPU_IDS": "0",
         "NOTE": "it's $HOME = `x`", "EMPTY": ""}
    )  # fmt: skip
    assert text == "MAD_MODEL_NAME=dummy\nNOTE=it's $HOME = `x`\nEMPTY=\n"
    with pytest.raises(MadError, match="variable SECRET holds a line break"):
        env_file_text({"SECRET": "a\nb"})
    with pytest.raises(MadError, match="cannot go into docker's --env-file"):
        env_file_text({"A=B": "x"})


def test_node_script_quotes_every_value(tmp_path: Path) -> None:
    hostile = "$(touch pwned) `id` it's"
    text = render_node_script(
        spec(tmp_path, command=("sh", "-c", hostile), image="img:1", gpu_count=2, timeout_s=2.5,
             result_files=("/w/o'ut.csv",), copies=((tmp_path, "/myworkspace/x"),)),
        NodeScript(job_dir=tmp_path / "job dir", vendor="AMD", device_root="/fake dev/"),
    )  # fmt: skip
    assert "'$(touch pwned) `id` it'\"'\"'s'" in text
    assert "job_dir='" + str(tmp_path / "job dir") + "'" in text
    assert "gpus=${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-}}" in text
    assert "if [ -e '/fake dev'/kfd ]" in text
    assert "timeout 2.5 docker wait" in text
    assert "docker cp \"$cid:\"'/w/o'\"'\"'ut.csv' -" in text
    assert "MAD_MULTI_NODE_RUNNER" not in text
    nvidia = render_node_script(
        spec(tmp_path, gpu_count=1),
        NodeScript(job_dir=tmp_path, vendor="NVIDIA", device_root="/dev", nnodes=2,
                   launcher="torchrun", gpu_variable="SLURM_STEP_GPUS", master_port=1234),
    )  # fmt: skip
    assert "gpus=${SLURM_STEP_GPUS:-" in nvidia and '--gpus "\\"device=$joined\\""' in nvidia
    assert "--node_rank=$rank --master_addr=$master --master_port=$port" in nvidia
    assert "port=1234" in nvidia and "timeout " not in nvidia
    with pytest.raises(MadError, match="needs a launcher"):
        render_node_script(spec(tmp_path), NodeScript(tmp_path, "AMD", "/dev", nnodes=2))


def test_the_rendered_script_is_valid_bash(tmp_path: Path) -> None:
    for nodes, launcher in ((1, None), (1, "torchrun"), (2, "torchrun")):
        script = tmp_path / f"node{nodes}{launcher}.sh"
        script.write_text(
            render_node_script(
                spec(tmp_path, gpu_count=2, timeout_s=3, result_files=("/a",),
                     copies=((tmp_path, "/x"),)),
                NodeScript(tmp_path, "AMD", "/dev", nnodes=nodes, launcher=launcher,
                           pull_mark=tmp_path / "pulls" / "k", pull_registry="reg:5000"),
            )
        )  # fmt: skip
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


# ---- facts and outcomes ----


def test_facts_parse_and_results_read(tmp_path: Path) -> None:
    facts = parse_facts(
        "node=n2\ngpus=1,3\nmapped=1\nstarted=1700000000.25\nended=1700000002.5\nexit=0\n"
        "oom=false\nmaster=n1\ndone=1\n",
        rank=1,
    )
    assert (facts.rank, facts.node, facts.gpus, facts.mapped, facts.master) == (
        1, "n2", (1, 3), True, "n1"
    )  # fmt: skip
    assert facts.started == 1700000000.25 and facts.ended == 1700000002.5
    assert facts.exit_code == 0 and facts.container_ended and not facts.timed_out
    assert not parse_facts("node=n1\nsignal=TERM\n", 0).container_ended
    (tmp_path / "result.0").write_bytes(b"model,performance\nx,1\n")
    assert read_result(tmp_path / "result.0") == "model,performance\nx,1\n"
    assert read_result(tmp_path / "result.1") is None


def files(tmp_path: Path, nnodes: int = 1, limit: int | None = None) -> JobFiles:
    return JobFiles(tmp_path, tmp_path / "job.sh", tmp_path / "node.sh", nnodes, limit)


def finished(state: str, reason: str | None = None, code: int | None = 0) -> JobState:
    return JobState("7", state, reason, code, None, "n1", 100.0, 103.0, 110.0)


def test_outcome_of_a_completed_job(tmp_path: Path) -> None:
    (tmp_path / "facts.0").write_text(
        "node=n1\ngpus=2\nstarted=104\nended=109\nexit=0\nimage_id=sha256:ab\ndone=1\n"
    )
    watch = JobWatch("7")
    watch.state = finished("COMPLETED")
    outcome = job_outcome(spec(tmp_path), files(tmp_path), "7", watch, "mad", 99.0)
    assert outcome.failure is None and outcome.exit_code == 0 and outcome.gpus == (2,)
    assert (outcome.started_at, outcome.ended_at, outcome.host) == (104, 109, "n1")
    assert outcome.properties["slurm_queue_wait"] == "3.00"
    assert outcome.properties["slurm_run_time"] == "7.00"
    assert outcome.properties["slurm_gpus"] == "n1:2"
    assert outcome.properties["slurm_job_id"] == "7" and "slurm_reason" not in outcome.properties


def test_slurm_kills_and_stuck_jobs_say_why(tmp_path: Path) -> None:
    log = tmp_path / "dummy.log"
    watch = JobWatch("7")
    killed = job_failure("7", finished("TIMEOUT", "TimeLimit", None), [], watch, log, False, 60)
    assert (
        killed == "slurm job 7 TIMEOUT (TimeLimit): killed by SLURM at its time limit of 00:01:00"
    )
    node = job_failure("7", finished("NODE_FAIL", "NodeDown"), [], watch, log, False)
    assert node == "slurm job 7 NODE_FAIL (NodeDown): a node of the job failed"
    log.write_text("madengine-slurm: image x is not on the Docker Engine of n1 (...)\n")
    early = job_failure("7", finished("FAILED", "NonZeroExitCode", 3), [], watch, log, False)
    assert early == (
        "slurm job 7 FAILED (exit 3) on n1 before its container ended:"
        " image x is not on the Docker Engine of n1 (...)"
    )
    watch.stuck = "pending for 60 s: ReqNodeNotAvail (a node it needs is down, drained or reserved)"
    assert job_failure("7", None, [], watch, log, False).startswith(
        "slurm job 7 could not start: pending for 60 s: ReqNodeNotAvail"
    )


def test_a_job_slurm_requeued_fails_saying_so(tmp_path: Path) -> None:
    """Its log holds two runs of the model: it fails even when the last one passed."""
    line = ("JobId=9 JobName=x JobState=COMPLETED Reason=None Dependency=(null) Requeue=1"
            " Restarts=1 BatchFlag=1 ExitCode=0:0 NodeList=n2")  # fmt: skip
    [state] = parse_scontrol_jobs(line)
    assert state.restarts == 1 and state.succeeded
    ran = [NodeFacts(rank=0, node="n2", exit_code=0)]
    failure = job_failure("9", state, ran, JobWatch("9"), tmp_path / "x.log", False)
    assert failure == (
        "slurm job 9 was requeued by SLURM (1 restart(s)): its log holds more than one run"
        " of the model"
    )
    [once] = parse_scontrol_jobs(line.replace("Restarts=1", "Restarts=0"))
    assert job_failure("9", once, ran, JobWatch("9"), tmp_path / "x.log", False) is None


def test_a_failed_rank_fails_a_multi_node_job(tmp_path: Path) -> None:
    (tmp_path / "facts.0").write_text("node=n1\nexit=0\nmaster=n1\n")
    (tmp_path / "facts.1").write_text("node=n2\nexit=4\nmaster=n1\n")
    watch = JobWatch("7")
    watch.state = finished("FAILED", "NonZeroExitCode", 4)
    outcome = job_outcome(spec(tmp_path), files(tmp_path, 2), "7", watch, "mad", 99.0)
    assert outcome.failure == "node rank 1 (n2) of slurm job 7: exit code 4"
    assert outcome.properties["slurm_node_ranks"] == "0:n1 1:n2"
    assert outcome.properties["slurm_master"] == "n1"


# ---- sinfo ----


def test_partitions_and_their_gpus_per_node() -> None:
    partitions = parse_sinfo(
        "mad*|up|gpu:4|3\nbig|up|gpu:mi300x:8(S:0-1)|2\nbig|up|(null)|1\n"
        "mixed|down|gpu:a100:2,gpu:v100:4|2\n"
    )
    by_name = {p.name: p for p in partitions}
    assert by_name["mad"].default and by_name["mad"].gpus() == 4
    assert by_name["big"].gpus() == 8 and by_name["big"].gpus("mi300x") == 8
    assert by_name["mixed"].gpus("a100") == 2 and by_name["mixed"].gpus() == 4
    assert not by_name["mixed"].up and not by_name["big"].default


# ---- the shared poller ----


def test_one_poll_round_asks_once_for_every_job_and_gives_up_on_stuck_ones() -> None:
    slurm = FakeSlurm(FakeJob("1", 0, 5), FakeJob("2", None, 99, reason="ReqNodeNotAvail"),
                      FakeJob("3", 0, 1, "TIMEOUT", "0:15", final_reason="TimeLimit"))  # fmt: skip
    watcher = JobWatcher(slurm.cluster(), pending_timeout_s=10, clock=slurm.clock)
    watches = [JobWatch(job_id) for job_id in ("1", "2", "3")]
    slurm.now = 2
    watcher.poll_round(watches)
    assert len(slurm.calls("squeue")) == 1 and len(slurm.calls("scontrol")) == 1
    assert [w.done.is_set() for w in watches] == [False, False, True]
    assert watches[2].state is not None and watches[2].state.state == "TIMEOUT"
    slurm.now = 12.5
    watcher.poll_round(watches[:2])
    assert watches[0].done.is_set() and watches[0].state.succeeded  # type: ignore[union-attr]
    assert watches[1].done.is_set() and watches[1].stuck is not None
    assert watches[1].stuck.startswith("pending for 10 s: ReqNodeNotAvail")
    assert len(slurm.calls("squeue")) == 2


def test_a_cluster_that_stops_answering_fails_the_waits_after_a_grace() -> None:
    slurm = FakeSlurm(FakeJob("1", 0, 50))
    slurm.answers["squeue"] = slurm.done([], "", "slurm_load_jobs error: Socket timed out", 1)
    watcher = JobWatcher(slurm.cluster(), pending_timeout_s=10, clock=slurm.clock)
    watch = JobWatch("1")
    watcher.poll_round([watch])
    slurm.now = 30
    watcher.poll_round([watch])
    assert not watch.done.is_set()
    slurm.now = 61
    watcher.poll_round([watch])
    assert watch.done.is_set() and "Socket timed out" in (watch.error or "")


def test_the_thread_serves_jobs_submitted_side_by_side() -> None:
    """Several jobs waited for at once (issue 15's concurrent tests) share each round."""
    jobs = [FakeJob(str(i), 0, 0.5 + i * 0.3) for i in range(4)]
    slurm = FakeSlurm(*jobs)
    start = time.monotonic()
    answer = slurm.run

    def run_now(argv, timeout):  # the scripted jobs move on the real clock
        slurm.now = time.monotonic() - start
        return answer(argv, timeout)

    slurm.run = run_now  # type: ignore[method-assign]
    watcher = JobWatcher(slurm.cluster(), pending_timeout_s=10)
    try:
        watches = [watcher.watch(job.job_id) for job in jobs]
        for watch in watches:
            assert watch.done.wait(10)
    finally:
        watcher.close()
    assert all(w.state is not None and w.state.succeeded for w in watches)
    # Rounds, not jobs, cost squeue calls: each round asked about all jobs still out.
    squeues = slurm.calls("squeue")
    assert len(squeues) == watcher.rounds
    assert squeues[0][-1] == "--jobs=0,1,2,3"


def test_perf_csv_counts_the_nodes_of_a_distributed_run() -> None:
    from pytest_madengine.core.records import ModelFacts, ResultRow, Status, TestRecord
    from pytest_madengine.reporting.perf_csv import perf_rows

    record = TestRecord(
        "dist", Status.SUCCESS, ModelFacts("dist", 2),
        rows=(ResultRow("dist", Status.SUCCESS, 2.0),), backend="slurm", host="n[1-2]", gpus=(0, 1),
        properties={"nnodes": "2", "launcher": "torchrun"},
    )  # fmt: skip
    (row,) = perf_rows(record, machine="here")
    assert (row["nnodes"], row["gpus_per_node"], row["n_gpus"]) == (2, 2, 4)
    assert (row["launcher"], row["deployment_type"], row["machine_name"]) == (
        "torchrun", "slurm", "n[1-2]"
    )  # fmt: skip
    single = perf_rows(TestRecord("one", Status.FAILURE, ModelFacts("one", 1), gpus=(3,),
                                  rows=(ResultRow("one", Status.FAILURE),),
                                  properties={"nnodes": "x"}), machine="here")  # fmt: skip
    assert (single[0]["nnodes"], single[0]["n_gpus"], single[0]["launcher"]) == (1, 1, "")


def test_no_secret_goes_into_the_job_files_only_into_its_environment() -> None:
    spec = RunSpec(
        image="img", command=("sh", "run.sh", "--token", "t0k3n-value", "plain"), workdir="/w",
        log_path=Path("/x.log"), env={"C_PASSWORD": "t0k3n-value", "C_USER": "me"},
        secrets=("t0k3n-value",),
    )  # fmt: skip
    assert env_file_text(spec.env, ("C_PASSWORD",)) == "C_PASSWORD\nC_USER=me\n"
    assert spec.secret_arguments() == {3: "t0k3n-value"}
    assert spec.secret_variables() == ("C_PASSWORD",)
    node = NodeScript(job_dir=Path("/j"), vendor="AMD", device_root="/dev")
    script = render_node_script(spec, node)
    assert "t0k3n-value" not in script
    assert 'run.sh --token "$MAD_SECRET_ARG_3" plain' in script
