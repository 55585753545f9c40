"""Sessions over several Docker hosts reached by SSH (scripts/bootstrap hosts 2)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pytest_madengine.backends import SESSION_LABEL, TEST_LABEL
from pytest_madengine.backends.docker.links import HostLinks
from pytest_madengine.resources.hosts import load_hosts
from tests.conftest import containers_of_our_images, entry
from tests.e2e.test_run import SLEEPER, junit_properties, run, scripts, unique_tree

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("real_home")]
BOOTSTRAP = Path(__file__).resolve().parents[2] / "scripts" / "bootstrap"


@pytest.fixture
def host_links(real_home: None) -> Iterator[HostLinks]:
    """This test's own SSH tunnels to the hosts, to look at their containers."""
    with HostLinks() as links:
        yield links


def clients(links: HostLinks, hosts_file: Path) -> dict[str, docker.DockerClient]:
    return {host.name: links.client(host) for host in load_hosts(hosts_file)}


def ours(client: docker.DockerClient, session: str | None = None) -> list:
    """Containers of the session (of any session of ours), and any of the images this
    test process built: one started without our label is not missed."""
    label = f"{SESSION_LABEL}={session}" if session else SESSION_LABEL
    found = client.containers.list(all=True, filters={"label": label})
    known = {container.id for container in found}
    return found + [c for c in containers_of_our_images(client) if c.id not in known]


def test_tests_spread_over_the_hosts(pytester: pytest.Pytester, test_hosts: Path) -> None:
    models = [entry(f"m{i}", scripts="scripts/dummy/sleeper.sh", args="1") for i in range(4)]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    result = run(pytester, "--mad-tags", "dummies", f"--mad-hosts={test_hosts}", "-n", "2",
                 "--junitxml", "r.xml")  # fmt: skip
    result.assert_outcomes(passed=4)
    hosts = {props["host"] for props in junit_properties(pytester.path / "r.xml").values()}
    assert hosts == {"mad-host1", "mad-host2"}


def test_round_robin_takes_the_hosts_in_turn(pytester: pytest.Pytester, test_hosts: Path):
    """One test at a time, each host idle when the next is placed: least-loaded would
    put them all on the first host; round-robin goes to the next one each time."""
    models = [entry(f"m{i}", scripts="scripts/dummy/sleeper.sh", args="0") for i in range(4)]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    result = run(pytester, "--mad-tags", "dummies", f"--mad-hosts={test_hosts}",
                 "--mad-placement=round-robin", "--junitxml", "r.xml")  # fmt: skip
    result.assert_outcomes(passed=4)
    properties = junit_properties(pytester.path / "r.xml")
    hosts = [properties[name]["host"] for name in sorted(properties)]
    assert hosts == ["mad-host1", "mad-host2", "mad-host1", "mad-host2"]


def test_a_host_that_does_not_answer_is_left_out(pytester: pytest.Pytester, test_hosts: Path):
    unique_tree(pytester, [entry("one")])
    inventory = test_hosts.read_text() + (
        "  - name: ghost\n    docker: ssh://root@127.0.0.1:2299\n    gpus: 4\n"
    )
    (pytester.path / "hosts.yml").write_text(inventory)
    result = run(pytester, "--mad-tags", "one", "--mad-hosts=hosts.yml")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["madengine: host ghost does not answer, left out: *"])


def test_bad_hosts_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [entry("one")])
    (pytester.path / "hosts.yml").write_text("hosts:\n  - name: a\n    docker: http://x\n")
    result = run(pytester, "--mad-tags", "one", "--mad-hosts=hosts.yml")
    result.stderr.fnmatch_lines(
        ["ERROR: */hosts.yml: host 'a': 'docker' must be a unix://, ssh:// or tcp:// URL,"
         " got 'http://x'"]
    )  # fmt: skip


def _kill_daemon(index: int) -> None:
    """SIGKILL a test host's dockerd, as a machine that dies would take it away."""
    pid = int(Path(f"/var/lib/pytest-madengine/host{index}/docker.pid").read_text())
    os.kill(pid, signal.SIGKILL)


