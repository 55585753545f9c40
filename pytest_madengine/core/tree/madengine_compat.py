"""Lets a MAD tree's `get_models_json.py` import `madengine.utils.discover_models`
when madengine itself is not installed.

Real MAD trees write `from madengine.utils.discover_models import CustomModel`. When the
real package is importable we use it; otherwise we put a small stand-in module in
`sys.modules` for the time the file is executed, and take it out again afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import sys
import types
from collections.abc import Iterator
from typing import Any

SHIM_MODULES = ("madengine", "madengine.utils", "madengine.utils.discover_models")


@dataclasses.dataclass
class CustomModel:
    """The fields of a models.json entry, as madengine's own class names them."""

    name: str
    dockerfile: str = ""
    dockercontext: str = ""
    scripts: str = ""
    url: str = ""
    cred: str = ""
    owner: str = ""
    data: str = ""
    n_gpus: str = "-1"
    timeout: int = 7200
    training_precision: str = ""
    tags: list[str] = dataclasses.field(default_factory=list)
    args: str = ""
    multiple_results: str = ""
    skip_gpu_arch: str = ""

    def update_model(self) -> None:
        """Hook for subclasses that compute fields; called before the entry is read."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_to_dict(model: Any) -> dict[str, Any]:
    """An entry dict from a CustomModel of ours, of madengine's, or a plain mapping."""
    if isinstance(model, dict):
        return dict(model)
    if hasattr(model, "update_model"):
        model.update_model()
    if hasattr(model, "to_dict"):
        return dict(model.to_dict())
    if dataclasses.is_dataclass(model) and not isinstance(model, type):
        return dataclasses.asdict(model)
    if hasattr(model, "__dict__"):
        return dict(vars(model))
    raise TypeError(f"expected a CustomModel or a dict, got {type(model).__name__}")


def _real_madengine_available() -> bool:
    try:
        return importlib.util.find_spec("madengine.utils.discover_models") is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def madengine_importable() -> Iterator[None]:
    """Within the block, `madengine.utils.discover_models.CustomModel` can be imported."""
    if _real_madengine_available():
        yield
        return
    saved = {name: sys.modules.get(name) for name in SHIM_MODULES}
    package = types.ModuleType("madengine")
    utils = types.ModuleType("madengine.utils")
    discover = types.ModuleType("madengine.utils.discover_models")
    package.__path__ = []
    utils.__path__ = []
    discover.CustomModel = CustomModel  # type: ignore[attr-defined]
    package.utils = utils  # type: ignore[attr-defined]
    utils.discover_models = discover  # type: ignore[attr-defined]
    sys.modules.update(zip(SHIM_MODULES, (package, utils, discover), strict=True))
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
