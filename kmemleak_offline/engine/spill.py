"""Spill files: the replay columns of each (scan range, key partition), as Arrow IPC files.

IPC files are written uncompressed and read back memory-mapped: the page cache holds them, so a
partition costs the reader only what it touches. The folder is removed on every exit path
(`SpillDir` is a context manager; Ctrl-C and errors unwind through it).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Self

import numpy as np
import pyarrow as pa

# the columns a partition replay needs; everything else is fetched later for reported rows only
SCHEMA = pa.schema([
    ("time", pa.uint64()),  # clamped within its scan range (the carry is applied at replay)
    ("rs", pa.uint64()),  # ring << 48 | sample row: tie-break and the row to fetch payloads from
    ("key", pa.uint64()),
    ("size", pa.uint64()),
    ("stack_id", pa.int32()),  # -1 = no callchain (ids are rows of the stack table: < 2^31)
    ("pid", pa.int32()),
    ("role", pa.int8()),
])
COLUMNS = SCHEMA.names


class SpillError(Exception):
    """The spill folder cannot be written (no space, no permission); one-line message."""


def spill_error(exc: OSError, where: Path) -> SpillError:
    if exc.errno == errno.ENOSPC:
        return SpillError(f"no space left on device for spill files in {where.parent} "
                          "(use --tmpdir DIR on a larger file system)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return SpillError(f"cannot write spill files in {where.parent}: {os.strerror(exc.errno)} "
                          "(use --tmpdir DIR)")
    return SpillError(f"spill files in {where.parent}: {exc.strerror or exc}")


class SpillDir:
    """A private folder under `parent` (default: TMPDIR) for one analysis' spill files."""

    def __init__(self, parent: str | os.PathLike | None = None) -> None:
        base = Path(parent) if parent is not None else Path(tempfile.gettempdir())
        try:
            self.path = Path(tempfile.mkdtemp(prefix="kmemleak-spill-", dir=base))
        except OSError as exc:
            raise spill_error(exc, base / "x") from None

    def file(self, scan_range: int, part: int) -> Path:
        return self.path / f"r{scan_range:05d}-p{part:05d}.arrow"

    def files(self, part: int) -> list[tuple[int, Path]]:
        """(scan range, file) of one partition, in range order."""
        out = []
        for f in sorted(self.path.glob(f"r*-p{part:05d}.arrow")):
            out.append((int(f.name[1:6]), f))
        return out

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class PartitionWriters:
    """One IPC writer per partition for one scan range, opened on first use."""

    def __init__(self, spill: SpillDir, scan_range: int) -> None:
        self.spill, self.scan_range = spill, scan_range
        self._w: dict[int, tuple[pa.NativeFile, pa.ipc.RecordBatchFileWriter]] = {}

    def write(self, part: int, cols: dict[str, np.ndarray]) -> None:
        path = self.spill.file(self.scan_range, part)
        try:
            if part not in self._w:
                sink = pa.OSFile(str(path), "wb")
                self._w[part] = (sink, pa.ipc.new_file(sink, SCHEMA))
            self._w[part][1].write_batch(batch(cols))
        except OSError as exc:
            raise spill_error(exc, path) from None

    def close(self) -> None:
        try:
            for sink, w in self._w.values():
                w.close()
                sink.close()
        except OSError as exc:
            raise spill_error(exc, self.spill.path / "x") from None
        self._w.clear()


def batch(cols: dict[str, np.ndarray]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(cols[c], type=SCHEMA.field(c).type) for c in COLUMNS],
                                      schema=SCHEMA)


def read(path: Path) -> dict[str, np.ndarray]:
    """A spill file's columns (memory-mapped, concatenated over its batches)."""
    with pa.memory_map(str(path)) as src:
        t = pa.ipc.open_file(src).read_all()
    return from_table(t)


def from_table(t: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
    out = {}
    for c in COLUMNS:
        col = t.column(c)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        out[c] = col.to_numpy(zero_copy_only=False)
    return out
