"""Recording format v2 (docs/format.md): schema, streaming writer, reader.

The one module that knows the on-disk layout. `record` and `import` write through
`RecordingWriter`; `analyze`, `info` and `diff` read through `open_recording`. A recording is one
Parquet file, or, while recording (or after a crash), a folder of complete part files.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kmemleak_offline.format import integrity
from kmemleak_offline.format.integrity import INTEGRITY, IntegrityError, seal
from kmemleak_offline.format.layout import (
    FORMAT_VERSION,
    MANIFEST,
    METADATA_KEY,
    PART_GLOB,
    PART_KEY,
    PARTS_SUFFIX,
    PartsExistError,
    new_metadata,
    new_recording_id,
    note_part,
    part_key,
    part_name,
)
from kmemleak_offline.format.layout import make_parts_dir as _make_parts_dir
from kmemleak_offline.format.metadata import Metadata, MetadataError
from kmemleak_offline.format.stitch import stitch_files

KINDS = ("sample", "stack", "lost", "comm", "mmap", "fork", "exit", "ksym", "usym", "chunk")

_DICT = pa.dictionary(pa.int32(), pa.string())

SCHEMA = pa.schema(
    [
        pa.field("kind", _DICT, nullable=False),
        pa.field("time", pa.uint64()),
        pa.field("cpu", pa.uint32()),
        pa.field("ring", pa.uint32()),
        pa.field("seq", pa.uint64()),
        pa.field("pid", pa.int32()),
        pa.field("tid", pa.int32()),
        pa.field("event", _DICT),
        pa.field("raw", pa.binary()),
        pa.field("stack_id", pa.uint32()),
        pa.field("callchain", pa.list_(pa.uint64())),
        pa.field("lost", pa.uint64()),
        pa.field("comm", pa.string()),
        pa.field("exec", pa.bool_()),
        pa.field("ppid", pa.int32()),
        pa.field("ptid", pa.int32()),
        pa.field("addr", pa.uint64()),
        pa.field("len", pa.uint64()),
        pa.field("pgoff", pa.uint64()),
        pa.field("filename", pa.string()),
        pa.field("build_id", pa.binary()),
        pa.field("name", pa.string()),
        pa.field("module", pa.string()),
        pa.field("offset", pa.uint64()),  # v2: chunk rows
    ]
)
COLUMNS = tuple(SCHEMA.names)


class RecordingError(Exception):
    """A file that is not a usable recording (foreign, truncated, too new...). One-line message."""


def const_column(value: str | None, n: int) -> pa.Array:
    """A `kind`/`event`-typed column holding one value n times (no Python list of n strings)."""
    if value is None:
        return pa.nulls(n, _DICT)
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value]))


def to_table(columns: Mapping[str, Any] | pa.Table | pa.RecordBatch) -> pa.Table:
    """Conform a partial set of columns (dict of lists/arrays, or a table) to SCHEMA; absent -> null."""
    if isinstance(columns, pa.RecordBatch):
        columns = pa.Table.from_batches([columns])
    if isinstance(columns, pa.Table):
        n = columns.num_rows
        get = {name: columns.column(name) for name in columns.column_names}
    else:
        get = dict(columns)
        n = None
        for v in get.values():
            n = len(v)
            break
        n = n or 0
    arrays = []
    for f in SCHEMA:
        if f.name in get and get[f.name] is not None:
            v = get[f.name]
            if isinstance(v, pa.ChunkedArray):
                v = v.combine_chunks()
            if not isinstance(v, pa.Array):
                v = pa.array(v, type=f.type.value_type if f.type == _DICT else f.type)
            if v.type != f.type:
                v = v.cast(f.type)
            arrays.append(v)
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _encode_meta(meta: Mapping[str, Any]) -> dict[bytes, bytes]:
    """The metadata as written: it says the file is sealed (integrity.py)."""
    return {METADATA_KEY: json.dumps({**meta, "integrity": INTEGRITY}, sort_keys=False).encode()}


# How recording files are encoded. Measured on 5M recorded kmalloc/kfree rows: pyarrow's defaults
# (dictionary pages tried on every column, statistics on all) took 1.2 s and 20 MB; this takes
# 0.6 s and 10 MB. Delta encoding suits the nearly sorted `time`/`seq`; statistics stay on the
# columns people filter on (DuckDB skips row groups with them).
WRITE_OPTIONS: dict[str, Any] = {
    "use_dictionary": ["kind", "event", "comm", "filename", "module"],
    "write_statistics": ["kind", "time", "cpu", "ring", "seq", "pid", "tid", "event", "stack_id"],
    "column_encoding": {"time": "DELTA_BINARY_PACKED", "seq": "DELTA_BINARY_PACKED"},
    "write_page_checksum": True,  # CRC-32 per page, verified by every read (open_parquet)
}


def open_parquet(path: str | os.PathLike) -> pq.ParquetFile:
    """A recording file for reading, every page checked against its CRC as it is decoded."""
    return pq.ParquetFile(path, page_checksum_verification=True)


def parquet_writer(path: str | os.PathLike, schema: pa.Schema, compression: str) -> pq.ParquetWriter:
    return pq.ParquetWriter(path, schema, compression=compression, **WRITE_OPTIONS)


def _arrow_schema_kv(meta: Mapping[str, Any]) -> dict[bytes, bytes]:
    """File metadata plus the ARROW:schema copy pyarrow's read_schema() shows, both saying `meta`."""
    kv = _encode_meta(meta)
    ipc = SCHEMA.with_metadata(kv).serialize().to_pybytes()
    return {**kv, b"ARROW:schema": base64.b64encode(ipc)}


