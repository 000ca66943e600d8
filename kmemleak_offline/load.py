"""Load: read a recording once into sample columns (numpy) and small side-band tables.

Samples are most of the rows, so they are never copied out of the Arrow table: numeric columns
become numpy arrays and payloads stay in the raw column's buffer, addressed by (start, length).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .format.recording import Recording, kind_mask
from .format.tracefs import EventFormat, decode_rows, raw_buffers

SIDE_COLUMNS = {
    "lost": ["time", "cpu", "ring", "seq", "lost"],
    "comm": ["time", "seq", "pid", "tid", "comm", "exec"],
    "fork": ["time", "seq", "pid", "tid", "ppid", "ptid"],
    "exit": ["time", "seq", "pid", "tid", "ppid", "ptid"],
    "ksym": ["addr", "name"],
    "stack": ["stack_id", "callchain"],
    "mmap": ["time", "seq", "pid", "tid", "addr", "len", "pgoff", "filename", "build_id"],
    "usym": ["filename", "build_id", "addr", "len", "pgoff", "name"],
}
SAMPLE_COLUMNS = ["time", "cpu", "ring", "seq", "pid", "tid", "event", "raw", "stack_id"]


RING_ID_LIMIT = 1 << 16  # replay.ring_seq_key keeps the ring in 16 bits
# Values no kernel produces (docs/behaviour.md, "Values the kernel cannot produce"): samples
# holding them are left out of the replay and counted in a warning, never summed silently.
SIZE_LIMIT = 1 << 47  # 128 TiB: x86-64's user address space (4-level paging), more than any RAM
TIME_SLACK_NS = 10 * 1_000_000_000  # recordings of older versions: see time_limit


def time_limit(rec: Recording) -> int | None:
    """The latest plausible sample time of a recording (None: its stop is unknown). Writers of
    this version never write a stop older than the last record; older recorders' last metadata
    could predate their last segment by about a second, so theirs get 10 s of slack."""
    from .format.integrity import claims

    stop = rec.meta.clock.stop_ns
    if not stop:
        return None
    return stop if claims(rec.metadata) else stop + TIME_SLACK_NS


@dataclass
class Samples:
    """Sample rows as columns; `event` as dictionary codes into `event_names`.

    Payloads stay in the Arrow chunks they were read into (one per row group: concatenating them
    would copy every payload byte); `decode` reads fields of any rows straight from those chunks.
    """

    time: np.ndarray  # uint64
    cpu: np.ndarray  # uint32
    ring: np.ndarray  # uint32 (cpu where the recording has no ring)
    seq: np.ndarray  # uint64
    pid: np.ndarray  # int32 (tgid)
    tid: np.ndarray  # int32
    stack_id: np.ndarray  # int64, -1 = no callchain
    event: np.ndarray  # int32 code into event_names, -1 = null
    event_names: list[str]
    raw: list[pa.Array] = field(default_factory=list)  # payload chunks, in row order
    # rings are identified by small numbers (orderings key on (ring, seq) in 64 bits); a writer's
    # large ring ids are renumbered: ring_ids[i] is the recording's id of ring i (None: as is)
    ring_ids: np.ndarray | None = None
    # (event, "time") -> rows timed implausibly late: their time was set to 0 (ordered where they
    # lie in their ring) and their event to -1 (not replayed)
    implausible: dict[tuple[str, str], int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.time)

    def ring_of(self, ids: np.ndarray) -> np.ndarray:
        """The ring numbers used here for ring ids as the recording writes them (e.g. lost rows)."""
        ids = np.asarray(ids)
        if self.ring_ids is None:
            return ids.astype(np.uint32)
        return np.searchsorted(self.ring_ids, ids.astype(np.uint64)).astype(np.uint32)

    @functools.cached_property
    def _chunks(self) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        """(first row of each chunk + total, [(data, starts, lengths) per chunk])."""
        bufs = [raw_buffers(c) for c in self.raw]
        first = np.zeros(len(bufs) + 1, np.int64)
        np.cumsum([len(b[1]) for b in bufs], out=first[1:])
        return first, bufs

    def payload_lengths(self, rows: np.ndarray) -> np.ndarray:
        """Bytes of payload of the given sample rows."""
        _, bufs = self._chunks
        if not bufs:
            return np.zeros(len(rows), np.int64)
        return np.concatenate([b[2] for b in bufs])[rows]

    def decode(self, fmt: EventFormat, rows: np.ndarray,
               fields: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """`tracefs.decode_rows` of the given sample rows (any order), chunk by chunk."""
        first, bufs = self._chunks
        if len(bufs) <= 1 or not len(rows):
            empty = (np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))
            data, starts, lengths = bufs[0] if bufs else empty
            return decode_rows(fmt, data, starts[rows], lengths[rows], fields=fields)
        if np.all(rows[1:] >= rows[:-1]):  # sorted: each chunk's rows are one slice
            cut = np.searchsorted(rows, first)
            sels = [slice(cut[c], cut[c + 1]) if cut[c + 1] > cut[c] else None for c in range(len(bufs))]
        else:
            cid = np.searchsorted(first[1:-1], rows, side="right")
            sels = [np.flatnonzero(cid == c) if k else None
                    for c, k in enumerate(np.bincount(cid, minlength=len(bufs)).tolist())]
        out: dict[str, np.ndarray] = {}
        for c, sel in enumerate(sels):
            if sel is None:
                continue
            data, starts, lengths = bufs[c]
            sub = rows[sel] - first[c]
            for k, v in decode_rows(fmt, data, starts[sub], lengths[sub], fields=fields).items():
                have = out.get(k)
                if have is None:
                    out[k] = have = np.zeros(len(rows), v.dtype)
                elif v.dtype.kind == "S" and v.dtype.itemsize > have.dtype.itemsize:
                    out[k] = have = have.astype(v.dtype)  # a longer string in this chunk
                have[sel] = v
        return out


@dataclass
class Loaded:
    samples: Samples
    side: dict[str, pa.Table]


def column_array(col: pa.ChunkedArray | pa.Array, dtype, fill: int = 0) -> np.ndarray:
    """An Arrow column as numpy `dtype`, nulls as `fill` (a negative fill works on unsigned columns)."""
    if col.null_count:
        chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
        if all(pa.types.is_integer(c.type) for c in chunks):
            return _ints_filled(chunks, len(col), np.dtype(dtype), fill)
        col = col.cast(pa.int64()).fill_null(fill) if fill < 0 else col.fill_null(fill)
    return col.to_numpy().astype(dtype, copy=False)


def _ints_filled(chunks: list[pa.Array], n: int, dtype: np.dtype, fill: int) -> np.ndarray:
    """Integer chunks with nulls straight into one numpy array: values from each chunk's buffer,
    then `fill` where its validity bitmap says null (one pass over the output, no Arrow casts)."""
    out = np.empty(n, dtype)
    fill_v = np.array(fill, np.int64).astype(dtype)  # -1 -> all ones for unsigned dtypes
    pos = 0
    for c in chunks:
        m, off = len(c), c.offset
        if m == 0:
            continue
        validity, data = c.buffers()[:2]
        out[pos:pos + m] = np.frombuffer(data, c.type.to_pandas_dtype(), count=off + m)[off:]
        if c.null_count:
            bits = np.unpackbits(np.frombuffer(validity, np.uint8), count=off + m, bitorder="little")
            out[pos:pos + m][bits[off:] == 0] = fill_v
        pos += m
    return out


def _codes(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Dictionary codes of a string column, unified over chunks."""
    names: list[str] = []
    out = np.empty(len(col), np.int32)
    pos = 0
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
        ind = chunk.indices
        ind = (ind.fill_null(len(dic)) if ind.null_count else ind).to_numpy(zero_copy_only=False)
        np.take(lut, ind, out=out[pos:pos + len(ind)])
        pos += len(ind)
    return out, names


