"""The package's layers, read from its source: each module imports only what stands at
or below its own floor, and no modules import each other in a circle.

Every import counts: at module level, inside functions and under TYPE_CHECKING, as
each of them ties the modules together for a reader and for a refactoring."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest_madengine

PACKAGE = "pytest_madengine"
PACKAGE_DIR = Path(pytest_madengine.__file__).parent

EXTENSIONS = (f"{PACKAGE}.backends", f"{PACKAGE}.data", f"{PACKAGE}.tools")
# From the bottom up: a module may import its own floor and the floors below it.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "floor",
        (
            PACKAGE,
            f"{PACKAGE}.errors",
            f"{PACKAGE}.masking",
            f"{PACKAGE}.registry",
            f"{PACKAGE}.runlog",
            f"{PACKAGE}.units",
            f"{PACKAGE}.credentials",
            f"{PACKAGE}.copies",
            f"{PACKAGE}.resources",
        ),
    ),
    # The workspace model stands beside the contract: a ModelRun holds a RunSpec.
    ("contract", (f"{PACKAGE}.contract", f"{PACKAGE}.workspace")),
    ("extensions", EXTENSIONS),
    ("core", (f"{PACKAGE}.core",)),
    ("reporting", (f"{PACKAGE}.reporting",)),
    ("shells", (f"{PACKAGE}.plugin", f"{PACKAGE}.cli", f"{PACKAGE}.__main__")),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_names(name: str, path: Path) -> Iterator[str]:
    """Each name an import statement of the module reaches, however deep it sits."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                anchor = here[: len(here) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield from (f"{base}.{alias.name}" for alias in node.names)


def owning_module(imported: str, modules: Mapping[str, Path]) -> str | None:
    """The module of ours an imported name lives in (`a.b.c` -> `a.b` when `c` is a
    function of module `a.b`); None for a name from outside the package."""
    parts = imported.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


@functools.cache
def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imported in imported_names(name, path):
            target = owning_module(imported, modules)
            if target is not None and target != name:
                graph[name].add(target)
    return graph


def floor_of(module: str) -> int:
    """The index in FLOORS of the most specific prefix that names the module."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} stands on no floor: add it to FLOORS")
    return best


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative so that a deep package cannot exhaust the stack)."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index_of:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index_of[root] = low[root] = len(index_of)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            successor = next(successors, None)
            if successor is not None:
                if successor not in index_of:
                    index_of[successor] = low[successor] = len(index_of)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                elif successor in on_stack:
                    low[node] = min(low[node], index_of[successor])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index_of[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_module_stands_on_a_floor() -> None:
    for module in package_modules():
        floor_of(module)


def test_no_import_runs_back_up() -> None:
    upward = [
        f"{module} ({FLOORS[floor_of(module)][0]}) imports {target} ({FLOORS[floor_of(target)][0]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if floor_of(target) > floor_of(module)
    ]
    assert upward == [], "imports that run back up:\n" + "\n".join(upward)


def test_no_modules_import_each_other_in_a_circle() -> None:
    found = cycles(import_graph())
    assert found == [], "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_extensions_stand_apart() -> None:
    # A backend, a data provider and a tool meet in the contract, not in each other.
    def family(module: str) -> str | None:
        return next((e for e in EXTENSIONS if module == e or module.startswith(e + ".")), None)

    across = [
        f"{module} imports {target}"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if family(module) and family(target) and family(module) != family(target)
    ]
    assert across == [], "extensions that import each other:\n" + "\n".join(across)


def defined_names(path: Path) -> set[str]:
    """The names a module's own top-level statements define."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return names


def test_the_backends_package_offers_every_name_of_the_contract() -> None:
    # Backends have imported these from `pytest_madengine.backends`: they still can.
    import pytest_madengine.backends as backends
    import pytest_madengine.contract as contract

    public = sorted(n for n in defined_names(Path(contract.__file__)) if not n.startswith("_"))
    assert {"RunSpec", "RunOutcome", "ImageFacts", "BackendSetup", "SESSION_LABEL"} <= set(public)
    missing = [
        name for name in public if getattr(backends, name, None) is not getattr(contract, name)
    ]
    assert missing == []


def test_the_graph_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    # The reader itself: a circle is found and a chain is not; an import under
    # TYPE_CHECKING, inside a function or relative to the module is read.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pytest_madengine.core.options import Options\n"
        "def f():\n    from ..core import records\n    import pytest_madengine.cli.app\n"
    )
    path = tmp_path / "module.py"
    path.write_text(source)
    names = set(imported_names("pytest_madengine.backends.module", path))
    assert {
        "pytest_madengine.core.options.Options",
        "pytest_madengine.core.records",
        "pytest_madengine.cli.app",
    } <= names
