"""The record stream of a perf.data, as windows of whole records: what keeps import bounded.

Why: a perf.data can be larger than memory. A stream (the data section of a file, each `data.N`
of a --threads directory, or a pipe) is read a window at a time into a buffer of its own (read(),
not mmap: pages of a mapped file count as the process's memory until unmapped, and pipes cannot
be mapped); the boundaries of its records are found with `chain.record_starts`, and the bytes of
a record cut by the window's end are carried into the next window. COMPRESSED/COMPRESSED2
records (perf record -z) are replaced by the records they hold, where they are, through one zstd
context per stream (a frame may span records; a record may span frames), decompressed output cut
into windows of the same bound.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .chain import Damaged, record_starts
from .errors import PerfDataError

WINDOW = 32 << 20  # bytes of records per window
REC_COMPRESSED, REC_COMPRESSED2 = 81, 83
OnCut = Callable[[int, str], None]  # (file offset where the whole records end, what is there)


@dataclass
class Window:
    """Whole records: buf[offs[i]:ends[i]] is record i; `base` is buf[0]'s offset in the stream."""

    buf: np.ndarray  # uint8; valid until the next window is read (the buffer is reused)
    offs: np.ndarray  # int64
    ends: np.ndarray  # int64
    base: int
    where: str

    @property
    def valid(self) -> int:
        """Bytes of records in buf (the rest is padding)."""
        return int(self.ends[-1]) if len(self.ends) else 0

    @cached_property
    def types(self) -> np.ndarray:
        return _at(self.buf, self.offs, "<u4").astype(np.uint32)

    @cached_property
    def misc(self) -> np.ndarray:
        return _at(self.buf, self.offs + 4, "<u2").astype(np.uint16)


def _at(buf: np.ndarray, pos: np.ndarray, dtype: str) -> np.ndarray:
    dt = np.dtype(dtype)
    if not len(pos):
        return np.zeros(0, dt)
    view = np.ndarray(shape=(len(buf) - dt.itemsize + 1,), dtype=dt, buffer=buf, strides=(1,))
    return view[pos]


def _read_full(f: BinaryIO, into: memoryview) -> int:
    """Fill `into` from f (pipes return short reads); fewer bytes only at end of file."""
    got = 0
    while got < len(into):
        n = f.readinto(into[got:])
        if not n:
            break
        got += n
    return got


def read_windows(f: BinaryIO, limit: int | None, where: str, window: int = WINDOW,
                 on_cut: OnCut | None = None, origin: int = 0) -> Iterator[Window]:
    """Windows of the records in the next `limit` bytes of f (to its end if None). One buffer is
    reused: a window is valid until the next is asked for (callers copy what they keep).

    A stream that ends inside a record, or reaches a record header that cannot be one (damage),
    is an error; with `on_cut`, the whole records before it are yielded and on_cut(offset, why)
    is told where they end (`origin`: the file offset of the stream's first byte)."""
    buf = np.empty(window, np.uint8)
    carry = 0  # bytes at buf's start: a record cut by the previous window's end
    base, left = 0, limit
    while True:
        want = len(buf) - carry if left is None else min(len(buf) - carry, left)
        got = _read_full(f, memoryview(buf)[carry:carry + want])
        if left is not None:
            left -= got
        n = carry + got
        eof = got < want or left == 0
        try:
            offs, ends, consumed = record_starts(buf, n, where, base)
        except Damaged as exc:
            if on_cut is None:
                raise
            offs, ends, _ = record_starts(buf, exc.at, where, base)
            if len(offs):
                yield Window(buf, offs, ends, base, where)
            on_cut(origin + base + exc.at, "a damaged record (size < 8)")
            return
        if len(offs):
            yield Window(buf, offs, ends, base, where)
        if eof:
            if consumed < n:
                if on_cut is None:
                    raise PerfDataError(f"{where}: truncated perf.data: the record at offset {base + consumed} "
                                        "ends past the end of the data")
                on_cut(origin + base + consumed, f"a record cut short ({n - consumed} bytes of it)")
            return
        carry = n - consumed
        if consumed == 0:  # one record larger than the window (pipe-mode tracing data)
            bigger = np.empty(2 * len(buf), np.uint8)
            bigger[:carry] = buf[:carry]
            buf = bigger
        else:
            buf[:carry] = buf[consumed:n].copy()
        base += consumed


