"""Load: read a recording once into sample columns (numpy) and small side-band tables.

Samples are most of the rows, so they are never copied out of the Arrow table: numeric columns
become numpy arrays and payloads stay in the raw column's buffer, addressed by (start, length).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .recording import Recording, kind_mask
from .tracefs import raw_buffers

SIDE_COLUMNS = {
    "lost": ["time", "cpu", "ring", "seq", "lost"],
    "comm": ["time", "pid", "tid", "comm"],
    "fork": ["time", "pid", "tid", "ppid", "ptid"],
    "ksym": ["addr", "name"],
    "stack": ["stack_id", "callchain"],
    "mmap": ["time", "pid", "tid", "addr", "len", "pgoff", "filename", "build_id"],
    "usym": ["filename", "build_id", "addr", "len", "name"],
}
SAMPLE_COLUMNS = ["time", "cpu", "ring", "seq", "pid", "tid", "event", "raw", "stack_id"]


@dataclass
class Samples:
    """Sample rows as columns; `event` as dictionary codes into `event_names`."""

    time: np.ndarray  # uint64
    cpu: np.ndarray  # uint32
    ring: np.ndarray  # uint32 (cpu where the recording has no ring)
    seq: np.ndarray  # uint64
    pid: np.ndarray  # int64
    tid: np.ndarray  # int64
    stack_id: np.ndarray  # int64, -1 = no callchain
    event: np.ndarray  # int32 code into event_names, -1 = null
    event_names: list[str]
    data: np.ndarray  # payload bytes (uint8)
    starts: np.ndarray  # int64 payload start in `data`, per sample
    lengths: np.ndarray  # int64 payload length, per sample

    def __len__(self) -> int:
        return len(self.time)


@dataclass
class Loaded:
    samples: Samples
    side: dict[str, pa.Table]


def _np(col: pa.ChunkedArray, dtype, fill: int = 0) -> np.ndarray:
    if col.null_count:
        col = col.cast(pa.int64()).fill_null(fill) if fill < 0 else col.fill_null(fill)
    return col.to_numpy().astype(dtype, copy=False)


def _codes(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Dictionary codes of a string column, unified over chunks."""
    names: list[str] = []
    out = []
    for chunk in col.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = pc.dictionary_encode(chunk)
        dic = chunk.dictionary.to_pylist()
        lut = np.empty(len(dic) + 1, np.int32)
        for i, d in enumerate(dic):
            if d not in names:
                names.append(d)
            lut[i] = names.index(d)
        lut[len(dic)] = -1
        out.append(lut[chunk.indices.fill_null(len(dic)).to_numpy(zero_copy_only=False)])
    return (np.concatenate(out) if out else np.zeros(0, np.int32)), names


def load(rec: Recording) -> Loaded:
    """One read of every column the analysis needs; split by kind."""
    cols = list(dict.fromkeys(["kind"] + SAMPLE_COLUMNS + [c for cs in SIDE_COLUMNS.values() for c in cs]))
    t = rec.table(columns=cols)
    is_sample = kind_mask(t.column("kind"), ["sample"]).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(is_sample)
    all_samples = len(rows) == t.num_rows

    def sample_col(name: str, dtype, fill: int = 0) -> np.ndarray:
        a = _np(t.column(name), dtype, fill)
        return a if all_samples else a[rows]

    cpu = sample_col("cpu", np.uint32)
    ring_col = t.column("ring")
    if ring_col.null_count == len(ring_col):
        ring = cpu
    else:
        ring_all = _np(ring_col, np.int64, -1)
        ring_s = ring_all if all_samples else ring_all[rows]
        ring = np.where(ring_s < 0, cpu, ring_s).astype(np.uint32)
    ev, names = _codes(t.column("event"))
    data, starts, lengths = raw_buffers(t.column("raw"))
    samples = Samples(
        time=sample_col("time", np.uint64), cpu=cpu, ring=ring, seq=sample_col("seq", np.uint64),
        pid=sample_col("pid", np.int64), tid=sample_col("tid", np.int64),
        stack_id=sample_col("stack_id", np.int64, -1),
        event=ev if all_samples else ev[rows], event_names=names, data=data,
        starts=starts if all_samples else starts[rows], lengths=lengths if all_samples else lengths[rows],
    )
    side: dict[str, pa.Table] = {}
    if not all_samples:
        rest = t.filter(pa.array(~is_sample))
        kinds = rest.column("kind")
        for kind, kcols in SIDE_COLUMNS.items():
            side[kind] = rest.select(kcols).filter(kind_mask(kinds, [kind]))
    else:
        for kind, kcols in SIDE_COLUMNS.items():
            side[kind] = t.select(kcols).slice(0, 0)
    return Loaded(samples=samples, side=side)
