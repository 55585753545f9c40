"""Which process runs a session, told so that another process can check it is gone."""

from __future__ import annotations

import os
from pathlib import Path


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat),
    which tells it apart from a later process that got the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def process_identity(pid: int | None = None) -> str:
    """`host:pid:start time` of a process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{os.uname().nodename}:{pid}:{_start_time(pid) or ''}"


def identity_gone(identity: str) -> bool:
    """True when the identity names a process of this host that no longer runs; False
    when it runs, or belongs to another host (we cannot tell there)."""
    host, _, rest = identity.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != os.uname().nodename or not pid_text.isdigit():
        return False
    return _start_time(int(pid_text)) != started or not started
