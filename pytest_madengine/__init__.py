"""pytest-madengine: MAD model benchmarks as pytest tests."""

from pytest_madengine.errors import MadError

__all__ = ["MadError"]
__version__ = "0.1.0"
