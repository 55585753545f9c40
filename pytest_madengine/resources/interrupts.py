"""Cleanup that an impatient second Ctrl-C must not cut short."""

from __future__ import annotations

import signal
import threading
from types import TracebackType
from typing import Any


class deferred_interrupts:
    """Within the block, Ctrl-C and SIGTERM are held back (main thread only; elsewhere
    signals do not arrive anyway). When the block ends with an exception already on its
    way (the first Ctrl-C, say) the held ones are dropped; otherwise the first is raised
    as KeyboardInterrupt, so no interrupt is lost."""

    def __enter__(self) -> deferred_interrupts:
        self._held: list[int] = []
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._hold)
        return self

    def _hold(self, signum: int, frame: Any) -> None:
        self._held.append(signum)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        if self._held and kind is None:
            raise KeyboardInterrupt(f"signal {self._held[0]}")
