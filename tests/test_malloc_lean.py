"""The --malloc path's lean forms against plain references.

`analyze` of a `record --malloc` recording holds its samples in memory; what keeps that within
the bench's budget (issue 7: >= 1.5M samples/s in <= 1 GB) are narrow forms of the same steps:
thread order by two stable sorts (a tie check in chunks), 16-bit sort keys with a wide fallback,
int32 indices, payload offsets as views of the binary column, nulls filled straight from Arrow
buffers, dense process keys, no whole-recording ordering without LOST records. Each is checked
here against the plain form, in the layouts that could break it: payloads over many row groups
(entries and returns of one call in different groups, threads crossing groups), other events in
between, LOST records, forced wide paths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kmemleak_offline import malloc
from kmemleak_offline.analysis import AnalyzeOptions, analyze, process_keys
from kmemleak_offline.format import tracefs
from kmemleak_offline.format.recording import RecordingWriter, open_recording
from kmemleak_offline.load import column_array, load
from kmemleak_offline.synthetic import PERF_CONTEXT_USER as U
from kmemleak_offline.synthetic import RecordingBuilder
from tests.test_analyze_cli import run as run_cli
from tests.test_vectorised_paths import (
    ENTRY_ARGS,
    NO_FIELD,
    Program,
    _probe_formats,
    add_program_rows,
    event_name,
    frame_events,
    reference,
)

# ---------------------------------------------------------------- thread order


@pytest.mark.parametrize("case", ["plain", "sparse_tids", "many_threads", "negative_tids"])
@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_thread_order_is_lexsort(case, chunk, monkeypatch):
    """Two stable sorts give lexsort's order; ties (same thread, same time) are found wherever
    they fall, also across the tie check's chunks (3 rows: every boundary is crossed)."""
    monkeypatch.setattr(malloc, "TIE_CHUNK", chunk)
    rng = np.random.default_rng(11)
    n = 4000
    tid = {"plain": lambda: rng.integers(1, 6, n),
           "sparse_tids": lambda: rng.choice([7, 40_000, 1 << 30], n),  # span > 16 bits: np.unique
           "many_threads": lambda: rng.permutation(np.arange(n) * 3 + 5),  # distinct: wide codes
           "negative_tids": lambda: rng.integers(-5, 5, n)}[case]().astype(np.int32)
    for spread in (3 * n, 300):  # few ties, many ties
        time = rng.integers(0, spread, n).astype(np.uint64)
        seq = rng.permutation(n).astype(np.uint64)
        got = malloc._thread_order(tid, time, seq)
        assert (got == np.lexsort((seq, time, tid))).all()


def test_thread_order_finds_a_tie_at_a_chunk_boundary(monkeypatch):
    """The only tie sits across a chunk boundary: seq must still decide (the time sort alone
    would keep file order)."""
    monkeypatch.setattr(malloc, "TIE_CHUNK", 4)
    tid = np.array([1, 1, 1, 1, 1, 1, 1, 1], np.int32)
    time = np.array([10, 20, 30, 40, 50, 50, 70, 80], np.uint64)  # positions 4 and 5 tie
    seq = np.array([1, 2, 3, 4, 9, 5, 7, 8], np.uint64)
    assert malloc._thread_order(tid, time, seq).tolist() == [0, 1, 2, 3, 5, 4, 6, 7]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("radix", [1, 1 << 15])
def test_pairing_with_wide_or_radix_keys_matches_the_reference(seed, radix, monkeypatch):
    """RADIX_KEYS=1 forces 64-bit thread codes and (thread, level) keys everywhere."""
    monkeypatch.setattr(malloc, "RADIX_KEYS", radix)
    rng = np.random.default_rng(500 + seed)
    prog = Program(rng, threads=int(rng.integers(1, 9)), calls=int(rng.integers(50, 400)),
                   p_lost=float(rng.choice([0.0, 0.05, 0.2])))
    cols, words = prog.columns()
    df, stats = malloc.pair_calls(cols, words)
    want, want_stats = reference(prog.rows, prog.words)
    assert frame_events(df) == want and stats == want_stats


# ---------------------------------------------------------------- columns and payloads


def _old_column_array(col, dtype, fill=0):
    """column_array as Arrow casts and fills it (the form the numpy one replaced)."""
    if col.null_count:
        col = col.cast(pa.int64()).fill_null(fill) if fill < 0 else col.fill_null(fill)
    return col.to_numpy().astype(dtype, copy=False)


