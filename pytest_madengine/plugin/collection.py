"""pytest nodes for a MAD tree: the tree, one collector per source file, one item per test."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.core.build import BuildTarget
from pytest_madengine.core.planning import PlannedTest
from pytest_madengine.core.session import MadSession
from pytest_madengine.core.tree.discovery import SourceModels
from pytest_madengine.errors import display_path
from pytest_madengine.plugin.state import plugin_state


class MadCollectError(Exception):
    """Problems found while collecting, one line each; shown without a traceback."""


class MadTree(pytest.Dir):  # type: ignore[misc]  # pytest marks Dir final; the tree is one
    """The MAD root: yields a collector per models.json / get_models_json.py.

    Test files inside the tree are collected only when named on the command line:
    model scripts often carry test_*.py files of their own that are no pytest tests.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # pytest.Dir takes no extra constructor arguments: the plan is the session's.
        state = plugin_state(self.config)
        assert state is not None, "MadTree is made only by an active plugin"
        self.mad: MadSession = state.mad

    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        plan = self.mad.plan
        build_only = self.mad.options.build_only
        self._register_tag_markers()
        for loaded in self.mad.tree.sources:
            path = loaded.source.path
            tests = [] if build_only else plan.for_source(path)
            builds = self.mad.builds.for_source(path) if build_only else []
            if tests or builds or loaded.errors:
                yield MadSourceFile.from_parent(
                    self, path=path, loaded=loaded, tests=tests, builds=builds
                )
        for problem in plan.tag_problems:
            yield MadProblem.from_parent(self, name="--mad-tags", problem=problem)
        named = self._named_inside()
        if named:
            for node in super().collect():
                if any(node.path == path or node.path in path.parents for path in named):
                    yield node

    def _named_inside(self) -> list[Path]:
        """Paths below the root that the command line names."""
        inside = []
        for arg in self.config.args:
            path = Path(self.config.invocation_params.dir, arg.split("::")[0]).resolve()
            if path != self.path and self.path in path.parents:
                inside.append(path)
        return inside

    def _register_tag_markers(self) -> None:
        known = set(self.config.getini("markers"))
        for model in self.mad.tree.models:
            for tag in filter(is_marker_tag, model.tags):
                line = f"{tag}: MAD models tagged {tag}"
                if line not in known:
                    self.config.addinivalue_line("markers", line)
                    known.add(line)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:  # type: ignore[override]
        return _one_line_failure(excinfo) or super().repr_failure(excinfo)  # type: ignore[return-value]


