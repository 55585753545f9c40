"""Tag syntax of FORMATS.md: `X`, `all`, `X:key=value:key2=value2`, `dir/X`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pytest_madengine.core.tree.discovery import Model, names_and_tags, parameter_key_problem
from pytest_madengine.errors import MadError, parse_words

ALL = "all"


@dataclass(frozen=True)
class TagRequest:
    text: str  # as the user wrote it
    target: str  # a model name, a tag, or `all`
    directory: str | None = None  # set by `dir/X`: only models of scripts/<dir>/
    params: tuple[tuple[str, str], ...] = ()

    def matches(self, model: Model) -> bool:
        if self.directory is not None:
            if model.directory != self.directory:
                return False
            name = model.short_name
        else:
            name = model.name
        return self.target in (ALL, "") or self.target == name or self.target in model.tags


@dataclass(frozen=True, slots=True)
class Selected:
    """A model chosen by a tag, with the parameters that tag adds to its args."""

    model: Model
    params: tuple[tuple[str, str], ...] = ()

    @property
    def test_name(self) -> str:
        """`dummy`, `dummy2/model1`, or `dummy3[batch_size=512]`: stable across sessions."""
        if not self.params:
            return self.model.name
        inside = ",".join(f"{key}={value}" for key, value in self.params)
        return f"{self.model.name}[{inside}]"

    @property
    def extra_args(self) -> str:
        return " ".join(f"--{key} {value}" for key, value in self.params)


def parse_tag(text: str) -> TagRequest:
    head, *pairs = text.strip().split(":")
    params: list[tuple[str, str]] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MadError(f"--mad-tags: '{text}': expected key=value after ':', got '{pair}'")
        if problem := parameter_key_problem(key):
            raise MadError(f"--mad-tags: '{text}': {problem}")
        parse_words(f"--{key} {value}", f"--mad-tags: '{text}': parameter '{key}'")
        params.append((key, value))
    directory, slash, target = head.rpartition("/")
    if not head:
        raise MadError(f"--mad-tags: '{text}': empty tag")
    return TagRequest(text, target, directory if slash else None, tuple(params))


def split_tags(values: Iterable[str]) -> list[str]:
    """Tags from repeated and comma-separated option values, in order, once each."""
    seen: dict[str, None] = {}
    for value in values:
        for part in value.split(","):
            if part.strip():
                seen[part.strip()] = None
    return list(seen)


def select(models: Sequence[Model], tags: Sequence[str]) -> tuple[list[Selected], list[str]]:
    """The models the tags pick, in tree order and once each; and a line per idle tag."""
    requests = [parse_tag(tag) for tag in tags]
    chosen: dict[tuple[str, tuple[tuple[str, str], ...]], Selected] = {}
    problems: list[str] = []
    for request in requests:
        matched = [model for model in models if request.matches(model)]
        if not matched:
            problems.append(_no_match(request, models))
        for model in matched:
            # Parameters in the tag win; else each of the model's own parameter sets.
            param_sets = (request.params,) if request.params else model.param_sets or ((),)
            for params in param_sets:
                chosen.setdefault((model.name, params), Selected(model, params))
    order = {model.name: index for index, model in enumerate(models)}
    selected = sorted(chosen.values(), key=lambda item: order[item.model.name])
    # Two parameter sets can spell one test id ({"a": "1", "b": "2"} and {"a": "1,b=2"});
    # they would share a log and a perf.csv name: the later one is refused.
    seen: dict[str, Selected] = {}
    unique = []
    for item in selected:
        if item.test_name in seen:
            problems.append(
                f"model '{item.model.name}': parameters {item.extra_args!r} give the test id"
                f" {item.test_name} of parameters {seen[item.test_name].extra_args!r}"
            )
            continue
        seen[item.test_name] = item
        unique.append(item)
    return unique, problems


def _no_match(request: TagRequest, models: Sequence[Model]) -> str:
    words = names_and_tags(models)
    close = difflib.get_close_matches(request.text.split(":")[0], words, n=5, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else "; no close names"
    return f"--mad-tags: '{request.text}' selects no model{hint}"
