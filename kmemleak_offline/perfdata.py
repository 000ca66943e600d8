"""perf.data (file mode, little-endian) -> recording rows: `kmemleak-offline import`.

Why our own parser: a `perf record` capture already holds everything a recording needs (the
tracepoint payloads, call chains, comm/mmap side-band and, in HEADER_TRACING_DATA, the format
files of the kernel that produced it), so plain perf captures can be analysed postmortem without
perf or the original machine. Layout as in the kernel's tools/perf/Documentation/
perf.data-file-format.txt. One Python pass finds record boundaries; everything else is numpy
gathers over whole columns (one per attr / record type).
"""

from __future__ import annotations

import mmap
import os
import platform
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kmemleak_offline import __version__
from kmemleak_offline.format.symrows import ksym_rows

from .format import spec as specmod
from .format import tracefs
from .format.recording import RecordingWriter, new_metadata

PRODUCER = f"kmemleak-offline {__version__} import"

MAGIC = b"PERFILE2"
HEADER_SIZE = 104
# perf_event_header.type
REC_MMAP, REC_LOST, REC_COMM, REC_EXIT, REC_FORK, REC_SAMPLE, REC_MMAP2 = 1, 2, 3, 4, 7, 9, 10
REC_USER_START = 64  # perf tool's own records (HEADER_ATTR ... FINISHED_ROUND ...): no sample_id
REC_HEADER_TRACING_DATA, REC_COMPRESSED = 66, 81
MISC_COMM_EXEC = 1 << 13
MISC_MMAP_BUILD_ID = 1 << 14
MISC_BUILD_ID_SIZE = 1 << 15
# sample_type bits
S_IP, S_TID, S_TIME, S_ADDR, S_READ, S_CALLCHAIN, S_ID, S_CPU, S_PERIOD, S_STREAM_ID, S_RAW = (
    1 << i for i in range(11))
S_IDENTIFIER = 1 << 16
# read_format bits
R_TIME_ENABLED, R_TIME_RUNNING, R_ID, R_GROUP, R_LOST = 1, 2, 4, 8, 16
PERF_TYPE_TRACEPOINT = 2
# feature bits (tools/perf/util/header.h)
F_TRACING_DATA, F_BUILD_ID, F_HOSTNAME, F_OSRELEASE, F_VERSION, F_ARCH, F_NRCPUS = 1, 2, 3, 4, 5, 6, 7
F_CMDLINE, F_EVENT_DESC, F_SAMPLE_TIME, F_CLOCKID, F_COMPRESSED, F_CLOCK_DATA = 11, 12, 21, 23, 27, 29
CLOCK_NAMES = {0: "realtime", 1: "monotonic", 4: "monotonic_raw", 7: "boottime", 11: "tai"}
TRACING_MAGIC = b"\x17\x08\x44tracing"

# --alloc/--free defaults when the file has these events: (alloc spec, free spec)
DEFAULT_PAIRS = (
    ("kmem:kmalloc", "kmem:kmalloc//ptr=ptr/size=bytes_alloc/stack/", "kmem:kfree", "kmem:kfree//ptr=ptr/"),
    ("kmem:kmalloc_node", "kmem:kmalloc_node//ptr=ptr/size=bytes_alloc/stack/", "kmem:kfree",
     "kmem:kfree//ptr=ptr/"),
    ("kmem:kmem_cache_alloc", "kmem:kmem_cache_alloc//ptr=ptr/size=bytes_alloc/stack/",
     "kmem:kmem_cache_free", "kmem:kmem_cache_free//ptr=ptr/"),
    ("kmem:kmem_cache_alloc_node", "kmem:kmem_cache_alloc_node//ptr=ptr/size=bytes_alloc/stack/",
     "kmem:kmem_cache_free", "kmem:kmem_cache_free//ptr=ptr/"),
    ("kmem:mm_page_alloc", "kmem:mm_page_alloc//ptr=pfn/size={page}<<order/stack/",
     "kmem:mm_page_free", "kmem:mm_page_free//ptr=pfn/"),
    ("percpu:percpu_alloc_percpu", "percpu:percpu_alloc_percpu//ptr=ptr/size=bytes_alloc/stack/",
     "percpu:percpu_free_percpu", "percpu:percpu_free_percpu//ptr=ptr/"),
)


class PerfDataError(ValueError):
    """A file that cannot be imported (not perf.data, truncated, unsupported). One-line message."""


@dataclass
class Attr:
    """One perf_event_attr of the attrs section, with the sample ids that belong to it."""

    index: int
    type: int
    config: int
    sample_type: int
    read_format: int
    sample_id_all: bool
    use_clockid: bool
    clockid: int
    ids: list[int]
    name: str | None = None  # `sys:name` for tracepoints (from the format ID), else EVENT_DESC's name

    @property
    def trailer_size(self) -> int:
        """Bytes of the sample_id_all trailer of non-sample records."""
        if not self.sample_id_all:
            return 0
        bits = (S_TID, S_TIME, S_ID, S_STREAM_ID, S_CPU, S_IDENTIFIER)
        return 8 * sum(1 for b in bits if self.sample_type & b)


