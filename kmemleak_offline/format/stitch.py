"""Stitch complete Parquet files into one file by copying their bytes and rewriting the footer.

Why: the recorder writes crash-safe part files while it records, and a clean stop must leave one
file. Decoding and re-encoding every row (pyarrow's only way to merge) costs as much CPU as writing
them in the first place; the row groups of the parts are already what the final file needs. A
Parquet file is `PAR1`, column chunks, a Thrift-compact `FileMetaData` footer, its length and
`PAR1`; the footer addresses chunks by absolute file offset. So the final file is the parts' chunk
bytes back to back, plus one footer listing all their row groups with offsets shifted by where each
part's bytes landed. Only offsets, ordinals, the row count and the key-value metadata change.

The Thrift compact protocol is parsed generically (fields kept in order, unknown ones round-trip).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"PAR1"

# Thrift compact type codes
_TRUE, _FALSE, _I8, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)

# Parquet FileMetaData / RowGroup / ColumnChunk / ColumnMetaData field ids (parquet.thrift)
_FMD_SCHEMA, _FMD_NUM_ROWS, _FMD_ROW_GROUPS, _FMD_KV = 2, 3, 4, 5
_RG_COLUMNS, _RG_FILE_OFFSET, _RG_ORDINAL = 1, 5, 7
_CC_FILE_PATH, _CC_FILE_OFFSET, _CC_META = 1, 2, 3
# page index pointers (offset index 4/5, column index 6/7): the indexes hold absolute page offsets
# of their own part, so a stitched file leaves them out (readers then scan pages, as without)
_CC_PAGE_INDEX = (4, 5, 6, 7)
_CMD_OFFSETS = (9, 10, 11, 14)  # data, index, dictionary page offsets; bloom filter offset


class StitchError(ValueError):
    """A part is not a plain Parquet file this module can stitch (encrypted, external chunks...)."""


@dataclass
class TList:
    etype: int
    items: list[Any]


@dataclass
class TMap:
    ktype: int
    vtype: int
    items: list[tuple[Any, Any]]


TStruct = list  # of [field id, type, value]


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def byte(self) -> int:
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = out = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if b < 0x80:
                return out
            shift += 7

    def zigzag(self) -> int:
        z = self.varint()
        return (z >> 1) ^ -(z & 1)

    def value(self, ttype: int) -> Any:
        if ttype in (_TRUE, _FALSE):  # inside a container: one byte, 1 = true
            return self.byte() == _TRUE
        if ttype == _I8:
            return self.byte()
        if ttype in (_I16, _I32, _I64):
            return self.zigzag()
        if ttype == _DOUBLE:
            self.pos += 8
            return self.buf[self.pos - 8:self.pos]
        if ttype == _BINARY:
            n = self.varint()
            self.pos += n
            return self.buf[self.pos - n:self.pos]
        if ttype in (_LIST, _SET):
            h = self.byte()
            n, etype = h >> 4, h & 0x0F
            if n == 15:
                n = self.varint()
            return TList(etype, [self.value(etype) for _ in range(n)])
        if ttype == _MAP:
            n = self.varint()
            if not n:
                return TMap(0, 0, [])
            kv = self.byte()
            k, v = kv >> 4, kv & 0x0F
            return TMap(k, v, [(self.value(k), self.value(v)) for _ in range(n)])
        if ttype == _STRUCT:
            return self.struct()
        raise StitchError(f"unknown Thrift compact type {ttype}")

    def struct(self) -> TStruct:
        fields: TStruct = []
        fid = 0
        while True:
            h = self.byte()
            ttype = h & 0x0F
            if ttype == 0:
                return fields
            fid = fid + (h >> 4) if h >> 4 else self.zigzag()
            if ttype in (_TRUE, _FALSE):
                fields.append([fid, _TRUE, ttype == _TRUE])
            else:
                fields.append([fid, ttype, self.value(ttype)])


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def varint(self, n: int) -> None:
        while n >= 0x80:
            self.out.append((n & 0x7F) | 0x80)
            n >>= 7
        self.out.append(n)

    def zigzag(self, n: int) -> None:
        self.varint((n << 1) ^ (n >> 63))

    def value(self, ttype: int, v: Any) -> None:
        if ttype in (_TRUE, _FALSE):
            self.out.append(_TRUE if v else _FALSE)
        elif ttype == _I8:
            self.out.append(v)
        elif ttype in (_I16, _I32, _I64):
            self.zigzag(v)
        elif ttype == _DOUBLE:
            self.out += v
        elif ttype == _BINARY:
            self.varint(len(v))
            self.out += v
        elif ttype in (_LIST, _SET):
            n = len(v.items)
            if n < 15:
                self.out.append(n << 4 | v.etype)
            else:
                self.out.append(0xF0 | v.etype)
                self.varint(n)
            for item in v.items:
                self.value(v.etype, item)
        elif ttype == _MAP:
            self.varint(len(v.items))
            if v.items:
                self.out.append(v.ktype << 4 | v.vtype)
                for k, val in v.items:
                    self.value(v.ktype, k)
                    self.value(v.vtype, val)
        elif ttype == _STRUCT:
            self.struct(v)
        else:
            raise StitchError(f"unknown Thrift compact type {ttype}")

    def struct(self, fields: TStruct) -> None:
        last = 0
        for fid, ttype, v in fields:
            wire = (_TRUE if v else _FALSE) if ttype in (_TRUE, _FALSE) else ttype
            if 0 < fid - last <= 15:
                self.out.append((fid - last) << 4 | wire)
            else:
                self.out.append(wire)
                self.zigzag(fid)
            last = fid
            if ttype not in (_TRUE, _FALSE):
                self.value(ttype, v)
        self.out.append(0)


def _field(fields: TStruct, fid: int) -> list | None:
    return next((f for f in fields if f[0] == fid), None)


def _shift(fields: TStruct, fids: Sequence[int], delta: int) -> None:
    for f in fields:
        if f[0] in fids and f[1] == _I64:
            f[2] += delta


def read_footer(path: str | os.PathLike) -> tuple[TStruct, int]:
    """(parsed FileMetaData, byte offset where the footer starts) of a Parquet file."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size < 12:
            raise StitchError(f"{path}: too short for Parquet")
        f.seek(size - 8)
        tail = f.read(8)
        f.seek(0)
        head = f.read(4)
        if head != MAGIC or tail[4:] != MAGIC:
            raise StitchError(f"{path}: not a plain Parquet file (encrypted or foreign)")
        (flen,) = struct.unpack("<I", tail[:4])
        start = size - 8 - flen
        f.seek(start)
        return _Reader(f.read(flen)).struct(), start


