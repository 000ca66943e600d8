"""The recorder's spool path: ring -> spool frames -> converter -> parts / final file.

Hand-built perf records (tests.test_record_split) go through real segment files and a real forked
converter; the expected rows are worked out here from what was put in. One live test drains a real
1-page perf ring (wrapping many times) with Ring.drain_to and checks the frames tile into records.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kmemleak_offline.format.recording import RecordingWriter, new_metadata, open_recording
from recorder import perf_event as pe
from recorder.records import RingBatch, Splitter, _boundaries
from recorder.ring import FRAME, Ring
from recorder.spool import DATA, Converter, SpooledRecording, frame_spans, segment_path
from tests.test_record_split import EVENTS, _lost, _sample

CHAIN = [2**64 - 128, 0xFFFFFFFF81000010]


def _meta() -> dict:
    m = new_metadata("test")
    m["counts"] = {"kmem:kmalloc": {"samples": 0, "lost": 0}, "kmem:kfree": {"samples": 0, "lost": 0}}
    return m


def _ring_bytes(first_ptr: int, n: int) -> tuple[bytes, list[bytes]]:
    """n kmalloc samples (u32-multiple payloads) and one LOST record; their raw payloads."""
    raws = [(first_ptr + i).to_bytes(8, "little") * 3 for i in range(n)]
    data = b"".join(_sample(7, 5, 6, 100 + i, 0, CHAIN, r) for i, r in enumerate(raws))
    return data + _lost(7, 3, 999), raws


def test_frames_drop_a_torn_last_frame() -> None:
    buf = FRAME.pack(1, DATA, 3) + b"abc" + FRAME.pack(0, DATA, 10) + b"xyz"
    got = [(r, k, buf[s:s + n]) for r, k, s, n in frame_spans(buf)]
    assert got == [(1, DATA, b"abc")]


def test_u32_payload_gather_keeps_bytes() -> None:
    data, raws = _ring_bytes(0x1000, 5)
    rows = Splitter(EVENTS).split(RingBatch(0, 0, data))[0]
    assert rows["raw"].to_pylist() == raws


def _record_through_converter(tmp_path: Path, die: bool | str) -> tuple[Path, list[bytes]]:
    """Spool two segments through a forked converter; stop cleanly, or die: "killed" (the
    control pipe just closes) or True (the recorder failed and abandons the recording)."""
    out = tmp_path / "s.parquet"
    w = RecordingWriter(out, _meta(), parts=True, row_group_rows=16)  # several row groups
    w.write({"kind": ["comm"], "time": [1], "pid": [5], "tid": [5], "comm": ["init-state"]})
    w.flush_part()
    orphaned = tmp_path / "orphaned"
    sp = SpooledRecording(w, Splitter(EVENTS), [0, 1], lambda: None, orphaned.touch)
    sp.events_enabled()
    raws = []
    for seg in range(2):
        data, r = _ring_bytes(0x10000 * (seg + 1), 40)
        raws += r
        if seg == 0:  # rows and metadata of odd lengths before ring bytes: frames stay aligned
            sp.write({"kind": ["comm"], "time": [1], "pid": [6], "tid": [6], "comm": ["snap"]})
            sp.metadata["host"] = {"hostname": "x" * 3}
            sp.write_metadata()
        # one ring's bytes in two drains (split on a record boundary), as the drain loop does
        cut = int(_boundaries(data)[20])
        os.write(sp.fd, FRAME.pack(1, DATA, cut) + data[:cut])
        os.write(sp.fd, FRAME.pack(1, DATA, len(data) - cut) + data[cut:])
        sp.metadata["counts"]["kmem:kmalloc"]["lost"] = 3 * (seg + 1)
        if seg == 0:
            sp.rotate()
    if die == "killed":
        os.close(sp._ctrl)
        os.waitpid(sp.pid, 0)
        assert orphaned.exists()  # the converter ran the recorder's clean-up (uprobes)
    elif die:
        sp.abandon()
        assert not orphaned.exists()  # a failing recorder cleans up itself
    else:
        sp.write({"kind": ["comm"], "time": [2], "pid": [9], "tid": [9], "comm": ["at-stop"]})
        sp.close()
    return out, raws


def test_converter_clean_stop_leaves_one_file(tmp_path: Path) -> None:
    out, raws = _record_through_converter(tmp_path, die=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet"]
    rec = open_recording(out)
    assert not rec.partial
    s = rec.table(["sample"], ["raw", "seq", "ring", "cpu", "stack_id"]).to_pylist()
    assert sorted(r["raw"] for r in s) == sorted(raws)
    # seq runs on across segments: 40 samples + 1 LOST per segment
    assert sorted(r["seq"] for r in s) == list(range(40)) + list(range(41, 81))
    assert {r["cpu"] for r in s} == {0} and len({r["stack_id"] for r in s}) == 1
    assert len(rec.table(["stack"]).to_pylist()) == 1
    assert sorted(r["comm"] for r in rec.table(["comm"]).to_pylist()) == ["at-stop", "init-state",
                                                                          "snap"]
    # a LOST record is the ring's: no event (its id is whichever event wrote next)
    assert [(r["lost"], r["cpu"], r["event"]) for r in rec.table(["lost"]).to_pylist()] == \
        [(3, 1, None), (3, 1, None)]
    meta = rec.metadata
    c = meta["counts"]["kmem:kmalloc"]
    assert (c["samples"], c["lost"]) == (80, 6) and "lost_records" not in c
    assert meta["lost_by_ring"] == [{"ring": 1, "cpu": 1, "lost_records": 2, "lost": 6}]
    assert meta["host"] == {"hostname": "xxx"} and "stopped" not in meta
    assert meta["clock"]["stop_ns"] == 999  # the last record's time, though the recorder said 0


@pytest.mark.parametrize("die", ["killed", True])
def test_converter_saves_the_spool_when_the_recorder_dies(tmp_path: Path, die: bool | str) -> None:
    out, raws = _record_through_converter(tmp_path, die=die)
    assert not out.exists() and not Path(str(out) + ".tmp").exists()
    parts = Path(str(out) + ".parts")
    assert not list(parts.glob("spool-*.bin"))  # every segment converted, even the unfinished one
    rec = open_recording(out)
    assert rec.partial
    assert sorted(r["raw"] for r in rec.table(["sample"], ["raw"]).to_pylist()) == sorted(raws)
    assert rec.metadata["counts"]["kmem:kmalloc"]["samples"] == 80
    # stale recorder metadata: the stop time still covers every record, and says why it stopped
    assert rec.metadata["clock"]["stop_ns"] == 999
    assert rec.metadata["stopped"] == ("recorder killed" if die == "killed" else "recorder failed")


def test_converter_in_process_catch_up(tmp_path: Path) -> None:
    w = RecordingWriter(tmp_path / "c.parquet", _meta(), parts=True)
    data, raws = _ring_bytes(0x5000, 10)
    segment_path(w.parts_dir, 0).write_bytes(FRAME.pack(0, DATA, len(data)) + data)
    conv = Converter(w, Splitter(EVENTS), [3])
    conv.catch_up(w.parts_dir, 0)
    assert not segment_path(w.parts_dir, 0).exists()
    rec = open_recording(w.parts_dir)
    assert rec.table(["sample"], ["raw"]).column("raw").to_pylist() == raws
    r, ack = os.pipe()
    conv.finish(w.parts_dir, ack)
    assert os.read(r, 16) == b"done\n"
    lost = open_recording(tmp_path / "c.parquet").table(["lost"], ["cpu", "lost"]).to_pylist()
    assert lost == [{"cpu": 3, "lost": 3}]  # a LOST row carries its ring's CPU


@pytest.mark.skipif(os.geteuid() != 0, reason="perf_event_open on all tasks needs root")
def test_drain_to_copies_a_wrapping_ring_exactly(tmp_path: Path) -> None:
    a = pe.PerfEventAttr()
    a.type, a.config = pe.PERF_TYPE_SOFTWARE, pe.PERF_COUNT_SW_DUMMY
    a.sample_type = pe.SAMPLE_BASE
    a.flags = pe.FLAG_DISABLED | pe.FLAG_COMM | pe.FLAG_TASK | pe.FLAG_SAMPLE_ID_ALL
    fd = pe.perf_event_open(a, -1, 0)
    spool = tmp_path / "ring.spool"
    out = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    ring = Ring(fd, 1)
    try:
        pe.enable(fd)
        for _ in range(12):  # each round: ~40 fork/comm/exit records on CPU 0, then drain
            subprocess.run(["taskset", "-c", "0", "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do /bin/true; done"],
                           check=True)
            ring.drain_to(out, 7)
        pe.disable(fd)
        ring.drain_to(out, 7)
    finally:
        ring.close()
        os.close(fd)
        os.close(out)
    raw = spool.read_bytes()
    fr = list(frame_spans(raw))
    assert fr and all(r == 7 and k == DATA for r, k, _, _ in fr)
    data = b"".join(raw[s:s + n] for _, _, s, n in fr)
    assert len(data) == ring.bytes_read > 4 * 4096  # wrapped several times
    h = memoryview(data).cast("H")
    off, kinds = 0, set()
    while off < len(data) and h[off // 2 + 3]:  # every record is whole: sizes tile the stream
        kinds.add(h[off // 2])
        off += h[off // 2 + 3]
    assert off == len(data)
    assert kinds <= {pe.RECORD_COMM, pe.RECORD_FORK, pe.RECORD_EXIT, pe.RECORD_LOST}
    assert pe.RECORD_FORK in kinds and pe.RECORD_EXIT in kinds


def _converter(tmp_path: Path, enabled: bool = True) -> tuple[SpooledRecording, Path]:
    out = tmp_path / "k.parquet"
    w = RecordingWriter(out, _meta(), parts=True)
    w.write({"kind": ["comm"], "time": [1], "pid": [5], "tid": [5], "comm": ["init-state"]})
    w.flush_part()
    orphaned = tmp_path / "orphaned"
    sp = SpooledRecording(w, Splitter(EVENTS), [0, 1], lambda: None, orphaned.touch)
    if enabled:
        sp.events_enabled()
    return sp, orphaned


def test_converter_survives_epipe_and_still_cleans_up(tmp_path: Path) -> None:
    """The recorder dies while waiting for a `sync` answer: the converter's reply hits a closed
    pipe (EPIPE). It used to die there, skipping the uprobe removal and the stop reason."""
    sp, orphaned = _converter(tmp_path)
    data, raws = _ring_bytes(0x7000, 30)
    os.write(sp.fd, FRAME.pack(0, DATA, len(data)) + data)
    os.close(sp._ack)  # nobody will read the answer
    sp.rotate("sync")
    os.close(sp._ctrl)
    _, status = os.waitpid(sp.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert orphaned.exists()
    rec = open_recording(tmp_path / "k.parquet")
    assert rec.metadata["stopped"] == "recorder killed"
    assert sorted(rec.table(["sample"], ["raw"]).column("raw").to_pylist()) == sorted(raws)


@pytest.mark.parametrize("enabled", [True, False])
def test_stop_reason_written_when_no_segment_is_left(tmp_path: Path, enabled: bool) -> None:
    """Killed right after a segment was handed over (nothing left to convert): the reason still
    reaches the recording, in a part of its own; before the events were on, it says so."""
    sp, orphaned = _converter(tmp_path, enabled)
    assert not orphaned.exists()
    data, _ = _ring_bytes(0x9000, 5)
    os.write(sp.fd, FRAME.pack(0, DATA, len(data)) + data)
    sp.flush_part()  # converted; the next segment is empty
    os.close(sp._ctrl)
    os.waitpid(sp.pid, 0)
    assert orphaned.exists()
    rec = open_recording(tmp_path / "k.parquet")
    assert rec.metadata["stopped"] == ("recorder killed" if enabled else
                                       "recorder killed before the events were enabled")
    assert rec.metadata["counts"]["kmem:kmalloc"]["samples"] == 5


def test_first_part_says_killed_before_enabled_until_the_converter_runs(tmp_path: Path) -> None:
    """A recorder SIGKILLed after its first part (kallsyms) and before its converter exists
    leaves a folder whose stop reason is still right; the writer's metadata keeps no stop reason."""
    from types import SimpleNamespace

    from recorder.session import Session

    w = RecordingWriter(tmp_path / "e.parquet", _meta(), parts=True)
    Session._start_parts(SimpleNamespace(writer=w),
                         {"kind": ["ksym"], "addr": [0xFFFFFFFF81000000], "name": ["_text"]})
    assert "stopped" not in w.metadata
    assert (w.parts_dir / ".reserve").stat().st_size >= 64 << 10
    rec = open_recording(tmp_path / "e.parquet")
    assert rec.metadata["stopped"] == "recorder killed before the events were enabled"
    assert rec.table(["ksym"], ["name"]).column("name").to_pylist() == ["_text"]
