"""Cleanup shielded from Ctrl-C: a Ctrl-C during the block is held, then handed to the
handler that was there before (never lost, never raised twice)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_madengine.resources.interrupts import deferred_interrupts


@pytest.fixture
def handler() -> Iterator[list[int]]:
    """An installed SIGINT handler that notes what it is handed (as the session's
    stop-once handler ignores a Ctrl-C while the session winds down)."""
    handed: list[int] = []

    def note(signum: int, frame: Any) -> None:
        handed.append(signum)

    previous = signal.signal(signal.SIGINT, note)
    yield handed
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_in_the_block_is_held_then_handed_to_the_previous_handler(
    handler: list[int],
) -> None:
    with deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        assert handler == []  # held: the cleanup goes on
    assert handler == [signal.SIGINT]


def test_with_pythons_own_handler_it_is_raised_after_the_block() -> None:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_held_ones_are_dropped_when_the_block_ends_with_an_exception(
    handler: list[int],
) -> None:
    with pytest.raises(RuntimeError), deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        raise RuntimeError("the first interrupt, say")
    assert handler == []