@dataclass
class Piece:
    """Some row groups of a part (all when `groups` is None)."""

    path: str | os.PathLike
    groups: Sequence[int] | None = None


@dataclass(frozen=True)
class Leaf:
    """A leaf column of the output schema: enough to write a page of nulls for it."""

    path: tuple[str, ...]
    physical: int  # Parquet physical type code
    max_def: int
    max_rep: int


@dataclass
class Target:
    """The output schema (the FileMetaData schema and column-orders fields, and its leaves in
    order), for parts that lack some of its columns (a lean sample part): those columns are
    written as pages of nulls."""

    schema: list
    column_orders: list | None
    leaves: Sequence[Leaf]

    @classmethod
    def of(cls, path: str | os.PathLike) -> Target:
        """The schema of a Parquet file."""
        fmd, _ = read_footer(path)
        schema = _field(fmd, _FMD_SCHEMA)
        leaves: list[Leaf] = []
        elements = iter(schema[2].items)

        def walk(prefix: tuple[str, ...], dfn: int, rep: int) -> None:
            el = next(elements)
            name = _field(el, 4)[2].decode()
            kind = _field(el, 3)[2] if _field(el, 3) else 0  # REQUIRED, OPTIONAL, REPEATED
            d, r = dfn + (kind != 0), rep + (kind == 2)
            children = _field(el, 5)
            if children:
                for _ in range(children[2]):
                    walk((*prefix, name), d, r)
            else:
                leaves.append(Leaf((*prefix, name), _field(el, 1)[2], d, r))

        root = next(elements)
        for _ in range(_field(root, 5)[2]):
            walk((), 0, 0)
        return cls(schema, _field(fmd, 7), leaves)


def _chunk_range(cc: TStruct) -> tuple[int, int]:
    cmd = _field(cc, _CC_META)[2]
    dict_off = _field(cmd, 11)
    start = dict_off[2] if dict_off else _field(cmd, 9)[2]
    return start, start + _field(cmd, 7)[2]


def _leaf_paths(fmd: TStruct) -> list[tuple[bytes, ...]]:
    groups = _field(fmd, _FMD_ROW_GROUPS)
    if groups and groups[2].items:
        return [tuple(_field(_field(cc, _CC_META)[2], 3)[2].items)
                for cc in _field(groups[2].items[0], _RG_COLUMNS)[2].items]
    return []


