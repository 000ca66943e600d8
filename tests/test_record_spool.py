"""The recorder's on-disk path: ring chunks as Parquet pages -> sealed parts -> converter -> OUT.

Hand-built perf records (tests.test_record_split) go through real part files and a real forked
converter; the expected rows are worked out here from what was put in. One live test drains a
real 1-page perf ring (wrapping many times) with Ring.drain_to and checks the chunks tile into
records.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kmemleak_offline.format import chunks
from kmemleak_offline.format.convert import convert_recording, is_raw, ring_chunks_meta
from kmemleak_offline.format.recording import (
    _arrow_schema_kv,
    make_parts_dir,
    new_metadata,
    open_recording,
    write_part,
)
from kmemleak_offline.format.stitch import stitch_files
from recorder import perf_event as pe
from recorder.ring import Ring
from recorder.spool import CONVERT, FULL, KEEP, RESERVE, SpooledRecording
from tests.test_record_split import EVENTS, _lost, _sample

CHAIN = [2**64 - 128, 0xFFFFFFFF81000010]


def _meta() -> dict:
    m = new_metadata("test")
    m["counts"] = {"kmem:kmalloc": {"samples": 0, "lost": 0}, "kmem:kfree": {"samples": 0, "lost": 0}}
    m["ring_chunks"] = ring_chunks_meta(EVENTS, per_task=False)
    return m


def _ring_bytes(first_ptr: int, n: int, t0: int = 100, cpu: int = 0) -> tuple[bytes, list[bytes]]:
    """n kmalloc samples (taken on `cpu`) and one LOST record; their raw payloads."""
    raws = [(first_ptr + i).to_bytes(8, "little") * 3 for i in range(n)]
    data = b"".join(_sample(7, 5, 6, t0 + i, cpu, CHAIN, r) for i, r in enumerate(raws))
    return data + _lost(7, 3, t0 + 899), raws


def _views(data: bytes, cut: int) -> list[memoryview]:
    """The bytes as the ring hands them over when it wraps: two pieces."""
    return [memoryview(data)[:cut], memoryview(data)[cut:]]


def test_pages_seal_into_a_parquet_part_that_stitches(tmp_path: Path) -> None:
    folder = make_parts_dir(tmp_path / "r.parquet")
    write_part(folder, 0, [{"kind": ["comm"], "time": [1], "pid": [5], "tid": [5], "comm": ["c"]}],
               _meta())
    w = chunks.ChunkWriter(folder, 1)
    items = []
    for i in range(40):
        data = os.urandom(8 * (i + 1))
        ring = i % 3
        off = sum(len(d) for r, d in items if r == ring)
        w.append(ring, 10 + ring, off, _views(data, i * 3), len(data))
        items.append((ring, data))
    meta = _meta()
    meta["stopped"] = "duration"
    w.add_metadata(meta)
    w.close()
    part = chunks.seal(folder, 1)
    assert part == folder / "part-00001.parquet" and not list(folder.glob(".ring-*"))
    t = pq.read_table(part)
    assert t.column("raw").to_pylist() == [d for _, d in items]
    assert t.column("ring").to_pylist() == [r for r, _ in items]
    assert t.column("cpu").to_pylist() == [10 + r for r, _ in items]
    assert t.column("kind").to_pylist() == ["chunk"] * 40
    assert t.column("callchain").null_count == 40 and t.column("comm").null_count == 40
    st = pq.ParquetFile(part).metadata.row_group(0).column(0).statistics
    assert (st.min, st.max) == ("chunk", "chunk")  # readers pick row groups by kind
    rec = open_recording(folder)  # a parts folder of pyarrow's part and ours
    assert rec.metadata["stopped"] == "duration" and is_raw(rec)
    out = tmp_path / "one.parquet"
    stitch_files(rec.files, out, _arrow_schema_kv(rec.metadata))  # same footer schema as pyarrow's
    one = open_recording(out)
    assert one.table(["chunk"], ["raw"]).column("raw").to_pylist() == [d for _, d in items]
    assert one.table(["comm"], ["comm"]).column("comm").to_pylist() == ["c"]


def test_a_torn_part_is_sealed_up_to_its_last_whole_page(tmp_path: Path) -> None:
    folder = make_parts_dir(tmp_path / "r.parquet")
    w = chunks.ChunkWriter(folder, 4)
    pages = [os.urandom(64) for _ in range(5)]
    for i, d in enumerate(pages):
        w.append(0, 0, 64 * i, [memoryview(d)], 64)
    w.add_metadata(_meta())
    os.write(w.fd, chunks.page_header(64) + b"x" * 20)  # killed mid-page: no index entry
    os.write(w.idx, b"\x01\x00\x00\x00\x20\x00")  # and a torn index frame
    w.close()
    part = chunks.seal(folder, 4, fallback_meta={"format_version": 2})
    assert pq.read_table(part).column("raw").to_pylist() == pages
    assert chunks.seal(folder, 4) is None  # nothing left to seal


def _spool(tmp_path: Path, orphaned: Path) -> tuple[SpooledRecording, list[bytes]]:
    """A forked converter fed two parts of hand-built ring bytes (two rings, wrapped views)."""
    sp = SpooledRecording(tmp_path / "s.parquet", _meta(), [], False, lambda: None, orphaned.touch)
    sp.start()
    raws: list[bytes] = []
    off = {0: 0, 1: 0}
    for seg in range(2):
        for ring in (0, 1):
            data, r = _ring_bytes(0x10000 * (seg + 1) + 0x1000 * ring, 40, 1000 * seg + 100 * ring, ring)
            raws += r
            sp.writer.append(ring, ring, off[ring], _views(data, 8 * 7), len(data))
            off[ring] += len(data)
        sp.metadata["counts"]["kmem:kmalloc"]["lost"] = 3 * (seg + 1)
        if seg == 0:
            sp.rotate()
    return sp, raws


@pytest.mark.parametrize("mode", [CONVERT, KEEP])
def test_clean_stop_leaves_one_file(tmp_path: Path, mode: str) -> None:
    sp, raws = _spool(tmp_path, tmp_path / "orphaned")
    sp.metadata["stopped"] = "duration"
    sp.close(mode)
    out = tmp_path / "s.parquet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet"]
    rec = open_recording(out)
    assert not rec.partial and is_raw(rec) == (mode == KEEP)
    assert rec.table(["ksym"], ["addr"]).num_rows > 1000  # the converter's kallsyms snapshot
    assert rec.table(["comm"], ["comm"]).num_rows > 1  # and /proc's comms
    if mode == KEEP:
        assert rec.table(["chunk"], ["raw"]).num_rows == 4
        convert_recording(rec, tmp_path / "c.parquet")
        rec = open_recording(tmp_path / "c.parquet")
    s = rec.table(["sample"], ["raw", "seq", "cpu", "stack_id"]).to_pylist()
    assert sorted(r["raw"] for r in s) == sorted(raws)
    # seq runs on across parts: 40 samples + 1 LOST per part and ring
    assert sorted(r["seq"] for r in s if r["cpu"] == 0) == list(range(40)) + list(range(41, 81))
    assert len({r["stack_id"] for r in s}) == 1 and rec.table(["stack"]).num_rows == 1
    meta = rec.metadata
    assert meta["counts"]["kmem:kmalloc"]["samples"] == 160 and meta["counts"]["kmem:kmalloc"]["lost"] == 6
    assert meta["lost_by_ring"] == [{"ring": 0, "cpu": 0, "lost_records": 2, "lost": 6},
                                    {"ring": 1, "cpu": 1, "lost_records": 2, "lost": 6}]
    assert meta["stopped"] == "duration" and "ring_chunks" not in meta
    assert meta["clock"]["stop_ns"] == 1100 + 899  # the last record's time, though the recorder said 0
    assert not (tmp_path / "orphaned").exists()


@pytest.mark.parametrize("how", ["killed", "failed"])
def test_the_converter_saves_the_parts_when_the_recorder_dies(tmp_path: Path, how: str) -> None:
    orphaned = tmp_path / "orphaned"
    sp, raws = _spool(tmp_path, orphaned)
    if how == "killed":  # the control pipe just closes: SIGKILL
        os.write(sp.writer.fd, chunks.page_header(4096) + b"torn")  # a page cut by the kill
        os.close(sp._ctrl)
        os.waitpid(sp.pid, 0)
        assert orphaned.exists()  # the converter ran the recorder's clean-up (uprobes)
    else:
        sp.abandon()
        assert not orphaned.exists()  # a failing recorder cleans up itself
    out = tmp_path / "s.parquet"
    parts = Path(str(out) + ".parts")
    assert not out.exists() and not list(parts.glob(".ring-*"))  # every part sealed
    rec = open_recording(out)
    assert rec.partial and is_raw(rec)
    assert rec.metadata["stopped"] == ("recorder killed" if how == "killed" else "recorder failed")
    convert_recording(rec, tmp_path / "c.parquet")
    c = open_recording(tmp_path / "c.parquet")
    assert sorted(c.table(["sample"], ["raw"]).column("raw").to_pylist()) == sorted(raws)
    assert c.metadata["counts"]["kmem:kmalloc"]["samples"] == 160
    assert c.metadata["clock"]["stop_ns"] == 1100 + 899  # stale recorder metadata: still covers all


def test_killed_before_enabling_leaves_nothing(tmp_path: Path) -> None:
    """Nothing is written before the events are on (kallsyms and /proc come after, from the
    converter): a recorder killed before that leaves no folder, not even the room it set aside."""
    sp = SpooledRecording(tmp_path / "e.parquet", _meta(), [], False, lambda: None, None)
    assert (sp.parts_dir / RESERVE).stat().st_size >= 64 << 10  # room for a last part, kept
    os.close(sp._ctrl)
    os.waitpid(sp.pid, 0)
    assert list(tmp_path.iterdir()) == []


def test_stop_reason_written_when_the_open_part_is_empty(tmp_path: Path) -> None:
    """Killed right after a part was handed over (nothing in the open one): the reason still
    reaches the recording, in a part of its own; every part numbered, none missing."""
    orphaned = tmp_path / "orphaned"
    sp, raws = _spool(tmp_path, orphaned)
    sp.rotate()  # the open part is empty now
    os.close(sp._ctrl)
    _, status = os.waitpid(sp.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and orphaned.exists()
    parts = tmp_path / "s.parquet.parts"
    assert not list(parts.glob(".ring-*")) and not list(parts.glob("*.tmp"))
    assert not (parts / RESERVE).exists()
    rec = open_recording(tmp_path / "s.parquet")
    assert rec.metadata["stopped"] == "recorder killed" and rec.warnings == []
    convert_recording(rec, tmp_path / "c.parquet")
    c = open_recording(tmp_path / "c.parquet")
    assert sorted(c.table(["sample"], ["raw"]).column("raw").to_pylist()) == sorted(raws)


def test_disk_full_seals_what_was_written_with_its_stop_reason(tmp_path: Path) -> None:
    """The recorder found no room (spool.Converter.full): the converter gives the reserve back,
    seals the open part (its torn page cut off) and writes the last metadata, "disk full"."""
    orphaned = tmp_path / "orphaned"
    sp, raws = _spool(tmp_path, orphaned)
    os.write(sp.writer.fd, chunks.page_header(4096) + b"torn")  # the write that found no room
    sp.metadata["stopped"] = "disk full"
    assert sp.close_full() == FULL
    parts = tmp_path / "s.parquet.parts"
    assert not (tmp_path / "s.parquet").exists() and not orphaned.exists()
    assert not list(parts.glob(".ring-*")) and not list(parts.glob("*.tmp"))
    assert not (parts / RESERVE).exists()
    rec = open_recording(tmp_path / "s.parquet")
    assert rec.partial and is_raw(rec) and rec.warnings == []
    assert rec.metadata["stopped"] == "disk full"
    convert_recording(rec, tmp_path / "c.parquet")
    c = open_recording(tmp_path / "c.parquet")
    assert sorted(c.table(["sample"], ["raw"]).column("raw").to_pylist()) == sorted(raws)
    assert c.metadata["stopped"] == "disk full"


@pytest.mark.skipif(os.geteuid() != 0, reason="perf_event_open on all tasks needs root")
def test_drain_to_copies_a_wrapping_ring_exactly(tmp_path: Path) -> None:
    a = pe.PerfEventAttr()
    a.type, a.config = pe.PERF_TYPE_SOFTWARE, pe.PERF_COUNT_SW_DUMMY
    a.sample_type = pe.SAMPLE_BASE
    a.flags = pe.FLAG_DISABLED | pe.FLAG_COMM | pe.FLAG_TASK | pe.FLAG_SAMPLE_ID_ALL
    fd = pe.perf_event_open(a, -1, 0)
    folder = make_parts_dir(tmp_path / "d.parquet")
    out = chunks.ChunkWriter(folder, 1)
    ring = Ring(fd, 1)
    try:
        pe.enable(fd)
        for _ in range(12):  # each round: ~40 fork/comm/exit records on CPU 0, then drain
            subprocess.run(["taskset", "-c", "0", "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do /bin/true; done"],
                           check=True)
            ring.drain_to(out, 7, 0)
        pe.disable(fd)
        ring.drain_to(out, 7, 0)
    finally:
        ring.close()
        os.close(fd)
        out.add_metadata(_meta())
        out.close()
    t = pq.read_table(chunks.seal(folder, 1))
    assert set(t.column("ring").to_pylist()) == {7}
    lens = [len(b) for b in t.column("raw").to_pylist()]
    offs = t.column("offset").to_pylist()
    assert offs == [sum(lens[:i]) for i in range(len(lens))]  # chunks follow each other
    data = b"".join(t.column("raw").to_pylist())
    assert len(data) == ring.bytes_read > 4 * 4096  # wrapped several times
    h = memoryview(data).cast("H")
    off, kinds = 0, set()
    while off < len(data) and h[off // 2 + 3]:  # every record is whole: sizes tile the stream
        kinds.add(h[off // 2])
        off += h[off // 2 + 3]
    assert off == len(data)
    assert kinds <= {pe.RECORD_COMM, pe.RECORD_FORK, pe.RECORD_EXIT, pe.RECORD_LOST}
    assert pe.RECORD_FORK in kinds and pe.RECORD_EXIT in kinds


def test_converter_survives_epipe_and_still_cleans_up(tmp_path: Path) -> None:
    """The recorder dies and its stderr pipe is gone: the converter's one-line complaints hit a
    closed pipe (EPIPE). It must still run the clean-up, seal what was written and say why."""
    import sys

    ran = tmp_path / "cleanup-ran"

    def orphaned() -> None:  # runs in the converter
        ran.touch()
        raise RuntimeError("could not remove uprobe x")  # said on the (closed) stderr

    r, w = os.pipe()
    os.close(r)  # nobody reads the converter's stderr: EPIPE
    saved, saved_fd = sys.stderr, os.dup(2)
    os.dup2(w, 2)  # the converter is forked with this stderr (fd 2 and Python's)
    sys.stderr = os.fdopen(os.dup(w), "w")
    try:
        sp = SpooledRecording(tmp_path / "k.parquet", _meta(), [], False, lambda: None, orphaned)
    finally:
        sys.stderr.close()
        sys.stderr = saved
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        os.close(w)
    sp.start()
    data, raws = _ring_bytes(0x7000, 30)
    sp.writer.append(0, 0, 0, [memoryview(data)], len(data))
    os.close(sp._ctrl)  # SIGKILL
    _, status = os.waitpid(sp.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ran.exists()  # the clean-up (uprobe removal) ran despite EPIPE
    rec = open_recording(tmp_path / "k.parquet")
    assert rec.metadata["stopped"] == "recorder killed" and rec.warnings == []
    convert_recording(rec, tmp_path / "c.parquet")
    c = open_recording(tmp_path / "c.parquet")
    assert sorted(c.table(["sample"], ["raw"]).column("raw").to_pylist()) == sorted(raws)
