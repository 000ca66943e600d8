"""Alloc/free matching (docs/behaviour.md), vectorised: ordering, lost windows, replace-on-double-alloc.

perf-prof replays events one by one through a tree. The same result follows from columns:
an alloc is still in the tree at a report iff no later kept sample of the same epoch has its key
(a later free deletes it, a later alloc replaces it), where epochs are the stretches between
reports. So: sort, mark dropped samples, number the epochs, keep the last event per (epoch, key).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass
class Lost:
    """One PERF_RECORD_LOST turned into a window over the merged stream."""

    ring: np.ndarray  # uint32
    count: np.ndarray  # uint64 events lost
    start: np.ndarray  # uint64 time of the last sample before it in its ring (or recording start)
    end: np.ndarray  # uint64 time of the first sample after it in its ring (U64_MAX if none)
    time: np.ndarray  # uint64 the LOST record's own time
    cpu: np.ndarray | None = None  # the ring's CPU (None: the ring number is the CPU)

    @property
    def cpu_of_ring(self) -> np.ndarray:
        return self.ring if self.cpu is None else self.cpu


@dataclass
class Report:
    """One report: early (reason "lost") or final."""

    reason: str  # "lost" | "final"
    time_ns: int  # reference time (triggering sample / recording stop)
    position: int  # index into the ordered stream where it happens (samples before it count)
    leaked: np.ndarray  # positions (in ordered stream) of allocs in the tree, by (time, key)
    selected: np.ndarray  # bool per leaked entry: passes --than
    total_alloc: int
    total_free: int
    lost_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # windows that
    # triggered it (indices into `lost`), in perf-prof's reclaim order; empty for the final report


@dataclass
class ReplayResult:
    order: np.ndarray  # ordered stream position -> input row
    time: np.ndarray  # clamped times, in stream order
    kept: np.ndarray  # bool, in stream order: not dropped by a lost window
    reports: list[Report]
    total_alloc: int
    total_free: int
    lost: Lost
    death: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per stream pos
    # trends (want_ends): kept allocs, which a later kept event of their key ends (in any epoch),
    # and where: kept_alloc_ends's first three arrays, in stream positions
    ends: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def ring_seq_key(ring: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """One uint64 sort key for (ring, seq): ring in the top 16 bits (seq < 2**48 in practice)."""
    return (ring.astype(np.uint64) << np.uint64(48)) | seq.astype(np.uint64)


@dataclass
class Ordering:
    """The merged stream of all sample rows: perf-prof's ordering layer, done once."""

    by_ring: np.ndarray  # rows in (ring, seq) order
    ring_time: np.ndarray  # clamped times in by_ring order
    stream: np.ndarray  # rows in (clamped time, ring, seq) order
    time: np.ndarray  # clamped times in stream order
    bounds: np.ndarray  # by_ring index where ring r starts, for r = 0..max ring (+ n at the end)

    def clamped(self) -> np.ndarray:
        """Clamped time per input row."""
        out = np.empty_like(self.ring_time)
        out[self.by_ring] = self.ring_time
        return out


def _group_by_ring(ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows grouped by ring ascending, file order kept within a ring; first index of each ring
    in that order + n). O(n): a mask per ring for a few rings, else a radix sort of 16-bit ids."""
    n = len(ring)
    nr = int(ring.max()) + 1 if n else 0
    counts = np.bincount(ring, minlength=nr) if n else np.zeros(0, np.int64)
    bounds = np.zeros(nr + 1, np.int64)
    np.cumsum(counts, out=bounds[1:])
    present = np.flatnonzero(counts)
    if len(present) <= 1:
        return np.arange(n), bounds
    if len(present) <= 8:
        return np.concatenate([np.flatnonzero(ring == r) for r in present]), bounds
    if nr <= 1 << 16:  # numpy's stable sort of 16-bit keys is a radix sort
        return np.argsort(ring.astype(np.uint16), kind="stable"), bounds
    return np.argsort(ring, kind="stable"), bounds


def _ring_seq_order(ring: np.ndarray, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows in (ring, seq) order, ring boundaries in that order). The recorder writes every ring's
    records in seq order, so grouping rows by ring (file order within a ring) is usually enough;
    one pass checks that and a full sort runs only when some ring is out of order."""
    n = len(ring)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    by, bounds = _group_by_ring(ring)
    s = seq[by]
    up = s[1:] > s[:-1]
    up[bounds[1:-1][(bounds[1:-1] > 0) & (bounds[1:-1] < n)] - 1] = True  # a new ring starts
    if not up.all():  # out of order (or duplicate seqs, not a valid recording): sort, stay stable
        by = np.argsort(ring_seq_key(ring, seq), kind="stable")
    return by, bounds