def _null_chunk(leaf: Leaf, rows: int, at: int) -> tuple[bytes, TStruct]:
    """A column chunk of `rows` nulls (one data page, levels only) placed at file offset `at`."""
    def levels(n: int) -> bytes:
        run = bytearray()
        v = n << 1
        while v >= 0x80:
            run.append((v & 0x7F) | 0x80)
            v >>= 7
        run.append(v)
        run.append(0)
        return struct.pack("<I", len(run)) + bytes(run)

    body = (levels(rows) if leaf.max_rep else b"") + levels(rows)
    w = _Writer()
    crc = zlib.crc32(body)  # the page checksum readers verify (format/integrity.py), signed i32
    w.struct([[1, _I32, 0], [2, _I32, len(body)], [3, _I32, len(body)],
              [4, _I32, crc - (1 << 32) if crc >= 1 << 31 else crc],
              [5, _STRUCT, [[1, _I32, rows], [2, _I32, 0], [3, _I32, 3], [4, _I32, 3]]]])
    page = bytes(w.out) + body
    cmd = [[1, _I32, leaf.physical], [2, _LIST, TList(_I32, [0, 3])],
           [3, _LIST, TList(_BINARY, [p.encode() for p in leaf.path])], [4, _I32, 0],
           [5, _I64, rows], [6, _I64, len(page)], [7, _I64, len(page)], [9, _I64, at],
           [12, _STRUCT, [[3, _I64, rows]]]]
    return page, [[_CC_FILE_OFFSET, _I64, at], [_CC_META, _STRUCT, cmd]]


def stitch(parts: Sequence[str | os.PathLike | Piece], out: str | os.PathLike,
           kv_metadata: Mapping[bytes, bytes] | None = None, chunk: int = 1 << 22,
           target: Target | None = None, drop_keys: Sequence[bytes] = ()) -> int:
    """Write `out` holding every row group of `parts` (same schema), in order; returns its row count.

    `kv_metadata` replaces values of the first part's key-value metadata (other keys, such as
    ARROW:schema, are kept); `drop_keys` are left out. A `Piece` takes only some row groups of its
    file (their bytes are copied, offsets shifted). With `target`, the output has that schema and
    parts may lack some of its columns, which are then written as pages of nulls (with their CRC).
    """
    if not parts:
        raise StitchError("nothing to stitch")
    pieces = [p if isinstance(p, Piece) else Piece(p) for p in parts]
    footers = [read_footer(p.path) for p in pieces]
    meta0 = footers[0][0]
    if target is None:
        schema0 = _encoded(_field(meta0, _FMD_SCHEMA))
        for piece, (fmd, _) in zip(pieces[1:], footers[1:]):
            if _encoded(_field(fmd, _FMD_SCHEMA)) != schema0:
                raise StitchError(f"{piece.path}: its schema differs from {pieces[0].path}'s; "
                                  "parts must share one")
    row_groups: list[Any] = []
    num_rows = 0
    with open(out, "wb") as dst:
        dst.write(MAGIC)
        for piece, (fmd, end) in zip(pieces, footers):
            groups = _field(fmd, _FMD_ROW_GROUPS)
            items = groups[2].items if groups else []
            if piece.groups is None and target is None:  # the whole part: one copy
                _copy_all(piece, fmd, items, end, dst, row_groups, chunk)
                rows = _field(fmd, _FMD_NUM_ROWS)
                num_rows += rows[2] if rows else 0
                continue
            paths = _leaf_paths(fmd)
            for g in (range(len(items)) if piece.groups is None else piece.groups):
                rg = items[g]
                ccs = _field(rg, _RG_COLUMNS)[2].items
                lo = min(_chunk_range(cc)[0] for cc in ccs)
                hi = max(_chunk_range(cc)[1] for cc in ccs)
                delta = dst.tell() - lo
                _copy_range(piece.path, lo, hi, dst, chunk)
                for cc in ccs:
                    if _field(cc, _CC_FILE_PATH):
                        raise StitchError(f"{piece.path}: column chunks in another file")
                    _shift(cc, (_CC_FILE_OFFSET,), delta)
                    cc[:] = [f for f in cc if f[0] not in _CC_PAGE_INDEX]
                    _shift(_field(cc, _CC_META)[2], _CMD_OFFSETS, delta)
                nrows = _field(rg, 3)[2]
                if target is not None:
                    have = dict(zip(paths, ccs, strict=True))
                    want = [tuple(p.encode() for p in leaf.path) for leaf in target.leaves]
                    if set(have) - set(want):
                        raise StitchError(f"{piece.path}: columns the output schema lacks")
                    out_ccs = []
                    for leaf, key in zip(target.leaves, want, strict=True):
                        if key in have:
                            out_ccs.append(have[key])
                            continue
                        page, cc = _null_chunk(leaf, nrows, dst.tell())
                        dst.write(page)
                        out_ccs.append(cc)
                    _field(rg, _RG_COLUMNS)[2] = TList(_STRUCT, out_ccs)
                    metas = [_field(cc, _CC_META)[2] for cc in out_ccs]
                    _field(rg, 2)[2] = sum(_field(m, 6)[2] for m in metas)  # total_byte_size
                    if _field(rg, 6):
                        _field(rg, 6)[2] = sum(_field(m, 7)[2] for m in metas)
                _shift(rg, (_RG_FILE_OFFSET,), delta)
                ordinal = _field(rg, _RG_ORDINAL)
                if ordinal:
                    ordinal[2] = len(row_groups)
                row_groups.append(rg)
                num_rows += nrows
        fmd = [list(f) for f in meta0]
        if target is not None:
            fmd = [f for f in fmd if f[0] not in (_FMD_SCHEMA, 7)]
            fmd += [list(target.schema)] + ([list(target.column_orders)] if target.column_orders else [])
            fmd.sort(key=lambda f: f[0])
        for f in fmd:
            if f[0] == _FMD_NUM_ROWS:
                f[2] = num_rows
            elif f[0] == _FMD_ROW_GROUPS:
                f[2] = TList(_STRUCT, row_groups)
        if kv_metadata:
            set_kv(fmd, kv_metadata)
        if drop_keys:
            drop_kv(fmd, drop_keys)
        w = _Writer()
        w.struct(fmd)
        dst.write(w.out)
        dst.write(struct.pack("<I", len(w.out)) + MAGIC)
    return num_rows


