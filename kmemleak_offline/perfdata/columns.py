"""Records of a window -> columns: samples (per attr layout) and side-band (per record type).

Why: one numpy gather per field over all the records of a kind, never a Python step per record.
Every function takes the window's buffer and record offsets; the attrs (`Attr`, from the file
header or from pipe-mode HEADER_ATTR records) say each sample's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..format.gather import ragged
from .errors import PerfDataError
from .reader import (
    MISC_COMM_EXEC,
    MISC_MMAP_BUILD_ID,
    PERF_TYPE_TRACEPOINT,
    R_GROUP,
    R_ID,
    R_LOST,
    R_TIME_ENABLED,
    R_TIME_RUNNING,
    REC_COMM,
    REC_EXIT,
    REC_FORK,
    REC_LOST,
    REC_MMAP,
    REC_MMAP2,
    S_ADDR,
    S_CALLCHAIN,
    S_CPU,
    S_ID,
    S_IDENTIFIER,
    S_IP,
    S_PERIOD,
    S_RAW,
    S_READ,
    S_STREAM_ID,
    S_TID,
    S_TIME,
    Attr,
    PerfData,
)


def read_at(buf: np.ndarray, pos: np.ndarray, dtype: str) -> np.ndarray:
    """One little-endian integer at each byte position (unaligned strided view, one gather)."""
    dt = np.dtype(dtype)
    if len(pos) == 0:
        return np.zeros(0, dt.newbyteorder("="))
    view = np.ndarray(shape=(len(buf) - dt.itemsize + 1,), dtype=dt, buffer=buf, strides=(1,))
    return view[pos].astype(dt.newbyteorder("="), copy=False)


def large_binary(flat: np.ndarray, offsets: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1, [None, pa.py_buffer(offsets.astype(np.int64)),
                                                          pa.py_buffer(flat.tobytes())])


def _cstrings(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """NUL-terminated strings in [starts, ends) of each record -> Arrow string array (vectorised)."""
    n = len(starts)
    if n == 0:
        return pa.array([], pa.string())
    lens = np.maximum(ends - starts, 0)
    flat, offs = ragged(buf, starts, lens)
    pos = np.where(flat == 0, np.arange(len(flat)), len(flat))
    first = np.full(n, len(flat), np.int64)
    nz = lens > 0
    if len(flat):
        first[nz] = np.minimum.reduceat(pos, offs[:-1][nz])
    slen = np.minimum(first, offs[1:]) - offs[:-1]
    sflat, soffs = ragged(flat, offs[:-1], np.maximum(slen, 0))
    arr = large_binary(sflat, soffs)
    return pc.cast(arr, pa.large_string(), safe=False).cast(pa.string())


@dataclass
class Trailer:
    """sample_id_all trailer fields of non-sample records (None where not recorded)."""

    pid: np.ndarray | None
    tid: np.ndarray | None
    time: np.ndarray | None
    cpu: np.ndarray | None
    id: np.ndarray | None


def _trailer(buf: np.ndarray, ends: np.ndarray, attr: Attr) -> Trailer:
    p = ends - attr.trailer_size
    st = attr.sample_type
    if not attr.sample_id_all:
        return Trailer(None, None, None, None, None)
    out: dict[str, np.ndarray | None] = dict.fromkeys(("pid", "tid", "time", "cpu", "id"))
    if st & S_TID:
        out["pid"], out["tid"] = read_at(buf, p, "<i4"), read_at(buf, p + 4, "<i4")
        p = p + 8
    if st & S_TIME:
        out["time"] = read_at(buf, p, "<u8")
        p = p + 8
    if st & S_ID:
        out["id"] = read_at(buf, p, "<u8")
        p = p + 8
    if st & S_STREAM_ID:
        p = p + 8
    if st & S_CPU:
        out["cpu"] = read_at(buf, p, "<u4")
        p = p + 8
    if st & S_IDENTIFIER:
        out["id"] = read_at(buf, p, "<u8")
    return Trailer(**out)


def _read_size(rfmt: int) -> int:
    if rfmt & R_GROUP:
        raise PerfDataError("samples with PERF_SAMPLE_READ of event groups are not supported")
    return 8 * (1 + sum(1 for b in (R_TIME_ENABLED, R_TIME_RUNNING, R_ID, R_LOST) if rfmt & b))


def _id_pos(attr: Attr) -> int | None:
    """Byte offset of the sample id inside a SAMPLE record, as perf's evsel id_pos."""
    st = attr.sample_type
    if st & S_IDENTIFIER:
        return 8
    if not st & S_ID:
        return None
    return 8 + 8 * sum(1 for b in (S_IP, S_TID, S_TIME, S_ADDR) if st & b)


