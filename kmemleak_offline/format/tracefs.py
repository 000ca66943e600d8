"""tracefs event `format` text -> field table, and vectorised decoding of raw payload columns.

The recording keeps each event's format text, so payloads decode with the offsets of the kernel
that produced them. Decoding is columnar: one numpy gather per field over all payloads of an event.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from kmemleak_offline.format.lazy import lazy

# imported at first use: the recorder parses formats before enabling events and never decodes
np = lazy("numpy", globals(), "np")
pa = lazy("pyarrow", globals(), "pa")

_FIELD_RE = re.compile(
    r"field:(?P<decl>.+?);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>-?\d+);"
)


class FormatError(ValueError):
    """A tracefs format text that cannot be parsed."""


@dataclass(frozen=True)
class Field:
    """One `field:` line of a tracefs format file."""

    name: str
    type: str  # declared C type without the name, e.g. "unsigned long", "char[16]", "__data_loc char[]"
    offset: int
    size: int
    signed: bool
    array_len: int | None = None  # element count for fixed arrays (`char comm[16]` -> 16); None for scalars
    data_loc: bool = False  # `__data_loc` dynamic field: u32 (offset | len << 16)
    common: bool = False  # common_* header field

    @property
    def elem_size(self) -> int:
        """Size of one element: the whole field for scalars, size / len for arrays."""
        if self.data_loc:
            return 1
        if self.array_len:
            return max(1, self.size // self.array_len)
        return self.size

    @property
    def is_string(self) -> bool:
        """char arrays and __data_loc char[] are decoded as byte strings."""
        return (self.data_loc or self.array_len is not None) and "char" in self.type

    @property
    def is_pointer(self) -> bool:
        return "*" in self.type


@dataclass
class EventFormat:
    """Parsed tracefs `format` file of one event."""

    system: str
    name: str
    id: int
    fields: list[Field]
    print_fmt: str
    text: str = field(repr=False, default="")

    @property
    def full_name(self) -> str:
        return f"{self.system}:{self.name}"

    def field_map(self) -> dict[str, Field]:
        return {f.name: f for f in self.fields}

    def has_field(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    @property
    def min_payload(self) -> int:
        """The fewest payload bytes the kernel writes for this event: up to the end of its last
        fixed field (a __data_loc field is its 4-byte offset/length word)."""
        return max((f.offset + (4 if f.data_loc else f.size) for f in self.fields), default=0)


def _parse_decl(decl: str) -> tuple[str, str, int | None, bool]:
    """Split `unsigned long call_site` / `char comm[16]` / `__data_loc char[] name` into parts."""
    decl = decl.strip()
    data_loc = decl.startswith("__data_loc")
    m = re.match(r"^(?P<type>.*?)(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<arr>\[[^\]]*\])?\s*$", decl)
    if not m:
        raise FormatError(f"cannot parse field declaration {decl!r}")
    ctype = m.group("type").strip()
    name = m.group("name")
    arr = m.group("arr")
    array_len: int | None = None
    if arr is not None:
        inner = arr[1:-1].strip()
        array_len = int(inner, 0) if inner.isdigit() or inner.startswith("0x") else 0
        ctype = f"{ctype}[{inner}]"
    return ctype, name, array_len, data_loc


def parse_format(text: str, system: str | None = None) -> EventFormat:
    """Parse the text of `/sys/kernel/tracing/events/SYS/NAME/format`.

    `system` is needed because the file itself names only the event, not its system.
    """
    name = None
    ev_id = None
    fields: list[Field] = []
    print_fmt = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("name:"):
            name = s[5:].strip()
        elif s.startswith("ID:"):
            try:
                ev_id = int(s[3:].strip())
            except ValueError as exc:
                raise FormatError(f"bad ID line {s!r}") from exc
        elif s.startswith("field:"):
            m = _FIELD_RE.search(s)
            if not m:
                raise FormatError(f"cannot parse field line {s!r}")
            ctype, fname, array_len, data_loc = _parse_decl(m.group("decl"))
            if data_loc:
                array_len = None
            fields.append(
                Field(
                    name=fname,
                    type=ctype,
                    offset=int(m.group("offset")),
                    size=int(m.group("size")),
                    signed=m.group("signed") == "1",
                    array_len=array_len,
                    data_loc=data_loc,
                    common=fname.startswith("common_"),
                )
            )
        elif s.startswith("print fmt:"):
            print_fmt = s[len("print fmt:"):].strip()
    if name is None or ev_id is None:
        raise FormatError("format text has no name: or ID: line")
    return EventFormat(system=system or "", name=name, id=ev_id, fields=fields,
                       print_fmt=print_fmt, text=text)


_INT_DTYPES = {  # numpy dtype names: numpy is imported at first use
    (1, False): "uint8", (1, True): "int8",
    (2, False): "uint16", (2, True): "int16",
    (4, False): "uint32", (4, True): "int32",
    (8, False): "uint64", (8, True): "int64",
}


def raw_buffers(raw: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data uint8, starts, lengths) of a binary Arrow array, without copying payloads: starts
    are a view of the array's offsets (int32 for binary, int64 for large_binary), lengths of the
    same width.

    Nulls read as empty payloads.
    """
    if isinstance(raw, pa.ChunkedArray):
        raw = pa.concat_arrays(raw.chunks) if raw.num_chunks != 1 else raw.chunk(0)
    bufs = raw.buffers()
    n = len(raw)
    width = np.int32 if pa.types.is_binary(raw.type) else np.int64
    offsets = np.frombuffer(bufs[1], dtype=width, count=n + 1 + raw.offset)[raw.offset:]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    if raw.null_count:
        lengths = np.where(raw.is_null().to_numpy(zero_copy_only=False), 0, lengths)
    return data, starts, lengths


