"""Hosts' health: a heartbeat pings every host on an interval (also while no test runs)
and keeps each host's status, its round trip and the status's transitions.

Statuses: `online` (answers, no test of the session on it), `busy` (answers, tests of
the session hold GPUs there), `offline` (no answer within the ping's deadline), `error`
(it answered, with a failure). No test is placed on an offline or error host; it is
placed again as soon as the host answers. Each process pings for itself (an xdist
worker places its own tests); `busy` comes from the leases every process shares.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_madengine.resources.hosts import Host

ONLINE, BUSY, OFFLINE, ERROR = "online", "busy", "offline", "error"
STATUSES = (ONLINE, BUSY, OFFLINE, ERROR)
# A ping's deadline: a host that does not answer in this time is offline. Short, so that
# a round of pings ends well within a heartbeat interval of a few seconds.
PING_DEADLINE_S = 2.0
PING_THREADS = 8  # hosts pinged at once in a round
STOP_JOIN_S = 0.5  # how long closing waits for the heartbeat's thread (a daemon)
TRANSITIONS_KEPT = 100  # per host, the latest (a day of a flapping host stays bounded)
TABLE_TRANSITIONS = 6  # the latest, in the terminal's table
# --mad-heartbeat's interval, when not 0 (off): at least a tenth of a second (less pings
# round after round, as fast as the hosts answer) and at most a day (a thread's wait
# overflows past about 292 years; a day already means "hardly ever").
HEARTBEAT_RANGE_S = (0.1, 86_400.0)


@dataclass(frozen=True)
class Ping:
    """One ping's outcome: the round trip in seconds, or the status and why."""

    rtt_s: float | None
    status: str = ONLINE  # ONLINE, OFFLINE (no answer in time) or ERROR (a failure)
    reason: str = ""

    @staticmethod
    def answered(rtt_s: float) -> Ping:
        return Ping(rtt_s)

    @staticmethod
    def offline(reason: str) -> Ping:
        return Ping(None, OFFLINE, reason)

    @staticmethod
    def error(reason: str) -> Ping:
        return Ping(None, ERROR, reason)


Probe = Callable[[Host, float], Ping]  # pings a host within a deadline (seconds)


@dataclass(frozen=True)
class Transition:
    host: str
    status: str
    at: float  # epoch seconds
    previous: str | None = None  # None: the host's first status in the session
    reason: str = ""

    @property
    def health_change(self) -> bool:
        """Worth a line on the terminal: a host went offline or failed, or came back
        (online <-> busy is the ordinary life of a host: reports only)."""
        return self.previous is not None and bool({self.previous, self.status} - {ONLINE, BUSY})

    def line(self) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(self.at))
        was = f"{self.previous} -> " if self.previous else ""
        why = f" ({self.reason})" if self.reason else ""
        return f"host {self.host}: {was}{self.status} at {clock}{why}"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "at": round(self.at, 3), "previous": self.previous,
                "reason": self.reason}  # fmt: skip


