"""--mad-concurrency: one process runs several MAD tests at once, as GPU leases allow,
and the session behaves as a serial one does: no GPU shared, no output mixed, -x,
Ctrl-C and timeouts as usual (a lost host: tests/faults/test_runs.py)."""

from __future__ import annotations

import itertools
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pytest_madengine.backends import SESSION_LABEL
from tests.conftest import entry
from tests.e2e.test_run import FAIL, junit_properties, run, scripts, unique_tree
from tests.faults.test_runs import ours, pytest_session, wait_for_container

pytestmark = [pytest.mark.docker]

# Says which test it is as it begins and ends, with a nap between.
NAP = '#!/bin/sh\necho "$1 begins"\nsleep "$2"\necho "$1 ends"\necho "performance: 1 s"\n'
# Three lines, apart in time, so that tests running at once interleave their output.
CHATTY = (
    '#!/bin/sh\nfor n in 1 2 3; do echo "$1 says line $n"; sleep 0.4; done\n'
    'echo "performance: 1 s"\n'
)


def napping(name: str, seconds: float, **fields: object) -> dict[str, object]:
    return entry(name, scripts="scripts/dummy/nap.sh", args=f"{name} {seconds:g}", **fields)


@pytest.fixture(autouse=True)
def nothing_left(docker_client: docker.DockerClient) -> Iterator[None]:
    before = ours(docker_client)
    yield
    assert ours(docker_client) - before == set()


def spans(path: Path) -> dict[str, tuple[float, float, set[str]]]:
    """test -> (started, ended, GPUs) from the JUnit properties."""
    return {
        name: (float(props["started_at"]), float(props["ended_at"]), set(props["gpus"].split(",")))
        for name, props in junit_properties(path).items()
    }


