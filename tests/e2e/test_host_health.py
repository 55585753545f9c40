"""Placement by latency and affinity, and the heartbeat, on the real SSH and TLS hosts
(scripts/bootstrap hosts 2, tls-host)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import entry
from tests.e2e.test_run import SLEEPER, junit_properties, run, scripts, unique_tree

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("real_home")]
HOST1_PID = Path("/var/lib/pytest-madengine/host1/docker.pid")


def summary_of(path: Path) -> dict:
    return json.loads(path.read_text())


def test_latency_measures_every_host_and_places_by_it(
    pytester: pytest.Pytester, test_hosts: Path, tls_hosts: Path
) -> None:
    """SSH and TLS hosts in one inventory: each host's round trip is measured at the
    start and by the heartbeat, and the summary shows it."""
    tls_entry = tls_hosts.read_text().split("hosts:\n", 1)[1]
    (pytester.path / "hosts.yml").write_text(test_hosts.read_text() + tls_entry)
    models = [entry(f"m{i}", scripts="scripts/dummy/sleeper.sh", args="0") for i in range(3)]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    result = run(pytester, "--mad-tags", "dummies", "--mad-hosts=hosts.yml",
                 "--mad-placement=latency", "--mad-summary=s.json", "--junitxml=r.xml")  # fmt: skip
    result.assert_outcomes(passed=3)
    hosts = {row["host"]: row for row in summary_of(pytester.path / "s.json")["hosts"]}
    assert set(hosts) == {"mad-host1", "mad-host2", "mad-tls"}
    assert all(row["rtt_ms"] > 0 and row["status"] == "online" for row in hosts.values())
    used = {props["host"] for props in junit_properties(pytester.path / "r.xml").values()}
    assert used <= set(hosts) and len(used) >= 1
    result.stdout.fnmatch_lines(["*madengine hosts*", "host*status*round trip*transitions",
                                 "mad-host1 *online *ms*"])  # fmt: skip


def test_affinity_places_by_the_models_host_affinity(
    pytester: pytest.Pytester, test_hosts: Path
) -> None:
    """mad-host2 carries the label: least-loaded would put every test (one at a time) on
    mad-host1; affinity puts those that ask for the label on mad-host2. A label no host
    carries fails its test in one line."""
    (pytester.path / "hosts.yml").write_text(
        test_hosts.read_text().replace(
            "  - name: mad-host2\n", "  - name: mad-host2\n    labels: [fast-disk]\n"
        )
    )
    # `any` goes first to mad-host1 (both idle); a container made ahead for the next
    # test on its GPUs does not keep near0 from mad-host2.
    models = [
        entry("any", scripts="scripts/dummy/sleeper.sh", args="0"),
        entry("near0", scripts="scripts/dummy/sleeper.sh", args="0", host_affinity=["fast-disk"]),
        entry("near1", scripts="scripts/dummy/sleeper.sh", args="0", host_affinity=["fast-disk"]),
        entry("typo", scripts="scripts/dummy/sleeper.sh", args="0", host_affinity=["fast-dsik"]),
    ]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    result = run(pytester, "--mad-tags", "dummies", "--mad-hosts=hosts.yml",
                 "--mad-placement=affinity", "--junitxml=r.xml")  # fmt: skip
    result.assert_outcomes(passed=3, failed=1)
    properties = junit_properties(pytester.path / "r.xml")
    hosts = {name.split("::")[-1]: props.get("host") for name, props in properties.items()}
    assert (hosts["any"], hosts["near0"], hosts["near1"]) == ("mad-host1", "mad-host2", "mad-host2")
    result.stdout.fnmatch_lines(["*typo*models.json field 'host_affinity': no host carries"
                                 " fast-dsik (hosts' labels: fast-disk)*"])  # fmt: skip


def _read_until(session: subprocess.Popen, seen: list[str], wanted: str, limit_s: float) -> None:
    """Reads the session's output into `seen` until a line holds `wanted`."""
    deadline = time.monotonic() + limit_s
    while not any(wanted in line for line in seen):
        assert time.monotonic() < deadline, f"no {wanted!r} in:\n" + "".join(seen)
        ready, _, _ = select.select([session.stdout], [], [], 1.0)
        if ready:
            line = session.stdout.readline()
            assert line, "the session ended early:\n" + "".join(seen)
            seen.append(line)


def test_a_host_that_stops_answering_is_offline_until_it_answers_again(
    pytester: pytest.Pytester, test_hosts: Path
) -> None:
    """`first` runs on mad-host2 (its label) while mad-host1 is idle; mad-host1's dockerd
    is stopped: the heartbeat finds it offline, and the next tests go to mad-host2
    (least-loaded would take the idle mad-host1); once it runs again it is online."""
    (pytester.path / "hosts.yml").write_text(
        test_hosts.read_text().replace(
            "  - name: mad-host2\n", "  - name: mad-host2\n    labels: [two]\n"
        )
    )
    # `first` runs long enough for the heartbeat to find mad-host1 offline before any
    # other test is placed (a test placed before that would wait on the stopped engine).
    models = [entry("first", scripts="scripts/dummy/sleeper.sh", args="8", host_labels=["two"])]
    models += [entry(f"then{i}", scripts="scripts/dummy/sleeper.sh", args="1") for i in range(5)]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--mad-tags",
            "dummies", "--mad-hosts=hosts.yml", "--mad-heartbeat=0.5", "--mad-summary=s.json",
            "--junitxml=r.xml", "--mad-html=report.html"]  # fmt: skip
    session = subprocess.Popen(argv, cwd=pytester.path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    dockerd = int(HOST1_PID.read_text())
    seen: list[str] = []
    try:
        _read_until(session, seen, "::first ", 180)  # its line starts when it runs
        os.kill(dockerd, signal.SIGSTOP)
        _read_until(session, seen, "host mad-host1: online -> offline", 60)
        _read_until(session, seen, "::then0 PASSED", 60)
    finally:
        os.kill(dockerd, signal.SIGCONT)  # never left stopped
    try:
        output, _ = session.communicate(timeout=180)
    finally:
        if session.poll() is None:
            session.kill()
    output = "".join(seen) + output
    assert session.returncode == 0, output
    host1 = next(row for row in summary_of(pytester.path / "s.json")["hosts"]
                 if row["host"] == "mad-host1")  # fmt: skip
    properties = junit_properties(pytester.path / "r.xml")
    by_name = {name.split("::")[-1]: props for name, props in properties.items()}
    placed = {name: (props["host"], props["started_at"]) for name, props in by_name.items()}
    statuses = [change["status"] for change in host1["transitions"]]
    assert statuses[statuses.index("offline") :][:2] == ["offline", "online"], (host1, placed)
    went = next(c["at"] for c in host1["transitions"] if c["status"] == "offline")
    came = next(c["at"] for c in host1["transitions"] if c["at"] > went)
    assert by_name["then0"]["host"] == "mad-host2", output
    on_host1 = [float(p["started_at"]) for p in by_name.values() if p["host"] == "mad-host1"]
    assert not [at for at in on_host1 if went <= at <= came], (went, came, on_host1)
    assert "host mad-host1: offline -> online" in output
    html = (pytester.path / "report.html").read_text()
    assert "<h2>Hosts</h2>" in html and "offline at " in html
