"""Ring chunks in Parquet: what `record` writes on the target, the way perf record writes perf.data.

Why: converting ring records into rows (split, stack dedup, encoding) on the target cost 4x perf
record's CPU while the workload ran. Now the drain loop only appends each drain of a ring (the
bytes between its tail and head: whole records) to an open part file as one Parquet data page of
the `raw` column: a small page header, then the ring bytes by writev straight from the mmap, one
kernel copy, like perf's write(). No compression, no Arrow, no numpy in the recorder process.

An open part is `.ring-NNNNN.tmp` (`PAR1`, then one page per drain) plus `.ring-NNNNN.idx`, a
small index written after each page (ring, cpu, byte offset of the drain in its ring's stream,
where the page starts, its length) and the recording metadata as known at the segment's end.
`seal()` (run by the converter process, which has pyarrow) appends the other columns of the
`chunk` rows (kind, ring, cpu, offset: one plain page each; every other column one page of nulls)
and the footer, and renames the file `part-NNNNN.parquet`: a complete Parquet file of the
recording schema that any reader reads. A part whose writer was killed is sealed the same way:
the index says which pages are whole; a torn last page is cut off.

Chunk rows become event rows in `convert` (docs/format.md, "Raw recordings").
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from kmemleak_offline.format.layout import part_name
from kmemleak_offline.format.stitch import MAGIC, TList, _Reader, _Writer

# Thrift compact codes used below (stitch has the codec)
_I32, _I64, _BINARY, _LIST, _STRUCT = 5, 6, 8, 9, 12
_PLAIN, _RLE = 0, 3
_INT32, _INT64, _BYTE_ARRAY = 1, 2, 6

_IDX_CHUNK, _IDX_META = 1, 2
_IDX_HEAD = struct.Struct("<II")  # tag, payload length
_IDX_ENTRY = struct.Struct("<IIQQQ")  # ring, cpu, offset in the ring's stream, page start, bytes
# def levels of a one-value page of an optional column: 4-byte length, RLE run of 1 x level 1
_ONE_DEFINED = b"\x02\x00\x00\x00\x02\x01"


RING_CHUNKS = "ring_chunks"  # metadata key of a raw recording: how to read its chunks


def ring_chunks_meta(ids: Mapping[int, tuple[str | None, bool]], per_task: bool) -> dict[str, Any]:
    """The metadata a raw recording carries to be converted anywhere: the kernel id of every event
    the rings hold (its `sys:name`, null for the side-band dummy; whether it records call chains)
    and whether rings are per task (then samples keep their ring)."""
    return {"ids": {str(i): [name, bool(cc)] for i, (name, cc) in sorted(ids.items())},
            "per_task": bool(per_task)}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def page_header(nbytes: int) -> bytes:
    """PageHeader + levels + length prefix of a data page holding one `raw` value of `nbytes`
    (DATA_PAGE, 1 value, PLAIN, levels RLE; uncompressed: compressed size = uncompressed size).
    Hand-encoded Thrift compact: this runs once per drain in the recorder."""
    size = _varint((len(_ONE_DEFINED) + 4 + nbytes) << 1)  # i32 zigzag of a positive number
    return (b"\x15\x00\x15" + size + b"\x15" + size + b"\x2c\x15\x02\x15\x00\x15\x06\x15\x06\x00\x00"
            + _ONE_DEFINED + struct.pack("<I", nbytes))


def open_names(folder: Path, n: int) -> tuple[Path, Path]:
    """(page file, index file) of open part n."""
    return folder / f".ring-{n:05d}.tmp", folder / f".ring-{n:05d}.idx"


class ChunkWriter:
    """The recorder's side: one open part; `append` a drain, `add_metadata`, `close`.

    Plain os calls only. An index entry is written after its page, so every entry names a whole
    page; the converter seals the part (`seal`) once closed, or after the recorder died."""

    def __init__(self, folder: Path, n: int) -> None:
        self.n = n
        self.page_path, self.idx_path = open_names(folder, n)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        self.fd = os.open(self.page_path, flags, 0o600)
        self.idx = os.open(self.idx_path, flags, 0o600)
        _write_all(self.fd, [MAGIC])
        self.pos = len(MAGIC)
        self.chunks = 0

    def append(self, ring: int, cpu: int, offset: int, views: Sequence[memoryview], nbytes: int) -> None:
        """One drain of `ring`: `views` (the ring's mmap, one or two pieces) hold `nbytes`."""
        head = page_header(nbytes)
        _write_all(self.fd, [head, *views])
        _write_all(self.idx, [_IDX_HEAD.pack(_IDX_CHUNK, _IDX_ENTRY.size)
                              + _IDX_ENTRY.pack(ring, cpu, offset, self.pos, nbytes)])
        self.pos += len(head) + nbytes
        self.chunks += 1

    def add_metadata(self, meta: Mapping[str, Any]) -> None:
        """The recording metadata as known now (the last one in the index goes into the footer)."""
        data = json.dumps(meta).encode()
        _write_all(self.idx, [_IDX_HEAD.pack(_IDX_META, len(data)) + data])

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.idx)


