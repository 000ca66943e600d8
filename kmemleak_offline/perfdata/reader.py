"""perf.data reader (file mode, little-endian): header, attrs, feature sections.

Why our own parser: a `perf record` capture already holds everything a recording needs (the
tracepoint payloads, call chains, comm/mmap side-band and, in HEADER_TRACING_DATA, the format
files of the kernel that produced it), so plain perf captures can be analysed postmortem without
perf or the original machine. Layout as in the kernel's tools/perf/Documentation/
perf.data-file-format.txt. The records are read later, a window at a time (`stream.py`,
`record_windows`), and turned into columns by `columns.py`.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..format import tracefs
from .errors import PerfDataError
from .stream import WINDOW, OnCut, Window, decompressed, file_windows, read_windows

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


def parse_attr(raw: bytes | memoryview, base: int, attr_size: int, index: int, ids: list[int]) -> Attr:
    """The perf_event_attr of `attr_size` bytes at `base` (attrs section or HEADER_ATTR record)."""
    typ, _sz, config, _period, stype, rfmt, flags = _u("<IIQQQQQ", raw, base, "attr")
    clockid = _u("<i", raw, base + 92, "attr")[0] if attr_size >= 96 else 0
    return Attr(index=index, type=typ, config=config, sample_type=stype, read_format=rfmt,
                sample_id_all=bool(flags >> 18 & 1), use_clockid=bool(flags >> 25 & 1),
                clockid=clockid, ids=ids)


@dataclass
class PerfData:
    """A parsed perf.data header: attrs, features, tracepoint formats, and where the records are.

    A pipe-mode stream (`pipe`) has none of these at first: they come as records of the stream
    (`pipe.absorb`). `damage` says why a file is incomplete (cut short, perf record killed): its
    records are then read up to the damage (salvaged)."""

    path: Path
    buf: np.ndarray  # the whole file, uint8 (empty for pipe streams)
    data_offset: int
    data_size: int | None  # None: the records run to the end of the file or stream
    attrs: list[Attr]
    features: dict[int, bytes]  # every feature section present, as bytes
    values: dict[int, Any] = field(default_factory=dict)  # parsed features (those with a parser)
    warnings: list[str] = field(default_factory=list)  # what reading had to leave out, one line each
    formats: dict[int, tracefs.EventFormat] = field(default_factory=dict)  # by tracepoint id
    kallsyms: bytes = b""  # kallsyms embedded in the tracing data (modern perf leaves it empty)
    page_size: int = 0
    threads: list[Path] = field(default_factory=list)  # perf record --threads: data.N, in order
    pipe: bool = False  # a `perf record -o -` stream: header records in the data
    stream: BinaryIO | None = None  # an open stream (stdin) to read the records from
    damage: str | None = None  # why the file is incomplete, if it is
    event_names: dict[int, str] = field(default_factory=dict)  # attr index -> name (EVENT_UPDATE)
    file_size: int = 0

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

    def add_feature(self, feat: int, blob: bytes) -> None:
        """Keep and parse one feature section (or pipe-mode HEADER_FEATURE record)."""
        self.features[feat] = blob
        spec = FEATURES.get(feat)
        if spec is None:
            return
        if spec.refuse:
            raise PerfDataError(f"{self.path}: {spec.refuse}")
        if spec.parse is not None:
            self.values[feat] = spec.parse(blob, self.warnings.append)
        if feat == F_TRACING_DATA:
            self.set_tracing_data(self.values[feat])

    def set_tracing_data(self, parsed: tuple[list[tracefs.EventFormat], bytes, int]) -> None:
        fmts, self.kallsyms, self.page_size = parsed
        self.formats.update({f.id: f for f in fmts})
        self.name_attrs()

    def given_names(self) -> dict[int, str]:
        """attr index -> the event name the file gives (EVENT_DESC, pipe-mode EVENT_UPDATE)."""
        return {**self.value(F_EVENT_DESC, {}), **self.event_names}

    def name_attrs(self) -> None:
        """Tracepoints are named by their format (no format: no name, their samples are skipped:
        payloads cannot be decoded); other events by the name the file gives."""
        names = self.given_names()
        for a in self.attrs:
            if a.type == PERF_TYPE_TRACEPOINT:
                fmt = self.formats.get(a.config)
                a.name = fmt.full_name if fmt is not None else None
            else:
                a.name = names.get(a.index)


# ------------------------------------------------------------------------------- header
def _u(fmt: str, blob: bytes | memoryview, off: int, what: str) -> tuple:
    try:
        return struct.unpack_from(fmt, blob, off)
    except struct.error:
        raise PerfDataError(f"truncated perf.data: {what} at offset {off} runs past the end") from None


def _pipe_header(head: bytes, where: str) -> None:
    """Check the start of a pipe stream: magic, then its size (16)."""
    n = min(len(head), 8)
    if head[:8] == MAGIC[::-1]:
        raise PerfDataError(f"{where}: big-endian perf.data is not supported")
    if not n or head[:n] != MAGIC[:n]:
        raise PerfDataError(f"{where}: not a perf.data file (no PERFILE2 magic)")
    if len(head) < 16:
        raise PerfDataError(f"{where}: truncated perf.data header ({len(head)} bytes)")


def read_pipe_stream(f: BinaryIO, where: str = "<stdin>") -> PerfData:
    """A pipe-mode stream (`perf record -o -`) on an open file object, read from its current position
    without seeking: the 16-byte header now, the records (header records included) later."""
    head = f.read(16) or b""
    _pipe_header(head, where)
    hsize = struct.unpack_from("<Q", head, 8)[0]
    if hsize != 16:
        raise PerfDataError(f"{where}: a perf.data file, not a pipe stream (header size {hsize}): "
                            "give the file's path instead of stdin")
    return PerfData(path=Path(where), buf=np.zeros(0, np.uint8), data_offset=16, data_size=None,
                    attrs=[], features={}, pipe=True, stream=f)


def read_perf_data(path: str | os.PathLike) -> PerfData:
    """Open and parse the file header, attrs and feature sections (records are parsed later).

    A `perf record --threads` directory is read as its `data` file (header, features, side-band)
    with the record streams of `data.N` appended; `perf record -z` records are decompressed. A
    saved pipe stream is recognised by its 16-byte header. A file cut short or left by a killed
    perf record is read as far as it goes (`damage` says what is missing)."""
    p = Path(path)
    threads: list[Path] = []
    if p.is_dir() and (p / "data").is_file():  # perf record --threads writes PATH/data + PATH/data.N
        threads = sorted((f for f in p.iterdir() if re.fullmatch(r"data\.\d+", f.name)),
                         key=lambda f: int(f.name[5:]))
        p = p / "data"
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(16)
            if size < 16 or struct.unpack_from("<Q", head, 8)[0] == 16:
                _pipe_header(head, str(p))
                return PerfData(path=p, buf=np.zeros(0, np.uint8), data_offset=16, data_size=None,
                                attrs=[], features={}, pipe=True, file_size=size)
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
    if size < HEADER_SIZE:
        raise PerfDataError(f"{p}: truncated perf.data header ({size} bytes of {HEADER_SIZE})")
    hsize, attr_size, a_off, a_size, d_off, d_size = _u("<6Q", raw, 8, "file header")
    if hsize < HEADER_SIZE or attr_size < 80:
        raise PerfDataError(f"{p}: corrupt perf.data header (size {hsize}, attr_size {attr_size})")
    bitmap = _u("<4Q", raw, 72, "feature bitmap")
    if a_off + a_size > size:
        raise PerfDataError(f"{p}: truncated perf.data: the attrs section ends at {a_off + a_size} "
                            f"but the file has {size} bytes (cut inside the header)")
    if d_off > size:
        raise PerfDataError(f"{p}: truncated perf.data: the data section starts at {d_off} "
                            f"but the file has {size} bytes (no records)")
    attrs = _read_attrs(raw, a_off, a_size, attr_size, p)
    damage, data_size = None, d_size
    if d_size == 0 and not threads:  # perf writes the data size when it finishes
        damage = ("the header's data size is 0 (perf record did not finish: killed?); "
                  "no feature sections (tracepoint formats, host, command line)")
        data_size = None
    elif d_off + d_size > size:
        damage = (f"the file is cut short ({size} bytes; its data section ends at {d_off + d_size}); "
                  "no feature sections (tracepoint formats, host, command line)")
        data_size = None
    pd_ = PerfData(path=p, buf=buf, data_offset=d_off, data_size=data_size, attrs=attrs, features={},
                   damage=damage, file_size=size)
    if damage is None:
        features, missing = _read_features(raw, d_off + d_size, bitmap, size)
        if missing:
            pd_.damage = (f"the file is cut short ({size} bytes) inside its feature sections: "
                          f"missing {', '.join(missing)}")
        for feat, blob in features.items():
            pd_.add_feature(feat, blob)
    if threads and F_DIR_FORMAT not in pd_.features:
        raise PerfDataError(f"{p.parent}: a directory with data.N files but its data file has no "
                            "HEADER_DIR_FORMAT (not a perf record --threads directory?)")
    pd_.threads = threads
    pd_.name_attrs()
    return pd_


def _read_attrs(raw: memoryview, off: int, size: int, attr_size: int, p: Path) -> list[Attr]:
    entry = attr_size  # perf_file_attr: the attr, then its ids section
    attr_size -= 16
    if size % entry:
        raise PerfDataError(f"{p}: corrupt attrs section ({size} bytes, entries of {entry})")
    out = []
    for i in range(size // entry):
        base = off + i * entry
        ids_off, ids_size = _u("<QQ", raw, base + attr_size, "attr ids")
        if ids_off + ids_size > len(raw):
            raise PerfDataError(f"{p}: truncated perf.data: attr ids at {ids_off} past the end")
        ids = list(np.frombuffer(raw, dtype="<u8", count=ids_size // 8, offset=ids_off).tolist())
        out.append(parse_attr(raw, base, attr_size, i, ids))
    if not out:
        raise PerfDataError(f"{p}: perf.data has no events (empty attrs section)")
    return out


def feature_name(feat: int) -> str:
    spec = FEATURES.get(feat)
    return spec.name if spec is not None else f"feature {feat}"


def _read_features(raw: memoryview, off: int, bitmap: tuple, size: int) -> tuple[dict[int, bytes], list[str]]:
    """The feature sections present (whole), and the names of those the file is cut before."""
    bits = [b for b in range(1, 256) if bitmap[b // 64] >> (b % 64) & 1]
    out, missing = {}, []
    for i, bit in enumerate(bits):
        if off + 16 * (i + 1) > size:
            missing += [feature_name(b) for b in bits[i:]]
            break
        f_off, f_size = struct.unpack_from("<QQ", raw, off + 16 * i)
        if f_off + f_size > size:
            missing.append(feature_name(bit))
            continue
        out[bit] = bytes(raw[f_off:f_off + f_size])
    return out, missing


# ------------------------------------------------------------------------------ records
def record_windows(pd_: PerfData, window: int = WINDOW, on_cut: OnCut | None = None) -> Iterator[Window]:
    """The data section's records a window at a time (decompressed), then those of each --threads
    `data.N` file (each its own stream, as perf reads them). A pipe stream is read from its open
    file object, without seeking. `on_cut(offset, why)`: the records end in a cut or damaged
    record at `offset` of the file (the whole records before it are yielded); without it, that
    is an error."""
    if pd_.stream is not None:
        yield from decompressed(read_windows(pd_.stream, None, str(pd_.path), window, on_cut, 16), window,
                                on_cut)
        return
    yield from file_windows(pd_.path, pd_.data_offset, pd_.data_size, window, on_cut)
    for f in pd_.threads:
        yield from file_windows(f, 0, None, window, on_cut)
