"""Placing tests on hosts and GPUs so that no two running tests share a GPU.

The pool's state (GPU leases, running tests per host, hosts found down) is a journal
under a file lock (resources/leases.py) in a directory that every xdist worker of the
session shares, so placement holds across processes. Each lease records the holder's
pid: the leases of a worker that died are taken back by the next caller. A `scheduled`
host (a SLURM partition) is only checked for fit: its scheduler hands out the GPUs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_madengine.errors import MadError, NoHost, Stopped, Unplaceable
from pytest_madengine.resources.gpus import Gpu
from pytest_madengine.resources.health import HostHealth
from pytest_madengine.resources.hosts import Host
from pytest_madengine.resources.leases import LeaseBook
from pytest_madengine.resources.locks import SharedLock

POLL_S = 0.05
POLL_MAX_S = 1.0
HostFilter = Callable[[Host], str | None]  # why a host cannot run the test, or None
# How a host is chosen among those that fit and have the GPUs free (--mad-placement).
STRATEGIES = ("least-loaded", "round-robin", "capability", "latency", "affinity")
# How long a test waits when every host that fits it is offline (or failing) before it
# fails; at least this many heartbeats.
OFFLINE_WAIT_S = 60.0
OFFLINE_WAIT_BEATS = 6


@dataclass(frozen=True)
class Placement:
    host: Host
    gpus: tuple[Gpu, ...]
    holder: str

    def same_gpus(self, other: Placement) -> bool:
        """Whether both hold the same GPUs of the same host (whoever holds them)."""
        return (self.host.name, self.gpus) == (other.host.name, other.gpus)


@dataclass(frozen=True)
class _Waiter:
    """A thread of this process waiting for GPUs: which hosts could serve it, and the
    event that wakes it."""

    could_use: Callable[[Host], bool]
    woken: threading.Event


def _free(placement: Placement, held: Collection[tuple[str, int]]) -> bool:
    return all((placement.host.name, gpu.index) not in held for gpu in placement.gpus)


class HostPool:
    def __init__(
        self,
        hosts: Sequence[Host],
        state_dir: Path,
        down: Mapping[str, str] | None = None,
        strategy: str = "least-loaded",
        health: HostHealth | None = None,
        offline_wait_s: float = OFFLINE_WAIT_S,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"no placement strategy {strategy!r} (known: {STRATEGIES})")
        self.hosts = list(hosts)
        self.strategy = strategy
        # The heartbeat's view (None: no heartbeat): offline hosts get no test.
        self.health = health
        self.offline_wait_s = offline_wait_s
        self._turn = 0  # round-robin: where this process looks for a host first
        self._position = {host.name: index for index, host in enumerate(self.hosts)}
        state_dir.mkdir(parents=True, exist_ok=True)
        self._book = LeaseBook(
            state_dir / "placement.journal",
            SharedLock(str(state_dir / "placement.lock"), keep_open=True),
        )
        # Threads of this process waiting for GPUs: a release here wakes at once those
        # the freed host could serve; other processes' releases are seen by polling.
        self._waiters_lock = threading.Lock()
        self._waiters: list[_Waiter] = []
        self._at_limit = False  # the last try found this process at its bound
        self._stopped = False
        self._most: int | None = None
        if down:
            with self._book as book:
                for name, why in down.items():
                    book.mark_down(name, why)

    def down(self) -> dict[str, str]:
        with self._book as book:
            return dict(book.down)

    def mark_down(self, host: str, reason: str) -> None:
        """No further test is placed on the host; its leases end with their tests."""
        with self._book as book:
            book.mark_down(host, reason)

    def _wanted(self, host: Host, n_gpus: int) -> int:
        return host.gpus.count if n_gpus < 0 else n_gpus

    def _candidates(self, n_gpus: int, fits: HostFilter | None, down: dict[str, str]) -> list[Host]:
        reasons = []
        found = []
        for host in self.hosts:
            if host.name in down:
                reasons.append(f"{host.name}: down ({down[host.name]})")
                continue
            why = fits(host) if fits else None
            too_many = self._wanted(host, n_gpus) > host.gpus.count and host.gpus.count
            if why is None and too_many and not host.scheduler_checks_fit:
                why = f"needs {n_gpus} GPUs, has {host.gpus.count}"
            if why is None:
                found.append(host)
            else:
                reasons.append(f"{host.name}: {why}")
        if not found:
            raise NoHost("no host can run it: " + "; ".join(reasons))
        return found

    def unfit_reason(self, n_gpus: int, fits: HostFilter | None = None) -> str | None:
        try:
            self._candidates(n_gpus, fits, self.down())
        except NoHost as exc:
            return str(exc)
        return None

    def limit_running(self, most: int | None) -> None:
        """At most `most` placements held by this process at once (None: no bound but
        the GPUs): a process running tests on threads runs no more than it was told."""
        self._most = most

    def try_acquire(
        self,
        n_gpus: int,
        holder: str,
        fits: HostFilter | None = None,
        prefer: Placement | None = None,
        avoid: Collection[tuple[str, int]] = (),
        affinity: Collection[str] = (),
    ) -> Placement | None:
        """A placement on the fitting host with enough free GPUs that the strategy ranks
        first, or None. No host offline or failing (heartbeat) is taken.
        `prefer` is taken when all its GPUs are free (a container was made for them);
        GPUs in `avoid` (host, index) are left to whoever of this process expects them;
        `affinity`: the test's `host_affinity` labels (the affinity strategy)."""
        self._check_affinity(holder, affinity)
        with self._book as book:
            candidates = self._usable(self._candidates(n_gpus, fits, book.down))
            if self._most is not None:
                self._at_limit = self._mine(book) >= self._most
                if self._at_limit:
                    return None
            if (
                prefer is not None
                and _free(prefer, book.held)
                and prefer.host in candidates
                and self._matches_best(prefer.host, candidates, affinity)
            ):
                chosen: tuple[Host, tuple[Gpu, ...]] | None = (prefer.host, prefer.gpus)
            else:
                chosen = self._choose(candidates, n_gpus, book, avoid, affinity)
            if chosen is None:
                return None
            host, gpus = chosen
            book.take(holder, host.name, tuple(gpu.index for gpu in gpus))
        return Placement(host, gpus, holder)

    def _mine(self, book: LeaseBook) -> int:
        """How many leases this process holds."""
        pid = os.getpid()
        return sum(lease.pid == pid for lease in book.leases.values())

    def _usable(self, candidates: list[Host]) -> list[Host]:
        """The candidates the heartbeat last found answering."""
        health = self.health
        if health is None:
            return candidates
        return [host for host in candidates if health.unusable(host.name) is None]

    def _check_affinity(self, holder: str, affinity: Collection[str]) -> None:
        """Under `affinity`, labels that no host of the inventory carries are a mistake
        (a typo, the wrong inventory): the test fails saying so."""
        if self.strategy != "affinity" or not affinity:
            return
        carried = {label for host in self.hosts for label in host.labels}
        if not set(affinity) & carried:
            known = ", ".join(sorted(carried)) or "none"
            raise Unplaceable(
                f"{holder}: models.json field 'host_affinity': no host carries"
                f" {', '.join(sorted(affinity))} (hosts' labels: {known})"
            )

    def _matches_best(
        self, host: Host, candidates: Sequence[Host], labels: Collection[str]
    ) -> bool:
        """Under `affinity`, whether the host carries as many of the labels as the best
        candidate (a container made ahead on another host does not outrank them)."""
        if self.strategy != "affinity" or not labels:
            return True
        matched = {candidate.name: len(set(labels) & set(candidate.labels))
                   for candidate in candidates}  # fmt: skip
        return matched[host.name] == max(matched.values())

    def busy_hosts(self) -> set[str]:
        """The hosts where tests of the session (any process) hold GPUs now."""
        with self._book as book:
            return {host for host, leases in book.load.items() if leases}

    def _rank(self, host: Host, busy: float, affinity: Collection[str]) -> tuple[Any, ...]:
        """The strategy's sort key of a host (the lowest is taken)."""
        if self.strategy == "round-robin":
            return ((self._position[host.name] - self._turn) % len(self.hosts), host.name)
        if self.strategy == "capability":
            return (host.gpus.count, busy, host.name)
        if self.strategy == "latency":
            # Whole milliseconds: round trips within one are a tie, decided by load.
            rtt = self.health.latency(host.name) if self.health else None
            return (round(rtt * 1000) if rtt is not None else float("inf"), busy, host.name)
        if self.strategy == "affinity":
            return (-len(set(affinity) & set(host.labels)), busy, host.name)
        return (busy, host.name)

    def _choose(
        self,
        candidates: Sequence[Host],
        n_gpus: int,
        book: LeaseBook,
        avoid: Collection[tuple[str, int]] = (),
        affinity: Collection[str] = (),
    ) -> tuple[Host, tuple[Gpu, ...]] | None:
        """The candidate the strategy ranks first among those with enough GPUs not left
        out, and those GPUs; None when none has. least-loaded: the fewest placements per
        GPU; round-robin: the next host after the one this process chose last, in the
        hosts' order; capability: the fewest GPUs that fit the test (the larger hosts
        stay free for larger tests), then the least loaded; latency: the shortest round
        trip the heartbeat measured, then the least loaded; affinity: the most of the
        test's `host_affinity` labels, then the least loaded."""
        held, avoided = book.held, {name for name, _ in avoid}
        options = []
        for host in candidates:
            wanted = min(self._wanted(host, n_gpus), host.gpus.count)
            if wanted and not host.scheduled:
                # The GPUs themselves are looked at only where some are to be avoided.
                if host.name in avoided:
                    if self._free_gpus(host, held, avoid, wanted) is None:
                        continue
                elif host.gpus.count - book.gpus_held.get(host.name, 0) < wanted:
                    continue
            busy = book.load.get(host.name, 0) / max(host.gpus.count, 1)
            options.append((self._rank(host, busy, affinity), host))
        if not options:
            return None
        _, host = min(options, key=lambda option: option[0])
        self._turn = self._position[host.name] + 1
        wanted = min(self._wanted(host, n_gpus), host.gpus.count)
        if host.scheduled:
            return host, tuple(host.gpus.gpus[:wanted])
        return host, self._free_gpus(host, held, avoid, wanted) or ()

    @staticmethod
    def _free_gpus(
        host: Host,
        held: Collection[tuple[str, int]],
        avoid: Collection[tuple[str, int]],
        wanted: int,
    ) -> tuple[Gpu, ...] | None:
        """The host's first `wanted` GPUs neither held nor avoided; None: not so many."""
        if wanted <= 0:
            return ()
        free = []
        for gpu in host.gpus.gpus:
            if (host.name, gpu.index) not in held and (host.name, gpu.index) not in avoid:
                free.append(gpu)
                if len(free) == wanted:
                    return tuple(free)
        return None

    def acquire(
        self,
        n_gpus: int,
        holder: str,
        fits: HostFilter | None = None,
        timeout_s: float | None = None,
        prefer: Callable[[], Placement | None] | None = None,
        avoid: Callable[[], Collection[tuple[str, int]]] | None = None,
        affinity: Collection[str] = (),
    ) -> Placement:
        """Waits (with backoff) for a placement; NoHost when none can ever come, Stopped
        once the pool is stopped, Unplaceable when every host that fits stayed offline
        for `offline_wait_s`. `prefer` and `avoid` (see try_acquire) are asked anew at
        each try. A release in this process wakes the wait only when the freed host
        could serve it (see `wake`)."""

        def could_use(host: Host) -> bool:
            fit = fits(host) if fits else None
            return fit is None and self._wanted(host, n_gpus) <= host.gpus.count

        waiter = _Waiter(could_use, threading.Event())
        with self._waiters_lock:
            self._waiters.append(waiter)
        try:
            return self._wait_for(n_gpus, holder, fits, timeout_s, prefer, avoid, affinity,
                                  waiter)  # fmt: skip
        finally:
            with self._waiters_lock:
                self._waiters.remove(waiter)

    def _wait_for(
        self,
        n_gpus: int,
        holder: str,
        fits: HostFilter | None,
        timeout_s: float | None,
        prefer: Callable[[], Placement | None] | None,
        avoid: Callable[[], Collection[tuple[str, int]]] | None,
        affinity: Collection[str],
        waiter: _Waiter,
    ) -> Placement:
        delay, start = POLL_S, time.monotonic()
        offline_since: float | None = None
        while True:
            waiter.woken.clear()  # before the try: a release during it wakes the wait
            if self._stopped:
                raise Stopped(f"{holder}: the session is stopping")
            preferred = prefer() if prefer else None
            left = avoid() if avoid else ()
            placement = self.try_acquire(n_gpus, holder, fits, preferred, left, affinity)
            if placement is not None:
                return placement
            now = time.monotonic()
            if timeout_s is not None and now - start > timeout_s:
                raise MadError(f"{holder}: no host with {n_gpus} free GPUs within {timeout_s:g} s")
            why = self._all_unusable(n_gpus, fits)
            offline_since = None if why is None else (offline_since or now)
            if offline_since is not None and now - offline_since > self.offline_wait_s:
                raise Unplaceable(
                    f"no host that fits answered within {self.offline_wait_s:g} s: {why}"
                )
            waiter.woken.wait(delay)
            delay = min(delay * 1.5, POLL_MAX_S)

    def _all_unusable(self, n_gpus: int, fits: HostFilter | None) -> str | None:
        """Why, when every host that fits the test is offline or failing now; else None."""
        if self.health is None:
            return None
        reasons = []
        for host in self._candidates(n_gpus, fits, self.down()):
            why = self.health.unusable(host.name)
            if why is None:
                return None
            reasons.append(f"{host.name}: {why}")
        return "; ".join(reasons)

    def release(self, placement: Placement) -> None:
        """Gives the placement's GPUs back (again: nothing more happens)."""
        with self._book as book:
            if not book.give_back(placement.holder):
                return
        self.wake(placement.host)

    def waiting(self) -> int:
        """How many threads of this process wait for GPUs now."""
        with self._waiters_lock:
            return len(self._waiters)

    def wake(self, freed: Host | None = None) -> int:
        """Those of this process waiting for GPUs try again now: with `freed` (a host
        whose GPUs were given back) only those that host could serve, unless the process
        was at its bound of running tests; all of them without. How many were woken."""
        with self._waiters_lock:
            waiters = list(self._waiters)
        if freed is not None and not self._at_limit:
            waiters = [waiter for waiter in waiters if waiter.could_use(freed)]
        for waiter in waiters:
            waiter.woken.set()
        return len(waiters)

    def stop(self) -> None:
        """Whoever waits for GPUs in this process gives up (Stopped), now and later."""
        self._stopped = True
        self.wake()

    def close(self) -> None:
        """Closes the journal and its lock file (the pool places nothing more)."""
        self._book.close()
