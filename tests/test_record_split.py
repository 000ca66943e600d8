"""The conversion of ring chunks into rows (format.convert), on hand-built perf records (no root).

Expected rows are worked out here: from what was put in, or by a plain record-by-record walk
(`_reference`), never by the code under test."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pytest

from kmemleak_offline.format.convert import ChunkConverter, ConvertError
from kmemleak_offline.format.recording import to_table
from recorder import perf_event as pe
from recorder.command import parse_duration
from recorder.errors import RecordInputError
from recorder.procfs import parse_cpu_list


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


EVENTS = {7: ("kmem:kmalloc", True), 8: ("kmem:kfree", False), 99: (None, False)}


def _chunks(items: list[tuple[int, int, int, bytes]]) -> pa.Table:
    """Chunk rows (ring, cpu, offset, bytes), in drain order."""
    return pa.table({"ring": pa.array([i[0] for i in items], pa.uint32()),
                     "cpu": pa.array([i[1] for i in items], pa.uint32()),
                     "offset": pa.array([i[2] for i in items], pa.uint64()),
                     "raw": pa.array([i[3] for i in items], pa.binary())})


def _convert(windows: list[list[tuple[int, int, int, bytes]]], per_task: bool = False,
             conv: ChunkConverter | None = None) -> tuple[ChunkConverter, list[dict]]:
    out: list = []
    conv = conv or ChunkConverter(EVENTS, per_task, out.append)
    conv.write = out.append
    for w in windows:
        conv.add(_chunks(w))
    return conv, [r for t in out for r in to_table(t).to_pylist()]


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
    # a second window of the same ring continues seq and reuses stack ids
    more = _sample(7, 1, 1, 2000, 1, chain_b, b"xy")
    sp, rows = _convert([[(3, 1, 0, data)], [(3, 1, len(data), more)]], per_task=True)
    samples = [r for r in rows if r["kind"] == "sample"]
    # a window's rows of one event are written together (their payloads copied as one block)
    assert [r["event"] for r in samples] == ["kmem:kfree"] + ["kmem:kmalloc"] * 4
    samples.sort(key=lambda r: r["seq"])  # seq: the order of the records in their ring
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
    assert sp.mmap_names == {"/usr/bin/x"} and sp.gaps == {}


def test_unknown_ids_are_dropped_and_cpu_mode_has_no_ring() -> None:
    data = _sample(7, 1, 1, 5, 0, [1, 2], b"abc") + _sample(12345, 1, 1, 6, 0, None, b"zz")
    _, rows = _convert([[(0, 0, 0, data)]])
    assert len(rows) == 2 and rows[0]["ring"] is None and rows[0]["raw"] == b"abc"
    assert rows[1]["kind"] == "stack"


def test_gaps_are_counted_and_disorder_refused() -> None:
    a = _sample(8, 1, 1, 5, 0, None, b"abcd")
    conv, rows = _convert([[(0, 0, 0, a), (0, 0, len(a) + 64, a)]])  # 64 bytes never written
    assert conv.gaps == {0: 64} and [r["seq"] for r in rows] == [0, 1]
    meta = conv.finish_metadata({"counts": {"kmem:kfree": {"lost": 0}}, "ring_chunks": {}})
    assert meta["chunk_gaps"] == [{"ring": 0, "bytes": 64}] and "ring_chunks" not in meta
    assert meta["counts"]["kmem:kfree"]["samples"] == 2
    with pytest.raises(ConvertError, match="out of order"):
        _convert([[(0, 0, 100, a), (0, 0, 0, a)]])
    with pytest.raises(ConvertError, match="whole records|corrupt record"):
        _convert([[(0, 0, 0, a[:40]), (0, 0, 40, a)]])  # a record running into the next chunk
    bad = bytearray(a)
    bad[6:8] = (4).to_bytes(2, "little")  # a record of 4 bytes
    with pytest.raises(ConvertError, match="corrupt record"):
        _convert([[(0, 0, 0, bytes(bad))]])


def test_option_parsers() -> None:
    assert parse_duration("500ms") == pytest.approx(0.5)
    assert parse_duration("10s") == 10 and parse_duration("2") == 2 and parse_duration("1m") == 60
    with pytest.raises(ValueError):
        parse_duration("10x")
    assert parse_cpu_list("0,2-3") == [0, 2, 3]
    with pytest.raises(RecordInputError):
        parse_cpu_list("a-b")
    assert np.uint64(pe.PerfEventAttr().size) == 0 and pe.ctypes.sizeof(pe.PerfEventAttr) == 136


def _reference(ring: int, data: bytes) -> list[tuple]:
    """(seq, kind, time, event, raw, chain) of each record of one ring's bytes, walked one record
    at a time with struct (an independent reading of the layout)."""
    out, off, seq = [], 0, 0
    while off < len(data):
        typ, _misc, size = struct.unpack_from("=IHH", data, off)
        if typ == pe.RECORD_SAMPLE:
            ident, _pid, _tid, t, _cpu, _res = struct.unpack_from("=QIIQII", data, off + 8)
            p = off + 40
            chain = None
            if EVENTS[ident][1]:
                (nr,) = struct.unpack_from("=Q", data, p)
                chain = list(struct.unpack_from(f"={nr}Q", data, p + 8))
                p += 8 + 8 * nr
            (n,) = struct.unpack_from("=I", data, p)
            out.append((seq, "sample", t, EVENTS[ident][0], data[p + 4:p + 4 + n], chain))
        elif typ == pe.RECORD_COMM:
            (t,) = struct.unpack_from("=Q", data, off + size - 24)
            out.append((seq, "comm", t, None, None, None))
        seq += 1
        off += size
    return out


@pytest.mark.parametrize("sizes", ["few", "odd", "many"])
def test_interleaved_chunks_convert_like_a_record_walk(sizes: str) -> None:
    """Many drains of two rings, interleaved as the recorder writes them and cut into windows:
    the rows must be what walking each ring's bytes record by record gives. Random payloads make
    words that read like record headers, so the chained boundaries are checked too."""
    rng = np.random.default_rng(5)
    chains = [[2**64 - 128, *rng.integers(2**63, 2**64 - 1, int(d), dtype=np.uint64).tolist()]
              for d in rng.integers(1, 30, 40)]
    pick = {"few": lambda: 24 if rng.random() < 0.5 else 48,  # one payload size per event type
            "odd": lambda: int(rng.choice([5, 24, 37])),  # not whole u32s
            "many": lambda: int(rng.integers(4, 200) * 4)}[sizes]  # > 64 sizes: the ragged path
    chunks: list[tuple[int, int, int, bytes]] = []
    whole = {0: bytearray(), 1: bytearray()}
    t = 0
    for _ in range(300):
        ring = int(rng.integers(0, 2))
        body = bytearray()
        for _ in range(int(rng.integers(1, 12))):
            t += 1
            if rng.random() < 0.02:
                rec = _comm(5, 6, b"x" * int(rng.integers(1, 15)), t, False)
            else:
                chain = chains[int(rng.integers(0, len(chains)))] if rng.random() < 0.5 else None
                rec = _sample(7 if chain else 8, 1, 2, t, ring, chain, rng.bytes(pick()))
            body += rec
        chunks.append((ring, ring + 4, len(whole[ring]), bytes(body)))
        whole[ring] += body
    windows = [chunks[:97], chunks[97:98], chunks[98:]]
    conv, rows = _convert(windows, per_task=True)
    stacks = {r["stack_id"]: r["callchain"] for r in rows if r["kind"] == "stack"}
    assert len(stacks) == len({tuple(c) for c in stacks.values()})  # one id per distinct chain
    for ring in (0, 1):
        want = _reference(ring, bytes(whole[ring]))
        got = sorted((r["seq"], r["kind"], r["time"], r["event"], r["raw"],
                      stacks.get(r["stack_id"])) for r in rows
                     if r["kind"] in ("sample", "comm") and (r["ring"] == ring or r["kind"] == "comm"
                                                              and r["time"] in {w[2] for w in want}))
        assert len(want) > 500 and got == want
        assert all(r["cpu"] == ring for r in rows if r["kind"] == "sample" and r["ring"] == ring)
    assert conv.seq == {0: len(_reference(0, bytes(whole[0]))), 1: len(_reference(1, bytes(whole[1])))}


def test_fast_option_parser_matches_the_typer_command() -> None:
    """record_fast (argparse, for start-up) must know exactly the options the Typer command has."""
    import typer.main

    from kmemleak_offline.cli import app
    from recorder.command import _fast_parser

    cmd = typer.main.get_command(app).commands["record"]
    typer_opts = {p.name: (sorted(p.opts + p.secondary_opts), p.default) for p in cmd.params
                  if p.param_type_name == "option" and p.name != "help"}
    fast: dict[str, tuple[list[str], object]] = {}
    for a in _fast_parser()._actions:
        opts, default = fast.get(a.dest, ([], a.default))
        fast[a.dest] = (sorted(opts + a.option_strings), default)
    assert typer_opts == fast


@pytest.mark.parametrize("argv", [
    ["--alloc", "kmem:kmalloc", "--free", "kmem:kfree", "-g", "-m", "64", "-o", "x.parquet"],
    ["--malloc", "-gvv", "--no-embed-symbols", "--defer-convert", "--duration=2s", "--", "ls", "-l"],
    ["-C", "0,1", "--alloc=a:b", "--free", "c:d", "--order", "--malloc-prefix", "je_"],
])
def test_fast_and_typer_parsers_give_one_config(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    from typer.testing import CliRunner

    from recorder.__main__ import app
    from recorder.command import record_fast

    got = []

    class Fake:
        def __init__(self, cfg) -> None:
            got.append(cfg)

        def run(self) -> int:
            return 0

    monkeypatch.setattr("recorder.session.Session", Fake)
    assert record_fast(argv)
    res = CliRunner().invoke(app, ["record", *argv])
    assert res.exit_code == 0, res.output
    assert len(got) == 2 and got[0] == got[1]
    assert not record_fast(["--help"]) and not record_fast(["--nosuch"]) and not record_fast(["pos"])
