"""The recording module: streaming writer, parts folders, metadata precedence, row-group layout."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from kmemleak_offline.format.recording import (
    RecordingError,
    RecordingWriter,
    new_metadata,
    open_recording,
)


def test_metadata_set_at_close_wins_over_metadata_known_at_open(tmp_path):
    meta = new_metadata("test")
    w = RecordingWriter(tmp_path / "r.parquet", meta, row_group_rows=2)
    w.write({"kind": ["sample"] * 3, "time": [1, 2, 3]})  # flushes a row group: the writer is open
    w.metadata["clock"]["stop_ns"] = 42
    w.metadata["counts"] = {"kmem:kfree": {"samples": 3, "lost": 0}}
    w.close()
    rec = open_recording(tmp_path / "r.parquet")
    assert rec.metadata["clock"]["stop_ns"] == 42
    assert rec.metadata["counts"]["kmem:kfree"]["samples"] == 3


def test_samples_and_side_band_rows_get_separate_row_groups(tmp_path):
    w = RecordingWriter(tmp_path / "r.parquet", new_metadata("test"))
    w.write({"kind": ["sample", "comm", "sample", "ksym"], "time": [1, 0, 2, None],
             "comm": [None, "bash", None, None], "name": [None, None, None, "kfree"]})
    w.close()
    pf = pq.ParquetFile(tmp_path / "r.parquet")
    kinds = [set(pf.read_row_group(i, columns=["kind"]).column("kind").to_pylist())
             for i in range(pf.num_row_groups)]
    assert {"sample"} in kinds and all(k == {"sample"} or "sample" not in k for k in kinds)
    rec = open_recording(tmp_path / "r.parquet")
    assert rec.table(kinds=["sample"], columns=["time"]).column("time").to_pylist() == [1, 2]
    assert rec.table(kinds=["comm"], columns=["comm"]).column("comm").to_pylist() == ["bash"]


def test_parts_folder_reads_before_close_and_merges_to_one_file(tmp_path):
    out = tmp_path / "r.parquet"
    w = RecordingWriter(out, new_metadata("test"), parts=True)
    w.write({"kind": ["sample", "sample"], "time": [5, 6]})
    w.flush_part()
    w.write({"kind": ["comm"], "comm": ["x"]})
    w.flush_part()
    partial = open_recording(out)  # the file does not exist yet: falls back to the parts folder
    assert partial.partial and partial.num_rows == 3
    w.close()
    assert not (tmp_path / "r.parquet.parts").exists()
    rec = open_recording(out)
    assert not rec.partial
    assert sorted(rec.table(columns=["kind"]).column("kind").to_pylist()) == ["comm", "sample", "sample"]


def test_clean_stop_stitches_the_parts_row_groups_and_final_metadata(tmp_path):
    """close() in parts mode copies the parts' row groups (no re-encoding) and writes the final
    metadata both where our reader looks and where pyarrow's read_schema() looks."""
    out = tmp_path / "r.parquet"
    meta = new_metadata("test")
    w = RecordingWriter(out, meta, parts=True)
    for k in range(3):
        w.write({"kind": ["sample"] * 4, "time": [k * 10 + i for i in range(4)], "raw": [b"ab"] * 4})
        w.write({"kind": ["stack"], "stack_id": [k], "callchain": [[1, 2, k]]})
        w.metadata["counts"] = {"kmem:kmalloc": {"samples": 4 * (k + 1)}}
        w.flush_part()
    parts = sorted((tmp_path / "r.parquet.parts").glob("part-*.parquet"))
    groups = sum(pq.ParquetFile(p).num_row_groups for p in parts)
    w.close()
    pf = pq.ParquetFile(out)
    assert pf.num_row_groups == groups == 6
    kinds = [pf.read_row_group(i, columns=["kind"]).column("kind").to_pylist() for i in range(6)]
    assert kinds == [["sample"] * 4, ["stack"]] * 3
    rec = open_recording(out)
    assert rec.table(kinds=["sample"], columns=["time"]).column("time").to_pylist() == [
        0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]
    assert rec.metadata["counts"] == {"kmem:kmalloc": {"samples": 12}}
    assert json.loads(pq.read_schema(out).metadata[b"kmemleak_offline"])["counts"] == rec.metadata["counts"]


def test_a_newer_parts_folder_wins_over_an_older_file_of_the_same_name(tmp_path):
    """A later run into the same name that was killed left parts: they, not the old file, are it."""
    import os

    out = tmp_path / "r.parquet"
    old = RecordingWriter(out, new_metadata("old"))
    old.write({"kind": ["sample"], "time": [1]})
    old.close()
    os.utime(out, (1_000_000, 1_000_000))
    w = RecordingWriter(out, new_metadata("new"), parts=True)
    w.write({"kind": ["sample", "sample"], "time": [5, 6]})
    w.flush_part()  # ...and killed
    rec = open_recording(out)
    assert rec.partial and rec.metadata["producer"] == "new" and rec.num_rows == 2
    os.utime(out, None)  # the file is newer (say, a later clean run): the file
    for f in (tmp_path / "r.parquet.parts").glob("*.parquet"):
        os.utime(f, (1_000_000, 1_000_000))
    assert not open_recording(out).partial


def test_parts_writer_never_deletes_an_existing_parts_folder(tmp_path):
    """A killed run's parts are data: a new writer refuses to start over them."""
    out = tmp_path / "r.parquet"
    w = RecordingWriter(out, new_metadata("first"), parts=True)
    w.write({"kind": ["sample"], "time": [1]})
    w.flush_part()  # ...and killed
    with pytest.raises(RecordingError, match="exists"):
        RecordingWriter(out, new_metadata("second"), parts=True)
    assert open_recording(out).metadata["producer"] == "first"