def ring_ids(table: pa.Table) -> np.ndarray:
    """The ring of each row as the recording names it: `ring`, or the CPU where it is null."""
    ring = table.column("ring")
    if not ring.null_count:
        return column_array(ring, np.int64)
    cpu = column_array(table.column("cpu"), np.int64)
    if ring.null_count == len(ring):
        return cpu
    r = column_array(ring, np.int64, -1)
    return np.where(r < 0, cpu, r)


def samples_from_table(t: pa.Table, latest: int | None = None) -> Samples:
    """Sample columns of a table of sample rows (SAMPLE_COLUMNS), rings as the recording names them.
    Rows timed after `latest` (time_limit) are set aside: see Samples.implausible."""
    ev, names = _codes(t.column("event"))
    sm = Samples(
        time=column_array(t.column("time"), np.uint64), cpu=column_array(t.column("cpu"), np.uint32),
        ring=ring_ids(t).astype(np.uint32), seq=column_array(t.column("seq"), np.uint64),
        pid=column_array(t.column("pid"), np.int32), tid=column_array(t.column("tid"), np.int32),
        stack_id=column_array(t.column("stack_id"), np.int64, -1), event=ev, event_names=names,
        raw=list(t.column("raw").chunks),
    )
    if latest is not None and len(sm.time):
        bad = sm.time > np.uint64(latest)
        if bad.any():
            codes = sm.event[bad]
            for code, cnt in zip(*np.unique(codes, return_counts=True)):
                name = names[code] if code >= 0 else "(no event)"
                sm.implausible[(name, "time")] = int(cnt)
            sm.time = sm.time.copy()
            sm.time[bad] = 0
            sm.event = sm.event.copy()
            sm.event[bad] = -1
    return sm


def load_side(rec: Recording) -> dict[str, pa.Table]:
    """The side-band rows by kind (readers skip the sample row groups)."""
    cols = list(dict.fromkeys(["kind"] + [c for cs in SIDE_COLUMNS.values() for c in cs]))
    rest = rec.table(kinds=list(SIDE_COLUMNS), columns=cols)
    kinds = rest.column("kind")
    return {kind: rest.select(kcols).filter(kind_mask(kinds, [kind]))
            for kind, kcols in SIDE_COLUMNS.items()}


def load(rec: Recording, side: dict[str, pa.Table] | None = None) -> Loaded:
    """Sample columns, then the side-band rows (readers skip the row groups of the other)."""
    t = rec.table(kinds=["sample"], columns=SAMPLE_COLUMNS)
    samples = samples_from_table(t, time_limit(rec))
    del t
    # Arrow's allocator keeps the pages it decompressed and concatenated into (here about as much
    # as the table itself) for reuse; nothing Arrow reads later needs them: give them back
    pa.default_memory_pool().release_unused()
    side = load_side(rec) if side is None else side
    ring = samples.ring
    if len(ring) and int(ring.max()) >= RING_ID_LIMIT:
        every = np.concatenate([ring, ring_ids(side["lost"])]).astype(np.uint64)
        samples.ring_ids = np.unique(every)
        samples.ring = samples.ring_of(ring)
    return Loaded(samples=samples, side=side)