def _attr_of(pd_: PerfData, ids: np.ndarray) -> np.ndarray:
    """Attr index for each sample id (-1 if unknown)."""
    keys = np.array([i for a in pd_.attrs for i in a.ids], np.uint64)
    vals = np.array([a.index for a in pd_.attrs for _ in a.ids], np.int64)
    if not len(keys):
        return np.full(len(ids), -1, np.int64)
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    k = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
    return np.where(keys[k] == ids, vals[k], -1)


def which_attr(pd_: PerfData, buf: np.ndarray, offs: np.ndarray, ends: np.ndarray, sample: bool) -> np.ndarray:
    """Attr index per record: by the sample id (sample records) or the trailer id (others)."""
    if len(pd_.attrs) == 1:
        return np.zeros(len(offs), np.int64)
    if sample:
        pos = {_id_pos(a) for a in pd_.attrs}
        if len(pos) != 1 or None in pos:
            raise PerfDataError(f"{pd_.path}: events with different sample layouts and no sample id")
        return _attr_of(pd_, read_at(buf, offs + pos.pop(), "<u8"))
    a0 = pd_.attrs[0]
    if not a0.sample_id_all or not a0.sample_type & (S_ID | S_IDENTIFIER):
        return np.zeros(len(offs), np.int64)
    t = _trailer(buf, ends, a0)
    return _attr_of(pd_, t.id) if t.id is not None else np.zeros(len(offs), np.int64)


def sample_columns(pd_: PerfData, buf: np.ndarray, offs: np.ndarray, ends: np.ndarray) -> tuple[dict[str, Any], np.ndarray, int]:
    """SAMPLE records -> sample columns (+ where call chains and payloads are), records without
    RAW skipped: (columns, record index of each, samples skipped)."""
    attr_idx = which_attr(pd_, buf, offs, ends, sample=True)
    parts: list[dict[str, Any]] = []
    skipped = 0
    for a in pd_.attrs:
        sel = np.flatnonzero(attr_idx == a.index)
        if not len(sel):
            continue
        st = a.sample_type
        if not st & S_RAW or a.name is None or a.type != PERF_TYPE_TRACEPOINT:
            skipped += len(sel)
            continue
        o = offs[sel]
        p = 8 + 8 * sum(1 for b in (S_IDENTIFIER, S_IP) if st & b)
        cols: dict[str, Any] = {"rec": sel}
        if st & S_TID:
            cols["pid"], cols["tid"] = read_at(buf, o + p, "<i4"), read_at(buf, o + p + 4, "<i4")
            p += 8
        if not st & S_TIME:
            raise PerfDataError(f"{pd_.path}: {a.name} samples carry no timestamps (PERF_SAMPLE_TIME)")
        cols["time"] = read_at(buf, o + p, "<u8")
        p += 8
        p += 8 * sum(1 for b in (S_ADDR, S_ID, S_STREAM_ID) if st & b)
        if st & S_CPU:
            cols["cpu"] = read_at(buf, o + p, "<u4")
            p += 8
        if st & S_PERIOD:
            p += 8
        if st & S_READ:
            p += _read_size(a.read_format)
        pos = o + p
        if st & S_CALLCHAIN:
            nr = read_at(buf, pos, "<u8").astype(np.int64)
            if (pos + 8 + 8 * nr > ends[sel]).any():
                raise PerfDataError(f"{pd_.path}: corrupt sample: call chain runs past its record")
            cols["cc_start"], cols["cc_nr"] = pos + 8, nr
            pos = pos + 8 + 8 * nr
        rsz = read_at(buf, pos, "<u4").astype(np.int64)
        if (pos + 4 + rsz > ends[sel]).any():
            raise PerfDataError(f"{pd_.path}: corrupt sample: raw payload runs past its record")
        cols["raw_start"], cols["raw_len"] = pos + 4, rsz
        cols["attr"] = np.full(len(sel), a.index, np.int64)
        parts.append(cols)
    if not parts:
        return {}, np.zeros(0, np.int64), skipped
    keep = np.zeros(len(offs), bool)  # samples kept, in file order: each part scattered into place
    for c in parts:
        keep[c["rec"]] = True
    rank = np.cumsum(keep) - 1
    n = int(rank[-1]) + 1
    out: dict[str, Any] = {}
    for k in ("rec", "attr", "pid", "tid", "time", "cpu", "raw_start", "raw_len", "cc_start", "cc_nr"):
        if any(k in c for c in parts):
            out[k] = np.full(n, -1 if k in ("cpu", "cc_start") else 0, np.int64)
            for c in parts:
                if k in c:
                    out[k][rank[c["rec"]]] = c[k]
    return out, out["rec"], skipped


