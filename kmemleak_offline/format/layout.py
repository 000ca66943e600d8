"""What a recording is named and starts with, without Arrow: the recorder needs these before it
enables events, and importing pyarrow then would delay the start (format.lazy says why).

The format version, the metadata key, the parts folder and its part files, the metadata skeleton.
`recording` re-exports them with the schema, writer and reader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

FORMAT_VERSION = 2
METADATA_KEY = b"kmemleak_offline"
PARTS_SUFFIX = ".parts"
PART_GLOB = "part-*.parquet"


class PartsExistError(FileExistsError):
    """A parts folder is already there (a killed recording?): never written over."""


def new_metadata(producer: str) -> dict[str, Any]:
    """A metadata skeleton with every required key, for writers to fill in."""
    return {
        "format_version": FORMAT_VERSION,
        "producer": producer,
        "host": {},
        "clock": {"perf_clock": "monotonic", "start_ns": 0, "stop_ns": 0,
                  "anchor": {"perf_ns": 0, "realtime_ns": 0}},
        "events": {},
        "alloc": [],
        "free": [],
        "options": {},
        "counts": {},
        "probes": [],
    }


def make_parts_dir(path: str | os.PathLike) -> Path:
    """Create `path.parts` for a recording's part files; never over what a killed run left."""
    parts_dir = Path(str(path) + PARTS_SUFFIX)
    if parts_dir.exists():  # never delete what a killed run left: say so
        raise PartsExistError(f"{parts_dir} exists (a killed recording?): analyse it, "
                              "or move it away first")
    parts_dir.mkdir(parents=True)
    return parts_dir