def test_a_host_lost_mid_run_is_retried_elsewhere(
    pytester: pytest.Pytester, test_hosts: Path, host_links: HostLinks
) -> None:
    models = [entry(f"m{i}", scripts="scripts/dummy/sleeper.sh", args="4") for i in range(2)]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    host1 = clients(host_links, test_hosts)["mad-host1"]
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-n", "2",
            "--mad-tags", "dummies", f"--mad-hosts={test_hosts}", "--junitxml=r.xml"]  # fmt: skip
    session = subprocess.Popen(argv, cwd=pytester.path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (running := host1.containers.list(filters={"label": TEST_LABEL})):
            assert time.monotonic() < deadline, "no test ever started on mad-host1"
            assert session.poll() is None, session.communicate()[0]
            time.sleep(0.2)
        session_id = running[0].labels[SESSION_LABEL]
        _kill_daemon(1)
        output, _ = session.communicate(timeout=180)
    finally:
        if session.poll() is None:
            session.kill()
        subprocess.run(["bash", str(BOOTSTRAP), "hosts", "2"], check=True, capture_output=True)
    assert session.returncode == 0, output
    properties = junit_properties(pytester.path / "r.xml")
    assert {props["host"] for props in properties.values()} == {"mad-host2"}, output
    retried = [props for props in properties.values() if "retried_after" in props]
    assert len(retried) == 1 and retried[0]["retried_after"].startswith("host mad-host1 lost: ")
    for name, client in clients(host_links, test_hosts).items():
        assert ours(client, session_id) == [], f"containers of the session left on {name}"


@pytest.mark.parametrize(
    "stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "SIGTERM", "SIGHUP"]
)
def test_a_stopped_session_removes_our_containers_on_every_host(
    pytester: pytest.Pytester, test_hosts: Path, host_links: HostLinks, stop: signal.Signals
) -> None:
    """Ctrl-C, `kill` (a CI runner's timeout) or a closed terminal, to the controller of
    an xdist session on two SSH hosts: nothing of it stays on either host."""
    models = [entry(f"m{i}", scripts="scripts/dummy/sleeper.sh", args="120") for i in range(2)]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    hosts = clients(host_links, test_hosts)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2",
            "--mad-tags", "dummies", f"--mad-hosts={test_hosts}"]  # fmt: skip
    session = subprocess.Popen(argv, cwd=pytester.path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not all(
            client.containers.list(filters={"label": TEST_LABEL}) for client in hosts.values()
        ):
            assert time.monotonic() < deadline, "the models never ran on both hosts"
            assert session.poll() is None, session.communicate()[0]
            time.sleep(0.2)
        session.send_signal(stop)
        output, _ = session.communicate(timeout=120)
    finally:
        if session.poll() is None:
            session.kill()
    for name, client in hosts.items():
        assert ours(client) == [], f"containers left on {name}:\n{output}"


def test_user_tests_get_a_host_and_gpus(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [entry("one")])
    pytester.makepyfile(
        test_user="""
        import pytest

        @pytest.mark.mad_gpus(2)
        def test_two(mad_host, mad_gpus):
            assert len(mad_gpus) == 2 and mad_host.gpus == mad_gpus

        def test_one(mad_gpus):
            assert len(mad_gpus) == 1
        """
    )
    result = run(pytester, "--mad-tags", "one", "--mad-gpus", "4", "test_user.py")
    result.assert_outcomes(passed=2)


def test_a_tcp_host_with_tls_runs_tests(pytester: pytest.Pytester, tls_hosts: Path) -> None:
    models = [entry(f"m{i}", scripts="scripts/dummy/sleeper.sh", args="0") for i in range(2)]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    result = run(pytester, "--mad-tags", "dummies", f"--mad-hosts={tls_hosts}",
                 "--junitxml", "r.xml")  # fmt: skip
    result.assert_outcomes(passed=2)
    hosts = {props["host"] for props in junit_properties(pytester.path / "r.xml").values()}
    assert hosts == {"mad-tls"}


def test_a_tls_host_refuses_a_client_without_certificate(
    pytester: pytest.Pytester, tls_hosts: Path, test_hosts: Path
) -> None:
    unique_tree(pytester, [entry("one")])
    no_certificate = re.sub(r", cert: [^,}]+, key: [^,}]+", "", tls_hosts.read_text())
    no_certificate = no_certificate.replace("hosts:\n", "")
    (pytester.path / "hosts.yml").write_text(test_hosts.read_text() + no_certificate)
    result = run(pytester, "--mad-tags", "one", "--mad-hosts=hosts.yml")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["madengine: host mad-tls does not answer, left out: *"])
