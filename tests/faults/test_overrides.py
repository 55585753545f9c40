"""Fixtures of the user's that MAD items run through (issue 20, item 8): an item whose
fixture a conftest overrides runs in its turn, through that fixture, whatever the name
of the function that defines it."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest

from tests.e2e.test_concurrency import NAP, napping, overlapping, spans
from tests.e2e.test_run import run, scripts, unique_tree
from tests.faults.test_runs import ours

pytestmark = [pytest.mark.docker]

# Overrides mad_runtime under another function name (and hands on ours).
OVERRIDE_UNDER_ANOTHER_NAME = """
import pytest
from pytest_madengine.plugin.state import plugin_state

@pytest.fixture(name="mad_runtime", scope="session")
def runtime_of_the_user(pytestconfig):
    return plugin_state(pytestconfig).runtime
"""


@pytest.fixture(autouse=True)
def nothing_left(docker_client: docker.DockerClient) -> Iterator[None]:
    before = ours(docker_client)
    yield
    assert ours(docker_client) - before == set()


def test_an_override_under_another_function_name_keeps_its_items_in_their_turn(
    pytester: pytest.Pytester,
) -> None:
    unique_tree(pytester, [napping(f"m{i}", 2) for i in range(2)], scripts(nap=NAP))
    pytester.makeconftest(OVERRIDE_UNDER_ANOTHER_NAME)
    result = run(pytester, "--mad-tags=dummies", "--mad-gpus=2", "--mad-concurrency=2",
                 "--junitxml=r.xml")  # fmt: skip
    result.assert_outcomes(passed=2)
    ran = spans(pytester.path / "r.xml")
    assert not overlapping(ran["m0"], ran["m1"]), "an item ran ahead of the user's fixture"