def _clamp_runs(t: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Running max of t within each ring's run [bounds[i], bounds[i+1]) (times that go backwards
    within a ring are clamped), computed only when some run actually goes backwards."""
    n = len(t)
    if n < 2:
        return t
    back = t[1:] < t[:-1]
    inner = bounds[1:-1]
    back[inner[(inner > 0) & (inner < n)] - 1] = False
    if not back.any():
        return t
    out = t.copy()
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        if hi - lo > 1 and back[lo:hi - 1].any():
            np.maximum.accumulate(t[lo:hi], out=out[lo:hi])
    return out


def order_samples(ring: np.ndarray, seq: np.ndarray, time: np.ndarray) -> Ordering:
    """Order rows by (ring, seq), clamp times that go backwards within a ring, then merge the rings
    by time with a stable sort (ties keep ring, then seq order)."""
    by_ring, bounds = _ring_seq_order(ring, seq)
    t = _clamp_runs(time[by_ring].astype(np.uint64, copy=False), bounds)
    # each ring is now one sorted run: timsort finds the runs and merges them in near-linear time
    # (ties keep ring, then seq order: the sort is stable)
    o = np.argsort(t, kind="stable") if len(bounds) > 2 else np.arange(len(t))
    return Ordering(by_ring=by_ring, ring_time=t, stream=by_ring[o], time=t[o], bounds=bounds)


def lost_windows(order: Ordering | None, ring: np.ndarray, seq: np.ndarray, l_ring: np.ndarray,
                 l_seq: np.ndarray, l_count: np.ndarray, l_time: np.ndarray, start_ns: int) -> Lost:
    """Window of each loss: last sample before and first sample after it in the same ring.

    A loss before a ring's first sample starts at `start_ns`; a loss after a ring's last sample
    has no end (U64_MAX).
    """
    n = len(l_ring)
    start = np.full(n, np.uint64(start_ns), dtype=np.uint64)
    end = np.full(n, U64_MAX, dtype=np.uint64)
    m = len(order.by_ring) if order is not None else 0  # None: no losses, no ordering needed
    if n and m:
        # position of each loss in (ring, seq) order = samples of lower rings + samples of its ring
        # with a lower seq. Few losses: a binary search per loss; many: one sorted key array.
        if n <= 64:  # binary search of each ring's seqs in place
            b = order.bounds
            nb = len(b) - 1
            lr = l_ring.astype(np.int64)
            ring_first = np.where(lr < nb, b[np.minimum(lr, nb)], m)
            ring_end = np.where(lr < nb, b[np.minimum(lr + 1, nb)], m)
            pos = np.array([_first_seq_at_least(order.by_ring, seq, lo, hi, q) for lo, hi, q in
                            zip(ring_first.tolist(), ring_end.tolist(), l_seq.tolist())], np.int64)
        else:
            skey_s = ring_seq_key(ring[order.by_ring], seq[order.by_ring])  # ascending
            pos = np.searchsorted(skey_s, ring_seq_key(l_ring, l_seq), side="left")
            ring_first = np.searchsorted(skey_s, ring_seq_key(l_ring, np.zeros_like(l_seq)), side="left")
            ring_end = np.searchsorted(skey_s, ring_seq_key(l_ring + 1, np.zeros_like(l_seq)), side="left")
        has_before = pos > ring_first
        start[has_before] = order.ring_time[pos[has_before] - 1]
        has_after = pos < ring_end
        end[has_after] = order.ring_time[pos[has_after]]
    return Lost(ring=l_ring.astype(np.uint32), count=l_count.astype(np.uint64), start=start, end=end,
                time=l_time.astype(np.uint64))


def _first_seq_at_least(by_ring: np.ndarray, seq: np.ndarray, lo: int, hi: int, q: int) -> int:
    """First i in [lo, hi) with seq[by_ring[i]] >= q (a ring's seqs ascend along by_ring)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if int(seq[by_ring[mid]]) < q:
            lo = mid + 1
        else:
            hi = mid
    return lo


def replay(*, ring: np.ndarray, seq: np.ndarray, time: np.ndarray, is_alloc: np.ndarray,
           key: np.ndarray, lost: Lost, stop_ns: int, than_ns: int = 0,
           want_death: bool = False, want_ends: bool = False) -> ReplayResult:
    """Order, then replay (convenience for callers holding unordered rows)."""
    o = order_samples(ring, seq, time)
    res = replay_ordered(time=o.time, is_alloc=is_alloc[o.stream], key=key[o.stream], lost=lost,
                         stop_ns=stop_ns, than_ns=than_ns, want_death=want_death,
                         want_ends=want_ends)
    res.order = o.stream
    return res


def replay_ordered(*, time: np.ndarray, is_alloc: np.ndarray, key: np.ndarray, lost: Lost,
                   stop_ns: int, than_ns: int = 0, want_death: bool = False,
                   want_ends: bool = False) -> ReplayResult:
    """Replay alloc/free samples already in stream order (clamped times) and compute every report.

    `lost` windows must come from `lost_windows` over ALL sample rows (the ring really held them).
    """
    t = time
    n = len(t)
    alloc = is_alloc
    k = key.astype(np.uint64, copy=False)

    # lost windows: drop (start, end) exclusive from every ring; report at the first sample after start
    w = np.argsort(lost.start, kind="stable")
    ws = lost.start[w]
    first_after = np.searchsorted(t, ws, side="right")  # first stream pos with time > start
    kept = dropped_mask(t, lost.start, lost.end)

    # report points: each window with a sample after its start triggers one at that sample
    trig = first_after[first_after < n]
    report_pos, inv = np.unique(trig, return_inverse=True) if len(trig) else (np.zeros(0, np.int64), None)
    windows_of: list[np.ndarray] = []  # per report: its windows, ascending start (perf-prof's queue)
    if len(trig):
        by_report = np.argsort(inv, kind="stable")
        windows_of = np.split(w[first_after < n][by_report], np.cumsum(np.bincount(inv))[:-1])

    # epochs are contiguous stretches of the stream: find each key's last event per epoch
    bounds = np.concatenate(([0], report_pos, [n])).astype(np.int64)
    live_parts = []
    for e in range(len(bounds) - 1):
        lo, hi = int(bounds[e]), int(bounds[e + 1])
        if kept[lo:hi].all():  # nothing dropped in this epoch: no gathers
            live_parts.append(lo + _live_allocs(k[lo:hi], alloc[lo:hi]))
            continue
        kpos = lo + np.flatnonzero(kept[lo:hi])
        live_parts.append(kpos[_live_allocs(k[kpos], alloc[kpos])])

    death = _death_positions(kept, k, bounds, n) if want_death else np.zeros(0, np.int64)
    ends = kept_alloc_ends(k, alloc, kept)[:3] if want_ends else None

    ka = kept & alloc
    kf = kept & ~alloc
    cum_alloc = np.concatenate(([0], np.cumsum(ka)))[bounds].tolist()  # kept allocs before each bound
    cum_free = np.concatenate(([0], np.cumsum(kf)))[bounds].tolist()
    reports: list[Report] = []
    for i, pos in enumerate(bounds[1:]):
        final = i == len(report_pos)
        entries = live_parts[i] if live_parts else np.zeros(0, np.int64)
        te = t[entries]
        if len(te) > 1 and np.any(te[1:] == te[:-1]):  # stream order is time order: keys break ties
            entries = entries[np.lexsort((k[entries], te))]
        ref = int(stop_ns) if final else int(t[pos])
        if than_ns:
            age = np.uint64(ref) - t[entries]  # unsigned: "future" entries wrap and are selected
            selected = age > np.uint64(than_ns)
        else:
            selected = np.ones(len(entries), dtype=bool)
        ta, tf = cum_alloc[i + 1], cum_free[i + 1]
        reports.append(Report(reason="final" if final else "lost", time_ns=ref, position=int(pos),
                              leaked=entries, selected=selected, total_alloc=ta, total_free=tf,
                              **({} if final else {"lost_idx": windows_of[i]})))
    return ReplayResult(order=np.arange(n), time=t, kept=kept, reports=reports,
                        total_alloc=cum_alloc[-1], total_free=cum_free[-1], lost=lost, death=death,
                        ends=ends)


def dropped_mask(t: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Kept (True) per stream position: not inside any lost window (start, end), exclusive."""
    n = len(t)
    kept = np.ones(n, bool)
    if not len(start) or not n:
        return kept
    a = np.searchsorted(t, start, side="right")  # first position with time > start
    b = np.searchsorted(t, end, side="left")  # first position with time >= end
    if len(a) <= 256:  # a few windows: clear their stretches
        for lo, hi in zip(a.tolist(), b.tolist()):
            kept[lo:hi] = False
        return kept
    diff = np.zeros(n + 1, dtype=np.int32)
    np.add.at(diff, a, 1)
    np.add.at(diff, np.maximum(b, a), -1)
    return np.cumsum(diff[:-1]) == 0


def _packed_sort(k: np.ndarray, flag: np.ndarray | None = None) -> tuple[np.ndarray, int] | None:
    """Keys that fit in a few dozen bits (slab pointers: one region, aligned) sort with their
    positions as one SIMD sort of uint64s: (key - min) >> the alignment common to all keys, then
    the position, then (given `flag`) one bit of it. Returns (the sorted values, position bits),
    or None when they do not fit in 64 bits. Positions are unique: the order is (key, position)."""
    n = len(k)
    kmin, kmax = int(k.min()), int(k.max())
    c = k - np.uint64(kmin)
    x = int(np.bitwise_or.reduce(c))
    tz = (x & -x).bit_length() - 1 if x else 0
    pbits = max(1, (n - 1).bit_length())
    fbits = 0 if flag is None else 1
    if ((kmax - kmin) >> tz).bit_length() + pbits + fbits > 64:
        return None
    if tz:
        c >>= np.uint64(tz)
    c <<= np.uint64(pbits + fbits)
    c |= np.arange(0, n << fbits, 1 << fbits, dtype=np.uint64)
    if flag is not None:
        c |= flag
    c.sort()
    return c, pbits


def _flag_bit(c: np.ndarray) -> np.ndarray:
    """Bit 0 of each uint64, as a bool view of their low bytes (no uint64 temporary)."""
    low = c.view(np.uint8)[:: 8] if sys.byteorder == "little" else c.view(np.uint8)[7:: 8]
    return (low & 1).view(bool)


def _live_allocs(k: np.ndarray, alloc: np.ndarray) -> np.ndarray:
    """Ascending positions of the allocs whose key does not occur again later: what stays in
    perf-prof's tree. Packed keys go through one SIMD sort (`_packed_sort`); others a hash."""
    n = len(k)
    if n == 0:
        return np.zeros(0, np.int64)
    packed = _packed_sort(k, alloc)
    if packed is None:
        dup = pd.Series(k, copy=False).duplicated(keep="last").to_numpy()
        return np.flatnonzero(~dup & alloc)
    c, pbits = packed
    sel = np.empty(n, bool)  # the last event of its key, and an alloc
    kk = c >> np.uint64(pbits + 1)
    np.not_equal(kk[1:], kk[:-1], out=sel[:-1])
    del kk
    sel[-1] = True
    sel &= _flag_bit(c)
    e = c[sel]
    e >>= np.uint64(1)
    e &= np.uint64((1 << pbits) - 1)
    e.sort()
    return e.astype(np.int64)


def alloc_ends(k: np.ndarray, alloc: np.ndarray, stops: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """What becomes of each alloc among events with keys `k` (stream order), for trends:
    (alloc positions, which of them a later event of the same key ends, those events' positions,
    the ascending positions of the allocs that no later event in the same stretch ends, or None
    without `stops`). `stops`: the stretch boundaries (an early report empties the tree, not the
    memory).

    The allocs come in (key, position) order: trends only sum them, so no full successor array
    (a scatter over every event) is ever made."""
    n = len(k)
    if n == 0:
        z = np.zeros(0, np.int64)
        return z, np.zeros(0, bool), z, z
    packed = _packed_sort(k, alloc)
    if packed is None:
        pos = np.argsort(k, kind="stable")
        ks = k[pos]
        same = ks[1:] == ks[:-1]
        del ks
        is_a = alloc[pos]
    else:
        c, pbits = packed
        is_a = _flag_bit(c)
        kk = c >> np.uint64(pbits + 1)
        same = kk[1:] == kk[:-1]
        del kk
        c >>= np.uint64(1)
        c &= np.uint64((1 << pbits) - 1)
        pos = c.view(np.int64)
    a_next = np.zeros(n, bool)  # an alloc followed by an event of its key
    np.logical_and(is_a[:-1], same, out=a_next[:-1])
    del same
    apos = pos[is_a]
    ended = a_next[is_a]
    epos = pos[1:][a_next[:-1]]
    del pos, is_a, a_next
    if stops is None:
        return apos, ended, epos, None
    later = ended.copy()
    if len(stops) > 2:  # ended within its own stretch
        ae = apos[ended]
        later[ended] = epos < stops[np.searchsorted(stops, ae, side="right")]
    surv = apos[~later]
    surv.sort()
    return apos, ended, epos, surv


def kept_alloc_ends(k: np.ndarray, alloc: np.ndarray, kept: np.ndarray,
                    stops: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """alloc_ends over the kept events only (lost windows drop the others), in stream positions
    (`stops` too); without a dropped event, no gathers."""
    if kept.all():
        return alloc_ends(k, alloc, stops)
    kall = np.flatnonzero(kept)
    apos, ended, epos, surv = alloc_ends(k[kall], alloc[kall],
                                         None if stops is None else np.searchsorted(kall, stops))
    return kall[apos], ended, kall[epos], None if surv is None else kall[surv]


def _death_positions(kept: np.ndarray, key: np.ndarray, bounds: np.ndarray, n: int) -> np.ndarray:
    """Per stream position: where its tree entry disappears (`-i` needs it).

    The next kept sample of the same key in the same epoch, else the epoch's report position
    (the tree is emptied there), else n (alive at the end).
    """
    death = np.full(n, n, dtype=np.int64)
    for e in range(len(bounds) - 1):
        lo, hi = bounds[e], bounds[e + 1]
        kpos = lo + np.flatnonzero(kept[lo:hi])
        nxt = pd.Series(kpos).groupby(key[kpos], sort=False).shift(-1).to_numpy()
        death[kpos] = np.where(np.isnan(nxt), hi, np.nan_to_num(nxt, nan=0)).astype(np.int64)
    return death
