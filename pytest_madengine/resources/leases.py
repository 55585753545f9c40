"""The session's GPU leases and down hosts, shared by its processes (xdist workers).

They live in a journal: one JSON line per change (a lease taken, a lease given back, a
host found down), appended under a file lock. Each process keeps the state in memory and
reads only the lines written since it last looked, so a placement costs the same with
ten leases held as with a thousand. When the journal has grown well past the state it
describes, the process holding the lock rewrites it as one snapshot line (a new file
put in its place: the others see another inode and read it whole).

A lease names its holder's pid; the leases of a process that died (a crashed worker)
are dropped by the next process that looks.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pytest_madengine.resources.locks import SharedLock

# The journal is rewritten once it holds this many lines more than the state has leases.
COMPACT_SLACK = 2048
# How often the pids of other processes' leases are asked whether they still live.
LIVENESS_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class Lease:
    host: str
    gpus: tuple[int, ...]
    pid: int


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


class LeaseBook:
    """`with book:` holds the lock and brings the state up to date; `take`, `give_back`
    and `mark_down` change it, in memory and in the journal, inside such a block.

    Read inside the block: `leases` (holder -> Lease), `held` ((host, GPU index) pairs),
    `load` (leases per host), `gpus_held` (GPUs held per host), `down` (host -> why)."""

    def __init__(self, path: Path, lock: SharedLock) -> None:
        self.path = path
        self._lock = lock
        self._pid = os.getpid()
        self._file: IO[bytes] | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file read
        self._offset = 0  # bytes of it read
        self._lines = 0  # lines of it read
        self._checked_at = 0.0
        self._reset()

    def _reset(self) -> None:
        self.leases: dict[str, Lease] = {}
        self.held: set[tuple[str, int]] = set()
        self.load: dict[str, int] = {}
        self.gpus_held: dict[str, int] = {}
        self.down: dict[str, str] = {}
        self._offset = self._lines = 0

    def __enter__(self) -> LeaseBook:
        self._lock.__enter__()
        try:
            self._catch_up()
            self._drop_dead_holders()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if kind is None and self._lines > len(self.leases) + len(self.down) + COMPACT_SLACK:
                self._compact()
        finally:
            self._lock.__exit__(kind, value, tb)

    # ---- changes ----

    def take(self, holder: str, host: str, gpus: tuple[int, ...]) -> None:
        self._append({"take": holder, "host": host, "gpus": list(gpus), "pid": self._pid})

    def give_back(self, holder: str) -> bool:
        """False when the holder held nothing (given back already)."""
        if holder not in self.leases:
            return False
        self._append({"free": holder})
        return True

    def mark_down(self, host: str, why: str) -> None:
        self._append({"down": host, "why": why})

    # ---- the journal ----

    def _apply(self, change: dict[str, Any]) -> None:
        if "take" in change:
            self._forget(change["take"])
            lease = Lease(str(change["host"]), tuple(int(g) for g in change["gpus"]),
                          int(change.get("pid", 0)))  # fmt: skip
            self.leases[change["take"]] = lease
            self.held.update((lease.host, gpu) for gpu in lease.gpus)
            self.load[lease.host] = self.load.get(lease.host, 0) + 1
            self.gpus_held[lease.host] = self.gpus_held.get(lease.host, 0) + len(lease.gpus)
        elif "free" in change:
            self._forget(change["free"])
        elif "down" in change:
            self.down[str(change["down"])] = str(change.get("why", ""))
        elif "snapshot" in change:
            for holder, lease in change["snapshot"].get("leases", {}).items():
                self._apply({"take": holder, **lease})
            self.down.update(change["snapshot"].get("down", {}))

    def _forget(self, holder: str) -> None:
        lease = self.leases.pop(holder, None)
        if lease is not None:
            self.held.difference_update((lease.host, gpu) for gpu in lease.gpus)
            self.load[lease.host] -= 1
            self.gpus_held[lease.host] -= len(lease.gpus)

    def _append(self, change: dict[str, Any]) -> None:
        handle = self._open()
        line = json.dumps(change, separators=(",", ":")).encode() + b"\n"
        size = os.fstat(handle.fileno()).st_size
        if size != self._offset:
            line = b"\n" + line  # after a line a crashed writer left unfinished
        handle.write(line)
        handle.flush()
        self._offset = size + len(line)
        self._lines += 1
        self._apply(change)

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a+b")  # noqa: SIM115 - kept open for the session
            facts = os.fstat(self._file.fileno())
            self._identity = (facts.st_dev, facts.st_ino)
        return self._file

    def _catch_up(self) -> None:
        """Reads the lines written since this process last looked (all of them when the
        file was replaced by a compaction, or is another file)."""
        try:
            facts = os.stat(self.path)
        except FileNotFoundError:
            self._close()
            self._reset()
            return
        if (facts.st_dev, facts.st_ino) != self._identity or facts.st_size < self._offset:
            self._close()
            self._reset()
        if facts.st_size == self._offset:
            return
        handle = self._open()
        handle.seek(self._offset)
        fresh = handle.read(facts.st_size - self._offset)
        whole = fresh[: fresh.rfind(b"\n") + 1]  # a line being cut short by a crash waits
        for line in whole.splitlines():
            try:
                change = json.loads(line)
            except ValueError:
                continue  # the unfinished line of a writer that died mid-write
            if isinstance(change, dict):
                self._apply(change)
            self._lines += 1
        self._offset += len(whole)

    def _drop_dead_holders(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < LIVENESS_EVERY_S:
            return
        self._checked_at = now
        pids = {lease.pid for lease in self.leases.values()} - {self._pid}
        dead = {pid for pid in pids if not _alive(pid)}
        for holder in [h for h, lease in self.leases.items() if lease.pid in dead]:
            self._forget(holder)  # in memory: each process finds the same, the journal
            # loses them at its next compaction

    def _compact(self) -> None:
        snapshot = {
            "leases": {holder: {"host": lease.host, "gpus": list(lease.gpus), "pid": lease.pid}
                       for holder, lease in self.leases.items()},
            "down": self.down,
        }  # fmt: skip
        text = json.dumps({"snapshot": snapshot}, separators=(",", ":")).encode() + b"\n"
        fresh = self.path.with_name(f"{self.path.name}.{self._pid}.new")
        fresh.write_bytes(text)
        os.replace(fresh, self.path)
        self._close()
        self._open()
        self._offset, self._lines = len(text), 1

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._identity = None

    def close(self) -> None:
        self._close()