@dataclass
class PerfData:
    """A parsed perf.data header: attrs, features, tracepoint formats, and the raw data section."""

    path: Path
    buf: np.ndarray  # the whole file, uint8
    data_offset: int
    data_size: int
    attrs: list[Attr]
    features: dict[int, bytes]
    formats: dict[int, tracefs.EventFormat] = field(default_factory=dict)  # by tracepoint id
    kallsyms: bytes = b""  # kallsyms embedded in the tracing data (modern perf leaves it empty)
    page_size: int = 0

    def string(self, feat: int) -> str | None:
        """A perf_header_string feature (u32 len; NUL-padded chars)."""
        blob = self.features.get(feat)
        if not blob or len(blob) < 4:
            return None
        n = struct.unpack_from("<I", blob)[0]
        return blob[4:4 + n].split(b"\0", 1)[0].decode(errors="replace")


# ------------------------------------------------------------------------------- header
def _u(fmt: str, blob: bytes | memoryview, off: int, what: str) -> tuple:
    try:
        return struct.unpack_from(fmt, blob, off)
    except struct.error:
        raise PerfDataError(f"truncated perf.data: {what} at offset {off} runs past the end") from None


def read_perf_data(path: str | os.PathLike) -> PerfData:
    """Open and parse the file header, attrs and feature sections (records are parsed later)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise PerfDataError(f"{p}: not a perf.data file (only {size} bytes)")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise PerfDataError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise PerfDataError(f"{p}: is a directory, not a perf.data file") from None
    except PermissionError:
        raise PerfDataError(f"{p}: permission denied") from None
    except OSError as exc:
        raise PerfDataError(f"{p}: cannot read ({exc.strerror or exc})") from None
    buf = np.frombuffer(mm, dtype=np.uint8)
    raw = memoryview(mm)
    magic = bytes(raw[:8])
    if magic == MAGIC[::-1]:
        raise PerfDataError(f"{p}: big-endian perf.data is not supported")
    if magic != MAGIC:
        if magic == b"PERFFILE":
            raise PerfDataError(f"{p}: perf.data version 1 (PERFFILE) is not supported; re-record with perf >= 3.x")
        raise PerfDataError(f"{p}: not a perf.data file (no PERFILE2 magic)")
    hsize, attr_size, a_off, a_size, d_off, d_size = _u("<6Q", raw, 8, "file header")
    if hsize == 16:
        raise PerfDataError(f"{p}: pipe-mode perf.data is not supported; record with -o FILE")
    if hsize < HEADER_SIZE or attr_size < 80:
        raise PerfDataError(f"{p}: corrupt perf.data header (size {hsize}, attr_size {attr_size})")
    bitmap = _u("<4Q", raw, 72, "feature bitmap")
    if d_size == 0:
        raise PerfDataError(f"{p}: perf.data has an empty data section (perf record did not finish?)")
    if d_off + d_size > size or a_off + a_size > size:
        raise PerfDataError(f"{p}: truncated perf.data: data section ends at {d_off + d_size} "
                            f"but the file has {size} bytes")
    attrs = _read_attrs(raw, a_off, a_size, attr_size, p)
    features = _read_features(raw, d_off + d_size, bitmap, size, p)
    pd_ = PerfData(path=p, buf=buf, data_offset=d_off, data_size=d_size, attrs=attrs,
                   features=features)
    if F_TRACING_DATA in features:
        fmts, pd_.kallsyms, pd_.page_size = parse_tracing_data(features[F_TRACING_DATA])
        pd_.formats = {f.id: f for f in fmts}
    names = _event_desc_names(features.get(F_EVENT_DESC, b""))
    for a in attrs:
        fmt = pd_.formats.get(a.config) if a.type == PERF_TYPE_TRACEPOINT else None
        a.name = fmt.full_name if fmt is not None else names.get(a.index)
    return pd_


def _read_attrs(raw: memoryview, off: int, size: int, attr_size: int, p: Path) -> list[Attr]:
    entry = attr_size  # perf_file_attr: the attr, then its ids section
    attr_size -= 16
    if size % entry:
        raise PerfDataError(f"{p}: corrupt attrs section ({size} bytes, entries of {entry})")
    out = []
    for i in range(size // entry):
        base = off + i * entry
        typ, _sz, config, _period, stype, rfmt, flags = _u("<IIQQQQQ", raw, base, "attr")
        clockid = _u("<i", raw, base + 92, "attr")[0] if attr_size >= 96 else 0
        ids_off, ids_size = _u("<QQ", raw, base + attr_size, "attr ids")
        if ids_off + ids_size > len(raw):
            raise PerfDataError(f"{p}: truncated perf.data: attr ids at {ids_off} past the end")
        ids = list(np.frombuffer(raw, dtype="<u8", count=ids_size // 8, offset=ids_off).tolist())
        out.append(Attr(index=i, type=typ, config=config, sample_type=stype, read_format=rfmt,
                        sample_id_all=bool(flags >> 18 & 1), use_clockid=bool(flags >> 25 & 1),
                        clockid=clockid, ids=ids))
    if not out:
        raise PerfDataError(f"{p}: perf.data has no events (empty attrs section)")
    return out


def _read_features(raw: memoryview, off: int, bitmap: tuple, size: int, p: Path) -> dict[int, bytes]:
    bits = [b for b in range(1, 256) if bitmap[b // 64] >> (b % 64) & 1]
    out = {}
    for i, bit in enumerate(bits):
        f_off, f_size = _u("<QQ", raw, off + 16 * i, "feature table")
        if f_off + f_size > size:
            raise PerfDataError(f"{p}: truncated perf.data: feature section {bit} at {f_off}+{f_size} "
                                f"past the end ({size} bytes)")
        out[bit] = bytes(raw[f_off:f_off + f_size])
    return out


def _event_desc_names(blob: bytes) -> dict[int, str]:
    """HEADER_EVENT_DESC: attr index -> event name as perf printed it."""
    out: dict[int, str] = {}
    if len(blob) < 8:
        return out
    try:
        nr, asz = struct.unpack_from("<II", blob)
        off = 8
        for i in range(nr):
            off += asz
            nids, slen = struct.unpack_from("<II", blob, off)
            out[i] = blob[off + 8:off + 8 + slen].split(b"\0", 1)[0].decode(errors="replace")
            off += 8 + slen + 8 * nids
    except struct.error:
        pass
    return out


def parse_tracing_data(blob: bytes) -> tuple[list[tracefs.EventFormat], bytes, int]:
    """HEADER_TRACING_DATA -> (event formats, embedded kallsyms, page size).

    Layout (trace-event-info.c): magic, version string, endian, long size, page size, header_page,
    header_event, ftrace formats, then per system its name and its events' `format` texts,
    then kallsyms and printk formats.
    """
    if not blob.startswith(TRACING_MAGIC):
        raise PerfDataError("HEADER_TRACING_DATA has no tracing magic")
    pos = len(TRACING_MAGIC)

    def cstr() -> str:
        nonlocal pos
        end = blob.find(b"\0", pos)
        if end < 0:
            raise PerfDataError("truncated tracing data in perf.data header")
        s = blob[pos:end].decode(errors="replace")
        pos = end + 1
        return s

    def num(fmt: str) -> int:
        nonlocal pos
        v = _u(fmt, blob, pos, "tracing data")[0]
        pos += struct.calcsize(fmt)
        return v

    def chunk(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(blob):
            raise PerfDataError("truncated tracing data in perf.data header")
        pos += n
        return blob[pos - n:pos]

    cstr()  # version
    if chunk(1) != b"\0":
        raise PerfDataError("big-endian tracing data is not supported")
    chunk(1)  # long size
    page_size = num("<I")
    for label in ("header_page", "header_event"):
        if cstr() != label:
            raise PerfDataError(f"tracing data: expected {label}")
        chunk(num("<Q"))
    for _ in range(num("<I")):  # ftrace's own formats
        chunk(num("<Q"))
    fmts = []
    for _ in range(num("<I")):
        system = cstr()
        for _ in range(num("<I")):
            text = chunk(num("<Q")).decode(errors="replace")
            try:
                fmts.append(tracefs.parse_format(text, system))
            except tracefs.FormatError as exc:
                raise PerfDataError(f"tracing data: bad format of an event of {system}: {exc}") from None
    kallsyms = b""
    if pos + 4 <= len(blob):
        kallsyms = chunk(num("<I"))
    return fmts, kallsyms, page_size


# ------------------------------------------------------------------------------ records
def record_boundaries(pd_: PerfData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets int64, types uint32, misc uint16) of every record of the data section.

    The one per-record Python loop: each record's size says where the next begins.
    """
    mm = pd_.buf
    start, end = pd_.data_offset, pd_.data_offset + pd_.data_size
    offs: list[int] = []
    hdr = struct.Struct("<IHH")
    mv = memoryview(mm)
    pos = start
    append = offs.append
    while pos + 8 <= end:
        typ, _misc, sz = hdr.unpack_from(mv, pos)
        if sz < 8:
            raise PerfDataError(f"{pd_.path}: corrupt record at offset {pos} (size {sz})")
        if typ == REC_COMPRESSED:
            raise PerfDataError(f"{pd_.path}: compressed perf.data (perf record -z) is not supported; "
                                "run 'perf inject -i IN -o OUT' to decompress")
        append(pos)
        pos += sz
    if pos > end:
        raise PerfDataError(f"{pd_.path}: truncated perf.data: last record at offset {offs[-1]} "
                            f"ends past the data section")
    o = np.array(offs, dtype=np.int64)
    return o, _rd(mm, o, "<u4").astype(np.uint32), _rd(mm, o + 4, "<u2")


