"""Hosts that run benchmarks: the inventory file (how to reach them is the backend's).

hosts.yml:

    hosts:
      - name: node1
        docker: ssh://root@10.0.0.5:22      # unix://, ssh://user@host:port, tcp://host:2376
        gpus: 4                             # a count, or ids like "0,2-3"
        vendor: AMD                         # AMD | NVIDIA
        architecture: gfx942
        labels: [mi300x]
        device_root: /dev                   # where kfd and dri/ are (AMD)
        tls: {ca: ca.pem, cert: cert.pem, key: key.pem}   # tcp:// only
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.errors import MadError, read_text
from pytest_madengine.resources.gpus import Gpu, GpuInventory, parse_gpu_ids

HOST_KEYS = ("name", "docker", "gpus", "vendor", "architecture", "labels", "device_root", "tls")


@dataclass(frozen=True)
class Host:
    name: str
    docker: str | None  # None: the engine of DOCKER_HOST (the local one by default)
    gpus: GpuInventory
    labels: tuple[str, ...] = ()
    device_root: str | None = None
    tls: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    # A scheduler (SLURM) picks the GPUs on its nodes: the pool checks that a test fits
    # (n_gpus against `gpus`, one node's worth) but holds no lease on them.
    scheduled: bool = False
    # With `scheduled`: the scheduler also judges whether a request can ever fit
    # (Kubernetes says why not): the pool does not check n_gpus against `gpus`, and a
    # test asks for its n_gpus as written (-1: `gpus`, one node's worth).
    scheduler_checks_fit: bool = False

    @property
    def vendor(self) -> str | None:
        return self.gpus.vendor

    @property
    def architecture(self) -> str | None:
        return self.gpus.architecture


def local_host(inventory: GpuInventory, device_root: str | None = None) -> Host:
    """This machine's engine with the detected or declared GPUs; `device_root` stands
    in for /dev (the context's gpu_device_root: fake device nodes in tests)."""
    return Host(os.uname().nodename, None, inventory, device_root=device_root)


def _host_from(entry: Any, index: int, where: str, default_vendor: str) -> Host:
    if not isinstance(entry, dict):
        raise MadError(f"{where}: host #{index + 1}: expected a mapping, got {entry!r}")
    name = entry.get("name")
    label = f"host '{name}'" if name else f"host #{index + 1}"
    for key in entry:
        if key not in HOST_KEYS:
            raise MadError(
                f"{where}: {label}: unknown field '{key}' (known: {', '.join(HOST_KEYS)})"
            )
    if not isinstance(name, str) or not name:
        raise MadError(f"{where}: {label}: missing field 'name'")
    endpoint = entry.get("docker")
    if not isinstance(endpoint, str) or not endpoint.startswith(("unix://", "ssh://", "tcp://")):
        raise MadError(
            f"{where}: {label}: 'docker' must be a unix://, ssh:// or tcp:// URL, got {endpoint!r}"
        )
    vendor = str(entry.get("vendor") or default_vendor).upper()
    if vendor not in ("AMD", "NVIDIA"):
        raise MadError(f"{where}: {label}: 'vendor' must be AMD or NVIDIA, got {vendor!r}")
    try:
        ids = parse_gpu_ids(str(entry.get("gpus", 0)))
    except MadError as exc:
        raise MadError(f"{where}: {label}: 'gpus': {exc}") from None
    architecture = entry.get("architecture")
    inventory = GpuInventory(
        tuple(Gpu(index, vendor, str(architecture) if architecture else None) for index in ids),
        source=f"declared in {Path(where).name}",
        virtual=not entry.get("device_root") and vendor == "AMD",
    )
    labels = entry.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(item, str) for item in labels):
        raise MadError(f"{where}: {label}: 'labels' must be a list of strings")
    tls = entry.get("tls") or {}
    if tls and not endpoint.startswith("tcp://"):
        raise MadError(f"{where}: {label}: 'tls' applies to tcp:// hosts only")
    if (
        not isinstance(tls, dict)
        or set(tls) - {"ca", "cert", "key"}
        or ("cert" in tls) != ("key" in tls)
    ):
        raise MadError(f"{where}: {label}: 'tls' must be {{ca, cert, key}} (cert and key together)")
    # Certificate paths are relative to the inventory file.
    tls = {key: str(Path(where).parent / str(value)) for key, value in tls.items()}
    return Host(name, endpoint, inventory, tuple(labels), entry.get("device_root"), tls)


def load_hosts(path: Path, default_vendor: str = "AMD") -> list[Host]:
    """The hosts of an inventory file; one-line errors name the file, host and field."""
    import yaml  # here: a session without --mad-hosts does without it (start-up time)

    where = str(path)
    text = read_text(path, "--mad-hosts")
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise MadError(f"{where}: invalid YAML: nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits, say
        raise MadError(f"{where}: invalid YAML: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        place = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise MadError(f"{where}{place}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    entries = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise MadError(f"{where}: expected a non-empty list under 'hosts:'")
    hosts = [_host_from(entry, index, where, default_vendor) for index, entry in enumerate(entries)]
    names = [host.name for host in hosts]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise MadError(f"{where}: duplicate host name(s): {', '.join(duplicates)}")
    return hosts