def overlapping(a: tuple[float, float, set[str]], b: tuple[float, float, set[str]]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_tests_run_at_once_as_gpus_allow_and_never_share_one(pytester: pytest.Pytester) -> None:
    models = [napping(f"m{i}", 2) for i in range(5)] + [napping("pair", 2, n_gpus=2)]
    unique_tree(pytester, models, scripts(nap=NAP))
    result = run(pytester, "--mad-tags=dummies", "--mad-gpus=3", "--mad-concurrency=auto",
                 "--junitxml=r.xml")  # fmt: skip
    result.assert_outcomes(passed=6)
    ran = spans(pytester.path / "r.xml")
    assert len(ran["pair"][2]) == 2
    pairs = [(a, b) for a in ran for b in ran if a < b and overlapping(ran[a], ran[b])]
    assert pairs, "no two tests ran at once"
    for a, b in pairs:
        assert not ran[a][2] & ran[b][2], f"{a} and {b} held GPU {ran[a][2] & ran[b][2]} at once"
    # Reports come in item order whatever order the containers ended in.
    reported = re.findall(r"^PASSED models.json::(\w+)", result.stdout.str(), re.MULTILINE)
    assert reported == ["m0", "m1", "m2", "m3", "m4", "pair"]


def test_live_output_of_tests_at_once_comes_in_whole_lines_under_their_names(
    pytester: pytest.Pytester,
) -> None:
    models = [entry(f"c{i}", scripts="scripts/dummy/chatty.sh", args=f"c{i}") for i in range(3)]
    unique_tree(pytester, models, scripts(chatty=CHATTY))
    result = run(pytester, "--mad-tags=dummies", "--mad-gpus=3", "--mad-concurrency=3",
                 "--mad-live-output")  # fmt: skip
    result.assert_outcomes(passed=3)
    said = [line for line in result.stdout.lines if " says line " in line]
    for name in ("c0", "c1", "c2"):
        assert [line for line in said if f"{name} says" in line] == [
            f"[{name}] {name} says line {n}" for n in (1, 2, 3)
        ]
    assert len(said) == 9  # nothing torn or doubled
    for log in (pytester.path / "mad_output" / "logs").rglob("*.log"):
        name = log.name.split(".")[0]
        text = log.read_text()
        assert f"{name} says line 3" in text
        assert not re.search(rf"c(?!{name[1:]})\d says", text), f"{log.name} has another's lines"


def test_exitfirst_ends_the_tests_running_ahead(pytester: pytest.Pytester) -> None:
    models = [entry("fails", scripts="scripts/dummy/fail.sh")]
    models += [napping(f"slow{i}", 120) for i in range(2)]
    unique_tree(pytester, models, scripts(nap=NAP, fail=FAIL))
    started = time.monotonic()
    result = run(pytester, "--mad-tags=dummies", "--mad-gpus=3", "--mad-concurrency=3", "-x",
                 "--junitxml=r.xml")  # fmt: skip
    result.assert_outcomes(failed=1)
    # The slow ones were ended, not waited for (they nap for two minutes).
    assert time.monotonic() - started < 100
    assert list(junit_properties(pytester.path / "r.xml")) == ["fails"]


def test_a_timeout_ends_its_own_test_only(pytester: pytest.Pytester) -> None:
    models = [napping("hang", 60, timeout=2), napping("quick", 1)]
    unique_tree(pytester, models, scripts(nap=NAP))
    result = run(pytester, "--mad-tags=dummies", "--mad-gpus=2", "--mad-concurrency=2")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED models.json::hang - Failed: timeout after 2 s"])


def test_ctrl_c_ends_every_test_running_ahead_and_leaves_no_container(
    pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    unique_tree(pytester, [napping(f"slow{i}", 120) for i in range(3)], scripts(nap=NAP))
    session = pytest_session(pytester, "--mad-tags=dummies", "--mad-gpus=3",
                             "--mad-concurrency=3")  # fmt: skip
    try:
        session_id = wait_for_container(docker_client, session)
        label = {"label": f"{SESSION_LABEL}={session_id}"}
        deadline = time.monotonic() + 60
        while len(docker_client.containers.list(filters=label)) < 3:  # all three at once
            assert time.monotonic() < deadline, "the three tests never ran at once"
            time.sleep(0.1)
    finally:
        session.send_signal(signal.SIGINT)
        output, _ = session.communicate(timeout=60)
    assert session.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "Traceback" not in output
    assert docker_client.containers.list(all=True, filters=label) == []


def test_items_with_fixtures_of_the_user_run_in_their_turn(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [napping(f"m{i}", 1) for i in range(2)], scripts(nap=NAP))
    pytester.makeconftest(
        "import pytest\n\n@pytest.fixture(autouse=True)\ndef each_test():\n    yield\n"
    )
    result = run(pytester, "--mad-tags=dummies", "--mad-gpus=2", "--mad-concurrency=2",
                 "--junitxml=r.xml")  # fmt: skip
    result.assert_outcomes(passed=2)
    ran = spans(pytester.path / "r.xml")
    assert not overlapping(ran["m0"], ran["m1"])


def test_xdist_workers_each_run_their_share_at_once(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [napping(f"m{i}", 2) for i in range(6)], scripts(nap=NAP))
    result = run(pytester, "--mad-tags=dummies", "--mad-gpus=4", "--mad-concurrency=2",
                 "-n", "2", "--junitxml=r.xml")  # fmt: skip
    result.assert_outcomes(passed=6)
    ran = spans(pytester.path / "r.xml")
    for a in ran:
        for b in ran:
            if a < b and overlapping(ran[a], ran[b]):
                assert not ran[a][2] & ran[b][2], f"{a} and {b} shared a GPU"
    # Two workers one test at a time never have three running: one did two at once.
    most = max(sum(start <= ran[b][0] < end for start, end, _ in ran.values()) for b in ran)
    assert most >= 3, "no worker ran two tests at once"


def test_a_session_that_collection_errors_stop_starts_no_container(
    pytester: pytest.Pytester,
) -> None:
    unique_tree(pytester, [napping(f"m{i}", 30) for i in range(2)], scripts(nap=NAP))
    pytester.makepyfile(test_broken="import no_such_module_here\n")
    result = run(pytester, "--mad-tags=dummies", "--mad-gpus=2", "--mad-concurrency=2",
                 "models.json", "test_broken.py")  # fmt: skip
    result.stdout.fnmatch_lines(["*Interrupted: 1 error during collection*"])
    assert not list((pytester.path / "mad_output").rglob("*.log"))


def test_files_of_the_same_name_from_tests_at_once_come_back_whole(
    pytester: pytest.Pytester,
) -> None:
    # Each writes its own letter, a different number of times, to the same file.
    writer = ('#!/bin/sh\nhead -c "$2" /dev/zero | tr "\\\\000" "$1" > ../shared.out\n'
              'echo "performance: 1 s"\n')  # fmt: skip
    models = [
        entry(name, scripts="scripts/dummy/writer.sh", args=f"{name} {size}")
        for name, size in (("A", 6_000_000), ("B", 3_000_000), ("C", 4_500_000))
    ]
    unique_tree(pytester, models, scripts(writer=writer))
    run(pytester, "--mad-tags=dummies", "--mad-gpus=3", "--mad-concurrency=3").assert_outcomes(
        passed=3
    )
    data = (pytester.path / "shared.out").read_bytes()
    assert (data[:1], len(data)) in {(b"A", 6_000_000), (b"B", 3_000_000), (b"C", 4_500_000)}
    assert data == data[:1] * len(data), "the file holds pieces of two tests' output"


def test_ctrl_c_while_images_build_ends_the_session_promptly(
    pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    root = unique_tree(pytester, [entry("slow0"), entry("slow1", dockerfile="docker/other")])
    # Two images whose builds take a minute: nothing can cut a build short.
    for name in ("dummy", "other"):
        dockerfile = root / "docker" / f"{name}.ubuntu.amd.Dockerfile"
        base = (root / "docker" / "dummy.ubuntu.amd.Dockerfile").read_text()
        dockerfile.write_text(f"{base}\n# {name}\nRUN sleep 60\n")
    session = pytest_session(pytester, "--mad-tags=dummies", "--mad-gpus=2",
                             "--mad-concurrency=2")  # fmt: skip
    time.sleep(6)  # start-up, then both builds under way
    session.send_signal(signal.SIGINT)
    started = time.monotonic()
    output, _ = session.communicate(timeout=120)
    assert session.returncode == pytest.ExitCode.INTERRUPTED, output
    assert time.monotonic() - started < 30, "the session waited for the builds"


def test_one_at_a_time_the_next_container_is_made_while_one_runs_and_none_overlap(
    pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    unique_tree(pytester, [napping(f"m{i}", 1.5) for i in range(3)], scripts(nap=NAP))
    since = time.time()
    result = run(pytester, "--mad-tags=dummies", "--mad-gpus=2", "--junitxml=r.xml")
    result.assert_outcomes(passed=3)
    ran = spans(pytester.path / "r.xml")
    # One at a time, in item order, on the GPU the one before gave back.
    assert [name for name, _ in sorted(ran.items(), key=lambda item: item[1][0])] == [
        "m0",
        "m1",
        "m2",
    ]
    assert ran["m0"][1] <= ran["m1"][0] and ran["m1"][1] <= ran["m2"][0]
    assert {gpu for span in ran.values() for gpu in span[2]} == {"0"}
    # Each next container was created before the one before it ended, and started after.
    # This session's own (its log folder is named after it): other sessions of the engine,
    # a test before this one among them, may end theirs meanwhile.
    (session_id,) = [path.name for path in (pytester.path / "mad_output" / "logs").iterdir()]
    events = docker_client.events(
        since=since, until=time.time(), decode=True,
        filters={"type": "container", "label": f"{SESSION_LABEL}={session_id}"},
    )  # fmt: skip
    order = [(event["Action"], event["Actor"]["Attributes"]["name"]) for event in events
             if event["Action"] in ("create", "start", "die")]  # fmt: skip
    names = list(dict.fromkeys(name for _, name in order))
    assert len(names) == 3
    for before, after in itertools.pairwise(names):
        assert (
            order.index(("create", after))
            < order.index(("die", before))
            < order.index(("start", after))
        ), order
