"""What a recording is named and starts with, without Arrow: the recorder needs these before it
enables events, and importing pyarrow then would delay the start (format.lazy says why).

The format version, the metadata key, the parts folder and its part files, the metadata skeleton.
`recording` re-exports them with the schema, writer and reader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT_VERSION = 2
METADATA_KEY = b"kmemleak_offline"
PART_KEY = b"kmemleak_offline.part"  # a part's {"seq": N, "recording": ID}
MANIFEST = "manifest"  # in a parts folder: one JSON line per part written
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


def new_recording_id() -> str:
    """Names the parts of one recording (format/recording.py tells them from strays by it)."""
    return os.urandom(8).hex()


def part_key(seq: int, recording: str) -> bytes:
    """The PART_KEY value of part `seq` of recording `recording`."""
    return json.dumps({"seq": seq, "recording": recording}).encode()


def part_name(seq: int) -> str:
    return f"part-{seq:05d}.parquet"


def unwrite_part(parts_dir: Path, seq: int) -> None:
    """Remove part `seq` and its manifest line, giving its room back (its number is used again)."""
    (parts_dir / part_name(seq)).unlink(missing_ok=True)
    manifest = parts_dir / MANIFEST
    try:
        lines = manifest.read_text().splitlines(keepends=True)
        manifest.write_text("".join(ln for ln in lines if _manifest_seq(ln) != seq))
    except OSError:
        pass


def _manifest_seq(line: str) -> int | None:
    try:
        return json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return None


def note_part(parts_dir: Path, seq: int, name: str, rows: int, recording: str) -> None:
    """Append a part's line to the folder's manifest (a missing part is then noticed). A line that
    cannot be written is left out: the part itself is complete and sealed; readers cope."""
    try:
        with open(parts_dir / MANIFEST, "a") as f:
            f.write(json.dumps({"seq": seq, "file": name, "rows": rows, "recording": recording}) + "\n")
    except OSError:
        pass