def _by_kind(tables: list[pa.Table]) -> tuple[list[pa.Table], list[pa.Table]]:
    """(the sample rows, every other row) of some tables, empty pieces left out."""
    samples, side = [], []
    for t in tables:
        s, o = split_samples(t)
        if s.num_rows:
            samples.append(s)
        if o.num_rows:
            side.append(o)
    return samples, side


def _write_rows(w: pq.ParquetWriter, tables: list[pa.Table], row_group_rows: int) -> None:
    """Tables are chained, not combined: copying every payload again cost as much as encoding it."""
    if tables:
        w.write_table(pa.concat_tables(tables), row_group_size=row_group_rows)


def make_parts_dir(path: str | os.PathLike) -> Path:
    """layout.make_parts_dir; an existing folder is a RecordingError."""
    try:
        return _make_parts_dir(path)
    except PartsExistError as exc:
        raise RecordingError(str(exc)) from None


def write_part(parts_dir: Path, n: int, tables: Iterable[Mapping[str, Any] | pa.Table], metadata: Mapping[str, Any],
               row_group_rows: int = 1 << 20, compression: str = "zstd", recording: str | None = None) -> Path:
    """`part-NNNNN.parquet` holding these rows and metadata, sealed (format/integrity.py) and
    complete before it is renamed in; a failure (a full disk) leaves no torn part. With
    `recording` (its id), the part carries its number and the folder's manifest gets its line."""
    final = parts_dir / part_name(n)
    tmp = parts_dir / f".part-{n:05d}.tmp"
    tables = [to_table(t) for t in tables]
    kv = _encode_meta(metadata)
    if recording is not None:
        kv[PART_KEY] = part_key(n, recording)
    try:
        w = parquet_writer(tmp, SCHEMA, compression)
        try:
            for rows in _by_kind(tables):  # samples in row groups of their own: readers skip by group
                _write_rows(w, rows, row_group_rows)
            w.add_key_value_metadata(kv)
        finally:
            w.close()
        seal(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if recording is not None:
        note_part(parts_dir, n, final.name, sum(t.num_rows for t in tables), recording)
    return final


class RecordingWriter:
    """Streaming writer: rows in batches, metadata at close.

    With `parts=True` (the recorder's crash-safe mode) rows go to `<path>.parts/part-NNNNN.parquet`,
    each a complete file written to a temporary name and renamed, carrying the metadata as known
    then; `close()` stitches their row groups into `path` (bytes copied, footer rewritten: see
    `stitch`) and removes the folder. A killed writer leaves the folder, which readers accept as
    a recording.
    """

    def __init__(self, path: str | os.PathLike, metadata: Mapping[str, Any], *, parts: bool = False,
                 row_group_rows: int = 1 << 20, compression: str = "zstd") -> None:
        self.path = Path(path)
        self.metadata: dict[str, Any] = json.loads(json.dumps(metadata))
        self.parts = parts
        self.row_group_rows = row_group_rows
        self.compression = compression
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._side: list[pa.Table] = []  # side-band rows, written after the samples
        self._writer: pq.ParquetWriter | None = None
        self._part_no = 0
        self.closed = False
        self.recording_id = new_recording_id()  # names the parts of this recording
        if parts:
            self.parts_dir = make_parts_dir(self.path)

    def write(self, rows: Mapping[str, Any] | pa.Table | pa.RecordBatch) -> None:
        """Queue rows (any subset of columns); they reach disk at the next row group or part."""
        table = to_table(rows)
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if not self.parts and self._pending_rows >= self.row_group_rows:
            self._flush_single()

    def _take_pending(self) -> list[pa.Table]:
        tables, self._pending, self._pending_rows = self._pending, [], 0
        return tables

    def _open_single(self) -> pq.ParquetWriter:
        if self._writer is None:
            self._tmp = self.path.with_name(self.path.name + ".tmp")
            self._writer = parquet_writer(self._tmp, SCHEMA.with_metadata(_encode_meta(self.metadata)),
                                          self.compression)
        return self._writer

    def _flush_single(self) -> None:
        """Samples go to row groups of their own; side-band rows wait for close()."""
        samples, side = _by_kind(self._take_pending())
        if samples:
            _write_rows(self._open_single(), samples, self.row_group_rows)
        self._side.extend(side)

    def flush_part(self) -> Path | None:
        """Parts mode: write what is queued as one complete part file (atomically renamed)."""
        tables = self._take_pending()
        if not tables and self._part_no:  # the first part is written even empty
            return None
        seq = self._part_no
        rows_n = sum(t.num_rows for t in tables)
        try:
            final = write_part(self.parts_dir, seq, tables, self.metadata, self.row_group_rows,
                               self.compression, recording=self.recording_id)
        except BaseException:  # e.g. a full disk: no torn part left, the rows stay queued
            self._pending[:0] = tables
            self._pending_rows += rows_n
            raise
        self._part_no += 1
        return final

    def close(self) -> Path:
        """Finish: one Parquet file at `path` with the final metadata.

        Sample rows fill large row groups; side-band rows (stacks, comms, kallsyms...) follow in row
        groups of their own, so readers can skip one or the other by row group.
        """
        if self.closed:
            return self.path
        self.closed = True
        if self.parts:
            self.flush_part()
            parts = [self.parts_dir / part_name(i) for i in range(self._part_no)]
            stitch_files(parts, self.path, _arrow_schema_kv(self.metadata), drop_keys=[PART_KEY],
                         seal=seal)
            shutil.rmtree(self.parts_dir)
            return self.path
        try:
            self._flush_single()
            if self._side:
                _write_rows(self._open_single(), self._side, self.row_group_rows)
                self._side.clear()
            w = self._open_single()
            w.add_key_value_metadata(_encode_meta(self.metadata))
            w.close()
            seal(self._tmp)
        except BaseException:
            if self._writer is not None:
                self._tmp.unlink(missing_ok=True)
            raise
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Give up: nothing written is left behind (an import that failed half way)."""
        if self.closed:
            return
        self.closed = True
        self._pending, self._side = [], []
        if self.parts:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            return
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._tmp.unlink(missing_ok=True)


def split_samples(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(sample rows, every other row) of a table."""
    m = kind_mask(table.column("kind"), ["sample"])
    if pc.all(m).as_py() is not False:
        return table, table.slice(0, 0)
    return table.filter(m), table.filter(pc.invert(m))


def write_recording(path: str | os.PathLike, metadata: Mapping[str, Any],
                    tables: Iterable[Mapping[str, Any] | pa.Table]) -> Path:
    """Write a whole recording at once (tests, import, synthetic data)."""
    w = RecordingWriter(path, metadata)
    for t in tables:
        w.write(t)
    return w.close()


@dataclass
class Recording:
    """An opened recording: its metadata and its files (one, or the parts of a folder)."""

    path: Path
    metadata: dict[str, Any]
    files: list[Path]
    partial: bool = False  # a parts folder (recorder still running, or killed)
    _num_rows: int | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)  # missing or stray parts (one line each)

    @functools.cached_property
    def meta(self) -> Metadata:
        """The metadata, typed (checked when the recording was opened)."""
        return Metadata.parse(self.metadata)

    @property
    def num_rows(self) -> int:
        if self._num_rows is None:
            self._num_rows = sum(open_parquet(f).metadata.num_rows for f in self.files)
        return self._num_rows

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def table(self, kinds: Iterable[str] | None = None,
              columns: Iterable[str] | None = None) -> pa.Table:
        """Rows of the given kinds with the given columns (all when None), conformed to SCHEMA types.

        Columns absent from an older or foreign writer's file come back as nulls.
        """
        kinds = list(kinds) if kinds is not None else None
        want = list(columns) if columns is not None else list(COLUMNS)
        out = []
        for f in self.files:
            try:
                pf = open_parquet(f)
                present = set(pf.schema_arrow.names)
                cols = [c for c in want if c in present] or ["kind"]  # a column keeps the row count
                if kinds is None:
                    t = read_row_groups(f, list(range(pf.num_row_groups)), cols)
                else:  # row groups are picked by `kind` without reading it back with the rest
                    t = _read_kinds(f, pf, kinds, cols)
                out.append(_conform(t, want))
            except (OSError, pa.ArrowException) as exc:
                raise RecordingError(f"{f}: cannot read recording data ({_short(exc)}); "
                                     "the file is truncated or corrupt") from None
        if not out:
            return _conform(to_table({"kind": []}), want)
        return pa.concat_tables(out, promote_options="permissive").unify_dictionaries()


