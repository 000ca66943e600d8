"""A module imported on first use: keeps numpy and pyarrow out of the recorder's start-up.

Why: the recorder parses event formats and specs and checks expressions (tracefs, spec, expr)
before it enables the events; those modules also hold the vectorised decoding and evaluation the
analyser runs, which need numpy and pyarrow (0.1 CPU s to import, several times that on a busy
box). `np = lazy("numpy", globals(), "np")` binds the real module to `np` in the caller's globals
at the first attribute access, so later uses cost nothing extra.
"""

from __future__ import annotations

import importlib
from typing import Any


class lazy:
    def __init__(self, name: str, namespace: dict[str, Any], alias: str) -> None:
        self._name = name
        self._namespace = namespace
        self._alias = alias

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self._name)
        self._namespace[self._alias] = module  # the caller's global now names the module itself
        return getattr(module, attr)
