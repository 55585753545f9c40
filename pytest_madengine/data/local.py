"""The `local` data provider: a directory on the host, mounted read-only."""

from __future__ import annotations

from typing import Any

from pytest_madengine.backends import Bind
from pytest_madengine.data import DataMount, DataUnavailable


class LocalProvider:
    name = "local"

    def mount(self, data_name: str, source: Any, home: str) -> DataMount:
        path = source.get("path") if isinstance(source, dict) else None
        if not isinstance(path, str) or not path:
            raise DataUnavailable("expected {\"path\": \"/host/dir\"}")
        env = {"MAD_DATAHOME": home, "MAD_DATANAME": data_name}
        return DataMount(self.name, (Bind(path, home, read_only=True),), env)