def read_row_groups(path: Path, groups: list[int], columns: list[str]) -> pa.Table:
    """Row groups decoded in parallel, one per worker thread with its own reader (pyarrow releases
    the GIL; a single read_row_groups call only parallelises across columns, and `raw` dominates)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> pa.Table:
        return read_group(path, open_parquet(path), i, columns, use_threads=False)

    workers = min(len(groups), os.cpu_count() or 1)
    if workers <= 1:
        pf = open_parquet(path)
        if not groups:  # a part with no row groups (a raw recorder's metadata-only part)
            return pf.read_row_groups([], columns=columns)
        if len(groups) == 1:
            return read_group(path, pf, groups[0], columns, use_threads=True)
        return pa.concat_tables([read_group(path, pf, i, columns, use_threads=True) for i in groups])
    with ThreadPoolExecutor(workers) as ex:
        return pa.concat_tables(list(ex.map(one, groups)))


class StatisticsMismatch(OSError):
    """Decoded values that contradict the (digest-checked) footer of their row group: its row
    count, or a column's statistics (a whole valid page from elsewhere in the file over this one,
    which its CRC cannot tell)."""


def read_group(path: str | os.PathLike, pf: pq.ParquetFile, group: int, columns: list[str],
               use_threads: bool = False) -> pa.Table:
    """One row group (pages CRC-checked as they decode) whose chunks' page headers add up to
    the footer (integrity.check_pages), then each column that has footer statistics checked
    against them: null count, min and max (exact; within them for dictionary columns)."""
    rg = pf.metadata.row_group(group)
    want = set(columns)
    crcs = [0, 0]  # pages with a CRC, without
    with open(path, "rb") as f:
        for j in range(rg.num_columns):
            cc = rg.column(j)
            if cc.path_in_schema.split(".")[0] not in want:
                continue
            start = cc.dictionary_page_offset if cc.has_dictionary_page else cc.data_page_offset
            bad = integrity.check_pages(f, start, cc.total_compressed_size, cc.num_values, crcs)
            if bad:
                raise StatisticsMismatch(f"row group {group}: column {cc.path_in_schema} has {bad}")
    if all(crcs):
        raise StatisticsMismatch(f"row group {group}: {crcs[1]} of its pages lost their CRC "
                                 "(damaged page headers)")
    t = pf.read_row_group(group, columns=columns, use_threads=use_threads)
    if t.num_rows != rg.num_rows:  # pyarrow can return fewer rows from a damaged chunk, silently
        raise StatisticsMismatch(f"row group {group}: {t.num_rows} rows decoded, its footer says "
                                 f"{rg.num_rows}")
    for j in range(rg.num_columns):
        cc = rg.column(j)
        name = cc.path_in_schema
        st = cc.statistics
        if name not in t.column_names or st is None:
            continue
        col = t.column(name)
        if st.has_null_count and col.null_count != st.null_count:
            raise StatisticsMismatch(f"row group {group}: column {name} holds {col.null_count} "
                                     f"nulls, its statistics say {st.null_count}")
        if not st.has_min_max or col.null_count == len(col):
            continue
        lo, hi = _min_max(col)
        want_lo, want_hi = st.min, st.max
        if isinstance(want_lo, bytes) and isinstance(lo, str):
            want_lo, want_hi = want_lo.decode("utf-8", "replace"), want_hi.decode("utf-8", "replace")
        # a dictionary column's statistics may cover its whole dictionary (pyarrow computes them
        # so when given dictionary arrays): the values used lie within them; others are exact
        exact = not pa.types.is_dictionary(col.type)
        if (lo, hi) != (want_lo, want_hi) if exact else not (want_lo <= lo and hi <= want_hi):
            raise StatisticsMismatch(f"row group {group}: column {name} spans {lo!r}..{hi!r}, its "
                                     f"statistics say {want_lo!r}..{want_hi!r}")
    return t


def _min_max(col: pa.ChunkedArray) -> tuple[Any, Any]:
    """min and max of a column; a dictionary column through the dictionary values it uses."""
    if pa.types.is_dictionary(col.type):
        used = [c.dictionary.take(pc.unique(c.indices.drop_null())) for c in col.chunks if len(c)]
        col = pa.chunked_array(used, col.type.value_type)
    mm = pc.min_max(col).as_py()
    return mm["min"], mm["max"]


def _group_kind(rg: pq.RowGroupMetaData, col: int | None) -> str | None:
    """The one kind every row of a row group has, from its `kind` statistics; None if unknown
    (no statistics, several kinds, nulls)."""
    if col is None:
        return None
    st = rg.column(col).statistics
    if st is None or not st.has_min_max or st.null_count:
        return None
    lo, hi = st.min, st.max
    if isinstance(lo, bytes):
        lo, hi = lo.decode("utf-8", "replace"), hi.decode("utf-8", "replace")
    return lo if lo == hi and lo in KINDS else None


def _read_kinds(path: Path, pf: pq.ParquetFile, kinds: list[str], columns: list[str]) -> pa.Table:
    """Rows of the given kinds, reading only the row groups that hold some. Writers put samples and
    side-band rows in row groups of their own, so the `kind` statistics usually settle a group;
    the `kind` column is read only for groups they do not (mixed kinds, no statistics)."""

    md = pf.metadata
    col = next((j for j in range(md.num_columns) if md.schema.column(j).path == "kind"), None)
    whole, unsure = [], []
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        if rg.num_rows == 0:
            continue
        k = _group_kind(rg, col)
        if k is None:
            unsure.append(i)
        elif k in kinds:
            whole.append(i)
    masks: dict[int, np.ndarray] = {}
    if unsure:
        kind = pa.concat_tables([read_group(path, pf, i, ["kind"]) for i in unsure]).column("kind")
        mask = kind_mask(kind, kinds).to_numpy(zero_copy_only=False)
        pos = 0
        for i in unsure:
            m = mask[pos:pos + md.row_group(i).num_rows]
            pos += len(m)
            if m.any():
                masks[i] = m
    groups = sorted(whole + list(masks))
    if not groups:
        return pf.schema_arrow.empty_table().select(columns)
    t = read_row_groups(path, groups, columns)
    if not masks or all(masks[i].all() for i in masks):
        return t
    sub = np.concatenate([masks[i] if i in masks else np.ones(md.row_group(i).num_rows, bool)
                          for i in groups])
    return t.filter(pa.array(sub))


def kind_mask(col: pa.ChunkedArray, kinds: list[str]) -> pa.Array:
    """Rows whose `kind` is one of `kinds`, via dictionary indices (no per-row strings)."""

    parts = []
    for chunk in col.chunks:
        if pa.types.is_dictionary(chunk.type):
            dic = chunk.dictionary.to_pylist()
            codes = [i for i, d in enumerate(dic) if d in kinds]
            ind = chunk.indices
            idx = (ind.fill_null(-1) if ind.null_count else ind).to_numpy(zero_copy_only=False)
            parts.append(idx == codes[0] if len(codes) == 1 else np.isin(idx, codes))
        else:
            parts.append(pc.is_in(chunk, value_set=pa.array(kinds, pa.string()))
                         .fill_null(False).to_numpy(zero_copy_only=False))
    return pa.array(np.concatenate(parts) if parts else np.zeros(0, bool))


def _conform(t: pa.Table, want: list[str]) -> pa.Table:
    arrays, fields = [], []
    for name in want:
        f = SCHEMA.field(name) if name in COLUMNS else None
        if name in t.column_names:
            col = t.column(name)
            if f is not None and col.type != f.type:
                col = col.cast(f.type)
        elif f is not None:
            col = pa.chunked_array([pa.nulls(t.num_rows, f.type)])
        else:
            continue
        arrays.append(col)
        fields.append(f if f is not None else pa.field(name, col.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__


@dataclass
class _File:
    """One recording file as opened: its metadata, its part number (parts folders) and rows."""

    path: Path
    meta: dict[str, Any]
    part: dict[str, Any] | None  # {"seq": N, "recording": ID}, None for single files / old parts
    rows: int


def _read_meta(f: Path) -> dict[str, Any]:
    return _read_file(f).meta


def _read_file(f: Path) -> _File:
    try:
        # the file's key-value metadata, not the Arrow schema's: a streaming writer adds the final
        # metadata at close, after the schema (with the metadata known at open) was serialised
        pf = open_parquet(f)
        md = pf.metadata
        kv = md.metadata or {}
        names = pf.schema_arrow.names
    except FileNotFoundError:
        raise RecordingError(f"{f}: no such file") from None
    except IsADirectoryError:
        raise RecordingError(f"{f}: is a directory, not a recording") from None
    except PermissionError:
        raise RecordingError(f"{f}: permission denied") from None
    except (OSError, pa.ArrowException) as exc:
        raise RecordingError(f"{f}: not a recording (not a readable Parquet file: {_short(exc)})") from None
    try:  # before anything in the footer is trusted: it is whole, or the file is refused
        sealed = integrity.verify_footer(f, required=False)
    except (IntegrityError, OSError) as exc:
        raise RecordingError(f"{f}: damaged recording: {exc}") from None
    if METADATA_KEY not in kv:
        raise RecordingError(f"{f}: a Parquet file, but not a kmemleak-offline recording "
                             "(no 'kmemleak_offline' metadata)")
    try:
        meta = json.loads(kv[METADATA_KEY])
    except (ValueError, RecursionError):
        raise RecordingError(f"{f}: recording metadata is not valid JSON") from None
    if isinstance(meta, dict) and isinstance(meta.get("format_version"), int) \
            and meta["format_version"] > FORMAT_VERSION:
        validate_metadata(meta, f)  # refused as newer, whatever else it holds
    if isinstance(meta, dict) and integrity.claims(meta) and not sealed:
        raise RecordingError(f"{f}: damaged recording: its footer checksum is missing")
    meta = validate_metadata(meta, f)
    if "kind" not in names:
        raise RecordingError(f"{f}: a Parquet file with kmemleak-offline metadata but no 'kind' "
                             "column: not a recording this version can read")
    part = None
    if PART_KEY in kv:
        try:
            part = json.loads(kv[PART_KEY])
        except (ValueError, RecursionError):
            part = None
        if not (isinstance(part, dict) and isinstance(part.get("seq"), int)
                and not isinstance(part.get("seq"), bool) and 0 <= part["seq"] < 1 << 31
                and isinstance(part.get("recording"), str)):
            raise RecordingError(f"{f}: its part number metadata is not valid")
    return _File(f, meta, part, md.num_rows)


def _read_manifest(folder: Path, rid: str) -> dict[int, dict[str, Any]]:
    """seq -> the manifest line of each part of recording `rid` (torn or foreign lines skipped)."""
    try:
        text = (folder / MANIFEST).read_text(errors="replace")
    except OSError:
        return {}
    out: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if (isinstance(e, dict) and e.get("recording") == rid and isinstance(e.get("seq"), int)
                and isinstance(e.get("rows"), int)):
            out[e["seq"]] = e
    return out


def _choose_parts(folder: Path, files: list[_File]) -> tuple[list[_File], list[str]]:
    """The parts of one recording, in sequence order, and a warning per stray or missing part:
    a copy (same part number twice), a part of another recording, a gap in the numbers or a part
    the folder's manifest lists that is not there."""
    numbered = [f for f in files if f.part is not None]
    if not numbered:  # parts written before part numbers: by name, as before
        return files, []
    warnings: list[str] = []
    by_id: dict[str, list[_File]] = {}
    for f in numbered:
        by_id.setdefault(f.part["recording"], []).append(f)
    # this recording: the one most parts belong to (ties: the one with the newest part)
    rid = max(by_id, key=lambda r: (len(by_id[r]), max(f.part["seq"] for f in by_id[r])))
    for f in files:
        if f.part is None or f.part["recording"] != rid:
            warnings.append(f"warning: {f.path} is not a part of this recording (another "
                            "recording's, or a copy): ignored")
    by_seq: dict[int, list[_File]] = {}
    for f in by_id[rid]:
        by_seq.setdefault(f.part["seq"], []).append(f)
    chosen = []
    for seq in sorted(by_seq):
        group = sorted(by_seq[seq], key=lambda f: (f.path.name != part_name(seq), f.path.name))
        chosen.append(group[0])
        warnings.extend(f"warning: {f.path} repeats part {seq} ({group[0].path.name}): ignored"
                        for f in group[1:])
    manifest = _read_manifest(folder, rid)
    last = max([*by_seq, *manifest])
    for seq in range(last + 1):
        if seq not in by_seq:
            warnings.append(f"warning: {folder}: part {seq} ({part_name(seq)}) is missing: its rows "
                            "are not in this analysis")
    for f in chosen:
        e = manifest.get(f.part["seq"])
        if e is not None and e["rows"] != f.rows:
            warnings.append(f"warning: {f.path} holds {f.rows} rows; the folder's manifest says "
                            f"{e['rows']}")
    return chosen, warnings


