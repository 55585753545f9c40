"""hosts.yml: what a host entry may say, and one-line errors for what it may not."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_madengine.backends.docker.links import HostLinks, check_hosts
from pytest_madengine.core.planning import host_unfit_reason
from pytest_madengine.core.tree.discovery import Model
from pytest_madengine.errors import MadError
from pytest_madengine.resources.hosts import load_hosts


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text(text)
    return path


def test_a_full_entry(tmp_path: Path) -> None:
    (node,) = load_hosts(write(tmp_path, """
hosts:
  - name: node1
    docker: ssh://root@10.0.0.5:22
    gpus: "0,2-3"
    vendor: nvidia
    architecture: NVIDIA H100
    labels: [h100, fast]
"""))  # fmt: skip
    assert (node.name, node.docker, node.labels) == ("node1", "ssh://root@10.0.0.5:22",
                                                     ("h100", "fast"))  # fmt: skip
    assert node.gpus.ids == (0, 2, 3) and node.vendor == "NVIDIA"
    assert node.architecture == "NVIDIA H100" and not node.gpus.virtual


def test_amd_gpus_without_a_device_root_are_virtual(tmp_path: Path) -> None:
    (node,) = load_hosts(write(tmp_path, "hosts:\n  - {name: a, docker: 'unix:///x', gpus: 2}\n"))
    assert node.vendor == "AMD" and node.gpus.virtual and node.gpus.count == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hosts: []\n", "hosts.yml: expected a non-empty list under 'hosts:'"),
        ("hosts:\n  - {docker: 'unix:///x'}\n", "hosts.yml: host #1: missing field 'name'"),
        ("hosts:\n  - {name: a, docker: 'http://x'}\n",
         "hosts.yml: host 'a': 'docker' must be a unix://, ssh:// or tcp:// URL, got 'http://x'"),
        ("hosts:\n  - {name: a, docker: 'unix:///x', cpus: 3}\n",
         "hosts.yml: host 'a': unknown field 'cpus' (known: name, docker, gpus, vendor,"
         " architecture, labels, device_root, tls)"),
        ("hosts:\n  - {name: a, docker: 'unix:///x', vendor: intel}\n",
         "hosts.yml: host 'a': 'vendor' must be AMD or NVIDIA, got 'INTEL'"),
        ("hosts:\n  - {name: a, docker: 'ssh://a', tls: {ca: x}}\n",
         "hosts.yml: host 'a': 'tls' applies to tcp:// hosts only"),
        ("hosts:\n  - {name: a, docker: 'tcp://a:2376', tls: {ca: x, cert: y}}\n",
         "hosts.yml: host 'a': 'tls' must be {ca, cert, key} (cert and key together)"),
        ("hosts:\n  - {name: a, docker: 'unix:///x'}\n  - {name: a, docker: 'unix:///y'}\n",
         "hosts.yml: duplicate host name(s): a"),
        ("hosts:\n  - name: [\n", "hosts.yml:3:1: invalid YAML: *"),
    ],
)  # fmt: skip
def test_bad_inventories(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MadError) as caught:
        load_hosts(write(tmp_path, text))
    shown = str(caught.value).replace(str(tmp_path) + "/", "")
    assert shown == message or (message.endswith("*") and shown.startswith(message[:-1]))


def test_tls_files_are_relative_to_the_inventory(tmp_path: Path) -> None:
    text = "hosts:\n  - {name: a, docker: 'tcp://a:1', tls: {ca: pki/ca.pem, key: /k, cert: c}}\n"
    host = load_hosts(write(tmp_path, text))[0]
    assert dict(host.tls) == {"ca": f"{tmp_path}/pki/ca.pem", "key": "/k", "cert": f"{tmp_path}/c"}


def test_a_host_that_does_not_answer_is_reported(tmp_path: Path) -> None:
    hosts = load_hosts(
        write(tmp_path, f"hosts:\n  - {{name: a, docker: 'unix://{tmp_path}/no.sock'}}\n")
    )
    with HostLinks() as links:
        assert list(check_hosts(hosts, links)) == ["a"]


def test_host_fit_by_vendor_arch_and_labels() -> None:
    model = Model("m", "d", "s", Path("models.json"), skip_gpu_arch=("gfx90a",),
                  entry={"host_labels": ["mi300x"]})  # fmt: skip
    assert host_unfit_reason(model, "AMD", "NVIDIA", None, ()) == "NVIDIA GPUs, the run needs AMD"
    assert host_unfit_reason(model, "AMD", "AMD", "gfx90a", ("mi300x",)) == (
        "skip_gpu_arch lists gfx90a (this host: gfx90a)"
    )
    assert host_unfit_reason(model, "AMD", "AMD", "gfx942", ()) == "lacks label(s) mi300x"
    assert host_unfit_reason(model, "AMD", "AMD", "gfx942", ("mi300x",)) is None
