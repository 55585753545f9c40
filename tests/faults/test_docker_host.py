"""DOCKER_HOST=ssh://… (issue 20, item 11): the engine is reached through an SSH
tunnel, as --mad-hosts reaches the same host, not refused for want of paramiko."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_madengine.backends.docker.links import HostLinks, check_hosts
from pytest_madengine.resources.hosts import load_hosts
from tests.conftest import component_missing, entry
from tests.e2e.test_run import run, unique_tree

pytestmark = [pytest.mark.docker]
HOSTS_FILE = Path("/var/lib/pytest-madengine/hosts.yml")


@pytest.fixture
def ssh_engine(real_home: None) -> str:
    """The ssh:// address of a test host whose engine answers."""
    hosts = load_hosts(HOSTS_FILE, "AMD") if HOSTS_FILE.exists() else []
    with HostLinks() as links:
        down = check_hosts(hosts, links)
    answering = [host.docker for host in hosts if host.name not in down and host.docker]
    if not answering:
        component_missing(f"an SSH test host (run scripts/bootstrap hosts 2): {down or 'none'}")
    return answering[0]


def test_an_ssh_docker_host_is_reached_through_a_tunnel(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ssh_engine: str
) -> None:
    unique_tree(pytester, [entry("one")])
    pytester.makepyfile(
        test_user="""
        def test_the_engine_answers(mad_docker):
            assert mad_docker.ping()
        """
    )
    monkeypatch.setenv("DOCKER_HOST", ssh_engine)
    result = run(pytester, "--mad-tags", "one", "--mad-gpus", "1", "test_user.py")
    result.assert_outcomes(passed=1)
    assert "paramiko" not in result.stdout.str() + result.stderr.str()