def _write_all(fd: int, bufs: Sequence[bytes | memoryview]) -> None:
    """writev, finishing a short write (a signal, a nearly full disk); OSError when nothing more
    goes (ENOSPC...)."""
    want = sum(len(b) for b in bufs)
    done = os.writev(fd, bufs)
    if done < want:
        flat = b"".join(bytes(b) for b in bufs)
        while done < want:
            w = os.write(fd, flat[done:])
            if w <= 0:
                raise OSError("the part file accepts no more bytes")
            done += w


@dataclass
class Chunk:
    ring: int
    cpu: int
    offset: int
    page: int  # file offset of its page header
    nbytes: int

    @property
    def end(self) -> int:
        return self.page + len(page_header(self.nbytes)) + self.nbytes


def read_index(path: Path) -> tuple[list[Chunk], dict[str, Any] | None]:
    """The chunks and the last metadata of an index file; a torn last frame is ignored."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], None
    chunks: list[Chunk] = []
    meta = None
    pos = 0
    while pos + _IDX_HEAD.size <= len(data):
        tag, n = _IDX_HEAD.unpack_from(data, pos)
        body = pos + _IDX_HEAD.size
        if body + n > len(data):
            break
        if tag == _IDX_CHUNK and n == _IDX_ENTRY.size:
            chunks.append(Chunk(*_IDX_ENTRY.unpack_from(data, body)))
        elif tag == _IDX_META:
            try:
                meta = json.loads(data[body:body + n])
            except ValueError:
                break
        pos = body + n
    return chunks, meta


# ----------------------------------------------------------------------------------- sealing
@dataclass(frozen=True)
class _Leaf:
    path: tuple[str, ...]
    physical: int
    max_def: int
    max_rep: int


@lru_cache(maxsize=1)
def _template() -> tuple[list, list, bytes, tuple[_Leaf, ...]]:
    """The footer pieces pyarrow writes for the recording schema (schema elements, column orders,
    created_by) and its leaf columns: a sealed part's footer is byte-compatible with the parts
    pyarrow writes, so `stitch` accepts them together."""
    import io

    import pyarrow.parquet as pq

    from kmemleak_offline.format.recording import SCHEMA

    buf = io.BytesIO()
    pq.ParquetWriter(buf, SCHEMA).close()
    raw = buf.getvalue()
    (flen,) = struct.unpack("<I", raw[-8:-4])
    fmd = _Reader(raw[-8 - flen:-8]).struct()
    get = {f[0]: f for f in fmd}
    schema = pq.ParquetFile(io.BytesIO(raw)).schema
    kinds = {"INT32": _INT32, "INT64": _INT64, "BYTE_ARRAY": _BYTE_ARRAY, "BOOLEAN": 0}
    leaves = tuple(_Leaf(tuple(c.path.split(".")), kinds[c.physical_type], c.max_definition_level,
                         c.max_repetition_level)
                   for c in (schema.column(i) for i in range(len(schema))))
    return get[2], get[7], get[6][2], leaves


def _levels(n: int, level: int) -> bytes:
    """RLE/bit-packed hybrid levels of a data page v1: one run of n x `level` (width <= 8 bits)."""
    run = _varint(n << 1) + bytes([level])
    return struct.pack("<I", len(run)) + run


def _page(nvalues: int, body: bytes) -> bytes:
    w = _Writer()
    w.struct([[1, _I32, 0], [2, _I32, len(body)], [3, _I32, len(body)],
              [5, _STRUCT, [[1, _I32, nvalues], [2, _I32, _PLAIN], [3, _I32, _RLE], [4, _I32, _RLE]]]])
    return bytes(w.out) + body


def _column_page(leaf: _Leaf, values: bytes | None, n: int) -> bytes:
    """One page of n rows: all holding `values` (PLAIN), or all null."""
    if values is None:
        body = (_levels(n, 0) if leaf.max_rep else b"") + _levels(n, 0)
    else:
        body = (_levels(n, 1) if leaf.max_def else b"") + values
    return _page(n, body)


def _chunk_meta(leaf: _Leaf, n: int, start: int, size: int, stats: list | None = None) -> list:
    cmd = [[1, _I32, leaf.physical], [2, _LIST, TList(_I32, [_PLAIN, _RLE])],
           [3, _LIST, TList(_BINARY, [p.encode() for p in leaf.path])], [4, _I32, 0],
           [5, _I64, n], [6, _I64, size], [7, _I64, size], [9, _I64, start]]
    if stats is not None:
        cmd.append([12, _STRUCT, stats])
    return [[2, _I64, start], [3, _STRUCT, cmd]]


def seal(folder: Path, n: int, fallback_meta: Mapping[str, Any] | None = None,
         recording: str | None = None) -> Path | None:
    """Turn open part n (closed, or left by a killed recorder) into `part-NNNNN.parquet`; returns
    it, or None when there is no such open part. Pages the index does not name whole are cut off.
    The footer carries the index's last metadata (else `fallback_meta`), with `recording` (its
    id) the part's number, and its digest (format/integrity.py); the folder's manifest gets its
    line. The chunk pages themselves carry no CRC (the recorder writes them: docs/format.md)."""
    from kmemleak_offline.format import integrity
    from kmemleak_offline.format.layout import PART_KEY, note_part, part_key
    from kmemleak_offline.format.recording import _arrow_schema_kv

    page_path, idx_path = open_names(folder, n)
    if not page_path.exists():
        idx_path.unlink(missing_ok=True)
        return None
    chunks, meta = read_index(idx_path)
    meta = meta if meta is not None else dict(fallback_meta or {})
    size = page_path.stat().st_size
    whole = 0
    end = len(MAGIC)
    for c in chunks:
        if c.page != end or c.end > size:
            break
        end = c.end
        whole += 1
    chunks = chunks[:whole]
    schema, orders, created_by, leaves = _template()
    rows = len(chunks)
    with open(page_path, "r+b") as f:
        f.truncate(end)
        f.seek(end)
        columns: list = []
        row_groups: list = []
        if rows:
            per_col = {
                "kind": b"".join(struct.pack("<I", 5) + b"chunk" for _ in chunks),
                "ring": b"".join(struct.pack("<I", c.ring) for c in chunks),
                "cpu": b"".join(struct.pack("<I", c.cpu) for c in chunks),
                "offset": b"".join(struct.pack("<Q", c.offset) for c in chunks),
            }
            total = end - len(MAGIC)
            for leaf in leaves:
                name = leaf.path[0]
                if name == "raw":
                    columns.append(_chunk_meta(leaf, rows, len(MAGIC), end - len(MAGIC)))
                    continue
                page = _column_page(leaf, per_col.get(name), rows)
                start = f.tell()
                f.write(page)
                total += len(page)
                stats = ([[3, _I64, 0], [5, _BINARY, b"chunk"], [6, _BINARY, b"chunk"]]
                         if name == "kind" else None)
                columns.append(_chunk_meta(leaf, rows, start, len(page), stats))
            row_groups.append([[1, _LIST, TList(_STRUCT, columns)], [2, _I64, total], [3, _I64, rows],
                               [5, _I64, len(MAGIC)], [6, _I64, total], [7, 4, 0]])
        kvs = _arrow_schema_kv(meta)
        if recording is not None:
            kvs[PART_KEY] = part_key(n, recording)
        kv = [[[1, _BINARY, k], [2, _BINARY, v]] for k, v in kvs.items()]
        fmd = [[1, _I32, 2], list(schema), [3, _I64, rows], [4, _LIST, TList(_STRUCT, row_groups)],
               [5, _LIST, TList(_STRUCT, kv)], [6, _BINARY, created_by], list(orders)]
        w = _Writer()
        w.struct(fmd)
        f.write(bytes(w.out) + struct.pack("<I", len(w.out)) + MAGIC)
    integrity.seal(page_path)
    final = folder / part_name(n)
    os.replace(page_path, final)
    idx_path.unlink(missing_ok=True)
    if recording is not None:
        note_part(folder, n, final.name, rows, recording)
    return final


def open_parts(folder: Path) -> list[int]:
    """Numbers of the open (unsealed) parts in a parts folder."""
    out = []
    for p in folder.glob(".ring-*.tmp"):
        try:
            out.append(int(p.name[6:-4]))
        except ValueError:
            continue
    return sorted(out)
