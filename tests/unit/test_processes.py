"""Helper processes of a session (SSH tunnels): out of reach of a signal to the
session's process group, yet ended with the session however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pytest_madengine.resources.processes import start_helper

# Says which of SIGTERM (the parent-death signal) and SIGWINCH comes first, then ends.
HELPER = """
import signal, sys
def say(signum, frame):
    print(signal.Signals(signum).name, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, say)
signal.signal(signal.SIGWINCH, say)
print("ready", flush=True)
signal.pause()
"""


def helper_argv() -> list[str]:
    return [sys.executable, "-c", HELPER]


def test_a_helper_runs_outside_our_process_group_and_session() -> None:
    helper = start_helper(helper_argv(), stdout=subprocess.PIPE, text=True)
    try:
        assert helper.stdout is not None and helper.stdout.readline() == "ready\n"
        assert os.getpgid(helper.pid) != os.getpgrp()
        assert os.getsid(helper.pid) != os.getsid(0)
    finally:
        helper.kill()
        helper.wait()


def test_a_helper_started_from_a_thread_that_ends_keeps_running() -> None:
    """The parent-death signal follows the thread that forked: a tunnel opened from a
    pool thread (a sweep's, a retried host's) must not end with that thread."""
    started: list[subprocess.Popen[str]] = []
    opener = threading.Thread(
        target=lambda: started.append(
            start_helper(helper_argv(), stdout=subprocess.PIPE, text=True)
        )
    )
    opener.start()
    opener.join()
    helper = started[0]
    assert helper.stdout is not None and helper.stdout.readline() == "ready\n"
    task = Path(f"/proc/self/task/{opener.native_id}")
    deadline = time.monotonic() + 30
    while task.exists():  # gone: the kernel sent whatever that thread's end sends
        assert time.monotonic() < deadline, "the opening thread never ended"
        time.sleep(0.01)
    # A signal pending since the thread ended is taken before SIGWINCH (lower first).
    helper.send_signal(signal.SIGWINCH)
    output, _ = helper.communicate(timeout=30)
    assert output == "SIGWINCH\n"


PARENT = """
import sys, time
from pytest_madengine.resources.processes import start_helper
start_helper([sys.executable, "-c", sys.argv[1]])
time.sleep(600)
"""


def test_a_helper_ends_when_its_parent_is_killed() -> None:
    """kill -9 of the session: no `finally` runs, the helper still goes."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, HELPER],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert parent.stdout is not None and parent.stdout.readline() == "ready\n"
    parent.kill()
    parent.wait()
    # The helper holds the pipe's other end: it closes when the helper ends.
    output, _ = parent.communicate(timeout=30)
    assert output == "SIGTERM\n"