def _gather(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, offset, size: int):
    """Bytes [offset, offset+size) of every payload as an (n, size) uint8 matrix; short rows are zero.

    `offset` may be a scalar or a per-row array.
    """
    n = len(starts)
    off = np.asarray(offset, dtype=np.int64)
    ok = (off + size) <= lengths
    idx = (starts + off)[:, None] + np.arange(size, dtype=np.int64)[None, :]
    if n and len(data):
        idx = np.clip(idx, 0, len(data) - 1)
        out = data[idx]
    else:
        out = np.zeros((n, size), dtype=np.uint8)
    if not ok.all():
        out = out.copy()
        out[~ok] = 0
    return out, ok


def _gather_scalar(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, offset: int,
                   dtype: np.dtype, min_len: int | None = None) -> np.ndarray:
    """One little-endian integer per payload, read through an unaligned strided view of the data
    buffer (a single 1-D gather: ~4x faster than gathering a byte matrix). Short rows read 0.

    `min_len` (the shortest payload, if the caller knows it) skips the per-row length check."""
    size = dtype.itemsize
    n = len(starts)
    if n == 0 or len(data) < size:
        return np.zeros(n, dtype=dtype)
    if min_len is None:
        min_len = int(lengths.min())
    if offset + size <= min_len:  # every row holds the field: gather at starts from a shifted view
        view = np.ndarray(shape=(len(data) - offset - size + 1,), dtype=dtype.newbyteorder("<"),
                          buffer=data, offset=offset, strides=(1,))
        return view[starts].astype(dtype, copy=False)
    view = np.ndarray(shape=(len(data) - size + 1,), dtype=dtype.newbyteorder("<"), buffer=data,
                      strides=(1,))
    pos = starts + offset
    ok = (offset + size) <= lengths
    if ok.all():
        return view[pos].astype(dtype, copy=False)
    return np.where(ok, view[np.where(ok, pos, 0)], 0).astype(dtype)


def decode_field(fld: Field, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                 min_len: int | None = None) -> np.ndarray:
    """Decode one field for all payloads.

    Scalars -> numpy ints of the declared width and sign. Strings (char arrays, __data_loc char[])
    -> numpy fixed-width bytes (`S`), trailing NULs stripped. Other arrays -> their first element
    (the expression language sees arrays as pointers; printing handles them separately).
    """
    if fld.data_loc:
        loc, _ = _gather(data, starts, lengths, fld.offset, 4)
        loc = np.ascontiguousarray(loc).view("<u4").ravel()
        off = (loc & 0xFFFF).astype(np.int64)
        ln = (loc >> 16).astype(np.int64)
        width = int(ln.max()) if len(ln) else 0
        if width == 0:
            return np.zeros(len(starts), dtype="S1")
        k = np.arange(width, dtype=np.int64)[None, :]
        valid = (k < ln[:, None]) & ((off[:, None] + k) < lengths[:, None])
        idx = np.clip((starts + off)[:, None] + k, 0, max(len(data) - 1, 0))
        mat = np.where(valid, data[idx] if len(data) else 0, 0).astype(np.uint8)
        return np.ascontiguousarray(mat).view(f"S{width}").ravel()
    if fld.is_string:
        mat, _ = _gather(data, starts, lengths, fld.offset, max(fld.size, 1))
        return np.ascontiguousarray(mat).view(f"S{max(fld.size, 1)}").ravel()
    esize = fld.elem_size
    dtype = _INT_DTYPES.get((esize, fld.signed))
    if dtype is not None:
        return _gather_scalar(data, starts, lengths, fld.offset, np.dtype(dtype), min_len)
    dtype = np.uint64  # odd sizes: unsigned bytes as big int
    esize = min(esize, 8)
    mat, _ = _gather(data, starts, lengths, fld.offset, esize)
    if mat.shape[1] != np.dtype(dtype).itemsize:
        pad = np.zeros((len(mat), np.dtype(dtype).itemsize), np.uint8)
        pad[:, : mat.shape[1]] = mat
        mat = pad
    return np.ascontiguousarray(mat).view(np.dtype(dtype).newbyteorder("<")).ravel().astype(dtype)


def decode(fmt: EventFormat, raw: pa.Array, fields: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Decode the payloads of one event type into {field name: numpy column}.

    __data_loc fields also yield `<name>_offset` and `<name>_len` (u16), like perf-prof's
    expression compiler sees them.
    """
    return decode_rows(fmt, *raw_buffers(raw), fields=fields)


def decode_rows(fmt: EventFormat, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                fields: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """`decode` over payloads addressed by (start, length) in one buffer: no payload copies."""
    want = set(fields) if fields is not None else None
    out: dict[str, np.ndarray] = {}
    min_len = int(lengths.min()) if len(lengths) else 0  # once, not per field
    for fld in fmt.fields:
        pseudo = {f"{fld.name}_offset", f"{fld.name}_len"} if fld.data_loc else set()
        if want is not None and fld.name not in want and not (pseudo & want):
            continue
        if fld.data_loc:
            loc = _gather_scalar(data, starts, lengths, fld.offset, np.dtype(np.uint32), min_len)
            out[f"{fld.name}_offset"] = (loc & 0xFFFF).astype(np.uint16)
            out[f"{fld.name}_len"] = (loc >> 16).astype(np.uint16)
        if want is None or fld.name in want or fld.data_loc:
            out[fld.name] = decode_field(fld, data, starts, lengths, min_len)
    return out
