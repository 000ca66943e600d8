"""Stitching Parquet parts by footer rewrite: every row, row group and key survives, for pyarrow and DuckDB."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmemleak_offline.format.recording import SCHEMA, to_table
from kmemleak_offline.format.stitch import StitchError, read_footer, stitch


def _table(rng: np.random.Generator, n: int, kind: str = "sample") -> pa.Table:
    return to_table({
        "kind": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([kind])),
        "time": pa.array(rng.integers(0, 2**64 - 1, n, dtype=np.uint64)),
        "pid": pa.array(rng.integers(-5, 5000, n).astype(np.int32)),
        "raw": pa.array([rng.bytes(int(k)) for k in rng.integers(0, 40, n)]),
        "stack_id": pa.array(rng.integers(0, 9, n).astype(np.uint32), mask=rng.random(n) < 0.3),
        "callchain": pa.array([list(range(i % 7)) for i in range(n)], pa.list_(pa.uint64())),
        "exec": pa.array([bool(i % 3) if i % 5 else None for i in range(n)]),
        "comm": pa.array([f"c{i % 13}" for i in range(n)]),
    })


def _write(path: Path, tables: list[pa.Table], **kw) -> Path:
    with pq.ParquetWriter(path, SCHEMA, **kw) as w:
        for t in tables:
            w.write_table(t, row_group_size=700)
    return path


def test_stitched_file_holds_every_row_group_in_order(tmp_path):
    rng = np.random.default_rng(7)
    tables = [[_table(rng, 1000)], [_table(rng, 2500), _table(rng, 3, "stack")], [], [_table(rng, 1)]]
    opts = [{"compression": "zstd"}, {"compression": "lz4", "write_page_index": True},
            {"compression": "none"}, {"compression": "zstd", "use_dictionary": False,
                                           "column_encoding": {"time": "DELTA_BINARY_PACKED"}}]
    parts = [_write(tmp_path / f"p{i}.parquet", t, **o) for i, (t, o) in enumerate(zip(tables, opts))]
    out = tmp_path / "all.parquet"
    rows = stitch(parts, out, {b"kmemleak_offline": b'{"format_version": 1}'})
    want = pa.concat_tables([t for ts in tables for t in ts])
    assert rows == want.num_rows == 3504
    got = pq.read_table(out)
    assert got.equals(want.cast(got.schema))
    meta = pq.ParquetFile(out).metadata
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert groups == [700, 300, 700, 700, 700, 400, 3, 1]
    assert meta.metadata[b"kmemleak_offline"] == b'{"format_version": 1}'
    assert b"ARROW:schema" in meta.metadata
    # page indexes (part 1 wrote them) point at their own part's pages: left out, and reading
    # with or without them gives the same rows
    assert pq.ParquetFile(parts[1]).metadata.row_group(0).column(0).has_offset_index
    assert all(not meta.row_group(i).column(j).has_offset_index
               for i in range(meta.num_row_groups) for j in range(meta.num_columns))
    assert pq.read_table(out, page_checksum_verification=True).equals(got)
    # each row group alone still decodes (offsets were shifted right)
    f = pq.ParquetFile(out)
    assert f.read_row_group(5).equals(tables[1][0].slice(2100).cast(got.schema))
    # DuckDB, which users query recordings with, agrees
    rows = duckdb.sql(f"select kind, count(*), sum(octet_length(raw)), sum(len(callchain)), "
                      f"count(exec), count(stack_id) from '{out}' group by kind order by kind").fetchall()
    by_kind = {k: want.filter(pa.compute.equal(want["kind"].cast(pa.string()), k)) for k in ("sample", "stack")}
    assert rows == [(k, t.num_rows, sum(len(x) for x in t["raw"].to_pylist()),
                     sum(len(x) for x in t["callchain"].to_pylist()),
                     t.num_rows - t["exec"].null_count, t.num_rows - t["stack_id"].null_count)
                    for k, t in by_kind.items()]


def test_footer_round_trips_byte_for_byte(tmp_path):
    """Parsing and re-serialising an unmodified footer gives the same bytes: nothing is dropped."""
    from kmemleak_offline.format.stitch import _Writer

    p = _write(tmp_path / "p.parquet", [_table(np.random.default_rng(1), 2000)], write_page_index=True)
    fmd, start = read_footer(p)
    data = p.read_bytes()
    w = _Writer()
    w.struct(fmd)
    assert bytes(w.out) == data[start:-8]


def test_foreign_and_empty_inputs(tmp_path):
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(StitchError, match="not a plain Parquet"):
        stitch([bad], tmp_path / "o.parquet")
    with pytest.raises(StitchError, match="nothing"):
        stitch([], tmp_path / "o.parquet")


def test_parts_with_different_schemas_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    a = _write(tmp_path / "a.parquet", [_table(rng, 10)])
    t = _table(rng, 10)
    b = tmp_path / "b.parquet"
    pq.write_table(t.drop_columns(["raw"]), b)
    with pytest.raises(StitchError, match="schema differs"):
        stitch([a, b], tmp_path / "out.parquet")