def validate_metadata(meta: Any, where: Path | str) -> dict[str, Any]:
    """Check the keys readers rely on; refuse a newer major format_version."""
    if not isinstance(meta, dict):
        raise RecordingError(f"{where}: recording metadata is not a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise RecordingError(f"{where}: recording metadata has no integer format_version")
    if version > FORMAT_VERSION:
        raise RecordingError(f"{where}: recording format_version {version} is newer than this "
                             f"kmemleak-offline understands ({FORMAT_VERSION}); upgrade kmemleak-offline")
    base = new_metadata(meta.get("producer", "unknown"))
    for key, default in base.items():
        meta.setdefault(key, default)
    for key in ("host", "clock", "events", "options", "counts"):
        if not isinstance(meta[key], dict):
            raise RecordingError(f"{where}: recording metadata key {key!r} is not an object")
    meta["clock"].setdefault("anchor", {"perf_ns": 0, "realtime_ns": 0})
    try:
        Metadata.parse(meta)
    except MetadataError as exc:
        raise RecordingError(f"{where}: recording metadata: {exc}") from None
    return meta


def _newest_mtime(folder: Path) -> float:
    return max((f.stat().st_mtime for f in folder.glob(PART_GLOB)), default=0.0)


def open_recording(path: str | os.PathLike) -> Recording:
    """Open a recording file or parts folder; RecordingError with one line if it is not one."""
    p = Path(path)
    parts = Path(str(p) + PARTS_SUFFIX)
    if not p.exists():
        if parts.is_dir():
            p = parts  # the recorder was killed before it could stitch: read its parts
        else:
            raise RecordingError(f"{p}: no such file")
    elif p.is_file() and parts.is_dir() and _newest_mtime(parts) > p.stat().st_mtime:
        p = parts  # a later run into the same name was killed: its parts, not the older file
    if p.is_dir():
        found = sorted(p.glob(PART_GLOB))
        if not found:
            raise RecordingError(f"{p}: a folder with no recording parts ({PART_GLOB})")
        chosen, warnings = _choose_parts(p, [_read_file(f) for f in found])
        return Recording(path=p, metadata=chosen[-1].meta, files=[f.path for f in chosen],
                         partial=True, warnings=warnings)
    if not os.access(p, os.R_OK):
        raise RecordingError(f"{p}: permission denied")
    return Recording(path=p, metadata=_read_meta(p), files=[p])