@pytest.mark.parametrize("typ", [pa.uint32(), pa.int32(), pa.uint64(), pa.int8(), pa.int64()])
@pytest.mark.parametrize("fill", [0, -1, 5])
@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.int32, np.uint32])
def test_integer_columns_with_nulls_fill_like_arrow(typ, fill, dtype):
    rng = np.random.default_rng(4)
    vals = [None if rng.random() < 0.3 else int(rng.integers(0, 100)) for _ in range(1000)]
    col = pa.chunked_array([pa.array(vals[:300], typ), pa.array(vals[300:], typ).slice(17, 500),
                            pa.array([], typ), pa.array([1, 2, None], typ)])
    for c in (col, col.chunk(1)):  # several chunks, and one sliced array (offset into its bitmap)
        got, want = column_array(c, dtype, fill), _old_column_array(c, dtype, fill)
        assert got.dtype == want.dtype and (got == want).all()


def test_payload_offsets_are_read_in_place_for_binary_and_large_binary():
    fmt = tracefs.parse_format(_probe_formats()[event_name("calloc", False)], "t")
    rng = np.random.default_rng(6)
    n = 500
    payloads = [None if rng.random() < 0.1 else
                bytes(rng.integers(0, 256, int(rng.choice([8, 24, 40]))).astype(np.uint8)) for _ in range(n)]
    whole = pa.array(payloads, pa.large_binary())
    want = tracefs.decode(fmt, whole)
    for raw in (pa.array(payloads, pa.binary()), pa.array(payloads, pa.binary()).slice(7, 300),
                whole.slice(7, 300)):
        _, starts, lengths = tracefs.raw_buffers(raw)
        assert starts.dtype == (np.int32 if pa.types.is_binary(raw.type) else np.int64)
        got = tracefs.decode(fmt, raw)
        off = 7 if len(raw) == 300 else 0
        for k, v in got.items():
            assert (v == want[k][off:off + len(raw)]).all(), k
        assert (lengths[np.asarray(raw.is_null())] == 0).all()


@pytest.mark.parametrize("pids", [[7], [7, 8, 9], [1, 1 << 30], [3, 70_000, 5]])
def test_process_keys_dense_and_sparse_pids(pids):
    """(pid, ptr) keys: equal exactly when both are equal, whichever way the pids are numbered."""
    rng = np.random.default_rng(8)
    n = 3000
    pid = rng.choice(np.array(pids, np.int32), n)
    ptr = (rng.integers(1, 50, n) * 16).astype(np.uint64)
    for p in (ptr, ptr | np.uint64(1 << 63)):  # pointers that do, and do not, leave high bits free
        key = process_keys(pid, p)
        pairs = list(zip(pid.tolist(), p.tolist(), strict=True))
        ids = {pr: i for i, pr in enumerate(dict.fromkeys(pairs))}
        want = [ids[pr] for pr in pairs]
        assert len(set(zip(key.tolist(), want, strict=True))) == len(set(key.tolist())) == len(ids)


# ---------------------------------------------------------------- recordings in many row groups

UBASE = 0x5555_0000_0000


def _alloc_free_specs() -> tuple[list[str], list[str]]:
    alloc = [f"{event_name(f, True)}//ptr={'ret' if f == 'posix_memalign' else 'ptr'}/stack/"
             for f in ENTRY_ARGS if f != "free"]
    return alloc, [f"{event_name('free', False)}//ptr=ptr/"]


def _probes() -> list[dict]:
    return [{"event": event_name(f, ret), "func": f, "kind": "return" if ret else "entry"}
            for f in ENTRY_ARGS for ret in (False, True) if not (ret and f == "free")]