class MadSourceFile(pytest.File):
    """One models.json or get_models_json.py, with the tests selected from it."""

    def __init__(
        self,
        *,
        loaded: SourceModels,
        tests: list[PlannedTest],
        builds: list[BuildTarget] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.loaded = loaded
        self.tests = tests
        self.builds = builds or []

    def collect(self) -> Iterator[pytest.Item]:
        if self.loaded.errors:
            raise MadCollectError("\n".join(self.loaded.errors))
        fixtureinfo = None
        for test in self.tests:
            item = MadItem.from_parent(
                self, name=test.name, callobj=_benchmark_body(test), planned=test,
                fixtureinfo=fixtureinfo,
            )  # fmt: skip
            # Every item here has the same signature and place, so the same fixtures:
            # resolving them once per file is most of the speed of collecting a big
            # tree (pytest does the same for the cases of a parametrized function).
            # pytest has no public name for the resolved fixtures; should the private
            # one go away, each item resolves its own again: slower, still right.
            fixtureinfo = getattr(item, "_fixtureinfo", None)
            yield item
        for target in self.builds:
            yield MadBuildItem.from_parent(
                self, name=target.name, callobj=_build_body(target), target=target
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:  # type: ignore[override]
        return _one_line_failure(excinfo) or super().repr_failure(excinfo)  # type: ignore[return-value]


class MadProblem(pytest.Collector):
    """A problem of the whole selection (a tag that selects nothing), as a collection error."""

    def __init__(self, *, problem: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.problem = problem

    def collect(self) -> Iterator[pytest.Item]:
        raise MadCollectError(self.problem)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:  # type: ignore[override]
        return _one_line_failure(excinfo) or super().repr_failure(excinfo)  # type: ignore[return-value]


def _one_line_failure(excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
    return str(excinfo.value) if isinstance(excinfo.value, MadCollectError) else None


# pytest's own markers change outcomes: a model tagged `xfail` or `skip` must not be.
PYTEST_MARKERS = frozenset(
    ("skip", "skipif", "xfail", "parametrize", "usefixtures", "filterwarnings", "tryfirst",
     "trylast", "no_cover")
)  # fmt: skip


def is_marker_tag(tag: str) -> bool:
    """Whether a tag becomes a marker (for -m): a plain name that is not pytest's own.
    Other tags still select models through --mad-tags."""
    return tag.isidentifier() and not tag.startswith("_") and tag not in PYTEST_MARKERS


@functools.cache
def _tag_marker(tag: str) -> pytest.MarkDecorator:
    """One marker object per tag: looking it up (and checking it is registered) for each
    of thousands of items is a good part of collecting a big tree."""
    return getattr(pytest.mark, tag)


def _benchmark_body(test: PlannedTest) -> Callable[..., None]:
    """The test function of one model; fixtures named in its signature are provided."""

    def run_benchmark(mad_benchmark: Callable[[], Any]) -> None:
        mad_benchmark()

    run_benchmark.__doc__ = test.describe()  # shown by `--collect-only -v`
    run_benchmark.__name__ = test.model.name
    return run_benchmark


# models.json as the session shows it, worked out once per file (thousands of items
# share one; each relpath asks the kernel for the working directory).
_SHOWN = pytest.StashKey[dict[Path, str]]()


def _shown(config: pytest.Config, source: Path) -> str:
    shown = config.stash.setdefault(_SHOWN, {})
    if source not in shown:
        shown[source] = display_path(source)
    return shown[source]


class MadItem(pytest.Function):
    """One selected model (with its tag parameters) as a test."""

    __slots__ = ("_structured_id",)  # see `id`
    _structured_id: Any

    def __init__(self, *, planned: PlannedTest, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned
        for tag in planned.model.tags:
            if is_marker_tag(tag):
                self.add_marker(_tag_marker(tag))
        if planned.skip_reason:
            self.add_marker(pytest.mark.skip(reason=planned.skip_reason))

    def reportinfo(self) -> tuple[str, int, str]:
        return _shown(self.config, self.planned.model.source), 0, self.name

    @property
    def id(self) -> Any:
        """The structured id, as pytest >= 9.2 parses our `name[params]` ids back from its
        cache (--lf, --sw compare the two). Without it, `p[b=1]` is one name to the item
        but a name and params to the cache, and --lf reruns everything. pytest has no
        public parser (its NodeId is private). Before 9.2 node ids are plain strings on
        both sides and nothing asks for `id` (pytest's own is missing too, as here): our
        floor, 8.0, does without it (scripts/lowest-lane). Parsed once: each of the
        item's reports keeps the id it is given (one parsed per report was ~0.5 KB per
        test of a fleet's session); kept in a slot, which costs the item's dict nothing."""
        try:
            return self._structured_id
        except AttributeError:
            pass
        own = super().id
        try:
            from _pytest.nodeid import coerce_node_id
        except ImportError:  # a pytest that moved it: its own id, as a plain item has
            return own
        self._structured_id = coerce_node_id(str(own))
        return self._structured_id


def _build_body(target: BuildTarget) -> Callable[..., None]:
    """The test function of one image build (and push)."""

    def build_image(mad_build: Callable[[], Any]) -> None:
        mad_build()

    reference = f", pushed to {target.reference}" if target.reference else ""
    dockerfile = target.test.dockerfile.relpath if target.test.dockerfile else "no Dockerfile"
    build_image.__doc__ = f"build {target.name} from {dockerfile}{reference}"
    build_image.__name__ = target.name
    return build_image


class MadBuildItem(pytest.Function):
    """One image of a build-only session (--mad-build-only) as a test."""

    def __init__(self, *, target: BuildTarget, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target = target
        self.planned = target.test  # what a failed record is made from
        for tag in target.test.model.tags:
            self.add_marker(_tag_marker(tag))
        if target.skip_reason:
            self.add_marker(pytest.mark.skip(reason=target.skip_reason))

    def reportinfo(self) -> tuple[str, int, str]:
        return display_path(self.target.test.model.source), 0, self.name
