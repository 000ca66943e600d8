"""Pairing of allocator entry/return samples into alloc/free rows (kmemleak_offline.malloc)."""

from __future__ import annotations

import numpy as np
import pytest

from kmemleak_offline.malloc import MallocError, pair_calls


class Calls:
    """Builds hand-made call columns: one row per probe hit, time increasing as written."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.t = 1000

    def hit(self, tid: int, func: str, is_ret: bool, pid: int = 100, stack: int = -1, **args: int) -> None:
        self.t += 10
        self.rows.append({"time": self.t, "tid": tid, "pid": pid, "func": func, "is_return": is_ret,
                          "stack_id": stack, "seq": len(self.rows), "cpu": 0, **args})

    def call(self, tid: int, func: str, ptr: int, stack: int = 7, **args: int) -> None:
        self.hit(tid, func, False, **args)
        self.hit(tid, func, True, stack=stack, ptr=ptr)

    def columns(self, shuffle: bool = True) -> dict[str, np.ndarray]:
        keys = {k for r in self.rows for k in r}
        cols = {k: np.array([r.get(k, 0) for r in self.rows]) for k in keys}
        cols["func"] = cols["func"].astype(object)
        cols["event"] = np.array([f"kmlo_1:{r['func']}{'_ret' if r['is_return'] else ''}"
                                  for r in self.rows], dtype=object)
        if shuffle:  # row order is not significant: the pairing must sort
            perm = np.random.default_rng(1).permutation(len(self.rows))
            cols = {k: v[perm] for k, v in cols.items()}
        return cols


def live(df) -> dict[int, int]:
    """Replay alloc/free rows in time order (test oracle, a plain loop): ptr -> size still live."""
    out: dict[int, int] = {}
    for r in df.sort_values(["time", "seq"], kind="stable").itertuples():
        if r.is_alloc:
            out[int(r.ptr)] = int(r.size)
        else:
            out.pop(int(r.ptr), None)
    return out


def test_malloc_free_and_failed_malloc():
    c = Calls()
    c.call(1, "malloc", 0xA0, size=100)
    c.call(1, "malloc", 0xB0, size=4096)
    c.call(1, "malloc", 0, size=1 << 62)  # failed: NULL is not an allocation
    c.hit(1, "free", False, ptr=0xA0)
    c.hit(1, "free", False, ptr=0)  # free(NULL): nothing
    df, stats = pair_calls(c.columns())
    assert live(df) == {0xB0: 4096}
    assert df["is_alloc"].sum() == 2 and (~df["is_alloc"]).sum() == 1
    assert stats["null"] == 1
    allocs = df[df["is_alloc"]]
    assert set(allocs["stack_id"]) == {7}  # stacks come from the return probe
    assert set(allocs["func"]) == {"malloc"}


def test_calloc_multiplies():
    c = Calls()
    c.call(3, "calloc", 0x100, nmemb=7, size=24)
    df, _ = pair_calls(c.columns())
    assert live(df) == {0x100: 7 * 24}


def test_realloc_chain_and_failures():
    c = Calls()
    c.call(1, "realloc", 0x10, oldptr=0, size=8)  # realloc(NULL, 8) = malloc
    c.call(1, "realloc", 0x10, oldptr=0x10, size=16)  # grows in place: same pointer
    c.call(1, "realloc", 0x20, oldptr=0x10, size=64)  # moves
    c.call(1, "realloc", 0, oldptr=0x20, size=1 << 62)  # fails: old block stays, size unchanged
    c.call(1, "reallocarray", 0x30, oldptr=0x20, nmemb=10, size=12)  # moves again
    df, _ = pair_calls(c.columns())
    assert live(df) == {0x30: 120}
    c.call(1, "realloc", 0, oldptr=0x30, size=0)  # glibc: realloc(p, 0) frees p, returns NULL
    df, _ = pair_calls(c.columns())
    assert live(df) == {}


def test_nested_calls_inside_allocator_are_dropped():
    c = Calls()
    # realloc(NULL, 32) calls malloc inside glibc; realloc(p, 0) calls free inside.
    c.hit(1, "realloc", False, oldptr=0, size=32)
    c.call(1, "malloc", 0x40, size=32)
    c.hit(1, "realloc", True, ptr=0x40, stack=9)
    c.hit(1, "realloc", False, oldptr=0x40, size=0)
    c.hit(1, "free", False, ptr=0x40)
    c.hit(1, "realloc", True, ptr=0)
    df, stats = pair_calls(c.columns())
    assert len(df[df["is_alloc"]]) == 1 and df[df["is_alloc"]]["stack_id"].iloc[0] == 9
    assert len(df[~df["is_alloc"]]) == 1
    assert live(df) == {}
    assert stats["nested"] == 2  # the inner malloc call + the inner free


def test_threads_interleave_and_free_each_others_blocks():
    c = Calls()
    c.hit(1, "malloc", False, size=10)
    c.hit(2, "malloc", False, size=20)  # thread 2 enters while thread 1 is inside malloc
    c.hit(2, "malloc", True, ptr=0x200)
    c.hit(1, "malloc", True, ptr=0x100)
    c.hit(2, "free", False, ptr=0x100)  # thread 2 frees thread 1's block
    c.call(3, "malloc", 0x300, size=30)
    df, _ = pair_calls(c.columns())
    assert live(df) == {0x200: 20, 0x300: 30}
    sizes = dict(zip(df[df["is_alloc"]]["ptr"], df[df["is_alloc"]]["size"], strict=True))
    assert sizes == {0x100: 10, 0x200: 20, 0x300: 30}


def test_lost_entry_or_return_does_not_poison_the_thread():
    c = Calls()
    c.hit(1, "malloc", True, ptr=0xDEAD)  # return whose entry was lost (or before recording)
    c.call(1, "malloc", 0x10, size=1)
    c.hit(1, "calloc", False, nmemb=1, size=1)  # entry whose return was lost
    c.call(1, "malloc", 0x20, size=2)
    c.hit(1, "free", False, ptr=0x10)
    df, stats = pair_calls(c.columns())
    assert live(df) == {0x20: 2}
    assert stats["unpaired"] == 2


def test_posix_memalign_reads_the_stored_pointer():
    sp = 0x7FFF0000
    words = np.zeros((4, 8), np.uint64)
    c = Calls()
    c.hit(1, "posix_memalign", False, memptr=sp + 24, align=64, size=256)
    c.hit(1, "posix_memalign", True, ret=0, sp=sp, stack=5)
    c.hit(1, "posix_memalign", False, memptr=sp + 8, align=64, size=1 << 62)
    c.hit(1, "posix_memalign", True, ret=12, sp=sp)  # ENOMEM: no allocation
    cols = c.columns(shuffle=False)
    words[1, 3] = 0xABC0  # the caller's variable, 24 bytes above sp at return
    df, stats = pair_calls(cols, words)
    assert live(df) == {0xABC0: 256}
    assert stats["memptr_unknown"] == 0
    # memptr outside the fetched window: counted, not invented
    cols["memptr"][0] = sp + 8 * 100
    df, stats = pair_calls(cols, words)
    assert live(df) == {} and stats["memptr_unknown"] == 1


def test_free_rows_keep_identity_columns():
    c = Calls()
    c.call(4, "malloc", 0x10, size=1, pid=44)
    c.hit(5, "free", False, pid=44, ptr=0x10)
    df, _ = pair_calls(c.columns())
    fr = df[~df["is_alloc"]].iloc[0]
    assert (fr["tid"], fr["pid"], fr["func"]) == (5, 44, "free")
    assert list(df.columns) == ["time", "cpu", "ring", "seq", "pid", "tid", "ptr", "size", "stack_id",
                                "is_alloc", "func", "event"]


def test_unknown_function_is_a_clear_error():
    c = Calls()
    c.call(1, "mmap", 0x10, size=1)
    with pytest.raises(MallocError, match="mmap"):
        pair_calls(c.columns())


def test_malloc_events_decodes_a_recording(tmp_path):
    from kmemleak_offline.format.recording import open_recording
    from kmemleak_offline.malloc import is_malloc_recording, malloc_events
    from kmemleak_offline.synthetic import RecordingBuilder

    b = RecordingBuilder()
    # thread 11: malloc(24) -> 0x1000 (leaked), malloc(8) -> 0x2000, freed by thread 12
    b.add_samples("kmlt_fmt:malloc_ent", [10, 30], 0, 5, 11, {"size": [24, 8]})
    b.add_samples("kmlt_fmt:malloc_ret", [20, 40], 0, 5, 11, {"ptr": [0x1000, 0x2000]}, stack_id=[3, 4])
    b.add_samples("kmlt_fmt:free_ent", [50], 1, 5, 12, {"ptr": [0x2000]})
    path = b.write(tmp_path / "m.parquet", alloc=["kmlt_fmt:malloc_ret//ptr=ptr/"],
                   free=["kmlt_fmt:free_ent//ptr=ptr/"])
    rec = open_recording(path)
    meta = dict(rec.metadata)
    assert not is_malloc_recording(meta)
    meta["probes"] = [{"event": "kmlt_fmt:malloc_ent", "func": "malloc", "kind": "entry"},
                      {"event": "kmlt_fmt:malloc_ret", "func": "malloc", "kind": "return"},
                      {"event": "kmlt_fmt:free_ent", "func": "free", "kind": "entry"}]
    assert is_malloc_recording(meta)
    df, _ = malloc_events(rec.table(["sample"]), meta)
    assert live(df) == {0x1000: 24}
    allocs = df[df["is_alloc"]]
    assert list(allocs["stack_id"]) == [3, 4] and list(allocs["time"]) == [20, 40]
    assert list(df[~df["is_alloc"]]["tid"]) == [12]
