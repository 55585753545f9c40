"""Cleanup shielded from Ctrl-C: a Ctrl-C (SIGTERM, SIGHUP) during the block is held,
then handed to the handler that was there before (never lost, never raised twice); a
terminal that hung up no longer fails the writes that follow."""

from __future__ import annotations

import os
import pty
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_madengine.resources.interrupts import deferred_interrupts, release_lost_terminal


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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_are_held_as_ctrl_c_is(signum: int) -> None:
    handed: list[int] = []
    previous = signal.signal(signum, lambda number, frame: handed.append(number))
    try:
        with deferred_interrupts():
            os.kill(os.getpid(), signum)
            assert handed == []
        assert handed == [signum]
    finally:
        signal.signal(signum, previous)


def test_after_a_hang_up_the_terminals_descriptors_lead_to_dev_null() -> None:
    """The report written after the cleanup must not fail on a terminal that is gone."""
    master, terminal = pty.openpty()
    os.close(master)  # the terminal hangs up
    try:
        with pytest.raises(OSError):
            os.write(terminal, b"report")
        release_lost_terminal()
        assert os.readlink(f"/proc/self/fd/{terminal}") == os.devnull
        assert os.write(terminal, b"report") == len(b"report")
    finally:
        os.close(terminal)


def test_a_terminal_that_is_still_there_is_kept() -> None:
    master, terminal = pty.openpty()
    try:
        release_lost_terminal()
        assert os.readlink(f"/proc/self/fd/{terminal}").startswith("/dev/pts/")
    finally:
        os.close(terminal)
        os.close(master)
