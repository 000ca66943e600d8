"""perf.data reader (file mode, little-endian): header, attrs, feature sections, record stream.

Why our own parser: a `perf record` capture already holds everything a recording needs (the
tracepoint payloads, call chains, comm/mmap side-band and, in HEADER_TRACING_DATA, the format
files of the kernel that produced it), so plain perf captures can be analysed postmortem without
perf or the original machine. Layout as in the kernel's tools/perf/Documentation/
perf.data-file-format.txt. One Python pass finds record boundaries; everything else is numpy
gathers over whole columns (one per attr / record type).

The header features are table-driven, like perf's util/header.c `feat_ops[]`: FEATURES maps each
feature id to its name and either a parser, nothing (present but not needed: kept as bytes) or an
explicit refusal (a feature that changes how the file must be read and that this reader does not
implement: the file is refused with one line saying so). Nothing here knows about recordings: the
importer (`importer.py`) turns what this module reads into one.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..format import tracefs

MAGIC = b"PERFILE2"
HEADER_SIZE = 104
# perf_event_header.type
REC_MMAP, REC_LOST, REC_COMM, REC_EXIT, REC_FORK, REC_SAMPLE, REC_MMAP2 = 1, 2, 3, 4, 7, 9, 10
REC_LOST_SAMPLES = 13  # perf >= 6.0 writes one per event and cpu from PERF_FORMAT_LOST at the end
REC_HEADER_TRACING_DATA, REC_COMPRESSED, REC_COMPRESSED2 = 66, 81, 83
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
# feature ids (tools/perf/util/header.h, enum HEADER_*)
F_TRACING_DATA, F_BUILD_ID, F_HOSTNAME, F_OSRELEASE, F_VERSION, F_ARCH, F_NRCPUS = 1, 2, 3, 4, 5, 6, 7
F_CPUDESC, F_CPUID, F_TOTAL_MEM, F_CMDLINE, F_EVENT_DESC = 8, 9, 10, 11, 12
F_AUXTRACE, F_SAMPLE_TIME, F_CLOCKID, F_DIR_FORMAT, F_COMPRESSED, F_CLOCK_DATA = 18, 21, 23, 24, 27, 29
TRACING_MAGIC = b"\x17\x08\x44tracing"
COMP_ZSTD = 1  # HEADER_COMPRESSED type (tools/perf/util/header.h, enum perf_compress_type)


class PerfDataError(ValueError):
    """A file that cannot be imported (not perf.data, truncated, unsupported). One-line message."""


# ----------------------------------------------------------------------------- features
Warn = Callable[[str], None]


def _string(blob: bytes, warn: Warn) -> str | None:
    """A perf_header_string feature (u32 len; NUL-padded chars)."""
    if len(blob) < 4:
        return None
    n = struct.unpack_from("<I", blob)[0]
    return blob[4:4 + n].split(b"\0", 1)[0].decode(errors="replace")


def _nrcpus(blob: bytes, warn: Warn) -> int | None:
    """HEADER_NRCPUS: (nr_cpus_available, nr_cpus_online); the first."""
    return struct.unpack_from("<I", blob)[0] if len(blob) >= 4 else None


def _clock_data(blob: bytes, warn: Warn) -> tuple[int, int] | None:
    """HEADER_CLOCK_DATA: (realtime ns, perf clock ns) taken at the same instant."""
    if len(blob) < 24:
        return None
    _ver, _cid, wall, perf_ns = struct.unpack_from("<IIQQ", blob)
    return wall, perf_ns


def _cmdline(blob: bytes, warn: Warn) -> list[str] | None:
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


def _compressed(blob: bytes, warn: Warn) -> dict[str, int]:
    """HEADER_COMPRESSED: (version, type, level, ratio, mmap_len); only zstd (type 1) exists."""
    if len(blob) < 20:
        raise PerfDataError(f"HEADER_COMPRESSED is truncated ({len(blob)} bytes)")
    ver, typ, level, ratio, mmap_len = struct.unpack_from("<5I", blob)
    if typ != COMP_ZSTD:
        raise PerfDataError(f"compressed perf.data of type {typ} is not supported (only zstd, type 1)")
    return {"version": ver, "type": typ, "level": level, "ratio": ratio, "mmap_len": mmap_len}


def _dir_format(blob: bytes, warn: Warn) -> int | None:
    """HEADER_DIR_FORMAT: the directory layout version (perf record --threads: data + data.N)."""
    return struct.unpack_from("<Q", blob)[0] if len(blob) >= 8 else None


def _build_ids(blob: bytes, warn: Warn) -> dict[str, bytes]:
    """HEADER_BUILD_ID: filename -> build-id bytes (kernel as `[kernel.kallsyms]`)."""
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


def _event_desc(blob: bytes, warn: Warn) -> dict[int, str]:
    """HEADER_EVENT_DESC: attr index -> event name as perf printed it.

    A table cut short keeps the entries read in full and says how many are missing (events without
    a name are not imported), never a silently partial table."""
    out: dict[int, str] = {}
    if len(blob) < 8:
        warn(f"HEADER_EVENT_DESC is truncated ({len(blob)} bytes): no event names read")
        return out
    nr, asz = struct.unpack_from("<II", blob)
    off = 8
    for i in range(nr):
        off += asz
        if off + 8 > len(blob):
            break
        nids, slen = struct.unpack_from("<II", blob, off)
        if off + 8 + slen + 8 * nids > len(blob):  # the whole entry, its ids included
            break
        out[i] = blob[off + 8:off + 8 + slen].split(b"\0", 1)[0].decode(errors="replace")
        off += 8 + slen + 8 * nids
    if len(out) < nr:
        warn(f"HEADER_EVENT_DESC is truncated: names of {len(out)} of {nr} events read; "
             "events without a name are skipped")
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


def _tracing_data(blob: bytes, warn: Warn) -> tuple[list[tracefs.EventFormat], bytes, int]:
    return parse_tracing_data(blob)


@dataclass(frozen=True)
class Feature:
    """One perf.data header feature: a parser (blob, warn) -> value, or a refusal, or neither
    (present but not needed: only its bytes are kept)."""

    name: str
    parse: Callable[[bytes, Warn], Any] | None = None
    refuse: str | None = None


# feature id -> Feature, in header.h order (perf's feat_ops[]); ids past the table are ignored,
# as perf ignores features newer than itself
FEATURES: dict[int, Feature] = {
    F_TRACING_DATA: Feature("tracing_data", _tracing_data),
    F_BUILD_ID: Feature("build_id", _build_ids),
    F_HOSTNAME: Feature("hostname", _string),
    F_OSRELEASE: Feature("osrelease", _string),
    F_VERSION: Feature("version", _string),
    F_ARCH: Feature("arch", _string),
    F_NRCPUS: Feature("nrcpus", _nrcpus),
    F_CPUDESC: Feature("cpudesc", _string),
    F_CPUID: Feature("cpuid", _string),
    F_TOTAL_MEM: Feature("total_mem"),
    F_CMDLINE: Feature("cmdline", _cmdline),
    F_EVENT_DESC: Feature("event_desc", _event_desc),
    13: Feature("cpu_topology"),
    14: Feature("numa_topology"),
    15: Feature("branch_stack"),
    16: Feature("pmu_mappings"),
    17: Feature("group_desc"),
    F_AUXTRACE: Feature("auxtrace", refuse="AUX area data (perf record -e intel_pt//, arm_spe, ...) "
                        "is not supported: its records carry payloads outside the record stream"),
    19: Feature("stat"),
    20: Feature("cache"),
    F_SAMPLE_TIME: Feature("sample_time"),
    22: Feature("mem_topology"),
    F_CLOCKID: Feature("clockid"),
    F_DIR_FORMAT: Feature("dir_format", _dir_format),
    25: Feature("bpf_prog_info"),
    26: Feature("bpf_btf"),
    F_COMPRESSED: Feature("compressed", _compressed),
    28: Feature("cpu_pmu_caps"),
    F_CLOCK_DATA: Feature("clock_data", _clock_data),
    30: Feature("hybrid_topology"),
    31: Feature("pmu_caps"),
}


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
    features: dict[int, bytes]  # every feature section present, as bytes
    values: dict[int, Any] = field(default_factory=dict)  # parsed features (those with a parser)
    warnings: list[str] = field(default_factory=list)  # what reading had to leave out, one line each
    formats: dict[int, tracefs.EventFormat] = field(default_factory=dict)  # by tracepoint id
    kallsyms: bytes = b""  # kallsyms embedded in the tracing data (modern perf leaves it empty)
    page_size: int = 0
    expanded: bool = False  # data section rebuilt (compressed records, --threads data.N appended)

    def value(self, feat: int, default: Any = None) -> Any:
        """The parsed value of a feature, `default` if the file does not have it."""
        return self.values.get(feat, default)

    def string(self, feat: int) -> str | None:
        """A perf_header_string feature (hostname, osrelease, version, arch, ...)."""
        return self.values.get(feat)

    @property
    def build_ids(self) -> dict[str, bytes]:
        """HEADER_BUILD_ID: filename -> build-id (kernel as `[kernel.kallsyms]`)."""
        return self.values.get(F_BUILD_ID, {})


# ------------------------------------------------------------------------------- header
def _u(fmt: str, blob: bytes | memoryview, off: int, what: str) -> tuple:
    try:
        return struct.unpack_from(fmt, blob, off)
    except struct.error:
        raise PerfDataError(f"truncated perf.data: {what} at offset {off} runs past the end") from None


def read_perf_data(path: str | os.PathLike) -> PerfData:
    """Open and parse the file header, attrs and feature sections (records are parsed later).

    A `perf record --threads` directory is read as its `data` file (header, features, side-band)
    with the record streams of `data.N` appended; `perf record -z` records are decompressed. After
    this, `buf` holds an uncompressed data section either way."""
    p = Path(path)
    threads: list[Path] = []
    if p.is_dir() and (p / "data").is_file():  # perf record --threads writes PATH/data + PATH/data.N
        threads = sorted((f for f in p.iterdir() if re.fullmatch(r"data\.\d+", f.name)),
                         key=lambda f: int(f.name[5:]))
        p = p / "data"
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
    if d_size == 0 and not threads:
        raise PerfDataError(f"{p}: perf.data has an empty data section (perf record did not finish?)")
    if d_off + d_size > size or a_off + a_size > size:
        raise PerfDataError(f"{p}: truncated perf.data: data section ends at {d_off + d_size} "
                            f"but the file has {size} bytes")
    attrs = _read_attrs(raw, a_off, a_size, attr_size, p)
    features = _read_features(raw, d_off + d_size, bitmap, size, p)
    pd_ = PerfData(path=p, buf=buf, data_offset=d_off, data_size=d_size, attrs=attrs,
                   features=features)
    for feat, blob in features.items():
        spec = FEATURES.get(feat)
        if spec is None:
            continue
        if spec.refuse:
            raise PerfDataError(f"{p}: {spec.refuse}")
        if spec.parse is not None:
            pd_.values[feat] = spec.parse(blob, pd_.warnings.append)
    if threads and F_DIR_FORMAT not in features:
        raise PerfDataError(f"{p.parent}: a directory with data.N files but its data file has no "
                            "HEADER_DIR_FORMAT (not a perf record --threads directory?)")
    if threads or F_COMPRESSED in features:
        expand_data(pd_, threads)
    if F_TRACING_DATA in pd_.values:
        fmts, pd_.kallsyms, pd_.page_size = pd_.values[F_TRACING_DATA]
        pd_.formats = {f.id: f for f in fmts}
    names = pd_.value(F_EVENT_DESC, {})
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


# ------------------------------------------------------------- compressed, --threads data
class _Zstd:
    """One decompression context over a stream of PERF_RECORD_COMPRESSED payloads (perf keeps
    one per data file): a zstd frame may span records, and a new frame may follow an ended one."""

    def __init__(self) -> None:
        import zstandard  # only compressed files need it

        self._zstd = zstandard
        self._obj = None
        self.pending = b""  # decompressed bytes of a record not complete yet

    def feed(self, payload: bytes) -> bytes:
        out = [self.pending]
        while payload:
            if self._obj is None:
                self._obj = self._zstd.ZstdDecompressor().decompressobj()
            out.append(self._obj.decompress(payload))
            if self._obj.eof:
                payload, self._obj = self._obj.unused_data, None
            else:
                payload = b""
        data = b"".join(out)
        cut = _complete_records(data)
        self.pending = data[cut:]
        return data[:cut]


def _complete_records(data: bytes) -> int:
    """End offset of the last whole record in `data` (records may span compressed records)."""
    pos, n = 0, len(data)
    while pos + 8 <= n:
        sz = struct.unpack_from("<H", data, pos + 6)[0]
        if sz < 8:
            raise PerfDataError(f"corrupt record (size {sz}) inside a compressed record")
        if pos + sz > n:
            break
        pos += sz
    return pos


def _expand_stream(chunk: memoryview, out: bytearray, where: str) -> None:
    """Append the records of one data stream to `out`, COMPRESSED/COMPRESSED2 ones replaced by
    the records they hold (in place: perf processes them where they are)."""
    dec: _Zstd | None = None
    hdr = struct.Struct("<IHH")
    pos, end = 0, len(chunk)
    while pos + 8 <= end:
        typ, _misc, sz = hdr.unpack_from(chunk, pos)
        if sz < 8 or pos + sz > end:
            out += chunk[pos:]  # record_boundaries says what is wrong with it
            return
        if typ in (REC_COMPRESSED, REC_COMPRESSED2):
            if typ == REC_COMPRESSED:
                payload = bytes(chunk[pos + 8:pos + sz])
            else:  # COMPRESSED2: u64 data_size, then the data, padded to 8 bytes
                dsz = struct.unpack_from("<Q", chunk, pos + 8)[0] if sz >= 16 else 0
                payload = bytes(chunk[pos + 16:pos + 16 + min(dsz, sz - 16)])
            if dec is None:
                dec = _Zstd()
            try:
                out += dec.feed(payload)
            except dec._zstd.ZstdError as exc:
                raise PerfDataError(f"{where}: corrupt compressed record at offset {pos}: {exc}") from None
        else:
            out += chunk[pos:pos + sz]
        pos += sz
    out += chunk[pos:]
    if dec is not None and dec.pending:
        raise PerfDataError(f"{where}: truncated perf.data: the compressed records end inside a "
                            f"record ({len(dec.pending)} bytes left over)")


def expand_data(pd_: PerfData, threads: list[Path] | tuple = ()) -> None:
    """Make `buf`'s data section the records perf processes: compressed records decompressed,
    the --threads `data.N` streams appended (each its own stream, as perf reads them)."""
    start, size = pd_.data_offset, pd_.data_size
    out = bytearray(memoryview(pd_.buf)[:start])
    _expand_stream(memoryview(pd_.buf)[start:start + size], out, str(pd_.path))
    for f in threads:
        try:
            raw = f.read_bytes()
        except OSError as exc:
            raise PerfDataError(f"{f}: cannot read ({exc.strerror or exc})") from None
        _expand_stream(memoryview(raw), out, str(f))
    pd_.buf = np.frombuffer(out, dtype=np.uint8)
    pd_.data_size = len(out) - start
    pd_.expanded = True


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
        if typ in (REC_COMPRESSED, REC_COMPRESSED2):
            if pd_.expanded:
                raise PerfDataError(f"{pd_.path}: corrupt record at offset {pos}: compressed "
                                    "records inside compressed records")
            expand_data(pd_)  # compressed records without HEADER_COMPRESSED: read them anyway
            return record_boundaries(pd_)
        append(pos)
        pos += sz
    if pos > end:
        raise PerfDataError(f"{pd_.path}: truncated perf.data: last record at offset {offs[-1]} "
                            f"ends past the data section")
    o = np.array(offs, dtype=np.int64)
    return o, read_at(mm, o, "<u4").astype(np.uint32), read_at(mm, o + 4, "<u2")


def read_at(buf: np.ndarray, pos: np.ndarray, dtype: str) -> np.ndarray:
    """One little-endian integer at each byte position (unaligned strided view, one gather)."""
    dt = np.dtype(dtype)
    if len(pos) == 0:
        return np.zeros(0, dt.newbyteorder("="))
    view = np.ndarray(shape=(len(buf) - dt.itemsize + 1,), dtype=dt, buffer=buf, strides=(1,))
    return view[pos].astype(dt.newbyteorder("="))


def ragged(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate buf[starts[i] : starts[i]+lengths[i]] -> (flat uint8 bytes, int64 offsets n+1)."""
    lengths = lengths.astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if total == 0:
        return np.zeros(0, np.uint8), offsets
    idx = np.repeat(starts.astype(np.int64) - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    return buf[idx], offsets


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


def _trailer(pd_: PerfData, ends: np.ndarray, attr: Attr) -> Trailer:
    p = ends - attr.trailer_size
    st = attr.sample_type
    if not attr.sample_id_all:
        return Trailer(None, None, None, None, None)
    out: dict[str, np.ndarray | None] = dict.fromkeys(("pid", "tid", "time", "cpu", "id"))
    if st & S_TID:
        out["pid"], out["tid"] = read_at(pd_.buf, p, "<i4"), read_at(pd_.buf, p + 4, "<i4")
        p = p + 8
    if st & S_TIME:
        out["time"] = read_at(pd_.buf, p, "<u8")
        p = p + 8
    if st & S_ID:
        out["id"] = read_at(pd_.buf, p, "<u8")
        p = p + 8
    if st & S_STREAM_ID:
        p = p + 8
    if st & S_CPU:
        out["cpu"] = read_at(pd_.buf, p, "<u4")
        p = p + 8
    if st & S_IDENTIFIER:
        out["id"] = read_at(pd_.buf, p, "<u8")
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
        return _attr_of(pd_, read_at(pd_.buf, offs + pos.pop(), "<u8"))
    a0 = pd_.attrs[0]
    if not a0.sample_id_all or not a0.sample_type & (S_ID | S_IDENTIFIER):
        return np.zeros(len(offs), np.int64)
    t = _trailer(pd_, ends, a0)
    return _attr_of(pd_, t.id) if t.id is not None else np.zeros(len(offs), np.int64)


def sample_columns(pd_: PerfData, offs: np.ndarray, ends: np.ndarray) -> tuple[dict[str, Any], np.ndarray, int]:
    """SAMPLE records -> sample columns (+ where call chains and payloads are), records without
    RAW skipped: (columns, record index of each, samples skipped)."""
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
            cols["pid"], cols["tid"] = read_at(pd_.buf, o + p, "<i4"), read_at(pd_.buf, o + p + 4, "<i4")
            p += 8
        if not st & S_TIME:
            raise PerfDataError(f"{pd_.path}: {a.name} samples carry no timestamps (PERF_SAMPLE_TIME)")
        cols["time"] = read_at(pd_.buf, o + p, "<u8")
        p += 8
        p += 8 * sum(1 for b in (S_ADDR, S_ID, S_STREAM_ID) if st & b)
        if st & S_CPU:
            cols["cpu"] = read_at(pd_.buf, o + p, "<u4")
            p += 8
        if st & S_PERIOD:
            p += 8
        if st & S_READ:
            p += _read_size(a.read_format)
        pos = o + p
        if st & S_CALLCHAIN:
            nr = read_at(pd_.buf, pos, "<u8").astype(np.int64)
            if (pos + 8 + 8 * nr > ends[sel]).any():
                raise PerfDataError(f"{pd_.path}: corrupt sample: call chain runs past its record")
            cols["cc_start"], cols["cc_nr"] = pos + 8, nr
            pos = pos + 8 + 8 * nr
        rsz = read_at(pd_.buf, pos, "<u4").astype(np.int64)
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


def side_columns(pd_: PerfData, offs: np.ndarray, ends: np.ndarray, types: np.ndarray,
                 misc: np.ndarray) -> dict[int, dict[str, Any]]:
    """COMM/MMAP/MMAP2/FORK/EXIT/LOST records -> columns, per record type."""
    buf, bids = pd_.buf, pd_.build_ids
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
