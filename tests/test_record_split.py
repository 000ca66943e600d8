"""Unit tests of the record splitter on hand-built perf records (no root needed)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kmemleak_offline.format.recording import to_table
from recorder import perf_event as pe
from recorder.command import parse_duration
from recorder.errors import RecordInputError
from recorder.procfs import parse_cpu_list
from recorder.records import EventInfo, RingBatch, Splitter


def _sample(ident: int, pid: int, tid: int, t: int, cpu: int, chain: list[int] | None,
            raw: bytes) -> bytes:
    body = struct.pack("=QIIQII", ident, pid, tid, t, cpu, 0)
    if chain is not None:
        body += struct.pack(f"=Q{len(chain)}Q", len(chain), *chain)
    raw_part = struct.pack("=I", len(raw)) + raw
    raw_part += b"\0" * (-(len(raw_part)) % 8)
    body += raw_part
    return struct.pack("=IHH", pe.RECORD_SAMPLE, 0, 8 + len(body)) + body


def _trailer(pid: int, tid: int, t: int, cpu: int, ident: int) -> bytes:
    return struct.pack("=IIQIIQ", pid, tid, t, cpu, 0, ident)


def _lost(ident: int, n: int, t: int) -> bytes:
    body = struct.pack("=QQ", ident, n) + _trailer(0, 0, t, 1, ident)
    return struct.pack("=IHH", pe.RECORD_LOST, 0, 8 + len(body)) + body


def _comm(pid: int, tid: int, comm: bytes, t: int, exec_: bool) -> bytes:
    name = comm + b"\0" * (8 - len(comm) % 8)
    body = struct.pack("=II", pid, tid) + name + _trailer(pid, tid, t, 1, 99)
    misc = pe.MISC_COMM_EXEC if exec_ else 0
    return struct.pack("=IHH", pe.RECORD_COMM, misc, 8 + len(body)) + body


def _fork(pid: int, ppid: int, tid: int, ptid: int, t: int) -> bytes:
    body = struct.pack("=IIIIQ", pid, ppid, tid, ptid, t) + _trailer(pid, tid, t, 1, 99)
    return struct.pack("=IHH", pe.RECORD_FORK, 0, 8 + len(body)) + body


def _mmap2(pid: int, addr: int, length: int, pgoff: int, bid: bytes, name: bytes, t: int) -> bytes:
    fname = name + b"\0" * (8 - len(name) % 8)
    body = (struct.pack("=IIQQQ", pid, pid, addr, length, pgoff)
            + struct.pack("=BBH20s", len(bid), 0, 0, bid) + struct.pack("=II", 5, 2) + fname
            + _trailer(pid, pid, t, 1, 99))
    return struct.pack("=IHH", pe.RECORD_MMAP2, pe.MISC_MMAP_BUILD_ID, 8 + len(body)) + body


EVENTS = {7: EventInfo("kmem:kmalloc", True), 8: EventInfo("kmem:kfree", False),
          99: EventInfo(None, False)}


def test_split_samples_stacks_lost_and_sideband() -> None:
    chain_a = [2**64 - 128, 0xFFFFFFFF81000010, 0xFFFFFFFF81000020]
    chain_b = [2**64 - 128, 0xFFFFFFFF81000030]
    raws = [bytes(range(i, i + 20 + i)) for i in range(4)]  # different lengths
    data = (_sample(7, 10, 11, 1000, 1, chain_a, raws[0])
            + _sample(8, 10, 12, 1001, 1, None, raws[1])
            + _lost(7, 42, 1002)
            + _sample(7, 20, 20, 1003, 1, chain_b, raws[2])
            + _comm(30, 31, b"worker", 1004, True)
            + _sample(7, 20, 21, 1005, 1, chain_a, raws[3])
            + _fork(40, 30, 41, 31, 1006)
            + _mmap2(30, 0x400000, 0x1000, 0x2000, b"\xab" * 20, b"/usr/bin/x", 1007))
    sp = Splitter(EVENTS, per_task=True)
    parts = [to_table(r) for r in sp.split(RingBatch(ring=3, cpu=1, data=data))]
    # a second batch of the same ring continues seq and reuses stack ids
    parts += [to_table(r) for r in sp.split(RingBatch(3, 1, _sample(7, 1, 1, 2000, 1, chain_b, b"xy")))]
    rows = [r for t in parts for r in t.to_pylist()]
    samples = [r for r in rows if r["kind"] == "sample"]
    assert [r["seq"] for r in samples] == [0, 1, 3, 5, 8]
    assert [r["raw"] for r in samples] == raws + [b"xy"]
    assert [r["event"] for r in samples] == ["kmem:kmalloc", "kmem:kfree"] + ["kmem:kmalloc"] * 3
    assert [(r["pid"], r["tid"], r["time"], r["cpu"], r["ring"]) for r in samples][:2] == [
        (10, 11, 1000, 1, 3), (10, 12, 1001, 1, 3)]
    ids = [r["stack_id"] for r in samples]
    assert ids[1] is None and ids[0] == ids[3] and ids[2] == ids[4] and ids[0] != ids[2]
    stacks = {r["stack_id"]: r["callchain"] for r in rows if r["kind"] == "stack"}
    assert stacks == {ids[0]: chain_a, ids[2]: chain_b}  # each chain stored once
    lost = [r for r in rows if r["kind"] == "lost"]
    # the ring's loss: the record's id (7, kmalloc) only names the next event to write
    assert [(r["lost"], r["seq"], r["time"], r["event"], r["cpu"]) for r in lost] == [
        (42, 2, 1002, None, 1)]
    assert sp.lost_by_ring == {3: [1, 1, 42]}
    comm = next(r for r in rows if r["kind"] == "comm")
    assert (comm["pid"], comm["tid"], comm["comm"], comm["exec"], comm["seq"]) == (30, 31, "worker", True, 4)
    fork = next(r for r in rows if r["kind"] == "fork")
    assert (fork["pid"], fork["ppid"], fork["tid"], fork["ptid"], fork["time"]) == (40, 30, 41, 31, 1006)
    mm = next(r for r in rows if r["kind"] == "mmap")
    assert (mm["addr"], mm["len"], mm["pgoff"], mm["filename"], mm["build_id"]) == (
        0x400000, 0x1000, 0x2000, "/usr/bin/x", b"\xab" * 20)
    assert sp.samples == {"kmem:kmalloc": 4, "kmem:kfree": 1}
    assert sp.max_time == 2000  # the latest record of any kind (clock.stop_ns is never older)


def test_unknown_ids_are_dropped_and_cpu_mode_has_no_ring() -> None:
    data = _sample(7, 1, 1, 5, 0, [1, 2], b"abc") + _sample(12345, 1, 1, 6, 0, None, b"zz")
    rows = to_table(Splitter(EVENTS).split(RingBatch(0, 0, data))[0]).to_pylist()
    assert len(rows) == 1 and rows[0]["ring"] is None and rows[0]["raw"] == b"abc"


def test_option_parsers() -> None:
    assert parse_duration("500ms") == pytest.approx(0.5)
    assert parse_duration("10s") == 10 and parse_duration("2") == 2 and parse_duration("1m") == 60
    with pytest.raises(ValueError):
        parse_duration("10x")
    assert parse_cpu_list("0,2-3") == [0, 2, 3]
    with pytest.raises(RecordInputError):
        parse_cpu_list("a-b")
    assert np.uint64(pe.PerfEventAttr().size) == 0 and pe.ctypes.sizeof(pe.PerfEventAttr) == 136


def _rows_of(sp: Splitter, batch: RingBatch) -> list[dict]:
    return [r for t in sp.split(batch) for r in to_table(t).to_pylist()]


@pytest.mark.parametrize("sizes", ["few", "odd", "many"])
def test_drain_spans_split_like_the_whole_ring(sizes: str) -> None:
    """A segment interleaves many drains of two rings; splitting each ring's spans in lockstep must
    give exactly what walking that ring's concatenated bytes record by record gives."""
    rng = np.random.default_rng(5)
    chains = [[2**64 - 128, *rng.integers(2**63, 2**64 - 1, int(d), dtype=np.uint64).tolist()]
              for d in rng.integers(1, 30, 40)]
    pick = {"few": lambda: 24 if rng.random() < 0.5 else 48,  # one payload size per event type
            "odd": lambda: int(rng.choice([5, 24, 37])),  # not whole u32s: the byte path
            "many": lambda: int(rng.integers(4, 200) * 4)}[sizes]  # > 16 sizes: the ragged path
    segment, spans, whole = bytearray(), {0: [], 1: []}, {0: bytearray(), 1: bytearray()}
    raws: dict[int, list[bytes]] = {0: [], 1: []}
    t = 0
    for _ in range(300):  # drains of random length, rings interleaved as the spool writes them
        ring = int(rng.integers(0, 2))
        start = len(segment)
        for _ in range(int(rng.integers(0, 12))):
            t += 1
            if rng.random() < 0.02:
                rec = _comm(5, 6, b"x" * int(rng.integers(1, 15)), t, False)
            else:
                raws[ring].append(rng.bytes(pick()))
                chain = chains[int(rng.integers(0, len(chains)))] if rng.random() < 0.5 else None
                rec = _sample(7 if chain else 8, 1, 2, t, ring, chain, raws[ring][-1])
            segment += rec
            whole[ring] += rec
        spans[ring].append((start, len(segment)))
    for ring in (0, 1):
        starts, ends = np.array(spans[ring], dtype=np.int64).reshape(-1, 2).T
        a, b = Splitter(EVENTS), Splitter(EVENTS)
        got = _rows_of(a, RingBatch(ring, ring, bytes(segment), starts, ends))
        want = _rows_of(b, RingBatch(ring, ring, bytes(whole[ring])))
        assert len(want) > 500 and got == want
        assert [r["raw"] for r in got if r["kind"] == "sample"] == raws[ring]
        assert a.stacks == b.stacks and a.samples == b.samples