class HostHealth:
    """What the heartbeat found of each host; asked by placement and by the reports.
    Thread-safe: the heartbeat writes, tests' threads read."""

    def __init__(self, hosts: Sequence[Host]) -> None:
        self.hosts = [host.name for host in hosts]
        self._lock = threading.Lock()
        self._status: dict[str, str] = {}
        self._rtt: dict[str, float] = {}
        self._transitions: dict[str, deque[Transition]] = {
            name: deque(maxlen=TRANSITIONS_KEPT) for name in self.hosts
        }
        self._listeners: list[Callable[[Transition], None]] = []

    def listen(self, listener: Callable[[Transition], None]) -> None:
        """`listener` is told each transition from now on (on the heartbeat's thread)."""
        with self._lock:
            self._listeners.append(listener)

    def observe(self, host: str, ping: Ping, busy: bool, at: float | None = None) -> None:
        """Takes a ping's outcome; a change of status is a transition."""
        status = BUSY if ping.status == ONLINE and busy else ping.status
        with self._lock:
            if ping.rtt_s is not None:
                self._rtt[host] = ping.rtt_s
            previous = self._status.get(host)
            if previous == status:
                return
            self._status[host] = status
            change = Transition(host, status, time.time() if at is None else at, previous,
                                ping.reason)  # fmt: skip
            self._transitions.setdefault(host, deque(maxlen=TRANSITIONS_KEPT)).append(change)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(change)

    def settle(self) -> None:
        """The session's tests are over: a host last seen busy is online (the heartbeat
        may not have beaten since the last test ended)."""
        with self._lock:
            busy = [name for name, status in self._status.items() if status == BUSY]
        for name in busy:
            self.observe(name, Ping(None), busy=False)

    def status(self, host: str) -> str | None:
        with self._lock:
            return self._status.get(host)

    def unusable(self, host: str) -> str | None:
        """Why no test may be placed on the host now (offline, error), or None."""
        with self._lock:
            status = self._status.get(host)
            if status not in (OFFLINE, ERROR):
                return None
            last = self._transitions[host][-1]
        clock = time.strftime("%H:%M:%S", time.localtime(last.at))
        return f"{status} since {clock}" + (f" ({last.reason})" if last.reason else "")

    def latency(self, host: str) -> float | None:
        """The host's last measured round trip (seconds), None before one answered."""
        with self._lock:
            return self._rtt.get(host)

    def transitions(self, host: str) -> list[Transition]:
        with self._lock:
            return list(self._transitions.get(host, ()))

    def report(self) -> list[dict[str, Any]]:
        """A row per host for the summary JSON and the HTML report."""
        rows = []
        for name in self.hosts:
            rtt = self.latency(name)
            rows.append({
                "host": name,
                "status": self.status(name) or "unknown",
                "rtt_ms": round(rtt * 1000, 3) if rtt is not None else None,
                "transitions": [change.to_dict() for change in self.transitions(name)],
            })  # fmt: skip
        return rows


def host_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Aligned lines of the hosts' report rows: status, round trip, the latest
    transitions."""
    table = [("host", "status", "round trip", "transitions")]
    for row in rows:
        rtt = f"{row['rtt_ms']:.1f} ms" if row["rtt_ms"] is not None else "-"
        statuses = [change["status"] for change in row["transitions"]]
        changes = " -> ".join(statuses[-TABLE_TRANSITIONS:]) or "-"
        if len(statuses) > TABLE_TRANSITIONS:  # the reports have them all
            changes = f"({len(statuses) - TABLE_TRANSITIONS} before) -> {changes}"
        table.append((row["host"], row["status"], rtt, changes))
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in table]  # fmt: skip


class Heartbeat:
    """Pings every host each `interval_s` on one background thread (pings of a round
    run at once, each with its deadline), and tells `health` what it found. `busy_hosts`
    names the hosts where tests of the session hold GPUs."""

    def __init__(
        self,
        hosts: Sequence[Host],
        probe: Probe,
        health: HostHealth,
        interval_s: float,
        busy_hosts: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.hosts = list(hosts)
        self.probe = probe
        self.health = health
        self.interval_s = interval_s
        self.busy_hosts = busy_hosts
        self.deadline_s = PING_DEADLINE_S
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max(1, min(PING_THREADS, len(self.hosts))), thread_name_prefix="mad-ping"
        )
        self._pending: dict[str, concurrent.futures.Future[Ping]] = {}

    def beat(self) -> None:
        """One round: every host pinged; a host whose last ping has not come back yet
        (a deadline the probe could not keep) is offline without another."""
        for host in self.hosts:
            if host.name not in self._pending or self._pending[host.name].done():
                self._pending[host.name] = self._pool.submit(self._ping, host)
        done, _ = concurrent.futures.wait(self._pending.values(), self.deadline_s + 1.0)
        if self._stop.is_set():  # the session closes its links: what failed now is not news
            return
        busy = set(self.busy_hosts())
        for host in self.hosts:
            future = self._pending[host.name]
            ping = future.result() if future in done else Ping.offline("no answer in time")
            self.health.observe(host.name, ping, host.name in busy)

    def _ping(self, host: Host) -> Ping:
        try:
            return self.probe(host, self.deadline_s)
        except Exception as exc:  # a probe's own failure is the host's: it did not answer
            return Ping.offline(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def start(self) -> None:
        """Pings now (placement and `latency` know every host from the start), then on
        the interval in the background."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="mad-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # a round that failed is tried again at the next
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:  # a round under way tells nothing more (see beat)
            self._thread.join(STOP_JOIN_S)
        self._pool.shutdown(wait=False, cancel_futures=True)
