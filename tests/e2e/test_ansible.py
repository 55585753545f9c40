"""examples/ansible/ for real: ansible-playbook runs a build manifest with `madengine run`
on the SSH test hosts of `scripts/bootstrap hosts 2`, each with its own Docker engine,
brings each host's JUnit XML and perf.csv back and merges them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit
from xml.etree import ElementTree

import docker
import pytest

from pytest_madengine.backends.docker.links import HostLinks
from pytest_madengine.resources.hosts import load_hosts
from tests.conftest import (
    TEST_IMAGE_LABEL_LINE,
    component_missing,
    containers_of_our_images,
    entry,
    write_tree,
)
from tests.e2e.test_build import login_file
from tests.e2e.test_run import FAIL, read_perf

pytestmark = pytest.mark.docker
REPOSITORY = Path(__file__).resolve().parents[2]
PLAYBOOK = REPOSITORY / "examples" / "ansible" / "run-manifest.yml"
BIN = Path(sys.executable).parent
# A container's hostname is its engine's (mad-host1, mad-host2): the row names the host
# that ran it, where machine_name cannot (both hosts' SSH sessions are this machine).
RUNS_ON = '#!/bin/sh\necho "performance: 1 runs_on_$(hostname)"\n'


def _checked(argv: list[str], cwd: Path, timeout: int) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv[:4])}... exited {done.returncode}:\n{output}"
    return output


@pytest.fixture
def ansible_playbook() -> str:
    found = shutil.which("ansible-playbook", path=str(BIN)) or shutil.which("ansible-playbook")
    if found is None:
        component_missing("ansible-playbook needed (pip install -e '.[dev]')")
    return found


def _tree(root: Path, registry: tuple[str, dict[str, str]]) -> Path:
    """A tree of a passing and a failing model whose image is this test's own, pushed
    to the registry by `madengine build`; returns the build manifest."""
    models = [entry("ansible_pass", scripts="scripts/dummy/runs_on.sh"),
              entry("ansible_fail", scripts="scripts/dummy/fail.sh")]  # fmt: skip
    write_tree(root, models, {"scripts/dummy/runs_on.sh": RUNS_ON, "scripts/dummy/fail.sh": FAIL})
    for dockerfile in (root / "docker").glob("*.Dockerfile"):
        marker = f"{TEST_IMAGE_LABEL_LINE}\n# test {uuid.uuid4().hex}\n"
        dockerfile.write_text(dockerfile.read_text() + marker)
    address, login = registry
    login_file(root, address, login)
    build = [sys.executable, "-m", "pytest_madengine", "build", "--tags", "dummies",
             "--registry", address]  # fmt: skip
    _checked(build, root, timeout=300)
    return root / "build_manifest.json"


def _inventory(path: Path, hosts_file: Path) -> list[str]:
    """An Ansible inventory of the test hosts (their SSH addresses from hosts.yml);
    returns their names, sorted as the playbook lists them."""
    lines, names = ["[mad_hosts]"], []
    for host in load_hosts(hosts_file):
        url = urlsplit(host.docker or "")
        lines.append(f"{host.name} ansible_host={url.hostname} ansible_port={url.port}"
                     f" ansible_user={url.username}")  # fmt: skip
        names.append(host.name)
    # The hosts' own Python: discovery finds a pyenv shim there that SSH cannot run.
    lines += ["[mad_hosts:vars]", "ansible_python_interpreter=/usr/bin/python3"]
    path.write_text("\n".join(lines) + "\n")
    return sorted(names)


def test_the_playbook_runs_a_manifest_on_every_host_and_merges_their_results(
    tmp_path: Path, ansible_playbook: str, registry, test_hosts: Path, docker_client
) -> None:
    manifest = _tree(tmp_path / "mad", registry)
    wheelhouse = tmp_path / "wheelhouse"
    _checked([sys.executable, "-m", "pip", "wheel", "-q", f"{REPOSITORY}[cli]", "-w",
              str(wheelhouse)], tmp_path, timeout=600)  # fmt: skip
    names = _inventory(tmp_path / "inventory.ini", test_hosts)
    settings = {
        "mad_tree": str(tmp_path / "mad"), "mad_manifest": str(manifest),
        "mad_wheelhouse": str(wheelhouse), "mad_results": str(tmp_path / "results"),
        "mad_tags": "dummies", "mad_madengine": str(BIN / "madengine"),
        # The test hosts share this machine's disk: each its own folder, under tmp_path.
        "mad_remote_dir": str(tmp_path / "remote") + "/{{ inventory_hostname }}",
    }  # fmt: skip
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PIPELINING": "True"}
    argv = [ansible_playbook, "-i", "inventory.ini", "-e", "@settings.json", str(PLAYBOOK)]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    output = done.stdout + done.stderr

    # A failed model fails the playbook, naming each host, after the merge.
    assert done.returncode != 0, output
    assert f"madengine did not succeed on: {names[0]} exit 3, {names[1]} exit 3" in output, output
    results = tmp_path / "results"
    suites = {
        suite.get("name"): sorted(
            (case.get("name"), [child.tag for child in case if child.tag != "properties"])
            for case in suite.iter("testcase")
        )
        for suite in ElementTree.parse(results / "junit.xml").iter("testsuite")
    }
    each_host = [("ansible_fail", ["failure"]), ("ansible_pass", [])]
    assert suites == dict.fromkeys(names, each_host), output
    rows = sorted((row["model"], row["metric"], row["status"])
                  for row in read_perf(results / "perf.csv"))  # fmt: skip
    passed = [("ansible_pass", f"runs_on_{name}", "SUCCESS") for name in names]
    assert [row for row in rows if row[0] == "ansible_pass"] == passed, output
    assert [row[2] for row in rows if row[0] == "ansible_fail"] == ["FAILURE"] * len(names)
    with HostLinks() as links:
        for host in load_hosts(test_hosts):
            client: docker.DockerClient = links.client(host)
            assert containers_of_our_images(client) == [], f"containers left on {host.name}"
