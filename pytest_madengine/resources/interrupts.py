"""How a session stops when it is told to: Ctrl-C, SIGTERM (`timeout`, CI runners) and
SIGHUP (a closed terminal, a dropped SSH session) all end it as Ctrl-C does, with its
cleanup; and cleanup that an impatient second signal must not cut short."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import termios
import threading
from types import TracebackType
from typing import Any

# What stops a session: all three raise KeyboardInterrupt, so `finally` blocks run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopOnce:
    """The first stop signal raises KeyboardInterrupt (so `finally` blocks remove our
    containers, Jobs and scratch), later ones while it winds down are ignored instead
    of cutting the cleanup or pytest's report short (kill -9 forces)."""

    def __init__(self) -> None:
        self.stopping = False

    def __call__(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            release_lost_terminal()
        if self.stopping:
            return
        self.stopping = True
        raise KeyboardInterrupt(f"signal {signum}")


def _hung_up(descriptor: int) -> bool:
    """Whether the descriptor is a terminal that hung up (every call on it gives EIO)."""
    try:
        termios.tcgetattr(descriptor)
    except termios.error as exc:  # also a descriptor that is no terminal, or closed
        return exc.args[0] == errno.EIO
    return False


def release_lost_terminal() -> None:
    """Points every descriptor of a terminal that hung up at /dev/null: the report
    pytest writes after the cleanup would fail on EIO (a traceback and exit code 1
    instead of the interrupted one). A SIGHUP sent to a session whose terminal is
    still there changes nothing."""
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        descriptors = [0, 1, 2]
    lost = [descriptor for descriptor in descriptors if _hung_up(descriptor)]
    if not lost:
        return
    null = os.open(os.devnull, os.O_RDWR)
    for descriptor in lost:
        with contextlib.suppress(OSError):
            os.dup2(null, descriptor, inheritable=os.get_inheritable(descriptor))
    os.close(null)


def install_stop_handler() -> dict[int, Any]:
    """StopOnce for every stop signal (main thread only: elsewhere Python cannot set
    handlers, and signals do not arrive); the handlers it replaced, to put back."""
    stop = StopOnce()
    previous: dict[int, Any] = {}
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        for number in STOP_SIGNALS:
            previous[number] = signal.signal(number, stop)
    return previous


def restore_handlers(previous: dict[int, Any]) -> None:
    for number, handler in previous.items():
        with contextlib.suppress(ValueError):
            signal.signal(number, handler)


class deferred_interrupts:
    """Within the block, the stop signals are held back (main thread only; elsewhere
    signals do not arrive anyway). When the block ends with an exception already on its
    way (the first Ctrl-C, say) the held ones are dropped; otherwise the first is handed
    to the handler the block found (which raises KeyboardInterrupt, or ignores it when
    the session is already stopping), so no interrupt is lost and none is raised twice."""

    def __enter__(self) -> deferred_interrupts:
        self._held: list[int] = []
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._hold)
        return self

    def _hold(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            release_lost_terminal()  # now: a held signal may be dropped at the end
        self._held.append(signum)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        restore_handlers(self._previous)
        if not self._held or kind is not None:
            return
        number = self._held[0]
        handler = self._previous.get(number)
        if callable(handler):
            handler(number, None)
        elif handler != signal.SIG_IGN:
            raise KeyboardInterrupt(f"signal {number}")
