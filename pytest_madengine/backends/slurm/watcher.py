"""One poller thread per process for every job the process waits for.

Each round asks about all outstanding jobs at once (one squeue call, plus one scontrol
call when some left the queue), so N tests waiting side by side cost what one does.
Tests wait on their own `JobWatch`; today a process runs one test at a time (xdist
workers are separate processes), and the same thread serves tests run concurrently
in one process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pytest_madengine.backends.slurm.cluster import (
    POLL_BACKOFF,
    JobState,
    SlurmCluster,
    stuck_reason,
)
from pytest_madengine.errors import MadError

# A job just submitted is first asked about after FIRST_POLL_S, then at intervals growing
# to POLL_MAX_S: slurmctld is shared, and squeue is what loads it. A job that ends is
# noticed through its hint (below) long before the next of those polls.
FIRST_POLL_S = 1.0
POLL_MAX_S = 10.0
# After a hint, the poller asks again at this pace, backing off from it.
POLL_MIN_S = 0.2
# How often the cheap local hints (a file the job writes as it ends) are looked at.
HINT_TICK_S = 0.1
# After a hint, SLURM is asked this soon: the job's last lines and its Epilog still run.
HINT_DELAY_S = 0.15
# squeue failing (slurmctld restarting, a network blip) is retried for this long before
# every outstanding wait fails with its message.
POLL_ERROR_GRACE_S = 60.0


class JobWatch:
    """What the poller learnt of one job; `done` is set once there is nothing more to
    wait for: the job finished, cannot start (`stuck`), or cannot be polled (`error`)."""

    def __init__(self, job_id: str, ending: Callable[[], bool] | None = None) -> None:
        self.job_id = job_id
        # A cheap local sign that the job is about to end (its script's last fact): the
        # poller then asks SLURM at once instead of at its backed-off pace.
        self.ending = ending
        self.hinted = False
        self.done = threading.Event()
        self.state: JobState | None = None
        self.stuck: str | None = None
        self.error: str | None = None
        self.polls = 0  # rounds that asked about this job
        self._pending: tuple[str, float] | None = None  # (stuck reason, first seen)


class JobWatcher:
    """Polls the outstanding jobs of this process from one daemon thread."""

    def __init__(
        self,
        cluster: SlurmCluster,
        pending_timeout_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.pending_timeout_s = pending_timeout_s
        self._clock = clock
        self._watches: dict[str, JobWatch] = {}
        self._wake = threading.Condition()
        self._interval = FIRST_POLL_S
        self._next_poll = 0.0  # time.monotonic() of the next round
        self._closed = False
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None
        self.rounds = 0

    def watch(self, job_id: str, ending: Callable[[], bool] | None = None) -> JobWatch:
        """Starts watching a job just submitted (polled soon, then less often, and soon
        again once `ending` says the job is about to end)."""
        with self._wake:
            if self._closed:
                raise MadError("slurm: the session is closing; no job is watched any more")
            soon = time.monotonic() + FIRST_POLL_S
            # A new job may be short or refused: look soon, whatever the backoff had
            # reached, but not at once (nothing just submitted has ended).
            if self._outstanding():
                self._next_poll = min(self._next_poll, soon)
                self._interval = min(self._interval, FIRST_POLL_S)
            else:
                self._next_poll, self._interval = soon, FIRST_POLL_S
            watch = self._watches.setdefault(job_id, JobWatch(job_id, ending))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mad-slurm-poll",
                                                daemon=True)  # fmt: skip
                self._thread.start()
            self._wake.notify()
        return watch

    def forget(self, job_id: str) -> None:
        with self._wake:
            self._watches.pop(job_id, None)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            for watch in self._watches.values():
                if not watch.done.is_set():
                    watch.error = "slurm: the session closed while the job was outstanding"
                    watch.done.set()
            self._watches.clear()
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _outstanding(self) -> list[JobWatch]:
        return [watch for watch in self._watches.values() if not watch.done.is_set()]

    def _run(self) -> None:
        while True:
            with self._wake:
                while True:
                    if self._closed:
                        return
                    if not self._outstanding():
                        self._wake.wait()
                        continue
                    if self._hinted():
                        self._next_poll = min(self._next_poll, time.monotonic() + HINT_DELAY_S)
                    delay = self._next_poll - time.monotonic()
                    if delay <= 0:
                        break
                    self._wake.wait(min(delay, HINT_TICK_S))
                watches = self._outstanding()
                self._interval = min(self._interval * POLL_BACKOFF, POLL_MAX_S)
                self._next_poll = time.monotonic() + self._interval
            self.poll_round(watches)

    def _hinted(self) -> bool:
        """Whether a job newly says it is ending (each job's hint counts once)."""
        news = False
        for watch in self._outstanding():
            if watch.ending is not None and not watch.hinted:
                try:
                    watch.hinted = bool(watch.ending())
                except OSError:
                    continue
                news = news or watch.hinted
        if news:
            self._interval = POLL_MIN_S
        return news

    def poll_round(self, watches: list[JobWatch]) -> None:
        """One round: one poll of every given job, and what follows from the answers."""
        self.rounds += 1
        now = self._clock()
        try:
            states = self.cluster.poll([watch.job_id for watch in watches])
        except MadError as exc:
            if self._failing_since is None:
                self._failing_since = now
            if now - self._failing_since >= POLL_ERROR_GRACE_S:
                for watch in watches:
                    watch.error = f"{exc} (for {now - self._failing_since:.0f} s)"
                    watch.done.set()
            return
        self._failing_since = None
        for watch in watches:
            state = states[watch.job_id]
            watch.state = state
            watch.polls += 1
            if state.finished:
                watch.done.set()
                continue
            meaning = stuck_reason(state.reason) if state.pending else None
            if meaning is None:
                watch._pending = None
                continue
            if watch._pending is None or watch._pending[0] != state.reason:
                watch._pending = (state.reason or "", now)
            waited = now - watch._pending[1]
            if waited >= self.pending_timeout_s:
                watch.stuck = f"pending for {waited:.0f} s: {state.reason} ({meaning})"
                watch.done.set()