def side_columns(pd_: PerfData, buf: np.ndarray, offs: np.ndarray, ends: np.ndarray, types: np.ndarray,
                 misc: np.ndarray) -> dict[int, dict[str, Any]]:
    """COMM/MMAP/MMAP2/FORK/EXIT/LOST records -> columns, per record type."""
    bids = pd_.build_ids
    out: dict[int, dict[str, Any]] = {}
    for typ in (REC_COMM, REC_MMAP, REC_MMAP2, REC_FORK, REC_EXIT, REC_LOST):
        sel = np.flatnonzero(types == typ)
        if not len(sel):
            continue
        o, e = offs[sel], ends[sel]
        aidx = which_attr(pd_, buf, o, e, sample=False)
        tr_size = np.array([a.trailer_size for a in pd_.attrs] + [pd_.attrs[0].trailer_size])[aidx]
        t_end = e - tr_size
        cols: dict[str, Any] = {"rec": sel, "time": None, "cpu": None}
        for a in pd_.attrs:  # trailer fields per attr layout
            m = np.flatnonzero((aidx == a.index) | ((aidx < 0) & (a.index == 0)))
            if not len(m):
                continue
            t = _trailer(buf, e[m], a)
            for k in ("time", "cpu"):
                v = getattr(t, k)
                if v is not None:
                    if cols[k] is None:
                        cols[k] = np.full(len(sel), -1, np.int64)
                    cols[k][m] = v.astype(np.int64)
        if typ == REC_COMM:
            cols |= {"pid": read_at(buf, o + 8, "<i4"), "tid": read_at(buf, o + 12, "<i4"),
                     "comm": _cstrings(buf, o + 16, t_end), "exec": (misc[sel] & MISC_COMM_EXEC) != 0}
        elif typ in (REC_MMAP, REC_MMAP2):
            name_at = 40 if typ == REC_MMAP else 72
            fn = _cstrings(buf, o + name_at, t_end)
            cols |= {"pid": read_at(buf, o + 8, "<i4"), "tid": read_at(buf, o + 12, "<i4"),
                     "addr": read_at(buf, o + 16, "<u8"), "len": read_at(buf, o + 24, "<u8"),
                     "pgoff": read_at(buf, o + 32, "<u8"), "filename": fn}
            bid = [bids.get(f) for f in fn.to_pylist()]  # per mapping, few
            if typ == REC_MMAP2:
                has = (misc[sel] & MISC_MMAP_BUILD_ID) != 0
                for i in np.flatnonzero(has):
                    k = int(buf[o[i] + 40])
                    bid[i] = buf[o[i] + 44:o[i] + 44 + min(k, 20)].tobytes()
            cols["build_id"] = pa.array(bid, pa.binary())
        elif typ in (REC_FORK, REC_EXIT):
            cols |= {"pid": read_at(buf, o + 8, "<i4"), "ppid": read_at(buf, o + 12, "<i4"),
                     "tid": read_at(buf, o + 16, "<i4"), "ptid": read_at(buf, o + 20, "<i4")}
            if cols["time"] is None:
                cols["time"] = read_at(buf, o + 24, "<u8").astype(np.int64)
        else:
            names = np.array([a.name for a in pd_.attrs] + [None], object)
            lid = read_at(buf, o + 8, "<u8")
            cols |= {"lost": read_at(buf, o + 16, "<u8"), "event": names[_attr_of(pd_, lid)]}
        out[typ] = cols
    return out
