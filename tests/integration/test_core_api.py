"""The core driven from plain Python, without pytest: the same records the plugin gets."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pytest_madengine.core.options import RawOptions, parse_options
from pytest_madengine.core.records import Status
from pytest_madengine.core.session import Session
from tests.conftest import TEST_IMAGE_LABEL_LINE, entry, write_tree

CORE_PACKAGES = ("core", "backends", "resources", "data", "tools", "reporting")


def test_the_core_imports_no_pytest() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import pytest_madengine\n"
        f"for package in {CORE_PACKAGES!r}:\n"
        "    module = importlib.import_module(f'pytest_madengine.{package}')\n"
        "    for info in pkgutil.walk_packages(module.__path__, module.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in"
        " ('pytest', '_pytest', 'pluggy')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.docker
def test_a_session_from_python_runs_tests_into_records(docker_client, tmp_path: Path) -> None:
    script = '#!/bin/sh\necho "performance: ${MAD_RUNTIME_NGPUS}0 samples_per_second"\n'
    root = write_tree(
        tmp_path / "mad",
        [entry("one"), entry("two", n_gpus=2), entry("big", n_gpus=8)],
        {"scripts/dummy/run.sh": script},
    )
    for dockerfile in (root / "docker").glob("*.Dockerfile"):
        dockerfile.write_text(
            dockerfile.read_text() + f"{TEST_IMAGE_LABEL_LINE}\n# {uuid.uuid4()}\n"
        )
    options = parse_options(
        RawOptions(root=str(root), tags=("dummies",), gpus="2", base_dir=tmp_path)
    )
    with Session.open(options) as session:
        records = {test.name: session.run(test) for test in session.mad.plan.tests}
    assert records["one"].status is Status.SUCCESS and records["one"].rows[0].performance == 10
    assert records["two"].rows[0].performance == 20 and records["two"].gpus == (0, 1)
    assert records["big"].status is Status.SKIPPED
    assert "needs 8 GPUs, has 2" in (records["big"].reason or "")
    assert (
        records["one"].image is not None and records["one"].image.name == "ci-one_dummy.ubuntu.amd"
    )
    log = Path(records["one"].log_path or "").read_text().splitlines()
    assert log[:2] == ["Setting timeout to 7200 seconds.", "performance: 10 samples_per_second"]
