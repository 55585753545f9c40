"""A MAD tree as Model records: root models.json, scripts/<dir>/models.json and
scripts/<dir>/get_models_json.py.

Every problem becomes a one-line message naming the file and the entry; a broken file
does not stop the others from loading.
"""

from __future__ import annotations

import functools
import posixpath
import re
import runpy
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pytest_madengine.core.results import Expectation, parse_expectation
from pytest_madengine.core.tree.dockerfiles import DockerfileIndex
from pytest_madengine.core.tree.madengine_compat import madengine_importable, model_to_dict
from pytest_madengine.errors import MadError, display_path, parse_json, parse_words, read_text

MODELS_JSON = "models.json"
DYNAMIC_MODELS = "get_models_json.py"
RESERVED_NAME_CHARS = ("/", ":")
REQUIRED_FIELDS = ("name", "dockerfile", "scripts")
DEFAULT_TIMEOUT_S = 7200
DEFAULT_N_GPUS = 1
# A parameter becomes `--key value` in the script's args: the key must be one word
# that reads as an option name (an empty key gave `-- 2`, a spaced one two words).
PARAMETER_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class Model:
    """One models.json entry, with paths made relative to the MAD root."""

    name: str
    dockerfile: str
    scripts: str
    source: Path
    directory: str | None = None  # the <dir> of scripts/<dir>/, None for the root file
    args: str = ""
    n_gpus: int = DEFAULT_N_GPUS  # -1: every GPU of the host
    tags: tuple[str, ...] = ()
    timeout: int = DEFAULT_TIMEOUT_S  # 0: no limit
    multiple_results: str | None = None
    # Our extension: timed repetitions and untimed runs before them (None: not given).
    repeat: int | None = None
    warmup: int | None = None
    skip_gpu_arch: tuple[str, ...] = ()
    data: str | None = None
    url: str | None = None
    cred: str | None = None
    owner: str | None = None
    training_precision: str | None = None
    dockercontext: str = "docker"
    # Our extension `parametrize`: each set of key=value pairs is one test, as a tag
    # `name:key=value` would make it.
    param_sets: tuple[tuple[tuple[str, str], ...], ...] = ()
    # Our extension `expect`: bounds the performance must meet (see results.py).
    expectation: Expectation | None = None
    # The entry as written, unknown fields included, so they pass through untouched.
    entry: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def short_name(self) -> str:
        """The name without its `<dir>/` prefix."""
        return self.name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Source:
    """A file that yields model entries."""

    path: Path
    directory: str | None  # None for the root models.json
    problem: str | None = None  # a layout problem that stops this source from loading

    @property
    def dynamic(self) -> bool:
        return self.path.name == DYNAMIC_MODELS


