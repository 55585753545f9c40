"""How a container of ours is removed, whatever the engine answers (pure: a stand-in
container, no engine)."""

from __future__ import annotations

import docker
import pytest
import requests

from pytest_madengine.backends.docker import containers


class Container:
    """Answers each removal with the next of `answers` (None: removed)."""

    def __init__(self, *answers: BaseException | None) -> None:
        self.answers = list(answers)
        self.asked = 0

    def remove(self, force: bool = False) -> None:
        assert force, "ours are removed running or not"
        self.asked += 1
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containers, "REMOVE_BACKOFF_S", 0.0)


def busy() -> docker.errors.APIError:
    return docker.errors.APIError(
        "driver overlay2 failed to remove root filesystem: device or resource busy",
        response=type("Response", (), {"status_code": 500, "reason": "busy"})(),
    )


def test_an_engine_error_is_asked_again_until_the_container_is_gone() -> None:
    """A busy file system or a removal already under way (500, 409) passes: CI once kept
    a container past its test because the one removal it asked for failed."""
    container = Container(busy(), busy(), None)
    containers._remove(container)
    assert container.asked == 3


def test_gone_or_unreachable_ends_the_removal() -> None:
    gone = Container(docker.errors.NotFound("no such container"))
    containers._remove(gone)
    assert gone.asked == 1
    # The engine is gone: the session's sweep, or the next session, removes it.
    for failure in (
        requests.exceptions.ConnectionError("refused"),
        requests.exceptions.ReadTimeout("no answer in 60 s"),  # frozen: not for minutes
    ):
        unreachable = Container(failure)
        containers._remove(unreachable)
        assert unreachable.asked == 1


def test_an_engine_that_keeps_failing_is_asked_a_bounded_number_of_times() -> None:
    stubborn = Container(*(busy() for _ in range(50)))
    containers._remove(stubborn)
    assert stubborn.asked == containers.REMOVE_TRIES
