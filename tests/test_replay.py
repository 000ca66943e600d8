"""The vectorised replay against a literal per-event transcription of perf-prof (randomised),
plus hand-worked cases for each rule of docs/behaviour.md (Matching, Lost events)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kmemleak_offline.replay import lost_windows, order_samples, replay
from tests.reference_replay import LostRec, Sample, reference_replay


def run_vectorised(samples, losts, start, stop, than=0):
    ring = np.array([s.ring for s in samples], np.uint32)
    seq = np.array([s.seq for s in samples], np.uint64)
    time = np.array([s.time for s in samples], np.uint64)
    lost = lost_windows(order_samples(ring, seq, time), ring, seq,
                        np.array([lo.ring for lo in losts], np.uint32),
                        np.array([lo.seq for lo in losts], np.uint64),
                        np.array([lo.count for lo in losts], np.uint64),
                        np.zeros(len(losts), np.uint64), start)
    res = replay(ring=ring, seq=seq, time=time,
                 is_alloc=np.array([s.is_alloc for s in samples], bool),
                 key=np.array([s.key for s in samples], np.uint64), lost=lost, stop_ns=stop,
                 than_ns=than, want_death=True)
    ident = np.array([s.ident for s in samples])
    reports = []
    for r in res.reports:
        if r.reason == "lost" and len(r.leaked) == 0:
            continue  # perf-prof prints nothing for an early report of an empty tree
        reports.append((r.reason, r.time_ns, list(ident[res.order[r.leaked]]), list(r.selected),
                        r.total_alloc, r.total_free))
    return reports, res.total_alloc, res.total_free


def normalise(ref):
    reports, ta, tf = ref
    out = [r for r in reports if not (r[0] == "lost" and not r[2])]
    return [(a, b, list(map(int, c)), list(map(bool, d)), e, f) for a, b, c, d, e, f in out], ta, tf


def random_case(rng, n, nrings, nkeys, nlost, tmax):
    samples = []
    seqs = {r: 0 for r in range(nrings)}
    items = []
    for i in range(n):
        ring = int(rng.integers(nrings))
        items.append(("s", ring, i))
    for _ in range(nlost):
        items.insert(int(rng.integers(len(items) + 1)), ("l", int(rng.integers(nrings)), -1))
    losts = []
    for typ, ring, i in items:
        seq = seqs[ring]
        seqs[ring] += 1
        if typ == "s":
            t = int(rng.integers(tmax))  # random times: forces clamping and cross-ring ties
            samples.append(Sample(time=t, ring=ring, seq=seq, is_alloc=bool(rng.random() < 0.55),
                                  key=int(rng.integers(nkeys)), ident=i))
        else:
            losts.append(LostRec(ring=ring, seq=seq, count=int(rng.integers(1, 100))))
    return samples, losts


@pytest.mark.parametrize("wide", [False, True], ids=["small-keys", "wide-keys"])
@pytest.mark.parametrize("seed", range(60))
def test_matches_reference_on_random_streams(seed, wide):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    samples, losts = random_case(rng, n, nrings=int(rng.integers(1, 4)), nkeys=int(rng.integers(1, 40)),
                                 nlost=int(rng.integers(0, 4)), tmax=int(rng.integers(5, 500)))
    if wide:  # keys across the whole u64 range: the replay's hash path instead of its packed sort
        spread = {k: (k * 0x9E3779B97F4A7C15 + 1) % 2**64 for k in {s.key for s in samples}}
        samples = [dataclasses.replace(s, key=spread[s.key]) for s in samples]
    start, stop = 0, 600
    than = int(rng.choice([0, 0, 50, 200]))
    want = normalise(reference_replay(samples, losts, start, stop, than))
    got = run_vectorised(samples, losts, start, stop, than)
    assert got == want


def S(time, ring, seq, alloc, key, ident):
    return Sample(time=time, ring=ring, seq=seq, is_alloc=alloc, key=key, ident=ident)


def test_replace_on_double_alloc_forgets_the_older():
    # alloc A@1 key 5, alloc B@2 key 5 (replaces A), nothing frees: only B leaks
    s = [S(1, 0, 0, True, 5, 1), S(2, 0, 1, True, 5, 2)]
    reports, _, _ = run_vectorised(s, [], 0, 10)
    assert reports == [("final", 10, [2], [True], 2, 0)]
    # a later free of key 5 removes the newer entry: nothing leaks
    s.append(S(3, 0, 2, False, 5, 3))
    reports, _ta, _tf = run_vectorised(s, [], 0, 10)
    assert reports == [("final", 10, [], [], 2, 1)]


def test_free_without_alloc_is_only_counted():
    s = [S(1, 0, 0, False, 7, 1), S(2, 0, 1, True, 8, 2)]
    reports, ta, tf = run_vectorised(s, [], 0, 10)
    assert (ta, tf) == (1, 1)
    assert reports[-1][2] == [2]


def test_equal_timestamps_across_cpus_order_by_ring_then_seq():
    # alloc on ring 1 and free on ring 0 at the same time: ring 0 first -> the free sees nothing,
    # the alloc then leaks.
    s = [S(5, 1, 0, True, 9, 1), S(5, 0, 0, False, 9, 2)]
    assert run_vectorised(s, [], 0, 10)[0][-1][2] == [1]
    # swapped rings: the alloc (ring 0) comes first, the free (ring 1) removes it
    s = [S(5, 0, 0, True, 9, 1), S(5, 1, 0, False, 9, 2)]
    assert run_vectorised(s, [], 0, 10)[0][-1][2] == []


def test_backwards_time_within_a_ring_is_clamped():
    # ring 0: alloc@10 then free@3 (goes back): clamped to 10, stays after the alloc
    s = [S(10, 0, 0, True, 1, 1), S(3, 0, 1, False, 1, 2)]
    assert run_vectorised(s, [], 0, 20)[0][-1][2] == []


def test_lost_window_early_report_and_drop():
    # ring 0: alloc k1 @10, [LOST], alloc k2 @50 ; ring 1: alloc k3 @20 (inside window), free k1 @60
    s = [S(10, 0, 0, True, 1, 1), S(50, 0, 2, True, 2, 2), S(20, 1, 0, True, 3, 3), S(60, 1, 1, False, 1, 4)]
    lost = [LostRec(ring=0, seq=1, count=7)]
    reports, _ta, _tf = run_vectorised(s, lost, 0, 100)
    # window (10, 50): the sample @20 triggers the early report of {k1} and is dropped;
    # after it the tree is empty, k2 leaks, the free of k1 finds nothing.
    assert reports == [("lost", 20, [1], [True], 1, 0), ("final", 100, [2], [True], 2, 1)]


def test_loss_before_first_sample_starts_at_recording_start():
    s = [S(30, 0, 1, True, 1, 1), S(10, 1, 0, True, 2, 2), S(40, 1, 1, True, 3, 3)]
    lost = [LostRec(ring=0, seq=0, count=3)]
    reports, _ta, _tf = run_vectorised(s, lost, 5, 100)
    # window (5, 30): sample @10 on ring 1 is dropped (tree empty: no early report), @30 and @40 kept
    assert reports == [("final", 100, [1, 3], [True, True], 2, 0)]


def test_than_uses_stop_time_for_final_and_trigger_time_for_early():
    s = [S(10, 0, 0, True, 1, 1), S(15, 0, 1, True, 2, 2), S(40, 0, 3, True, 3, 3), S(48, 1, 0, True, 4, 4),
         S(90, 1, 1, True, 5, 5)]
    lost = [LostRec(ring=0, seq=2, count=1)]  # window (15, 40), triggered by the sample @40? no: @40 ends it
    reports, _, _ = run_vectorised(s, lost, 0, 100, than=20)
    # first sample with t > 15 is @40 (ring 0, t == end: kept) -> early report at 40 of {k1@10, k2@15}:
    # ages 30 and 25 > 20 -> both selected. Final at 100: k3@40 (60 > 20 yes), k4@48 (52 yes), k5@90 (10 no)
    assert reports == [("lost", 40, [1, 2], [True, True], 2, 0),
                       ("final", 100, [3, 4, 5], [True, True, False], 5, 0)]


@pytest.mark.parametrize("seed", range(5))
def test_many_losses_take_the_sorted_key_path_and_still_match(seed):
    rng = np.random.default_rng(1000 + seed)
    samples, losts = random_case(rng, 400, nrings=3, nkeys=30, nlost=100, tmax=2000)
    assert len(losts) > 64  # lost_windows switches from masked counts to a sorted key search
    want = normalise(reference_replay(samples, losts, 0, 3000, 0))
    assert run_vectorised(samples, losts, 0, 3000) == want


def _live_allocs_naive(k: np.ndarray, alloc: np.ndarray) -> np.ndarray:
    last = {}
    for i, key in enumerate(k.tolist()):
        last[key] = i
    return np.array(sorted(i for i in last.values() if alloc[i]), dtype=np.int64)


@pytest.mark.parametrize("keys", ["small", "slab", "wide", "edge"])
def test_live_allocs_packed_sort_and_hash_paths_agree(keys: str) -> None:
    """_live_allocs packs (key, position, alloc) into one uint64 when it fits, else hashes: both
    must give the last event of each key, when it is an alloc."""
    from kmemleak_offline.replay import _live_allocs

    rng = np.random.default_rng(11)
    for n in (1, 2, 7, 1000, 20000):
        if keys == "small":
            k = rng.integers(0, 50, n).astype(np.uint64)
        elif keys == "slab":  # one region, 64-byte aligned
            k = np.uint64(0xFFFF888100000000) + rng.integers(0, 5000, n).astype(np.uint64) * np.uint64(64)
        elif keys == "wide":  # spans the address space, odd and even: no room to pack
            pool = rng.integers(0, 2**63, 200).astype(np.uint64) * np.uint64(2) + np.arange(200, dtype=np.uint64) % 2
            k = pool[rng.integers(0, 200, n)]
        else:  # key bits + position bits + 1 == 64 exactly, and one bit more
            pbits = max(1, (n - 1).bit_length())
            span = 1 << (63 - pbits)
            k = rng.integers(0, 4, n).astype(np.uint64) * np.uint64(span // 4)
            k[0] = np.uint64(span - 1)
            k2 = k.copy()
            k2[0] = np.uint64(span)
            alloc = rng.random(n) < 0.6
            assert np.array_equal(_live_allocs(k2, alloc), _live_allocs_naive(k2, alloc))
        alloc = rng.random(n) < 0.6
        assert np.array_equal(_live_allocs(k, alloc), _live_allocs_naive(k, alloc)), (keys, n)


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_with_many_losses(seed):
    """More than 64 LOST records: lost_windows places them with one sorted key array instead of a
    binary search per loss; both must give the reference's windows and reports."""
    rng = np.random.default_rng(100 + seed)
    samples, losts = random_case(rng, 400, nrings=3, nkeys=30, nlost=int(rng.integers(65, 120)),
                                 tmax=2000)
    assert len(losts) > 64
    want = normalise(reference_replay(samples, losts, 0, 2500, 0))
    assert run_vectorised(samples, losts, 0, 2500, 0) == want