def _rd(buf: np.ndarray, pos: np.ndarray, dtype: str) -> np.ndarray:
    """One little-endian integer at each byte position (unaligned strided view, one gather)."""
    dt = np.dtype(dtype)
    if len(pos) == 0:
        return np.zeros(0, dt.newbyteorder("="))
    view = np.ndarray(shape=(len(buf) - dt.itemsize + 1,), dtype=dt, buffer=buf, strides=(1,))
    return view[pos].astype(dt.newbyteorder("="))


def _ragged(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate buf[starts[i] : starts[i]+lengths[i]] -> (flat uint8 bytes, int64 offsets n+1)."""
    lengths = lengths.astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if total == 0:
        return np.zeros(0, np.uint8), offsets
    idx = np.repeat(starts.astype(np.int64) - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    return buf[idx], offsets


def _binary(flat: np.ndarray, offsets: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1, [None, pa.py_buffer(offsets.astype(np.int64)),
                                                          pa.py_buffer(flat.tobytes())])


def _cstrings(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """NUL-terminated strings in [starts, ends) of each record -> Arrow string array (vectorised)."""
    n = len(starts)
    if n == 0:
        return pa.array([], pa.string())
    lens = np.maximum(ends - starts, 0)
    flat, offs = _ragged(buf, starts, lens)
    pos = np.where(flat == 0, np.arange(len(flat)), len(flat))
    first = np.full(n, len(flat), np.int64)
    nz = lens > 0
    if len(flat):
        first[nz] = np.minimum.reduceat(pos, offs[:-1][nz])
    slen = np.minimum(first, offs[1:]) - offs[:-1]
    sflat, soffs = _ragged(flat, offs[:-1], np.maximum(slen, 0))
    arr = _binary(sflat, soffs)
    return pc.cast(arr, pa.large_string(), safe=False).cast(pa.string())


@dataclass
class Trailer:
    """sample_id_all trailer fields of non-sample records (None where not recorded)."""

    pid: np.ndarray | None
    tid: np.ndarray | None
    time: np.ndarray | None
    cpu: np.ndarray | None
    id: np.ndarray | None


def _trailer(pd_: PerfData, ends: np.ndarray, attr: Attr) -> Trailer:
    p = ends - attr.trailer_size
    st = attr.sample_type
    if not attr.sample_id_all:
        return Trailer(None, None, None, None, None)
    out: dict[str, np.ndarray | None] = dict.fromkeys(("pid", "tid", "time", "cpu", "id"))
    if st & S_TID:
        out["pid"], out["tid"] = _rd(pd_.buf, p, "<i4"), _rd(pd_.buf, p + 4, "<i4")
        p = p + 8
    if st & S_TIME:
        out["time"] = _rd(pd_.buf, p, "<u8")
        p = p + 8
    if st & S_ID:
        out["id"] = _rd(pd_.buf, p, "<u8")
        p = p + 8
    if st & S_STREAM_ID:
        p = p + 8
    if st & S_CPU:
        out["cpu"] = _rd(pd_.buf, p, "<u4")
        p = p + 8
    if st & S_IDENTIFIER:
        out["id"] = _rd(pd_.buf, p, "<u8")
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


def _which_attr(pd_: PerfData, offs: np.ndarray, ends: np.ndarray, sample: bool) -> np.ndarray:
    """Attr index per record: by the sample id (sample records) or the trailer id (others)."""
    if len(pd_.attrs) == 1:
        return np.zeros(len(offs), np.int64)
    if sample:
        pos = {_id_pos(a) for a in pd_.attrs}
        if len(pos) != 1 or None in pos:
            raise PerfDataError(f"{pd_.path}: events with different sample layouts and no sample id")
        return _attr_of(pd_, _rd(pd_.buf, offs + pos.pop(), "<u8"))
    a0 = pd_.attrs[0]
    if not a0.sample_id_all or not a0.sample_type & (S_ID | S_IDENTIFIER):
        return np.zeros(len(offs), np.int64)
    t = _trailer(pd_, ends, a0)
    return _attr_of(pd_, t.id) if t.id is not None else np.zeros(len(offs), np.int64)


# -------------------------------------------------------------------------------- convert
@dataclass
class Converted:
    """Result of convert(): what was written, for the command's summary line."""

    output: Path
    samples: dict[str, int]
    skipped: int
    stacks: int
    notices: list[str]
    metadata: dict[str, Any]


def _samples(pd_: PerfData, offs: np.ndarray, ends: np.ndarray) -> tuple[dict[str, Any], np.ndarray, int]:
    """SAMPLE records -> sample columns (+ flat callchain bytes), records without RAW skipped."""
    attr_idx = _which_attr(pd_, offs, ends, sample=True)
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
            cols["pid"], cols["tid"] = _rd(pd_.buf, o + p, "<i4"), _rd(pd_.buf, o + p + 4, "<i4")
            p += 8
        if not st & S_TIME:
            raise PerfDataError(f"{pd_.path}: {a.name} samples carry no timestamps (PERF_SAMPLE_TIME)")
        cols["time"] = _rd(pd_.buf, o + p, "<u8")
        p += 8
        p += 8 * sum(1 for b in (S_ADDR, S_ID, S_STREAM_ID) if st & b)
        if st & S_CPU:
            cols["cpu"] = _rd(pd_.buf, o + p, "<u4")
            p += 8
        if st & S_PERIOD:
            p += 8
        if st & S_READ:
            p += _read_size(a.read_format)
        pos = o + p
        if st & S_CALLCHAIN:
            nr = _rd(pd_.buf, pos, "<u8").astype(np.int64)
            if (pos + 8 + 8 * nr > ends[sel]).any():
                raise PerfDataError(f"{pd_.path}: corrupt sample: call chain runs past its record")
            cols["cc_start"], cols["cc_nr"] = pos + 8, nr
            pos = pos + 8 + 8 * nr
        rsz = _rd(pd_.buf, pos, "<u4").astype(np.int64)
        if (pos + 4 + rsz > ends[sel]).any():
            raise PerfDataError(f"{pd_.path}: corrupt sample: raw payload runs past its record")
        cols["raw_start"], cols["raw_len"] = pos + 4, rsz
        cols["event"] = np.full(len(sel), a.name, object)
        parts.append(cols)
    if not parts:
        return {}, np.zeros(0, np.int64), skipped
    n = sum(len(c["rec"]) for c in parts)
    out: dict[str, Any] = {}
    for k in ("rec", "pid", "tid", "time", "cpu", "raw_start", "raw_len", "cc_start", "cc_nr"):
        if any(k in c for c in parts):
            fill = -1 if k in ("cpu", "cc_start") else 0
            out[k] = np.concatenate([c.get(k, np.full(len(c["rec"]), fill, np.int64)).astype(np.int64)
                                     for c in parts])
    out["event"] = np.concatenate([c["event"] for c in parts])
    order = np.argsort(out["rec"], kind="stable")
    out = {k: v[order] for k, v in out.items()}
    assert len(out["rec"]) == n
    return out, out["rec"], skipped


def _stacks(pd_: PerfData, cols: dict[str, Any]) -> tuple[pa.Array, dict[str, Any] | None]:
    """Deduplicate call chains (dictionary-encode their bytes) -> (stack_id per sample, stack rows)."""
    n = len(cols["rec"])
    if "cc_nr" not in cols:
        return pa.nulls(n, pa.uint32()), None
    has = cols["cc_nr"] > 0
    flat, offs = _ragged(pd_.buf, np.where(has, cols["cc_start"], 0), cols["cc_nr"] * 8)
    enc = pc.dictionary_encode(_binary(flat, offs))
    ids = enc.indices.to_numpy(zero_copy_only=False).astype(np.uint32)
    dic = enc.dictionary
    d_off = np.frombuffer(dic.buffers()[1], np.int64, count=len(dic) + 1 + dic.offset)[dic.offset:]
    d_data = np.frombuffer(dic.buffers()[2], np.uint8) if dic.buffers()[2] is not None else np.zeros(0, np.uint8)
    words = np.frombuffer(d_data[d_off[0]:d_off[-1]].tobytes(), "<u8").astype(np.uint64)
    chains = pa.ListArray.from_arrays(pa.array(((d_off - d_off[0]) // 8).astype(np.int32)), pa.array(words))
    used = np.unique(ids[has])
    stack_rows = {"kind": ["stack"] * len(used), "stack_id": pa.array(used, pa.uint32()),
                  "callchain": chains.take(pa.array(used.astype(np.int64)))}
    return pa.array(ids, pa.uint32(), mask=~has), stack_rows


def _seq(cpu: np.ndarray) -> np.ndarray:
    """Rank of each record within its cpu (file order = ring order per cpu)."""
    order = np.argsort(cpu, kind="stable")
    sc = cpu[order]
    first = np.r_[0, np.flatnonzero(sc[1:] != sc[:-1]) + 1]
    rank = np.arange(len(sc)) - np.repeat(first, np.diff(np.r_[first, len(sc)]))
    out = np.empty(len(cpu), np.uint64)
    out[order] = rank
    return out


def build_ids(pd_: PerfData) -> dict[str, bytes]:
    """HEADER_BUILD_ID: filename -> build-id bytes (kernel as `[kernel.kallsyms]`)."""
    blob = pd_.features.get(F_BUILD_ID, b"")
    out: dict[str, bytes] = {}
    pos = 0
    while pos + 8 <= len(blob):
        _typ, misc, sz = struct.unpack_from("<IHH", blob, pos)
        if sz < 36 or pos + sz > len(blob):
            break
        bid = blob[pos + 12:pos + 32]
        if misc & MISC_BUILD_ID_SIZE:
            bid = bid[:blob[pos + 32]]
        else:
            bid = bid.rstrip(b"\0") or bid
        name = blob[pos + 36:pos + sz].split(b"\0", 1)[0].decode(errors="replace")
        out.setdefault(name, bid)
        pos += sz
    return out


def running_kernel_build_id() -> bytes | None:
    """GNU build-id of the running kernel from /sys/kernel/notes (ELF notes)."""
    try:
        notes = Path("/sys/kernel/notes").read_bytes()
    except OSError:
        return None
    pos = 0
    while pos + 12 <= len(notes):
        nsz, dsz, typ = struct.unpack_from("<III", notes, pos)
        name_end = pos + 12 + ((nsz + 3) & ~3)
        if typ == 3 and notes[pos + 12:pos + 12 + nsz].rstrip(b"\0") == b"GNU":
            return notes[name_end:name_end + dsz]
        pos = name_end + ((dsz + 3) & ~3)
    return None


def kernel_symbols(pd_: PerfData, osrelease: str | None) -> tuple[dict[str, Any] | None, str]:
    """ksym rows and a one-line note on where they came from (or why there are none)."""
    if pd_.kallsyms.strip():
        return ksym_rows(pd_.kallsyms), "kernel symbols: from the kallsyms embedded in the perf.data"
    here = platform.release()
    if osrelease != here:
        return None, (f"kernel symbols: none (perf.data from kernel {osrelease or '?'}, this machine "
                      f"runs {here}); kernel addresses will print as Unknown")
    recorded = build_ids(pd_).get("[kernel.kallsyms]")
    running = running_kernel_build_id()
    if recorded and running and recorded != running:
        return None, ("kernel symbols: none (the kernel build-id in the perf.data differs from the "
                      "running kernel's); kernel addresses will print as Unknown")
    try:
        text = Path("/proc/kallsyms").read_bytes()
    except OSError as exc:
        return None, f"kernel symbols: none (cannot read /proc/kallsyms: {exc.strerror})"
    rows = ksym_rows(text)
    if not any(rows["addr"].to_numpy(zero_copy_only=False)):
        return None, "kernel symbols: none (/proc/kallsyms addresses are hidden; run as root)"
    return rows, "kernel symbols: /proc/kallsyms of this machine (same kernel release and build-id)"


def default_specs(names: Iterable[str], page_size: int) -> tuple[list[str], list[str]]:
    """--alloc/--free for the known allocator events present in the file."""
    have = set(names)
    alloc: list[str] = []
    free: list[str] = []
    for a_name, a_spec, f_name, f_spec in DEFAULT_PAIRS:
        if a_name in have and f_name in have:
            alloc.append(a_spec.format(page=page_size or 4096))
            if f_spec not in free:
                free.append(f_spec)
    return alloc, free


def _side(pd_: PerfData, offs: np.ndarray, ends: np.ndarray, types: np.ndarray,
          misc: np.ndarray, bids: dict[str, bytes]) -> dict[int, dict[str, Any]]:
    """COMM/MMAP/MMAP2/FORK/EXIT/LOST records -> columns, per record type."""
    buf = pd_.buf
    out: dict[int, dict[str, Any]] = {}
    for typ in (REC_COMM, REC_MMAP, REC_MMAP2, REC_FORK, REC_EXIT, REC_LOST):
        sel = np.flatnonzero(types == typ)
        if not len(sel):
            continue
        o, e = offs[sel], ends[sel]
        aidx = _which_attr(pd_, o, e, sample=False)
        tr_size = np.array([a.trailer_size for a in pd_.attrs] + [pd_.attrs[0].trailer_size])[aidx]
        t_end = e - tr_size
        cols: dict[str, Any] = {"rec": sel, "time": None, "cpu": None}
        for a in pd_.attrs:  # trailer fields per attr layout
            m = np.flatnonzero((aidx == a.index) | ((aidx < 0) & (a.index == 0)))
            if not len(m):
                continue
            t = _trailer(pd_, e[m], a)
            for k in ("time", "cpu"):
                v = getattr(t, k)
                if v is not None:
                    if cols[k] is None:
                        cols[k] = np.full(len(sel), -1, np.int64)
                    cols[k][m] = v.astype(np.int64)
        if typ == REC_COMM:
            cols |= {"pid": _rd(buf, o + 8, "<i4"), "tid": _rd(buf, o + 12, "<i4"),
                     "comm": _cstrings(buf, o + 16, t_end), "exec": (misc[sel] & MISC_COMM_EXEC) != 0}
        elif typ in (REC_MMAP, REC_MMAP2):
            name_at = 40 if typ == REC_MMAP else 72
            fn = _cstrings(buf, o + name_at, t_end)
            cols |= {"pid": _rd(buf, o + 8, "<i4"), "tid": _rd(buf, o + 12, "<i4"),
                     "addr": _rd(buf, o + 16, "<u8"), "len": _rd(buf, o + 24, "<u8"),
                     "pgoff": _rd(buf, o + 32, "<u8"), "filename": fn}
            bid = [bids.get(f) for f in fn.to_pylist()]  # per mapping, few
            if typ == REC_MMAP2:
                has = (misc[sel] & MISC_MMAP_BUILD_ID) != 0
                for i in np.flatnonzero(has):
                    k = int(buf[o[i] + 40])
                    bid[i] = buf[o[i] + 44:o[i] + 44 + min(k, 20)].tobytes()
            cols["build_id"] = pa.array(bid, pa.binary())
        elif typ in (REC_FORK, REC_EXIT):
            cols |= {"pid": _rd(buf, o + 8, "<i4"), "ppid": _rd(buf, o + 12, "<i4"),
                     "tid": _rd(buf, o + 16, "<i4"), "ptid": _rd(buf, o + 20, "<i4")}
            if cols["time"] is None:
                cols["time"] = _rd(buf, o + 24, "<u8").astype(np.int64)
        else:
            names = np.array([a.name for a in pd_.attrs] + [None], object)
            lid = _rd(buf, o + 8, "<u8")
            cols |= {"lost": _rd(buf, o + 16, "<u8"), "event": names[_attr_of(pd_, lid)]}
        out[typ] = cols
    return out


def convert(pd_: PerfData, output: str | os.PathLike, alloc: list[str] | None = None,
            free: list[str] | None = None, notice: Callable[[str], None] | None = None) -> Converted:
    """Write the recording for a parsed perf.data; PerfDataError for files with nothing to import."""
    notices: list[str] = []

    def note(msg: str) -> None:
        notices.append(msg)
        if notice:
            notice(msg)

    offs, types, misc = record_boundaries(pd_)
    ends = offs + _rd(pd_.buf, offs + 6, "<u2").astype(np.int64)
    s_sel = np.flatnonzero(types == REC_SAMPLE)
    cols, _, skipped = _samples(pd_, offs[s_sel], ends[s_sel])
    if not cols or not len(cols["rec"]):
        raise PerfDataError(f"{pd_.path}: no tracepoint samples to import "
                            "(record tracepoints or uprobes with perf record -e SYS:NAME)")
    if skipped:
        note(f"skipped {skipped} samples of non-tracepoint events (no raw payload)")
    bids = build_ids(pd_)
    side = _side(pd_, offs, ends, types, misc, bids)

    # seq: file order within each cpu, over samples and side-band records together
    rec_all = [s_sel[cols["rec"]]] + [c["rec"] for c in side.values()]
    cpu_all = [cols.get("cpu", np.full(len(cols["rec"]), -1))] + [
        c["cpu"] if c["cpu"] is not None else np.full(len(c["rec"]), -1) for c in side.values()]
    rec_cat = np.concatenate(rec_all)
    cpu_cat = np.concatenate(cpu_all).astype(np.int64)
    order = np.argsort(rec_cat, kind="stable")
    seq_sorted = _seq(cpu_cat[order])
    seq = np.empty(len(rec_cat), np.uint64)
    seq[order] = seq_sorted
    seqs = np.split(seq, np.cumsum([len(r) for r in rec_all])[:-1])

    times = cols["time"].astype(np.uint64)
    start, stop = int(times.min()), int(times.max())
    for c in side.values():  # side-band before the first sample (an exec's COMM) moves the start
        if c["time"] is not None and (c["time"] > 0).any():
            start = min(start, int(c["time"][c["time"] > 0].min()))
    stack_id, stack_rows = _stacks(pd_, cols)
    raw_flat, raw_offs = _ragged(pd_.buf, cols["raw_start"], cols["raw_len"])
    cpu = cols.get("cpu")
    events = cols["event"]
    meta = _metadata(pd_, events, start, stop, alloc, free, note)

    w = RecordingWriter(output, meta)
    w.write({"kind": pa.array(["sample"] * len(times)), "time": pa.array(times, pa.uint64()),
             "cpu": None if cpu is None else pa.array(cpu, pa.uint32(), mask=cpu < 0),
             "seq": pa.array(seqs[0], pa.uint64()),
             "pid": pa.array(cols.get("pid", np.zeros(len(times))), pa.int32()),
             "tid": pa.array(cols.get("tid", np.zeros(len(times))), pa.int32()),
             "event": pa.array(events, pa.string()), "raw": _binary(raw_flat, raw_offs).cast(pa.binary()),
             "stack_id": stack_id})
    if stack_rows:
        w.write(stack_rows)
    kinds = {REC_COMM: "comm", REC_MMAP: "mmap", REC_MMAP2: "mmap", REC_FORK: "fork",
             REC_EXIT: "exit", REC_LOST: "lost"}
    for (typ, c), sq in zip(side.items(), seqs[1:], strict=True):
        n = len(c["rec"])
        t = c["time"] if c["time"] is not None else np.zeros(n, np.int64)
        t = np.where(t <= 0, start, t).astype(np.uint64)  # perf's synthesized initial state
        row = {k: v for k, v in c.items() if k not in ("rec", "time", "cpu")}
        row |= {"kind": [kinds[typ]] * n, "time": pa.array(t, pa.uint64()), "seq": pa.array(sq, pa.uint64())}
        if typ == REC_LOST and c["cpu"] is not None:
            row["cpu"] = pa.array(c["cpu"], pa.uint32(), mask=c["cpu"] < 0)
        w.write(row)
    ksyms, ks_note = kernel_symbols(pd_, meta["host"].get("kernel_release"))
    note(ks_note)
    if REC_LOST in side:
        lc = side[REC_LOST]
        for ev, n in zip(lc["event"], lc["lost"].tolist(), strict=True):  # per LOST record
            if ev in w.metadata["counts"]:
                w.metadata["counts"][ev]["lost"] += int(n)
    w.metadata["notes"] = list(notices)
    if ksyms:
        w.write(ksyms)
    path = w.close()
    counts = {str(k): v["samples"] for k, v in meta["counts"].items()}
    return Converted(output=path, samples=counts, skipped=skipped,
                     stacks=0 if not stack_rows else len(stack_rows["kind"]), notices=notices,
                     metadata=w.metadata)


def _metadata(pd_: PerfData, events: np.ndarray, start: int, stop: int, alloc: list[str] | None,
              free: list[str] | None, note: Callable[[str], None]) -> dict[str, Any]:
    meta = new_metadata(PRODUCER)
    nr = pd_.features.get(F_NRCPUS, b"")
    meta["host"] = {"hostname": pd_.string(F_HOSTNAME), "kernel_release": pd_.string(F_OSRELEASE),
                    "machine": pd_.string(F_ARCH), "page_size": pd_.page_size or None,
                    "ncpus": struct.unpack_from("<I", nr)[0] if len(nr) >= 4 else None,
                    "perf_version": pd_.string(F_VERSION)}
    names, counts = np.unique(events.astype(str), return_counts=True)
    by_name = {a.name: a for a in pd_.attrs if a.name}
    fmt_by_name = {f.full_name: f for f in pd_.formats.values()}
    meta["events"] = {n: {"id": fmt_by_name[n].id, "format": fmt_by_name[n].text}
                      for n in names if n in fmt_by_name}
    meta["counts"] = {str(n): {"samples": int(c), "lost": 0} for n, c in zip(names, counts, strict=True)}
    a_def, f_def = default_specs(names.tolist(), pd_.page_size)
    meta["alloc"] = _checked(alloc, "--alloc", _tracepoints(pd_)) if alloc else a_def
    meta["free"] = _checked(free, "--free", _tracepoints(pd_)) if free else f_def
    if not meta["alloc"] or not meta["free"]:
        note("no known allocator events: give --alloc/--free here or to analyze")
    clock = meta["clock"]
    a0 = pd_.attrs[0]
    clock["perf_clock"] = CLOCK_NAMES.get(a0.clockid, f"clockid {a0.clockid}") if a0.use_clockid else "perf"
    clock.update(start_ns=start, stop_ns=stop)
    cd = pd_.features.get(F_CLOCK_DATA, b"")
    if len(cd) >= 24:
        _ver, _cid, wall, perf_ns = struct.unpack_from("<IIQQ", cd)
        clock["anchor"] = {"perf_ns": perf_ns, "realtime_ns": wall}
    else:
        note("clock: no HEADER_CLOCK_DATA (record with perf record -k monotonic for wall-clock "
             "times); realtime anchor left 0")
    cmd = pd_.features.get(F_CMDLINE, b"")
    meta["options"] = {"cpus": None, "pids": None, "tids": None, "mmap_pages": None,
                       "call_graph": any(a.sample_type & S_CALLCHAIN for a in pd_.attrs if a.name in by_name),
                       "kernel_filters": {}, "command": None,
                       "perf_cmdline": _cmdline(cmd), "source": str(pd_.path)}
    return meta


def _checked(texts: list[str], option: str, available: list[str]) -> list[str]:
    """Spec lists given to import: they must parse and name events the file recorded."""
    try:
        specs = specmod.expand_wildcards([sp for t in texts for sp in specmod.parse_list(t)], available)
    except specmod.SpecError as exc:
        raise PerfDataError(f"{option}: {exc}") from None
    for sp in specs:
        if sp.full_name not in available:
            raise PerfDataError(f"{option}: {sp.full_name} is not in the perf.data (it has: "
                                f"{', '.join(sorted(set(available))) or 'no tracepoints'})")
    return list(texts)


def _cmdline(blob: bytes) -> list[str] | None:
    if len(blob) < 4:
        return None
    nr, pos, out = struct.unpack_from("<I", blob)[0], 4, []
    for _ in range(nr):
        if pos + 4 > len(blob):
            break
        n = struct.unpack_from("<I", blob, pos)[0]
        out.append(blob[pos + 4:pos + 4 + n].split(b"\0", 1)[0].decode(errors="replace"))
        pos += 4 + n
    return out


def import_perf_data(perf_data: str | os.PathLike, output: str | os.PathLike,
                     alloc: list[str] | None = None, free: list[str] | None = None,
                     notice: Callable[[str], None] | None = None) -> Converted:
    """Parse `perf_data` and write the recording `output`."""
    return convert(read_perf_data(perf_data), output, alloc, free, notice)


def _tracepoints(pd_: PerfData) -> list[str]:
    return [a.name for a in pd_.attrs if a.type == PERF_TYPE_TRACEPOINT and a.name]