def _copy_all(piece: Piece, fmd: TStruct, items: list, end: int, dst, row_groups: list,
              chunk: int) -> None:
    delta = dst.tell() - len(MAGIC)
    for rg in items:
        _shift(rg, (_RG_FILE_OFFSET,), delta)
        for cc in _field(rg, _RG_COLUMNS)[2].items:
            if _field(cc, _CC_FILE_PATH):
                raise StitchError(f"{piece.path}: column chunks in another file")
            _shift(cc, (_CC_FILE_OFFSET,), delta)
            cc[:] = [f for f in cc if f[0] not in _CC_PAGE_INDEX]
            _shift(_field(cc, _CC_META)[2], _CMD_OFFSETS, delta)
        ordinal = _field(rg, _RG_ORDINAL)
        if ordinal:
            ordinal[2] = len(row_groups)
        row_groups.append(rg)
    _copy_range(piece.path, len(MAGIC), end, dst, chunk)


def _copy_range(path: str | os.PathLike, lo: int, hi: int, dst, chunk: int) -> None:
    with open(path, "rb") as src:
        src.seek(lo)
        left = hi - lo
        while left > 0:
            buf = src.read(min(chunk, left))
            if not buf:
                raise StitchError(f"{path}: truncated")
            dst.write(buf)
            left -= len(buf)


def _encoded(field: list | None) -> bytes:
    """A footer field's Thrift encoding (to compare schemas)."""
    if field is None:
        return b""
    w = _Writer()
    w.struct([field])
    return bytes(w.out)


def encode(fmd: TStruct) -> bytes:
    """A FileMetaData's Thrift compact encoding (a footer's bytes)."""
    w = _Writer()
    w.struct(fmd)
    return bytes(w.out)


def drop_kv(fmd: TStruct, keys: Sequence[bytes]) -> None:
    """Remove these keys from a footer's key-value metadata."""
    entry = _field(fmd, _FMD_KV)
    if entry is not None:
        entry[2].items[:] = [it for it in entry[2].items if _field(it, 1)[2] not in keys]


def set_kv(fmd: TStruct, kv: Mapping[bytes, bytes]) -> None:
    """KeyValue structs are {1: key, 2: value}; replace or append ours, keep the rest."""
    entry = _field(fmd, _FMD_KV)
    if entry is None:
        entry = [_FMD_KV, _LIST, TList(_STRUCT, [])]
        fmd.append(entry)
        fmd.sort(key=lambda f: f[0])
    items = entry[2].items
    for key, value in kv.items():
        for item in items:
            if _field(item, 1)[2] == key:
                val = _field(item, 2)
                if val is None:
                    item.append([2, _BINARY, value])
                else:
                    val[2] = value
                break
        else:
            items.append([[1, _BINARY, key], [2, _BINARY, value]])


def stitch_files(parts: Sequence[Path | Piece], out: Path, kv_metadata: Mapping[bytes, bytes],
                 target: Target | None = None, drop_keys: Sequence[bytes] = (), seal=None) -> int:
    """Stitch into a temporary name beside `out`, seal it (`seal`, by default the footer digest
    of format/integrity.py: the parts' digests do not hold for the new footer), then rename: `out`
    is whole or absent (a failure, e.g. a full disk, removes the temporary file)."""
    if seal is None:
        from kmemleak_offline.format.integrity import seal
    tmp = out.with_name(out.name + ".tmp")
    try:
        rows = stitch(parts, tmp, kv_metadata, target=target, drop_keys=drop_keys)
        seal(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return rows