class Zstd:
    """One decompression context over a stream's PERF_RECORD_COMPRESSED payloads (perf keeps one
    per data file): a zstd frame may span records, and a new frame may follow an ended one."""

    def __init__(self, where: str) -> None:
        import zstandard  # only compressed files need it

        self._zstd = zstandard
        self._obj = None
        self.where = where
        self.pending = b""  # decompressed bytes of a record not complete yet

    def feed(self, payload: bytes, offset: int) -> bytes:
        """The whole records decompressed so far (a partial last record is kept for later)."""
        out = [self.pending]
        try:
            while payload:
                if self._obj is None:
                    self._obj = self._zstd.ZstdDecompressor().decompressobj()
                out.append(self._obj.decompress(payload))
                if self._obj.eof:
                    payload, self._obj = self._obj.unused_data, None
                else:
                    payload = b""
        except self._zstd.ZstdError as exc:
            raise PerfDataError(f"{self.where}: corrupt compressed record at offset {offset}: {exc}") from None
        data = b"".join(out)
        arr = np.frombuffer(data, np.uint8)
        _, _, cut = record_starts(arr, len(arr), f"{self.where}: inside a compressed record")
        self.pending = data[cut:]
        return data[:cut]


def _payload(w: Window, i: int, typ: int) -> bytes:
    o, e = int(w.offs[i]), int(w.ends[i])
    if typ == REC_COMPRESSED:
        return w.buf[o + 8:e].tobytes()
    # COMPRESSED2: u64 data_size, then the data, padded to 8 bytes
    dsz = struct.unpack_from("<Q", w.buf, o + 8)[0] if e - o >= 16 else 0
    return w.buf[o + 16:o + 16 + min(dsz, e - o - 16)].tobytes()


def _joined(pieces: list[np.ndarray], base: int, where: str) -> Iterator[Window]:
    """One window of the records laid end to end in `pieces` (all whole)."""
    n = sum(len(p) for p in pieces)
    if not n:
        return
    buf = np.empty(n, np.uint8)
    pos = 0
    for p in pieces:
        buf[pos:pos + len(p)] = p
        pos += len(p)
    offs, ends, consumed = record_starts(buf, n, where, base)
    if consumed != n:
        raise PerfDataError(f"{where}: corrupt record at offset {base + consumed} among decompressed records")
    types = _at(buf, offs, "<u4")
    if ((types == REC_COMPRESSED) | (types == REC_COMPRESSED2)).any():
        raise PerfDataError(f"{where}: corrupt record: compressed records inside compressed records")
    yield Window(buf, offs, ends, base, where)


def decompressed(windows: Iterable[Window], window: int = WINDOW, on_cut: OnCut | None = None) -> Iterator[Window]:
    """The windows with every COMPRESSED/COMPRESSED2 record replaced, in place, by its records.
    Compressed records that end inside a record are an error, or said through `on_cut`."""
    dec: Zstd | None = None
    where = ""
    for w in windows:
        where = w.where
        types = w.types
        comp = np.flatnonzero((types == REC_COMPRESSED) | (types == REC_COMPRESSED2))
        if not len(comp):
            yield w
            continue
        if dec is None:
            dec = Zstd(w.where)
        pieces: list[np.ndarray] = []
        size, prev = 0, 0
        for i in comp.tolist():  # one step per compressed record (each holds many records)
            if i > prev:
                pieces.append(w.buf[w.offs[prev]:w.offs[i]])
                size += len(pieces[-1])
            data = dec.feed(_payload(w, i, int(types[i])), w.base + int(w.offs[i]))
            if data:
                pieces.append(np.frombuffer(data, np.uint8))
                size += len(data)
            prev = i + 1
            if size >= window:
                yield from _joined(pieces, w.base, w.where)
                pieces, size = [], 0
        if prev < len(w.offs):
            pieces.append(w.buf[w.offs[prev]:w.ends[-1]])
        yield from _joined(pieces, w.base, w.where)
    if dec is not None and dec.pending:
        if on_cut is not None:
            on_cut(-1, f"compressed records ending inside a record ({len(dec.pending)} bytes of it)")
            return
        raise PerfDataError(f"{where}: truncated perf.data: the compressed records end inside a "
                            f"record ({len(dec.pending)} bytes left over)")


def file_windows(path: Path, offset: int, size: int | None, window: int = WINDOW,
                 on_cut: OnCut | None = None) -> Iterator[Window]:
    """Decompressed windows of `size` bytes of records at `offset` of a file (to its end if None)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below, after the generator's last window)
    except OSError as exc:
        raise PerfDataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with f:
        f.seek(offset)
        yield from decompressed(read_windows(f, size, str(path), window, on_cut, offset), window, on_cut)