def _program_recording(tmp: Path, seed: int, lost: bool) -> tuple[Path, Path, Program, dict]:
    """A random program's probe rows as one recording in one row group and the same rows in row
    groups of 37 (so calls straddle groups and every thread crosses many), with a kernel event
    in between and, if `lost`, LOST records in ring 0. Returns (one, many, program, lost info)."""
    rng = np.random.default_rng(seed)
    prog = Program(rng, threads=4, calls=500, p_lost=0.03)
    b = RecordingBuilder(_probe_formats())
    sids = b.add_stacks([(U, UBASE + 0x10 * (k + 1), UBASE + 0x400) for k in range(5)])
    add_program_rows(b, prog, sids)
    tmax = max(r["time"] for r in prog.rows)
    b.add_samples("kmem:kfree", [tmax // 3, tmax // 2], 0, 100, 1, {"ptr": [16, 32]},
                  seq=[10**6, 10**6 + 1])
    for tid in range(1, 5):
        b.add_comm(0, 100 + tid % 2, tid, f"thread{tid}")
    info: dict = {"sids": sids}
    if lost:  # a loss in ring 0 at the seq of ring-1 rows (unused in ring 0): known neighbours
        ring1 = sorted(r["seq"] for r in prog.rows if r["cpu"] == 1)
        picks = [ring1[len(ring1) // 4], ring1[len(ring1) // 2]]
        b.add_lost([1000, 1000], 0, [4, 2], seq=picks)
        info["seqs"] = picks
    alloc, free = _alloc_free_specs()
    one = b.write(tmp / f"one{seed}.parquet", alloc=alloc, free=free)
    rec = open_recording(one)
    meta = dict(rec.metadata)
    meta["probes"] = _probes()
    w = RecordingWriter(tmp / f"probes{seed}.parquet", meta, row_group_rows=1 << 20)
    w.write(rec.table())
    one = w.close()
    w = RecordingWriter(tmp / f"many{seed}.parquet", meta, row_group_rows=37)
    w.write(rec.table())
    return one, w.close(), prog, info


@pytest.mark.parametrize("seed", range(4))
def test_pairing_over_many_row_groups_matches_the_reference(tmp_path, seed):
    _, many, prog, info = _program_recording(tmp_path, 700 + seed, lost=bool(seed % 2))
    rec = open_recording(many)
    sm = load(rec).samples
    assert len(sm._chunks[1]) > 20  # payloads really are spread over many row groups
    got = malloc.malloc_rows(sm, rec.metadata)
    want, want_stats = reference([r | {"size": 0} if r["func"] in NO_FIELD and not r["is_return"] else r
                                  for r in prog.rows], prog.words)  # valloc's entry fetches no size
    assert got.stats == want_stats
    ev = np.array(sm.event_names, object)[sm.event[got.row]]
    rows = sorted(zip(sm.time[got.row].tolist(), sm.seq[got.row].tolist(), sm.tid[got.row].tolist(),
                      sm.pid[got.row].tolist(), sm.cpu[got.row].tolist(), got.is_alloc.tolist(),
                      got.ptr.tolist(), got.size.tolist(), sm.stack_id[got.row].tolist(),
                      [e.split(":")[1].removesuffix("_ret") for e in ev], ev.tolist(), strict=True))
    sids = info["sids"]
    assert rows == sorted(w[:8] + (sids[w[8]] if w[8] >= 0 else -1,) + w[9:] for w in want)


MODES = [[], ["-v"], ["-vv"], ["--format", "json"], ["--format", "json", "-v"], ["--comm"],
         ["-i", "1"], ["--than", "100ns"], ["--format", "folded"]]


@pytest.mark.parametrize("seed", range(2))
def test_row_group_layout_does_not_change_any_output(tmp_path, capsys, seed):
    """The same rows in one row group or in groups of 37: byte-identical output in every mode."""
    one, many, _, _ = _program_recording(tmp_path, 800 + seed, lost=True)
    for mode in MODES:
        code, out, err = run_cli(capsys, "analyze", one, *mode)
        assert code == 0, err
        assert "LEAKED BYTES REPORT" in out or mode[-1:] in (["folded"], ["json"], ["-v"])
        got = run_cli(capsys, "analyze", many, *mode)
        assert got == (0, out.replace(str(one), str(many)), err.replace(str(one), str(many))), mode


def test_lost_windows_of_a_malloc_recording_come_from_every_sample(tmp_path):
    """With LOST records the malloc path still orders every sample of the ring to find each
    loss's neighbours (without them it skips that pass): the window is (clamped time of the
    ring's last sample before the loss, clamped time of its first sample after)."""
    _, many, prog, info = _program_recording(tmp_path, 900, lost=True)
    a = analyze(open_recording(many), AnalyzeOptions(warn=lambda m: None))
    ring0 = sorted((r["seq"], r["time"]) for r in prog.rows if r["cpu"] == 0)
    ring0 += [(10**6, (max(r["time"] for r in prog.rows)) // 3),
              (10**6 + 1, (max(r["time"] for r in prog.rows)) // 2)]
    ring0.sort()
    clamped = np.maximum.accumulate([t for _, t in ring0])
    seqs = [s for s, _ in ring0]
    lost = a.result.lost
    for i, s in enumerate(info["seqs"]):
        k = int(np.searchsorted(seqs, s))
        assert int(lost.start[i]) == int(clamped[k - 1])
        assert int(lost.end[i]) == int(clamped[k])
    assert [r.reason for r in a.reports] == ["lost", "lost", "final"]
    assert a.lost_total == 6
