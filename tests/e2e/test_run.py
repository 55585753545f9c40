"""Whole benchmark sessions on the real Docker Engine: build, run, judge, report."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from xml.etree import ElementTree

import pytest

from pytest_madengine.backends import SESSION_LABEL, TEST_LABEL
from pytest_madengine.reporting.perf_csv import PERF_COLUMNS
from tests.conftest import TEST_IMAGE_LABEL_LINE, entry, write_tree

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_client")]

SLEEPER = '#!/bin/sh\necho "sleeping $1"\nsleep "$1"\necho \'performance: 1 s\'\n'
FAIL = "#!/bin/sh\necho 'loading'\necho 'RuntimeError: out of memory' >&2\nexit 1\n"
NOMETRIC = "#!/bin/sh\necho 'done, nothing measured'\n"
VALUE = '#!/bin/sh\necho "performance: ${1:-100} samples_per_second"\n'


def scripts(**bodies: str) -> dict[str, str]:
    return {f"scripts/dummy/{name}.sh": body for name, body in bodies.items()}


def unique_tree(pytester: pytest.Pytester, models: list, files: dict[str, str] | None = None):
    """A tree whose Dockerfile content is unique to the test, so images do not collide."""
    root = write_tree(pytester.path, models, files)
    marker = f"{TEST_IMAGE_LABEL_LINE}\n# test {uuid.uuid4().hex}\n"
    for dockerfile in (root / "docker").glob("*.Dockerfile"):
        dockerfile.write_text(dockerfile.read_text() + marker)
    return root


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args, timeout=300)


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    """testcase name -> its <property> elements."""
    return {
        case.get("name", ""): {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        for case in ElementTree.parse(path).iter("testcase")
    }


def read_perf(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_dummy_passes_with_junit_properties_and_perf_csv(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [entry("dummy", args="42", scripts="scripts/dummy/value.sh")],
                scripts(value=VALUE))  # fmt: skip
    result = run(pytester, "--mad-tags", "dummy", "--junitxml", "r.xml", "--mad-summary", "s.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*madengine results*", "model*status*performance*metric*",
         "dummy*SUCCESS*42*samples_per_second*", "images: 1 built, 0 reused"]
    )  # fmt: skip
    properties = junit_properties(pytester.path / "r.xml")["dummy"]
    assert properties["performance"] == "42" and properties["metric"] == "samples_per_second"
    assert properties["status"] == "SUCCESS" and properties["docker_sha"].startswith("sha256:")
    assert Path(properties["log_path"]).read_text().strip().endswith("42 samples_per_second")
    rows = read_perf(pytester.path / "perf.csv")
    assert list(rows[0]) == list(PERF_COLUMNS)
    assert rows[0]["model"] == "dummy" and rows[0]["status"] == "SUCCESS"
    assert rows[0]["performance"] == "42" and rows[0]["docker_image"] == "ci-dummy_dummy.ubuntu.amd"
    summary = json.loads((pytester.path / "s.json").read_text())
    assert summary["counts"] == {"SUCCESS": 1, "FAILURE": 0, "SKIPPED": 0}


def test_failures_say_why_in_one_line(pytester: pytest.Pytester) -> None:
    models = [
        entry("crash", scripts="scripts/dummy/fail.sh"),
        entry("quiet", scripts="scripts/dummy/nometric.sh"),
        entry("hang", scripts="scripts/dummy/sleeper.sh", args="60", timeout=2),
        entry("skipme", skip_gpu_arch="gfx90a"),
    ]
    unique_tree(pytester, models, scripts(fail=FAIL, nometric=NOMETRIC, sleeper=SLEEPER))
    result = run(
        pytester, "--mad-tags", "dummies", "--junitxml", "r.xml",
        "--mad-context", '{"gpu_architecture": "gfx90a"}',
    )  # fmt: skip
    result.assert_outcomes(failed=3, skipped=1)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED models.json::crash - Failed: exit code 1",
            "FAILED models.json::quiet - Failed: no performance line in the log",
            "FAILED models.json::hang - Failed: timeout after 2 s",
            "SKIPPED*skip_gpu_arch lists gfx90a*",
            "--- last lines of */logs/*/crash.*.log ---",
            "RuntimeError: out of memory",  # the log's tail in the failure report
        ]
    )
    statuses = {row["model"]: row["status"] for row in read_perf(pytester.path / "perf.csv")}
    assert statuses == {"crash": "FAILURE", "quiet": "FAILURE", "hang": "FAILURE",
                        "skipme": "SKIPPED"}  # fmt: skip


def test_expectation_and_baseline_misses_are_junit_failures(pytester: pytest.Pytester) -> None:
    models = [
        entry("slow", scripts="scripts/dummy/value.sh", args="80", expect={"min": 100}),
        entry("regressed", scripts="scripts/dummy/value.sh", args="90"),
        entry("steady", scripts="scripts/dummy/value.sh", args="99"),
    ]
    unique_tree(pytester, models, scripts(value=VALUE))
    baseline = pytester.path / "old.csv"
    with baseline.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PERF_COLUMNS)
        writer.writeheader()
        for model in ("regressed", "steady"):
            writer.writerow({"model": model, "performance": "100", "status": "SUCCESS"})
    result = run(pytester, "--mad-tags", "dummies", "--junitxml", "r.xml",
                 "--mad-baseline", str(baseline), "--mad-tolerance", "5%")  # fmt: skip
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            "performance 80 samples_per_second below min 100 (-20.0%)",
            "regression: 90 samples_per_second vs baseline 100 (-10.0%, tolerance 5%)",
            "FAILED models.json::slow - Failed: performance 80*",
            "FAILED models.json::regressed - Failed: regression: 90*",
        ]
    )
    xml = (pytester.path / "r.xml").read_text()
    assert 'message="Failed: regression: 90 samples_per_second vs baseline 100' in xml
    rows = {row["model"]: row for row in read_perf(pytester.path / "perf.csv")}
    assert (
        rows["regressed"]["status"] == "FAILURE" and rows["regressed"]["relative_change"] == "-0.1"
    )
    assert rows["steady"]["status"] == "SUCCESS"


def test_failed_build_fails_its_tests_and_others_go_on(pytester: pytest.Pytester) -> None:
    root = unique_tree(pytester, [entry("good"), entry("broken", dockerfile="docker/broken")])
    (root / "docker" / "broken.ubuntu.amd.Dockerfile").write_text(
        "FROM mad-base/busybox:latest\nRUN echo compiling && exit 9\n"
    )
    result = run(pytester, "--mad-tags", "dummies")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "image ci-broken_broken.ubuntu.amd failed to build: The command*non-zero code: 9*",
            "FAILED models.json::broken - Failed: image ci-broken*",
        ]
    )
    assert "compiling" in result.stdout.str()


def test_eight_models_one_dockerfile_build_once_under_xdist(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [entry(f"m{i}") for i in range(8)])
    (pytester.path / "docker" / "dummy.ubuntu.nvidia.Dockerfile").unlink()
    pytester.makeini("[pytest]\nmad_tags = dummies\n")
    first = run(pytester, "-n", "4", "--mad-summary", "s1.json")
    first.assert_outcomes(passed=8)
    summary = json.loads((pytester.path / "s1.json").read_text())
    built = [t for t in summary["tests"] if t["properties"]["image_built"] == "true"]
    # Eight image names (one per model) over one Dockerfile: one build, seven tags of it.
    assert len(built) == 1 and summary["images"] == {"built": 1, "reused": 7}
    second = run(pytester, "-n", "4", "--mad-summary", "s2.json")
    second.assert_outcomes(passed=8)
    assert json.loads((pytester.path / "s2.json").read_text())["images"] == {
        "built": 0, "reused": 8
    }  # fmt: skip
    assert len(read_perf(pytester.path / "perf.csv")) == 16


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_interrupt_removes_containers_and_keeps_finished_rows(
    pytester: pytest.Pytester, docker_client, signum: int
) -> None:
    models = [entry("quick", scripts="scripts/dummy/value.sh"),
              entry("long", scripts="scripts/dummy/sleeper.sh", args="120")]  # fmt: skip
    unique_tree(pytester, models, scripts(value=VALUE, sleeper=SLEEPER))
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--mad-tags", "dummies"],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    test_id = "models.json::long"
    while time.monotonic() < deadline:
        running = docker_client.containers.list(filters={"label": f"{TEST_LABEL}={test_id}"})
        if running:
            break
        time.sleep(0.2)
    else:
        session.kill()
        pytest.fail("the long model never started")
    session_id = running[0].labels[SESSION_LABEL]
    session.send_signal(signum)
    output, _ = session.communicate(timeout=60)
    assert session.returncode != 0, output
    left = docker_client.containers.list(
        all=True, filters={"label": f"{SESSION_LABEL}={session_id}"}
    )
    assert left == [], output
    rows = read_perf(pytester.path / "perf.csv")
    assert next((row["model"], row["status"]) for row in rows) == ("quick", "SUCCESS"), output


def test_live_output_streams_model_output_to_the_terminal(pytester: pytest.Pytester) -> None:
    talk = "#!/bin/sh\necho 'live-line-from-the-model'\necho 'performance: 5 fps'\n"
    unique_tree(pytester, [entry("talk", scripts="scripts/dummy/talk.sh")], scripts(talk=talk))
    quiet = run(pytester, "--mad-tags", "talk")
    assert "live-line-from-the-model" not in quiet.stdout.str()
    live = run(pytester, "--mad-tags", "talk", "--mad-live-output")
    live.assert_outcomes(passed=1)
    live.stdout.fnmatch_lines(["*live-line-from-the-model*"])


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_amd_run_sees_its_fake_devices_and_visibility(pytester: pytest.Pytester) -> None:
    check = (
        "#!/bin/sh\nls /dev/kfd /dev/dri/renderD129 || exit 5\n"
        'echo "performance: $MAD_RUNTIME_NGPUS gpus ids=$MAD_HOST_GPU_IDS"\n'
    )
    root = unique_tree(pytester, [entry("amd", scripts="scripts/dummy/check.sh")],
                       scripts(check=check))  # fmt: skip
    devices = root / "dev"
    (devices / "dri").mkdir(parents=True)
    for name in ("kfd", "dri/renderD128", "dri/renderD129"):
        os.mknod(devices / name, 0o20666, os.makedev(1, 3))
    context = json.dumps({"gpu_vendor": "AMD", "gpu_device_root": str(devices)})
    result = run(pytester, "--mad-tags", "amd", "--mad-gpus", "1,", "--mad-context", context)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["amd*SUCCESS*1*gpus*"])


def _intervals(properties: dict[str, dict[str, str]]) -> dict[int, list[tuple[float, float]]]:
    """GPU id -> the (start, end) of every run that held it."""
    held: dict[int, list[tuple[float, float]]] = {}
    for props in properties.values():
        span = (float(props["started_at"]), float(props["ended_at"]))
        for gpu in props["gpus"].split(","):
            held.setdefault(int(gpu), []).append(span)
    return held


def test_xdist_workers_never_share_a_gpu(pytester: pytest.Pytester) -> None:
    models = [entry(f"m{i}", n_gpus=2, scripts="scripts/dummy/sleeper.sh", args="0.5")
              for i in range(8)]  # fmt: skip
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    result = run(pytester, "--mad-tags", "dummies", "--mad-gpus", "4", "-n", "4",
                 "--junitxml", "r.xml")  # fmt: skip
    result.assert_outcomes(passed=8)
    properties = junit_properties(pytester.path / "r.xml")
    assert all(len(props["gpus"].split(",")) == 2 for props in properties.values())
    for gpu, spans in _intervals(properties).items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, f"GPU {gpu} held by two tests at once: {spans}"


def test_n_auto_starts_one_worker_per_gpu(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [entry("one")])
    result = run(pytester, "--mad-tags", "one", "--mad-gpus", "3", "-n", "auto")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*3 workers*"])


KEPT_REPORTS = """
def pytest_terminal_summary(terminalreporter):
    kept = [report for reports in terminalreporter.stats.values() for report in reports
            if hasattr(report, "mad_record")]
    terminalreporter.write_line(f"reports keeping a record: {len(kept)}")
