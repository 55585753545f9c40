"""Cleanup that an impatient second Ctrl-C must not cut short."""

from __future__ import annotations

import signal
import threading
from types import TracebackType
from typing import Any


class deferred_interrupts:
    """Within the block, Ctrl-C and SIGTERM are held back (main thread only; elsewhere
    signals do not arrive anyway). When the block ends with an exception already on its
    way (the first Ctrl-C, say) the held ones are dropped; otherwise the first is handed
    to the handler the block found (which raises KeyboardInterrupt, or ignores it when
    the session is already stopping), so no interrupt is lost and none is raised twice."""

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
        if not self._held or kind is not None:
            return
        number = self._held[0]
        handler = self._previous.get(number)
        if callable(handler):
            handler(number, None)
        elif handler != signal.SIG_IGN:
            raise KeyboardInterrupt(f"signal {number}")
