"""The `local` data provider: a directory on the host, mounted read-only, never created.

madengine checks that the path exists and mounts it; Docker would create a missing one
(and the model would "succeed" on an empty directory), so a missing path is
DataUnavailable here and the next provider is tried. The path is checked on this
machine; on other Docker hosts it must exist too (a shared filesystem), and the
container fails to start where it does not.
"""

from __future__ import annotations

from pytest_madengine.contract import DataBind
from pytest_madengine.data import DataMount, DataRequest, DataUnavailable


class LocalProvider:
    name = "local"

    def mount(self, request: DataRequest) -> DataMount:
        source = request.source
        path = source.get("path") if isinstance(source, dict) else None
        if not isinstance(path, str) or not path:
            raise DataUnavailable('expected {"path": "/host/dir"}')
        where = (request.settings.root / path).resolve()  # relative: to the MAD tree
        if not where.exists():
            raise DataUnavailable(f"{path}: no such file or directory on this machine")
        bind = DataBind(str(where), request.home, name=request.data_name)
        return DataMount(self.name, (bind,), request.env, source=str(where))
