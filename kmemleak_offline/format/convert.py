"""Raw recording (ring chunks) -> recording of event rows: what turns `record`'s bytes into rows.

Why here and vectorised: the conversion runs wherever it is cheapest (after the stop on the
target, or on the analysis machine: `convert`, or `analyze` transparently), always this code.
A window is the chunk rows of one row group (about a second of recording). Its chunks are whole
records (a drain never cuts one), so the window's bytes laid end to end are a record stream:
`chain.record_starts` finds every boundary with numpy. Samples are split in bulk: the fixed words
of every sample in one gather, the rows of one event together so that their payloads are copied
as one block (`gather.payload_bytes`), call chains deduplicated per depth (`stacks.StackTable`);
a record's seq comes from its chunk (chunks are whole records of one ring, in ring order). Only
LOST and side-band records (few) are walked.
What spans windows is carried: the next `seq` and expected byte offset of each ring, stack ids,
counts, the latest time.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kmemleak_offline.format.chain import ChainError, record_starts
from kmemleak_offline.format.chunks import RING_CHUNKS, ring_chunks_meta  # noqa: F401
from kmemleak_offline.format.gather import fixed_rows, groups, payload_bytes
from kmemleak_offline.format.recording import (
    KINDS,
    PART_KEY,
    SCHEMA,
    WRITE_OPTIONS,
    Recording,
    RecordingError,
    RecordingWriter,
    _arrow_schema_kv,
    _group_kind,
    const_column,
    kind_mask,
)
from kmemleak_offline.format.stacks import StackTable

CHUNK_COLUMNS = ["ring", "cpu", "offset", "raw"]

# perf record types and flags (linux/perf_event.h) the recorder's rings hold
RECORD_MMAP2, RECORD_LOST, RECORD_COMM, RECORD_EXIT, RECORD_FORK, RECORD_SAMPLE = 10, 2, 3, 4, 7, 9
MISC_COMM_EXEC = 1 << 13
MISC_MMAP_BUILD_ID = 1 << 14
# a sample of our attrs: header, id, {pid, tid}, time, {cpu, res}, then nr + call chain (if
# asked), then the raw payload (u32 size, bytes, padding to 8): 6 words at least
SAMPLE_WORDS = 6
SAMPLE_MIN = 8 * SAMPLE_WORDS
TRAILER = 32  # sample_id_all trailer of our attrs: {pid, tid} {time} {cpu, res} {identifier}

# the columns a sample row uses: samples are written without the others (the "lean" layout),
# which the final stitch adds as pages of nulls (format.stitch.Target)
LEAN = pa.schema([SCHEMA.field(c) for c in ("kind", "time", "cpu", "ring", "seq", "pid", "tid",
                                            "event", "raw", "stack_id")])

_SIDE = ("kind", "time", "cpu", "ring", "seq", "pid", "tid", "event", "lost", "comm", "exec",
         "ppid", "ptid", "addr", "len", "pgoff", "filename", "build_id")


class ConvertError(RecordingError):
    """Chunk bytes that cannot be records (a damaged raw recording). One line."""


def is_raw(rec: Recording) -> bool:
    """Does the recording hold ring chunks to convert?"""
    return RING_CHUNKS in rec.metadata


@dataclass
class ChunkConverter:
    """Feed the chunk rows of one window at a time (`add`), in recording order."""

    ids: dict[int, tuple[str | None, bool]]
    per_task: bool
    write: Callable[[Mapping[str, Any] | pa.Table], None]
    where: str = "recording"
    # sample rows as a table of the LEAN columns only (None: as a dict through `write`)
    write_samples: Callable[[pa.Table], None] | None = None
    seq: dict[int, int] = field(default_factory=dict)  # ring -> next seq
    next_offset: dict[int, int] = field(default_factory=dict)  # ring -> expected chunk offset
    stacks: StackTable = field(default_factory=StackTable)
    samples: dict[str, int] = field(default_factory=dict)
    lost_by_ring: dict[int, list[int]] = field(default_factory=dict)  # ring -> [cpu, records, lost]
    max_time: int = 0
    gaps: dict[int, int] = field(default_factory=dict)  # ring -> bytes missing between chunks
    events: int = 0  # samples written
    samples_too: bool = True  # False: only side-band records (mapped_files)
    mmap_names: set[str] = field(default_factory=set)  # files the MMAP2 records name
    nbytes: int = 0  # chunk bytes converted

    def __post_init__(self) -> None:
        order = sorted(self.ids)
        self._ids = np.array(order, np.uint64)
        self._names = sorted({n for n, _ in self.ids.values() if n})
        pos = {n: i for i, n in enumerate(self._names)}
        self._name_idx = np.array([pos.get(self.ids[i][0], -1) for i in order], np.int64)
        self._cc = np.array([self.ids[i][1] for i in order], bool)
        self._event_dict = pa.array(self._names, pa.string())

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], write: Callable, where: str) -> ChunkConverter:
        rc = meta.get(RING_CHUNKS)
        try:
            ids = {int(k): (v[0] if isinstance(v[0], str) else None, bool(v[1]))
                   for k, v in rc["ids"].items()}
            per_task = bool(rc.get("per_task"))
        except (TypeError, KeyError, ValueError, IndexError, AttributeError):
            raise ConvertError(f"{where}: recording metadata {RING_CHUNKS!r} is not an id table") from None
        return cls(ids, per_task, write, where)

    # ------------------------------------------------------------------------------ windows
    def add(self, chunks: pa.Table) -> None:
        """One window: chunk rows (ring, cpu, offset, raw) in the order they were drained."""
        col = chunks.column("raw")
        raw = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()  # no copy if one
        n = len(raw)
        if n == 0:
            return
        ring = chunks.column("ring").to_numpy(zero_copy_only=False).astype(np.int64)
        cpu = chunks.column("cpu").to_numpy(zero_copy_only=False).astype(np.int64)
        offset = chunks.column("offset").to_numpy(zero_copy_only=False).astype(np.int64)
        if raw.null_count or (ring < 0).any():
            raise ConvertError(f"{self.where}: a chunk row without bytes or ring")
        voffs = np.frombuffer(raw.buffers()[1], np.int32, n + 1, raw.offset * 4).astype(np.int64)
        lo, hi = int(voffs[0]), int(voffs[-1])
        data = np.frombuffer(raw.buffers()[2], np.uint8)[lo:hi] if hi > lo else np.zeros(0, np.uint8)
        starts = voffs[:-1] - lo
        self.nbytes += hi - lo
        if (lo & 7) or (starts & 7).any():  # records are u64-aligned within their chunks
            data = data.copy() if not (starts & 7).any() else None
            if data is None:
                raise ConvertError(f"{self.where}: a ring chunk of a size that is no multiple of 8")
        self._continuity(ring, offset, voffs[1:] - voffs[:-1])
        try:
            offs, ends, consumed = record_starts(data, len(data), self.where)
        except ChainError as exc:
            raise ConvertError(str(exc)) from None
        at = np.searchsorted(offs, starts)  # each chunk's first record
        if (consumed != len(data) or not len(offs)
                or (offs[at.clip(0, len(offs) - 1)] != starts).any()):
            raise ConvertError(f"{self.where}: ring chunks that are not whole records "
                               "(a damaged raw recording)")
        per_chunk = np.diff(np.r_[at, len(offs)])  # records of each chunk
        rings = np.repeat(ring, per_chunk)
        seqs = self._seqs(ring, at, per_chunk)
        typ = data.view(np.uint32)[offs >> 2]  # the header's u32 type
        is_sample = typ == RECORD_SAMPLE
        if self.samples_too and is_sample.any():
            s, k = self._by_event(data, offs, ends, is_sample)
            if len(s):
                self._samples(data, offs[s], ends[s], rings[s], seqs[s], k)
        other = np.flatnonzero(~is_sample)
        if len(other):
            chunk_of = np.searchsorted(starts, offs[other], side="right") - 1
            self._others(data, offs[other], ends[other], rings[other], cpu[chunk_of], seqs[other])

    def _continuity(self, ring: np.ndarray, offset: np.ndarray, lens: np.ndarray) -> None:
        """Chunks of a ring must follow each other; a gap (bytes a killed recorder never wrote)
        is counted per ring, an overlap or reversal is a damaged file."""
        for r, sel in groups(ring):
            o, ln = offset[sel], lens[sel]
            prev = np.r_[self.next_offset.get(r, int(o[0])), (o + ln)[:-1]]
            if (o < prev).any():
                raise ConvertError(f"{self.where}: ring {r}: chunks out of order or repeated")
            gap = int((o - prev).sum())
            if gap:
                self.gaps[r] = self.gaps.get(r, 0) + gap
            self.next_offset[r] = int(o[-1] + ln[-1])

    def _seqs(self, ring: np.ndarray, first: np.ndarray, count: np.ndarray) -> np.ndarray:
        """seq: every record's position in its ring (samples, LOST, side-band), across windows;
        chunk i holds records first[i] .. first[i] + count[i] of the window, all of ring[i]."""
        base = np.empty(len(ring), np.int64)  # seq of each chunk's first record
        for r, sel in groups(ring):  # chunks (few), in window order within a ring
            c = np.cumsum(count[sel])
            base[sel] = self.seq.get(r, 0) + c - count[sel]
            self.seq[r] = self.seq.get(r, 0) + int(c[-1])
        return (np.repeat(base - first, count) + np.arange(int(count.sum()))).astype(np.uint64)

    def _by_event(self, data: np.ndarray, offs: np.ndarray, ends: np.ndarray,
                  is_sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(records, their index in the id table): the window's samples of the events we opened
        (other ids: never expected, dropped), those of one event together, so that their
        payloads (one size per tracepoint) fill one block."""
        s = np.flatnonzero(is_sample)
        if (ends[s] - offs[s] < SAMPLE_MIN).any():
            raise ConvertError(f"{self.where}: a sample record too short for its fields")
        if not len(self._ids):
            return s[:0], s[:0]
        ident = data.view(np.uint64)[(offs[s] >> 3) + 1]
        k = np.searchsorted(self._ids, ident).clip(0, len(self._ids) - 1)
        name = np.where(self._ids[k] == ident, self._name_idx[k], -1)
        parts = [sel for v, sel in groups(name + 1) if v]
        o = np.concatenate(parts) if parts else s[:0]
        return s[o], k[o]

    def _samples(self, data: np.ndarray, offs: np.ndarray, ends: np.ndarray, rings: np.ndarray,
                 seqs: np.ndarray, k: np.ndarray) -> None:
        a8 = data.view(np.uint64)
        w = offs >> 3
        head = fixed_rows(a8, w, SAMPLE_WORDS)  # every sample's fixed words in one gather
        n = len(w)
        name_idx = self._name_idx[k]
        has_cc = self._cc[k]
        if has_cc.all():
            nr = head[:, 5].astype(np.int64)
            raw_word = w + 6 + nr
        else:
            nr = np.where(has_cc, head[:, 5], 0).astype(np.int64)
            raw_word = w + 5 + np.where(has_cc, 1 + nr, 0)
        if (raw_word * 8 + 4 > ends).any():
            raise ConvertError(f"{self.where}: a sample whose call chain runs past its record")
        raw_len = data.view(np.uint32)[raw_word * 2].astype(np.int64)
        time = np.ascontiguousarray(head[:, 3])
        self.max_time = max(self.max_time, int(time.max()))
        raw_start = raw_word * 8 + 4
        if (raw_start + raw_len > ends).any():
            raise ConvertError(f"{self.where}: a sample whose payload runs past its record")
        flat, poffs = payload_bytes(data, raw_start, raw_len)
        if poffs[-1] >= 1 << 31:
            raise ConvertError(f"{self.where}: a window of more than 2 GB of payloads")
        raw = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(poffs.astype(np.int32)),
                                                     pa.py_buffer(flat)])
        sid, new_stacks = self.stacks.assign(data, (w + 6) * 8, nr)
        counts = np.bincount(name_idx, minlength=len(self._names))
        for i, c in enumerate(counts.tolist()):
            if c:
                self.samples[self._names[i]] = self.samples.get(self._names[i], 0) + c
        self.events += n
        h4 = head.view(np.uint32)  # (n, 12): pid, tid in u32 4, 5; cpu in 8
        cols = {
            "kind": const_column("sample", n),
            "time": pa.array(time, pa.uint64()),
            "cpu": pa.array(np.ascontiguousarray(h4[:, 8]), pa.uint32()),
            "ring": (pa.array(rings.astype(np.uint32), pa.uint32()) if self.per_task
                     else pa.nulls(n, pa.uint32())),
            "seq": pa.array(seqs, pa.uint64()),
            "pid": pa.array(np.ascontiguousarray(h4[:, 4]).view(np.int32), pa.int32()),
            "tid": pa.array(np.ascontiguousarray(h4[:, 5]).view(np.int32), pa.int32()),
            "event": pa.DictionaryArray.from_arrays(pa.array(name_idx.astype(np.int32)), self._event_dict),
            "raw": raw,
            "stack_id": pa.array(sid, pa.uint32(), mask=nr == 0),
        }
        if self.write_samples is not None:
            self.write_samples(pa.Table.from_arrays(list(cols.values()), schema=LEAN))
        else:
            self.write(cols)
        if new_stacks:
            self.write(new_stacks)

    def _others(self, data: np.ndarray, offs: np.ndarray, ends: np.ndarray, rings: np.ndarray,
                cpus: np.ndarray, seqs: np.ndarray) -> None:
        """LOST and side-band records: few, so a loop over them is fine."""
        rows: dict[str, list] = {c: [] for c in _SIDE}
        a8 = data.view(np.uint64)
        buf = data.tobytes() if len(offs) > 64 else None  # many: one copy, then slices of bytes
        def raw_bytes(a: int, b: int) -> bytes:
            return buf[a:b] if buf is not None else data[a:b].tobytes()

        def add(**kw: Any) -> None:
            for c, v in rows.items():
                v.append(kw.get(c))

        for off, end, ring, cpu, seq in zip(offs.tolist(), ends.tolist(), rings.tolist(),
                                            cpus.tolist(), seqs.tolist(), strict=True):
            h = int(a8[off >> 3])
            rtype, misc = h & 0xFFFFFFFF, (h >> 32) & 0xFFFF
            if end - off < 8 + TRAILER:
                continue
            time = int(a8[(end >> 3) - 3])
            w = off >> 3
            if rtype == RECORD_LOST:
                # The ring's losses: event stays null, the record's id only names the next event
                # to write (per event: the kernel's PERF_FORMAT_LOST counts).
                n_lost = int(a8[w + 2])
                r = self.lost_by_ring.setdefault(ring, [cpu, 0, 0])
                r[1] += 1
                r[2] += n_lost
                add(kind="lost", time=time, cpu=cpu, ring=ring if self.per_task else None, seq=seq,
                    lost=n_lost)
            elif rtype == RECORD_COMM:
                pid, tid = data[off + 8:off + 16].view(np.int32).tolist()
                comm = raw_bytes(off + 16, end - TRAILER).split(b"\0", 1)[0]
                add(kind="comm", time=time, seq=seq, pid=pid, tid=tid,
                    comm=comm.decode(errors="replace"), exec=bool(misc & MISC_COMM_EXEC))
            elif rtype in (RECORD_FORK, RECORD_EXIT):
                pid, ppid, tid, ptid = data[off + 8:off + 24].view(np.int32).tolist()
                time = int(a8[w + 3])
                add(kind="fork" if rtype == RECORD_FORK else "exit", time=time, seq=seq, pid=pid,
                    tid=tid, ppid=ppid, ptid=ptid)
            elif rtype == RECORD_MMAP2:
                pid, tid = data[off + 8:off + 16].view(np.int32).tolist()
                build_id = None
                if misc & MISC_MMAP_BUILD_ID:
                    bsize = int(data[off + 40])
                    build_id = raw_bytes(off + 44, off + 44 + min(bsize, 20))
                name = raw_bytes(off + 72, end - TRAILER).split(b"\0", 1)[0].decode(errors="replace")
                self.mmap_names.add(name)
                add(kind="mmap", time=time, seq=seq, pid=pid, tid=tid, addr=int(a8[w + 2]),
                    len=int(a8[w + 3]), pgoff=int(a8[w + 4]), filename=name, build_id=build_id)
            else:
                continue
            self.max_time = max(self.max_time, time)
        if rows["kind"]:
            self.write(rows)

    # ------------------------------------------------------------------------------ metadata
    def finish_metadata(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The converted recording's metadata: exact sample counts, the LOST records per ring, a
        stop time no older than the last record, no chunk table."""
        meta = json.loads(json.dumps(meta))
        meta.pop(RING_CHUNKS, None)
        for name, c in meta.get("counts", {}).items():
            c["samples"] = self.samples.get(name, 0)
        meta["lost_by_ring"] = [{"ring": r, "cpu": cpu, "lost_records": n, "lost": lost}
                                for r, (cpu, n, lost) in sorted(self.lost_by_ring.items())]
        clock = meta.setdefault("clock", {})
        clock["stop_ns"] = max(int(clock.get("stop_ns") or 0), self.max_time)
        if self.gaps:
            meta["chunk_gaps"] = [{"ring": r, "bytes": b} for r, b in sorted(self.gaps.items())]
        return meta


@dataclass
class Converted:
    path: Path
    events: int
    chunk_bytes: int
    gaps: dict[int, int]


def chunk_groups(path: Path) -> tuple[pq.ParquetFile, list[int], list[int], list[int]]:
    """(file, row groups of chunk rows only, of other rows only, mixed), by `kind` statistics, or
    by the `kind` column where they do not settle it."""
    pf = pq.ParquetFile(path)
    md = pf.metadata
    col = next((j for j in range(md.num_columns) if md.schema.column(j).path == "kind"), None)
    chunk, other, mixed = [], [], []
    for g in range(md.num_row_groups):
        if md.row_group(g).num_rows == 0:
            continue
        k = _group_kind(md.row_group(g), col)
        if k is None:
            m = kind_mask(pf.read_row_group(g, columns=["kind"]).column("kind"), ["chunk"])
            m = m.to_numpy(zero_copy_only=False)
            k = "chunk" if m.all() else None if m.any() else "other"
        (chunk if k == "chunk" else mixed if k is None else other).append(g)
    return pf, chunk, other, mixed


def skip_pandas_probe() -> None:
    """pyarrow imports pandas (0.3 CPU s, more on a busy box) the first time it turns Python
    objects into an array, only to see whether they are pandas objects. A process that never uses
    pandas (the recorder's converter, `convert`) lets that probe fail once; pyarrow remembers."""
    import sys

    if "pandas" in sys.modules:
        return

    class NoPandas:
        @staticmethod
        def find_spec(name: str, *_args: Any) -> None:
            if name.split(".")[0] == "pandas":
                raise ImportError("not in this process")

    sys.meta_path.insert(0, NoPandas)  # type: ignore[arg-type]
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(NoPandas)  # type: ignore[arg-type]


def chunk_bytes(rec: Recording) -> int:
    """Bytes of ring chunks a recording holds, from its Parquet metadata (nothing decoded)."""
    total = 0
    for f in rec.files:
        pf, groups_, _, mixed = chunk_groups(f)
        groups_ = groups_ + mixed
        md = pf.metadata
        col = next((j for j in range(md.num_columns) if md.schema.column(j).path == "raw"), None)
        if col is not None:
            total += sum(md.row_group(g).column(col).total_uncompressed_size for g in groups_)
    return total


def _chunk_windows(rec: Recording, conv: ChunkConverter,
                   other: Callable[[Path, list[int], pa.Table | None], None]) -> None:
    """Feed `conv` every chunk row group of `rec` in order; hand the other rows to `other`: as
    (file, row groups, None) where whole row groups hold them, else as (file, [], rows)."""
    for f in rec.files:
        try:
            pf, chunk, rest, mixed = chunk_groups(f)
            for g in sorted(chunk + mixed):
                t = pf.read_row_group(g, columns=["kind", *CHUNK_COLUMNS])
                m = kind_mask(t.column("kind"), ["chunk"])
                if g in mixed:
                    t = t.filter(m)
                conv.where = f"{f} (row group {g})"
                conv.add(t)
            if rest:
                other(f, rest, None)
            if mixed:
                t = pf.read_row_groups(mixed)
                other(f, [], t.filter(kind_mask(t.column("kind"), [k for k in KINDS if k != "chunk"])))
        except (OSError, pa.ArrowException) as exc:
            raise RecordingError(f"{f}: cannot read recording data ({str(exc).strip()[:160]}); "
                                 "the file is truncated or corrupt") from None


def _mmap_names(t: pa.Table) -> set[str]:
    from kmemleak_offline.format.recording import kind_mask

    if "filename" not in t.column_names:
        return set()
    names = t.filter(kind_mask(t.column("kind"), ["mmap"])).column("filename").unique().to_pylist()
    return {n for n in names if n}


class _Output:
    """Where converted rows go: samples to a lean Parquet file (the sample columns only), every
    other row to a recording file; `finish` stitches both, and whole row groups of the source's
    other rows (kallsyms, initial state, symbols: copied, not decoded again), into `out`."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out = out
        self.samples_path = out.with_name(out.name + ".samples")
        self.side = RecordingWriter(out.with_name(out.name + ".side"), meta)
        opts = {k: [c for c in v if c in LEAN.names] for k, v in WRITE_OPTIONS.items()
                if isinstance(v, list)}
        opts["column_encoding"] = {c: e for c, e in WRITE_OPTIONS["column_encoding"].items()
                                   if c in LEAN.names}
        opts["write_page_checksum"] = WRITE_OPTIONS["write_page_checksum"]  # CRC-32 per page
        self.samples = pq.ParquetWriter(self.samples_path, LEAN, compression="zstd", **opts)
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.pieces: list = []

    def write(self, item: tuple[str, Any]) -> None:
        tag, rows = item
        if tag == "side":
            self.side.write(rows)
            return
        self.pending.append(rows)
        self.pending_rows += rows.num_rows
        if self.pending_rows >= self.side.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.samples.write_table(pa.concat_tables(self.pending), row_group_size=self.side.row_group_rows)
        self.pending, self.pending_rows = [], 0

    def finish(self, meta: dict[str, Any]) -> None:
        from kmemleak_offline.format.integrity import seal
        from kmemleak_offline.format.stitch import Target, stitch_files

        self._flush()
        self.samples.close()
        self.side.metadata = meta
        side = self.side.close()
        stitch_files([self.samples_path, *self.pieces, side], self.out, _arrow_schema_kv(meta),
                     target=Target.of(side), drop_keys=[PART_KEY], seal=seal)
        self.cleanup()

    def cleanup(self) -> None:
        if not self.side.closed:
            self.side.abort()
        with contextlib.suppress(Exception):
            self.samples.close()
        for p in (self.samples_path, self.side.path):
            p.unlink(missing_ok=True)


def convert_recording(rec: Recording, out: Path,
                      extra_rows: Callable[[set[str]], list] | None = None) -> Converted:
    """Write `out` (one file, via a temporary name) holding `rec`'s rows with its chunk rows
    converted into event rows. `rec` may be a file or a parts folder. `extra_rows`, given the files
    the recording saw mapped, returns rows to add (the recorder's embedded symbols)."""
    from kmemleak_offline.format.background import BackgroundWriter
    from kmemleak_offline.format.stitch import Piece

    meta = dict(rec.metadata)
    tmp = out.with_name(out.name + ".converting")
    output = _Output(tmp, meta)
    bw = BackgroundWriter(output)  # Parquet encoding overlaps the split of the next window
    conv = ChunkConverter.from_metadata(meta, lambda rows: bw.write(("side", rows)), str(rec.path))
    conv.write_samples = lambda t: bw.write(("samples", t))
    names: set[str] = set()

    def other(f: Path, groups_: list[int], rows: pa.Table | None) -> None:
        if rows is None:
            output.pieces.append(Piece(f, groups_))
            t = pq.ParquetFile(f).read_row_groups(groups_, columns=["kind", "filename"])
        else:
            t = rows
            bw.write(("side", rows))
        names.update(_mmap_names(t))

    try:
        try:
            _chunk_windows(rec, conv, other)
            if extra_rows is not None:
                for rows in extra_rows(names | conv.mmap_names):
                    bw.write(("side", rows))
        finally:
            bw.join()
        output.finish(conv.finish_metadata(meta))
        os.replace(tmp, out)
    except BaseException:
        output.cleanup()
        tmp.unlink(missing_ok=True)
        raise
    return Converted(out, conv.events, conv.nbytes, dict(conv.gaps))


def mapped_files(rec: Recording) -> set[str]:
    """Files the recording saw mapped (initial state and MMAP2 records), without converting."""
    conv = ChunkConverter.from_metadata(rec.metadata, lambda _rows: None, str(rec.path))
    conv.samples_too = False
    names: set[str] = set()
    def other(f: Path, groups_: list[int], rows: pa.Table | None) -> None:
        t = rows if rows is not None else pq.ParquetFile(f).read_row_groups(groups_, columns=["kind", "filename"])
        names.update(_mmap_names(t))

    _chunk_windows(rec, conv, other)
    return names | conv.mmap_names