"""


def test_the_controller_keeps_no_record_dict_on_a_report_once_it_is_written(
    pytester: pytest.Pytester,
) -> None:
    unique_tree(pytester, [entry("dummy", args="7", scripts="scripts/dummy/value.sh")],
                scripts(value=VALUE))  # fmt: skip
    pytester.makeconftest(KEPT_REPORTS)
    result = run(pytester, "--mad-tags", "dummy", "--junitxml", "r.xml")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dummy*SUCCESS*7*", "reports keeping a record: 0"])
    assert [row["performance"] for row in read_perf(pytester.path / "perf.csv")] == ["7"]
    assert junit_properties(pytester.path / "r.xml")["dummy"]["performance"] == "7"


# Fails the parameter set b=1, passes the others.
FAILS_B1 = '#!/bin/sh\ncase " $* " in *" --b 1 "*) exit 1 ;; esac\necho "performance: 5 fps"\n'


def test_last_failed_reruns_only_the_failed_parameter_set(pytester: pytest.Pytester) -> None:
    """pytest >= 9.2 reads `p[b=1]` back from its cache as a name and params: our items'
    structured ids (plugin/collection.py) must say the same, or --lf reruns all."""
    models = [entry("p", scripts="scripts/dummy/half.sh", parametrize=[{"b": 1}, {"b": 2}])]
    unique_tree(pytester, models, scripts(half=FAILS_B1))
    first = pytester.runpytest_subprocess("-rA", "--mad-tags", "dummies", timeout=300)
    first.assert_outcomes(passed=1, failed=1)
    again = pytester.runpytest_subprocess("-rA", "--mad-tags", "dummies", "--lf", timeout=300)
    again.assert_outcomes(failed=1)  # b=2 passed before: not run again
