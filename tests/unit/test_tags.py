"""Tag syntax and selection (FORMATS.md: names, tags, all, X:key=value, dir/X)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_madengine.core.tree.discovery import Model
from pytest_madengine.core.tree.tags import TagRequest, parse_tag, select, split_tags
from pytest_madengine.errors import MadError


def model(name: str, tags: tuple[str, ...] = (), directory: str | None = None, **kw) -> Model:
    full = f"{directory}/{name}" if directory else name
    return Model(full, "docker/d", "scripts/s.sh", Path("models.json"), directory, tags=tags, **kw)


MODELS = [
    model("resnet", ("vision", "fast")),
    model("bert", ("nlp",)),
    model("llama", ("nlp", "fast"), directory="llm"),
]


def names(tags: list[str]) -> list[str]:
    return [item.test_name for item in select(MODELS, tags)[0]]


def test_parse_plain_scoped_and_parametrized_tags() -> None:
    assert parse_tag("bert") == TagRequest("bert", "bert")
    assert parse_tag("llm/fast") == TagRequest("llm/fast", "fast", "llm")
    assert parse_tag("bert:bs=8:lr=0.1") == TagRequest(
        "bert:bs=8:lr=0.1", "bert", None, (("bs", "8"), ("lr", "0.1"))
    )


def test_parameter_without_equals_is_refused() -> None:
    with pytest.raises(MadError, match=r"--mad-tags: 'bert:bs': expected key=value after ':'"):
        parse_tag("bert:bs")


def test_split_tags_flattens_commas_and_repeats_once_each() -> None:
    assert split_tags(["a,b", "b", " c ,"]) == ["a", "b", "c"]


def test_select_by_name_tag_and_all_in_tree_order() -> None:
    assert names(["bert"]) == ["bert"]
    assert names(["fast"]) == ["resnet", "llm/llama"]
    assert names(["nlp", "vision"]) == ["resnet", "bert", "llm/llama"]
    assert names(["all"]) == ["resnet", "bert", "llm/llama"]


def test_scope_restricts_to_a_scripts_directory() -> None:
    assert names(["llm/nlp"]) == ["llm/llama"]
    assert names(["llm/llama"]) == ["llm/llama"]
    assert names(["llm/all"]) == ["llm/llama"]


def test_params_make_distinct_tests_and_args() -> None:
    selected, _ = select(MODELS, ["bert:bs=8", "bert:bs=16", "bert"])
    assert [item.test_name for item in selected] == ["bert[bs=8]", "bert[bs=16]", "bert"]
    assert selected[0].extra_args == "--bs 8"


def test_model_parameter_sets_expand_unless_the_tag_gives_params() -> None:
    swept = [model("sweep", ("fast",), param_sets=((("bs", "1"),), (("bs", "2"),)))]
    assert [s.test_name for s in select(swept, ["fast"])[0]] == ["sweep[bs=1]", "sweep[bs=2]"]
    assert [s.test_name for s in select(swept, ["sweep:bs=9"])[0]] == ["sweep[bs=9]"]


def test_idle_tag_is_reported_with_close_names() -> None:
    _, problems = select(MODELS, ["berr", "zzz"])
    assert problems == [
        "--mad-tags: 'berr' selects no model; close names: bert",
        "--mad-tags: 'zzz' selects no model; no close names",
    ]