@dataclass(frozen=True)
class SourceModels:
    """What one source file gave: its models, or the reasons it could not."""

    source: Source
    models: tuple[Model, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tree:
    root: Path
    sources: tuple[SourceModels, ...]

    @property
    def models(self) -> tuple[Model, ...]:
        return tuple(model for loaded in self.sources for model in loaded.models)


def find_sources(root: Path) -> list[Source]:
    """The source files of a tree, those with a layout problem included."""
    if not root.is_dir():
        raise MadError(f"MAD root {display_path(root)}: no such directory")
    top = root / MODELS_JSON
    if not top.is_file():
        raise MadError(f"MAD root {display_path(root)}: no {MODELS_JSON} in it")
    sources = [Source(top, None)]
    scripts = root / "scripts"
    if scripts.is_dir():
        for directory in sorted(entry for entry in scripts.iterdir() if entry.is_dir()):
            static, dynamic = directory / MODELS_JSON, directory / DYNAMIC_MODELS
            if static.is_file() and dynamic.is_file():
                problem = (
                    f"{display_path(directory)}: has both {MODELS_JSON} and {DYNAMIC_MODELS};"
                    " keep one"
                )
                sources.append(Source(static, directory.name, problem))
            elif static.is_file():
                sources.append(Source(static, directory.name))
            elif dynamic.is_file():
                sources.append(Source(dynamic, directory.name))
    return sources


def _read_static(path: Path) -> list[Any]:
    entries = parse_json(read_text(path), display_path(path))
    if not isinstance(entries, list):
        raise MadError(
            f"{display_path(path)}: expected a JSON list of model entries,"
            f" got {type(entries).__name__}"
        )
    return entries


def _read_dynamic(path: Path) -> list[Any]:
    where = display_path(path)
    try:
        with madengine_importable():
            namespace = runpy.run_path(str(path), run_name="get_models_json")
            list_models = namespace.get("list_models")
            if not callable(list_models):
                raise MadError(f"{where}: defines no list_models() function")
            return [model_to_dict(model) for model in list_models()]
    except MadError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # user code: any failure (sys.exit too) is one line
        raise MadError(f"{where}: raised {type(exc).__name__}: {exc}") from None


def _as_tuple(value: Any, field_name: str) -> tuple[str, ...]:
    """A list field that MAD trees also write as a comma-separated string."""
    if value is None or value == "":
        return ()
    # One copy of each text: a big tree's models repeat the same few tags.
    if isinstance(value, str):
        return tuple(sys.intern(part.strip()) for part in value.split(",") if part.strip())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(sys.intern(item) for item in value)
    raise ValueError(f"field '{field_name}' must be a list of strings, got {value!r}")


def _check_labels(entry: Mapping[str, Any]) -> None:
    """Our `host_labels` and `host_affinity`: lists of host labels (placement reads them
    from the entry). A string was taken letter by letter, a number failed every test
    with a traceback: each is a collection error naming the field."""
    for field_name in ("host_labels", "host_affinity"):
        value = entry.get(field_name)
        if value is None or value == []:
            continue
        if not isinstance(value, list) or not all(
            isinstance(label, str) and label.strip() for label in value
        ):
            raise ValueError(f"field '{field_name}' must be a list of host labels, got {value!r}")


def _as_int(value: Any, field_name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError(f"field '{field_name}' must be an integer, got {value!r}")
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"field '{field_name}' must be an integer, got {value!r}") from None


def _param_sets(value: Any) -> tuple[tuple[tuple[str, str], ...], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(item, dict) and item and all(isinstance(key, str) for key in item)
        for item in value
    ):
        raise ValueError(
            "field 'parametrize' must be a list of non-empty objects such as"
            f' [{{"batch_size": 256}}], got {value!r}'
        )
    for item in value:
        for key in item:
            if problem := parameter_key_problem(key):
                raise ValueError(f"field 'parametrize': {problem}")
    sets = tuple(
        tuple((key, _param_value(key, val)) for key, val in item.items()) for item in value
    )
    for params in sets:
        for key, val in params:  # checked now: a test would split them only when it runs
            _words(f"--{key} {val}", f"field 'parametrize': '{key}'")
    return sets


def _words(text: str, where: str) -> list[str]:
    try:
        return parse_words(text, where)
    except MadError as exc:
        raise ValueError(str(exc)) from None


def parameter_key_problem(key: str) -> str | None:
    """Why a parameter's key cannot be an option name of the script (None if it can)."""
    if PARAMETER_KEY.fullmatch(key):
        return None
    return (
        f"key {key!r} must be one word of letters, digits, '_', '-' or '.'"
        " (it is passed as --key value)"
    )


def _param_value(key: str, value: Any) -> str:
    """A parameter as it is passed on the command line (`--key value`): a string or a
    number; a list or object has no one spelling there."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ValueError(
        f"field 'parametrize': '{key}' must be a string or a number, got {type(value).__name__}"
    )


def _timeout(value: Any) -> int:
    seconds = _as_int(value, "timeout", DEFAULT_TIMEOUT_S)
    if seconds < 0:
        raise ValueError(f"field 'timeout' must be seconds (0: none), got {value!r}")
    return seconds


def _count(value: Any, field_name: str, minimum: int) -> int | None:
    """A run count (repeat, warmup); None when the entry does not give one."""
    if value is None or value == "":
        return None
    count = _as_int(value, field_name, minimum)
    if count < minimum:
        raise ValueError(f"field '{field_name}' must be at least {minimum}, got {value!r}")
    return count


def _n_gpus(value: Any) -> int:
    count = _as_int(value, "n_gpus", DEFAULT_N_GPUS)
    if count < -1:
        raise ValueError(f"field 'n_gpus' must be -1 (all GPUs) or a count, got {value!r}")
    return count


def _result_file(entry: Mapping[str, Any]) -> str | None:
    """multiple_results: a file the script writes in its working directory."""
    name = _optional_str(entry, "multiple_results")
    if name is not None and (posixpath.isabs(name) or ".." in name.split("/")):
        raise ValueError(
            f"field 'multiple_results' must be a path inside the working directory, got {name!r}"
        )
    return name


def _optional_str(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    if value is None or value == "":
        return None
    return str(value)


def _rebase(directory: str | None, path: str) -> str:
    """Entries of scripts/<dir>/ name paths relative to that directory (one copy of
    each: a big tree's models share a few Dockerfiles and script folders)."""
    if directory is None:
        return sys.intern(posixpath.normpath(path))
    return sys.intern(posixpath.normpath(posixpath.join("scripts", directory, path)))


def model_from_entry(entry: Mapping[str, Any], source: Source) -> Model:
    """A Model from one entry dict; ValueError says what is wrong with it."""
    for key in REQUIRED_FIELDS:
        value = entry.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"missing field '{key}'"
                if value in (None, "")
                else f"field '{key}' must be a string"
            )
    name = entry["name"].strip()
    for char in RESERVED_NAME_CHARS:
        if char in name:
            raise ValueError(f"name contains the reserved character {char!r}")
    args = entry.get("args", "")
    if isinstance(args, list):
        args = " ".join(str(arg) for arg in args)
    _words(str(args or ""), "field 'args'")
    _check_labels(entry)
    return Model(
        name=name if source.directory is None else f"{source.directory}/{name}",
        dockerfile=_rebase(source.directory, entry["dockerfile"]),
        scripts=_rebase(source.directory, entry["scripts"]),
        source=source.path,
        directory=source.directory,
        args=str(args or ""),
        n_gpus=_n_gpus(entry.get("n_gpus")),
        tags=_as_tuple(entry.get("tags"), "tags"),
        timeout=_timeout(entry.get("timeout")),
        multiple_results=_result_file(entry),
        repeat=_count(entry.get("repeat"), "repeat", minimum=1),
        warmup=_count(entry.get("warmup"), "warmup", minimum=0),
        skip_gpu_arch=_as_tuple(entry.get("skip_gpu_arch"), "skip_gpu_arch"),
        data=_optional_str(entry, "data"),
        url=_optional_str(entry, "url"),
        cred=_optional_str(entry, "cred"),
        owner=_optional_str(entry, "owner"),
        training_precision=_optional_str(entry, "training_precision"),
        dockercontext=_rebase(source.directory, str(entry["dockercontext"]))
        if entry.get("dockercontext")
        else "docker",
        param_sets=_param_sets(entry.get("parametrize")),
        expectation=parse_expectation(entry.get("expect")),
        entry=MappingProxyType(dict(entry)),
    )


def _entry_label(entry: Any, index: int) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"]:
        return f"model '{entry['name']}'"
    return f"entry #{index + 1}"


def load_source(
    source: Source,
    root: Path,
    dockerfiles: DockerfileIndex,
    seen: dict[str, Path],
    image_owners: dict[str, str] | None = None,
) -> SourceModels:
    """The models of one file. `seen` maps names loaded so far to their file, and
    `image_owners` image names to their model, for duplicates."""
    image_owners = {} if image_owners is None else image_owners
    if source.problem:
        return SourceModels(source, errors=(source.problem,))
    where = display_path(source.path)
    try:
        entries = _read_dynamic(source.path) if source.dynamic else _read_static(source.path)
    except MadError as exc:
        return SourceModels(source, errors=(str(exc),))
    models: list[Model] = []
    errors: list[str] = []
    for index, entry in enumerate(entries):
        label = _entry_label(entry, index)
        if not isinstance(entry, dict):
            errors.append(f"{where}: {label}: expected an object, got {type(entry).__name__}")
            continue
        try:
            model = model_from_entry(entry, source)
        except ValueError as exc:
            errors.append(f"{where}: {label}: {exc}")
            continue
        if model.name in seen:
            errors.append(
                f"{where}: model '{model.name}': duplicate name, first defined in"
                f" {display_path(seen[model.name])}"
            )
            continue
        seen[model.name] = source.path
        problem = _path_problem(
            root, model.dockerfile, model.scripts, model.dockercontext, model.url is not None,
            dockerfiles,
        ) or _image_name_problem(model, dockerfiles, image_owners)  # fmt: skip
        if problem:
            errors.append(f"{where}: model '{model.name}': {problem}")
            continue
        models.append(model)
    return SourceModels(source, tuple(models), tuple(errors))


def outside(root: Path, relative: str) -> bool:
    """Whether a tree-relative path leads out of the tree (by `..`, or a symlink)."""
    target = (root / relative).resolve()
    return target != root and root not in target.parents


@functools.lru_cache(maxsize=4096)
def _path_problem(
    root: Path, dockerfile: str, scripts: str, dockercontext: str, has_url: bool,
    dockerfiles: DockerfileIndex,
) -> str | None:  # fmt: skip
    """What is wrong with an entry's paths. Cached for one load: many entries share
    their Dockerfile and script. Nothing outside the tree may reach an image or a
    container: what `scripts` copies in (its directory) and the build context."""
    copied = scripts if (root / scripts).is_dir() else posixpath.dirname(scripts)
    for field_name, value in (
        ("scripts", scripts),
        ("scripts", copied),
        ("dockerfile", dockerfile),
        ("dockercontext", dockercontext),
    ):
        if outside(root, value):
            return f"{field_name} '{value}' leads outside the MAD tree"
    candidates = dockerfiles.candidates(dockerfile)
    if not candidates:
        return f"dockerfile '{dockerfile}' matches no file ({dockerfile}.*Dockerfile)"
    try:
        for path in candidates:
            dockerfiles.load(path)  # parses the CONTEXT header once, here, where we can report
    except MadError as exc:
        return str(exc)
    # With a url the scripts come from the cloned repository, so they need not exist here.
    if not has_url and not (root / scripts).exists():
        return f"scripts '{scripts}' not found"
    return None


# A path component of a Docker image name (the distribution reference grammar).
_IMAGE_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
MAX_IMAGE_NAME = 255


def _image_name_problem(
    model: Model, dockerfiles: DockerfileIndex, owners: dict[str, str]
) -> str | None:
    """Why the image names this model gives (one per Dockerfile) are not valid Docker
    names, or are another model's (`a_b` and `a/b`, `Foo` and `foo`): found now, not as
    a traceback from the engine, or one image in a manifest for two models."""
    for path in dockerfiles.candidates(model.dockerfile):
        name = f"ci-{model.name.replace('/', '_').lower()}_{dockerfiles.load(path).stem}"
        owner = owners.setdefault(name, model.name)
        if owner != model.name:
            return f"its image name '{name}' is model '{owner}''s too"
        if len(name) > MAX_IMAGE_NAME or not _IMAGE_COMPONENT.fullmatch(name):
            shown = name if len(name) <= 80 else name[:77] + "..."
            return (
                f"its image name '{shown}' is not a valid Docker name (names and Dockerfiles"
                f" may use letters, digits and single '.', '_' or '-' between them;"
                f" at most {MAX_IMAGE_NAME} characters)"
            )
    return None


def load_tree(root: Path, dockerfiles: DockerfileIndex | None = None) -> Tree:
    """Every source of the tree, each with its models or its errors."""
    root = root.resolve()
    dockerfiles = dockerfiles or DockerfileIndex(root)
    seen: dict[str, Path] = {}
    images: dict[str, str] = {}
    try:
        loaded = tuple(load_source(s, root, dockerfiles, seen, images) for s in find_sources(root))
    finally:
        _path_problem.cache_clear()  # a later load must see the files as they are then
    return Tree(root, loaded)


def names_and_tags(models: Iterable[Model]) -> list[str]:
    """Everything a tag can name, for suggestions."""
    words: dict[str, None] = {}
    for model in models:
        words[model.name] = None
        for tag in model.tags:
            words[tag] = None
        if model.directory:
            words[model.directory] = None
    return list(words)
