"""Reporters: one module per output format, each found here by its `--format` name.

A reporter module defines `render(a, stacks, out, opts)`: it writes one Analysis (and the stack
resolver that names its frames) to `out`, as `opts` asks. None recomputes the analysis. A new
format is a new module plus its line in FORMATS; `analyze --format` lists what is here. A module
that sets `BINARY = True` is given a binary stream and is never written to a terminal.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

FORMATS = {  # --format name -> module in this package
    "text": "text",
    "json": "json_report",
    "folded": "flamegraph",
    "pprof": "pprof",
    "speedscope": "speedscope",
    "html": "html",  # a self-contained page with plots (bokeh)
}


@dataclass
class ReportOptions:
    recording: str  # as given on the command line
    verbose: int = 0
    comm: bool = False
    utc: bool = False
    trend: bool = False  # text: one trend line per leaked-bytes group
    sort: str = "bytes"  # group order: bytes (perf-prof's) or growth (analysis.SORTS)
    err: TextIO = field(default_factory=lambda: sys.stderr)  # perf-prof's stderr lines (lost)


def _module(name: str):
    return importlib.import_module(f"{__name__}.{FORMATS[name]}")


def reporter(name: str) -> Callable:
    """The `render` function of format `name` (KeyError if there is none)."""
    return _module(name).render


def is_binary(name: str) -> bool:
    """Format `name` writes bytes (given a binary stream; refused on a terminal)."""
    return bool(getattr(_module(name), "BINARY", False))
