"""--mad-concurrency in pytest: which items run ahead of their turn, and when they are
handed to the core's Session (which runs them on threads as GPU leases allow).

An item runs ahead only when nothing of the user's could take part in its run: a MAD
item whose fixtures are ours alone (no autouse fixture of a conftest, no override of
`mad_benchmark` or `mad_runtime`, under whatever function name: pytest's own resolution
for the item says whose definition applies) and that carries no skip, skipif or xfail
marker.
Any other item runs in its turn, as in a serial session.

Without xdist every such item is handed over when pytest's loop starts, in item order.
An xdist worker knows only the items its controller has sent it: each time one of its
items starts, the worker hands over that item and those queued behind it.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterable
from typing import Any, TypeGuard

import pytest

from pytest_madengine.core.concurrency import PrefixedLines
from pytest_madengine.core.planning import PlannedTest
from pytest_madengine.core.session import Session
from pytest_madengine.plugin import fixtures
from pytest_madengine.plugin.collection import MadItem
from pytest_madengine.plugin.terminal import printable, to_terminal

OUR_FIXTURES = frozenset({"mad_benchmark", "mad_runtime", "request", "pytestconfig"})
# The modules whose fixture definitions are ours (pytestconfig is pytest's own).
OUR_FIXTURE_MODULES = frozenset({fixtures.__name__, "_pytest.fixtures"})
OUTCOME_MARKERS = ("skip", "skipif", "xfail")
LISTING_OPTIONS = ("collectonly", "setupplan", "setuponly")  # pytest runs no test then


def fixtures_are_ours(item: pytest.Function) -> bool:
    """Whether every fixture the item uses is one of ours, as pytest resolved it for
    this item: the definition that applies to a name is the last of its definitions
    (a conftest's or a plugin's override comes after ours, whatever its function's
    name). Without pytest's resolution to ask, the item is taken as the user's."""
    if not set(item.fixturenames) <= OUR_FIXTURES:
        return False
    resolved = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", None)
    if resolved is None:
        return False
    for definitions in resolved.values():
        applying = getattr(definitions[-1], "func", None) if definitions else None
        if getattr(applying, "__module__", None) not in OUR_FIXTURE_MODULES:
            return False
    return True


def runs_ahead(item: pytest.Item) -> TypeGuard[MadItem]:
    """Whether the item may run before its turn (see the module's docstring)."""
    return (
        isinstance(item, MadItem)
        and fixtures_are_ours(item)
        and not any(next(item.iter_markers(name), None) for name in OUTCOME_MARKERS)
    )


def runs_nothing(session: pytest.Session) -> bool:
    """Whether pytest's loop will run no test: a listing, a setup plan, or errors in
    collection that stop the session (pytest's own rule)."""
    option = session.config.option
    stopped = session.testsfailed and not getattr(option, "continue_on_collection_errors", False)
    listing = any(getattr(option, name, False) for name in LISTING_OPTIONS)
    return bool(stopped or listing)


def xdist_controller(config: pytest.Config) -> bool:
    """Whether this process hands tests to xdist workers (and runs none itself)."""
    if hasattr(config, "workerinput"):
        return False
    return bool(getattr(config.option, "numprocesses", None)) or (
        getattr(config.option, "dist", "no") not in ("no", None)
    )


class LiveLines:
    """Lines for the terminal from the threads of tests running at once (their live
    output, each line with the test's name in front; data downloads): queued, and
    written by the main thread while an item waits, since writing to the terminal
    means lifting pytest's capture, which is not for threads."""

    def __init__(self, config: pytest.Config, redact: Callable[[str], str]) -> None:
        self._config = config
        self._redact = redact
        self._lines: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()

    def lines_for(self, test: PlannedTest, test_id: str) -> PrefixedLines:
        """A sink for one of tests running at once: whole lines under its name."""
        return PrefixedLines(self._put, f"[{test.name}] ")

    def chunks_for(self, test: PlannedTest, test_id: str) -> Callable[[bytes], None]:
        """A sink for the one test running: its output as it comes, as a test run by
        the main thread shows it."""
        return self._put_chunk

    def _put_chunk(self, chunk: bytes) -> None:
        text = printable(self._redact(chunk.decode("utf-8", errors="replace")))
        self._lines.put((text, False))

    def _put(self, line: str) -> None:
        self._lines.put((printable(self._redact(line)), True))

    def put(self, line: str) -> None:
        """A line for the terminal, from any thread."""
        self._lines.put((line, True))

    def drain(self) -> None:
        texts = []
        with contextlib.suppress(queue.Empty):
            while True:
                texts.append(self._lines.get_nowait())
        if not texts:
            return

        def write(reporter: Any) -> None:
            for text, whole_line in texts:
                if whole_line:
                    reporter.ensure_newline()
                    reporter.write_line(text)
                else:
                    reporter.write(text)

        to_terminal(self._config, write)


class RunAhead:
    """The hooks that hand items to the session to run ahead (registered when this
    process runs tests). One test at a time (`next_only`), only the next item is handed
    over, with the running one: its container is made while that one runs and starts
    the moment its GPUs are given back, while pytest still reports the one before."""

    def __init__(self, runtime: Session, live: LiveLines | None, next_only: bool = False) -> None:
        self.runtime = runtime
        self.live = live
        self.next_only = next_only

    def _hand_over(self, items: Iterable[pytest.Item]) -> None:
        tests = [(item.planned, item.nodeid) for item in items if runs_ahead(item)]
        if not tests:
            return
        sink_for = None
        if self.live is not None:
            sink_for = self.live.chunks_for if self.next_only else self.live.lines_for
        self.runtime.run_ahead(tests, sink_for)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        if runs_nothing(session) or hasattr(session.config, "workerinput") or self.next_only:
            return
        self._hand_over(session.items)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        if self.next_only:
            # The next one only behind one that runs ahead too: else it could take the
            # GPUs first and run before the item in its turn.
            if runs_ahead(item):
                self._hand_over([item] if nextitem is None else [item, nextitem])
        elif hasattr(item.config, "workerinput"):
            self._hand_over([item, *_xdist_queued(item)])


def _xdist_queued(item: pytest.Item) -> list[pytest.Item]:
    """The items an xdist worker was sent and has not started yet, in order. xdist has
    no public name for them: without it, a worker runs ahead only the item it starts.
    Under --dist worksteal a queued item may be taken back: none is handed over.
    `torun.lock()` came with xdist 3.7, our floor (pyproject.toml): the fallback is not a
    supported mode but a guard should a later xdist rename its internals (its workers
    then run one test at a time, and tests/e2e/test_concurrency.py says so)."""
    if getattr(item.config.option, "dist", None) == "worksteal":
        return []
    worker = next(
        (plugin for plugin in item.config.pluginmanager.get_plugins()
         if type(plugin).__name__ == "WorkerInteractor"),
        None,
    )  # fmt: skip
    try:
        upcoming: list[Any] = [worker.nextitem_index]  # type: ignore[union-attr]
        with worker.torun.lock() as queued:  # type: ignore[union-attr]
            upcoming.extend(queued)
    except (AttributeError, TypeError):
        return []
    items = item.session.items
    return [items[index] for index in upcoming if isinstance(index, int) and index < len(items)]
